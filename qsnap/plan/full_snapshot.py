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
from qsnap.model.domain import DomainDef, with_disk_images
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.disk_snapshot import OVERLAY_FORMATS, Overlay
from qsnap.plan.disks import align_disks
from qsnap.plan.flags import CreateFlags
from qsnap.plan.names import check_snapshot_name, default_snapshot_name


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


def plan_full_snapshot(request: SnapshotDef, domain: DomainDef, flags: CreateFlags, *,
                       state: str, current: str | None, now: int,
                       regular_files: Collection[str]) -> FullSnapshotPlan:
    """Validate a full-system snapshot request for a running (or paused) guest."""
    flags.check()
    external = request.memory == "external"
    if flags.live and not external:
        raise InvalidArgumentError("live snapshot creation is supported only during full "
                                   "system snapshots")
    if request.memory == "no":
        raise InvalidArgumentError(
            "internal snapshot of a running VM must include the memory state")
    if flags.quiesce:
        raise InvalidArgumentError("--quiesce requires --disk-only")
    name = request.name if request.name is not None else default_snapshot_name(now)
    if not flags.no_metadata:
        check_snapshot_name(name)
    location = "external" if external else "internal"
    snap = request.copy(name=name, creation_time=now, parent=current, state=state,
                        memory=location, domain=domain.element, domain_uuid=None, active=None)
    snap.disks = align_disks(snap, domain, location, uniform_internal=True,
                             regular_files=regular_files)

    internal: list[str] = []
    overlays: list[Overlay] = []
    for disk, domain_disk in zip(snap.disks, domain.disks, strict=True):
        if disk.snapshot == "manual":
            raise NotSupportedError(f"disk '{disk.name}': snapshot mode 'manual' is not "
                                    "supported by qsnap yet")
        if disk.snapshot == "internal":
            if domain_disk.driver_type != "qcow2":
                raise NotSupportedError(f"internal snapshot for disk {disk.name} unsupported "
                                        f"for storage type {domain_disk.driver_type or 'raw'}")
            internal.append(disk.name)
        elif disk.snapshot == "external":
            disk.driver_type = disk.driver_type or "qcow2"
            if disk.driver_type not in OVERLAY_FORMATS:
                raise NotSupportedError(f"external snapshot format for disk {disk.name} is "
                                        f"unsupported: {disk.driver_type}")
            overlays.append(Overlay(disk.name, disk.source.path or "", disk.driver_type,
                                    domain_disk.source or "", domain_disk.driver_type or "raw",
                                    flags.reuse_external))
        elif not external and not domain_disk.readonly and not domain_disk.is_empty:
            raise InvalidArgumentError("internal and full system snapshots require all disks "
                                       "to be selected for snapshot")
    if internal and external:
        raise NotSupportedError("mixing internal and external targets for a snapshot is not "
                                "yet supported")
    if not external and not internal:
        raise InvalidArgumentError("internal and full system snapshots require all disks to be "
                                   "selected for snapshot")
    domain_after = with_disk_images(domain, {o.target: (o.path, o.format) for o in overlays}) \
        if overlays else domain
    return FullSnapshotPlan(snap, external, internal, internal[0] if internal else None,
                            overlays, domain_after)
