"""Full-system snapshots of a running guest: memory and every disk, internal or external.

libvirt's rules (qemuSnapshotCreateAlignDisks, qemuSnapshotPrepare): without ``--disk-only`` a
running guest's snapshot includes its memory. It is *internal* unless the memory is asked to be
external: then every qcow2 disk must take part (QEMU's internal snapshots cannot leave one out),
and the memory goes into one of them, chosen as libvirt does (the first disk in domain order that
takes part). With ``<memory snapshot='external' file=...>`` it is *external*: memory to that
file in libvirt's save-image format, disks to new overlays.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from qsnap.errors import InvalidArgumentError, NotSupportedError
from qsnap.model.capture import LIVE_STRATEGIES, CaptureStrategy
from qsnap.model.domain import NVRAM_TARGET, DomainDef, with_disk_images
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.disk_snapshot import (
    Overlay,
    has_manual_disks,
    new_snapshot,
    nvram_takes_part,
    split_disks,
)
from qsnap.plan.disks import align_disks
from qsnap.plan.flags import CreateFlags


@dataclass(frozen=True)
class FullSnapshotPlan:
    """What a full-system snapshot stores and does.

    Internal: ``internal_disks`` (targets, domain order) get the snapshot, the memory goes to
    ``vmstate_disk``. External: the memory goes to ``snapshot.memory_file`` and ``overlays``
    are switched in one transaction while the guest is paused (or at the end of a live copy).
    """

    snapshot: SnapshotDef
    external: bool
    internal_disks: list[str]
    vmstate_disk: str | None
    overlays: list[Overlay]
    domain_after: DomainDef
    leave_paused: bool = False  # a disk is ``manual`` (see DiskSnapshotPlan.leave_paused)


def plan_full_snapshot(request: SnapshotDef, domain: DomainDef, flags: CreateFlags, *,
                       state: str, current: str | None, now: int,
                       regular_files: Collection[str]) -> FullSnapshotPlan:
    """Validate a full-system snapshot request for a running (or paused) guest."""
    external = request.memory == "external"
    if flags.live and not external:
        raise InvalidArgumentError("live snapshot creation is supported only during full "
                                   "system snapshots")
    if request.memory == "no":
        raise InvalidArgumentError(
            "internal snapshot of a running VM must include the memory state")
    if flags.quiesce:
        raise InvalidArgumentError("--quiesce requires --disk-only")
    location = "external" if external else "internal"
    snap = new_snapshot(request, domain, flags, now=now, current=current, memory=location,
                        state=state)
    snap.disks = align_disks(snap, domain, location, uniform_internal=True,
                             regular_files=regular_files)
    overlays, pairs = split_disks(snap, domain, flags, active=True, disk_only=False)
    internal = [target for target, _ in pairs]
    if internal and nvram_takes_part(domain):
        internal.append(NVRAM_TARGET)  # after the disks: the memory goes to the first disk
    if not external:
        for disk, domain_disk in zip(snap.disks, domain.disks, strict=True):
            if disk.snapshot == "no" and not domain_disk.readonly and not domain_disk.is_empty:
                raise InvalidArgumentError("internal and full system snapshots require all "
                                           "disks to be selected for snapshot")
    if not external and not internal:
        raise InvalidArgumentError("internal and full system snapshots require all disks to be "
                                   "selected for snapshot")
    manual = has_manual_disks(snap)
    if manual and flags.live:
        raise InvalidArgumentError("--live cannot be used with 'manual' disks: the guest is "
                                   "paused for them and left paused")
    domain_after = with_disk_images(domain, {o.target: (o.path, o.format) for o in overlays}) \
        if overlays else domain
    return FullSnapshotPlan(snap, external, internal, internal[0] if internal else None,
                            overlays, domain_after, leave_paused=manual)


def background_wanted(*, external: bool, live: bool, requested: str | None) -> bool:
    """Whether :func:`choose_capture` may pick a background snapshot, so that the engine asks
    QEMU (and the file system) whether one is possible; otherwise it need not ask."""
    return external and live and requested in (None, "background")


def choose_capture(*, external: bool, live: bool, requested: str | None, running: bool,
                   background_refusal: str | None) -> CaptureStrategy:
    """How to capture the memory (see :mod:`qsnap.model.capture`).

    Internal snapshots always use QEMU's snapshot-save job. External ones: without ``--live``
    the guest is paused for the whole save (libvirt's default); with it, QEMU's
    background-snapshot where this QEMU and host offer it (the guest pauses for milliseconds
    and the image holds the moment the snapshot started, when the disks switch too), else
    pre-copy (libvirt's ``--live``: the moment it ended). *requested* overrides the choice.
    A paused guest stays paused, so it is saved paused. *background_refusal* (why a
    background snapshot is impossible, or None) matters only when :func:`background_wanted`.
    """
    if requested is not None and requested not in LIVE_STRATEGIES:
        raise InvalidArgumentError(f"unknown live strategy '{requested}': use "
                                   f"{', '.join(LIVE_STRATEGIES[:-1])} or {LIVE_STRATEGIES[-1]}")
    if not external:
        if requested is not None:
            raise InvalidArgumentError("a live strategy applies to external memory snapshots "
                                       "only (internal ones are taken by QEMU's snapshot-save)")
        return CaptureStrategy.INTERNAL
    if requested in (CaptureStrategy.BACKGROUND, CaptureStrategy.PRECOPY) and not live:
        raise InvalidArgumentError(f"live strategy '{requested}' requires --live")
    if not live or not running:
        return CaptureStrategy.PAUSED
    if requested == CaptureStrategy.BACKGROUND and background_refusal is not None:
        raise NotSupportedError(f"background snapshots are not available here: "
                                f"{background_refusal}")
    if requested is not None:
        return CaptureStrategy(requested)
    return CaptureStrategy.BACKGROUND if background_refusal is None else CaptureStrategy.PRECOPY
