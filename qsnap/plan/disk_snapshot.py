"""Disk snapshots (``--disk-only``, and any snapshot of a stopped guest): libvirt's rules, the
fully populated definition, and the steps: one QMP ``transaction`` for a running guest, qemu-img
for a stopped one.

libvirt's logic (qemuSnapshotCreateAlignDisks, qemuSnapshotPrepare): a running guest gets an
external snapshot with ``--disk-only``; without it the snapshot is full-system (memory). A stopped
guest gets an external snapshot when ``--disk-only`` is given or a disk asks for ``external``,
otherwise an internal one made with ``qemu-img snapshot -c``.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

from qsnap.errors import InvalidArgumentError, NotSupportedError, OperationInvalidError
from qsnap.model.domain import DomainDef, with_disk_images
from qsnap.model.names import check_new_file_path, check_snapshot_name, default_snapshot_name
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.disks import align_disks
from qsnap.plan.flags import CreateFlags

OVERLAY_FORMATS = ("qcow2", "qed")


@dataclass(frozen=True)
class Overlay:
    """One external disk: its new overlay and the image that becomes its backing file."""

    target: str
    path: str
    format: str
    backing: str
    backing_format: str
    reuse: bool


@dataclass(frozen=True)
class DiskSnapshotPlan:
    snapshot: SnapshotDef
    external: bool
    overlays: list[Overlay]
    internal_images: list[str]  # qcow2 images that get an internal snapshot (stopped guest)
    domain_after: DomainDef
    #: A disk is ``manual``: the running guest is paused for the snapshot and left paused,
    #: its images flushed, for the user's own storage snapshot (libvirt 8.2+).
    leave_paused: bool = False


def _location(request: SnapshotDef, flags: CreateFlags, active: bool) -> str:
    if active:
        if not flags.disk_only:
            raise InvalidArgumentError("a running guest's snapshot without --disk-only is a "
                                       "full-system snapshot (see plan_full_snapshot)")
        return "external"
    if flags.live:
        raise InvalidArgumentError("live snapshot creation is supported only during full "
                                   "system snapshots")
    explicit_external = any(d.snapshot == "external" for d in request.disks)
    return "external" if flags.disk_only or explicit_external else "internal"


def plan_disk_snapshot(request: SnapshotDef, domain: DomainDef, flags: CreateFlags, *,
                       active: bool, current: str | None, now: int,
                       regular_files: Collection[str]) -> DiskSnapshotPlan:
    """Validate a disk snapshot request and return everything needed to carry it out."""
    if flags.live and active:
        raise InvalidArgumentError("live snapshot creation is supported only during full "
                                   "system snapshots")
    if flags.quiesce:
        if not active:
            raise InvalidArgumentError(f"--quiesce needs a running guest, and domain "
                                       f"'{domain.name}' is shut off")
        if domain.agent_socket is None:
            raise InvalidArgumentError(
                f"QEMU guest agent is not configured: domain '{domain.name}' has no <channel> "
                "to org.qemu.guest_agent.0, which --quiesce needs")
    location = _location(request, flags, active)
    snap = new_snapshot(request, domain, flags, now=now, current=current, memory="no",
                        state="disk-snapshot" if active else "shutoff")
    snap.disks = align_disks(snap, domain, location, uniform_internal=True,
                             regular_files=regular_files)
    overlays, internal = split_disks(snap, domain, flags, active=active, disk_only=True)
    internal_images = [image for _, image in internal]
    if internal_images and nvram_takes_part(domain):
        internal_images.append(domain.nvram or "")

    manual = has_manual_disks(snap)
    if not overlays and not internal_images and not manual:
        raise InvalidArgumentError(
            "disk-only snapshots require at least one disk to be selected for snapshot"
            if flags.disk_only else "nothing selected for snapshot")
    if internal_images:
        for disk, domain_disk in zip(snap.disks, domain.disks, strict=True):
            if disk.snapshot == "no" and not domain_disk.readonly and not domain_disk.is_empty:
                raise InvalidArgumentError("internal and full system snapshots require all "
                                           "disks to be selected for snapshot")

    domain_after = with_disk_images(domain, {o.target: (o.path, o.format) for o in overlays}) \
        if overlays else domain
    return DiskSnapshotPlan(snap, bool(overlays), overlays, internal_images, domain_after,
                            leave_paused=manual and active)


def nvram_takes_part(domain: DomainDef) -> bool:
    """Whether an internal snapshot of *domain* includes its UEFI NVRAM (as libvirt 10.9+
    does: the firmware's variables are part of the guest's state). It needs a qcow2 NVRAM;
    a raw one is refused, naming the file, rather than a snapshot taken without it."""
    if domain.nvram is None:
        return False
    if not domain.nvram_takes_tags:
        raise NotSupportedError(
            f"internal snapshots of domain '{domain.name}' need its NVRAM '{domain.nvram}' in "
            f"qcow2 format to keep the firmware's variables with the snapshot (it is "
            f"{domain.nvram_format}); define it with <nvram format='qcow2'>, or take an "
            "external snapshot")
    return True


def has_manual_disks(snap: SnapshotDef) -> bool:
    """Whether a disk of the (aligned) snapshot is ``manual``: libvirt documents that the
    hypervisor then keeps "a synchronized state by pausing the VM", which "the caller is
    responsible for resuming"."""
    return any(d.snapshot == "manual" for d in snap.disks)


def new_snapshot(request: SnapshotDef, domain: DomainDef, flags: CreateFlags, *, now: int,
                 current: str | None, memory: str, state: str) -> SnapshotDef:
    """The request, named (default: the creation time) and filled in as the engine records it:
    creation time, parent (the current snapshot), state, memory, and the domain as it was."""
    name = request.name if request.name is not None else default_snapshot_name(now)
    if not flags.no_metadata:
        check_snapshot_name(name)
    return request.copy(name=name, creation_time=now, parent=current, memory=memory,
                        state=state, domain=domain.element, domain_uuid=None, active=None)


def split_disks(snap: SnapshotDef, domain: DomainDef, flags: CreateFlags, *, active: bool,
                disk_only: bool) -> tuple[list[Overlay], list[tuple[str, str]]]:
    """The aligned disks as new overlays and as (target, image) pairs for internal snapshots,
    each checked by libvirt's per-disk rules (qemuSnapshotPrepare)."""
    overlays: list[Overlay] = []
    internal: list[tuple[str, str]] = []
    for disk, domain_disk in zip(snap.disks, domain.disks, strict=True):
        if disk.snapshot == "manual":
            continue  # the user snapshots it outside qsnap (see has_manual_disks)
        if disk.snapshot == "internal":
            if active and disk_only:
                raise InvalidArgumentError(f"active qemu domains require external disk "
                                           f"snapshots; disk {disk.name} requested internal")
            if not active and domain_disk.type not in ("file", "block"):
                raise NotSupportedError(f"internal inactive snapshots are not supported on "
                                        f"'{domain_disk.type}' disks")
            if domain_disk.driver_type != "qcow2":
                raise NotSupportedError(f"internal snapshot for disk {disk.name} unsupported "
                                        f"for storage type {domain_disk.driver_type or 'raw'}")
            internal.append((disk.name, domain_disk.source or ""))
        elif disk.snapshot == "external":
            disk.driver_type = disk.driver_type or "qcow2"
            if disk.driver_type not in OVERLAY_FORMATS:
                raise NotSupportedError(f"external snapshot format for disk {disk.name} is "
                                        f"unsupported: {disk.driver_type}")
            if disk.metadata_cache_max_size and disk.driver_type != "qcow2":
                raise NotSupportedError("metadata cache max size control is supported only "
                                        "with qcow2 images")
            if disk.type == "network" or domain_disk.type not in ("file", "block"):
                raise NotSupportedError(f"disk '{disk.name}': external snapshots of "
                                        f"'{disk.type}' storage are not supported by qsnap yet")
            overlays.append(Overlay(disk.name, disk.source.path or "", disk.driver_type,
                                    domain_disk.source or "", domain_disk.driver_type or "raw",
                                    flags.reuse_external))
    if overlays and internal:
        raise NotSupportedError("mixing internal and external targets for a snapshot is not "
                                "yet supported")
    return overlays, internal


def check_overlay_targets(overlays: list[Overlay], *, nonempty: Collection[str],
                          existing: Collection[str], unwritable_dirs: Collection[str],
                          disk_images: Collection[str], links: Collection[str] = ()) -> None:
    """Refuse overlays that would overwrite data, collide, or cannot be created.

    *nonempty*/*existing*: overlay paths that exist (with data / at all); *unwritable_dirs*:
    overlay folders that are missing or not writable; *disk_images*: every image the domain uses;
    *links*: overlay paths that are symbolic links. A new overlay is never created through a
    link: where it points is not what the snapshot names, and a dangling one could make qsnap
    create a file anywhere the link's author chose.
    """
    seen: dict[str, str] = {}
    for overlay in overlays:
        if overlay.path in seen:
            raise InvalidArgumentError(f"disks '{seen[overlay.path]}' and '{overlay.target}' "
                                       f"would both use the overlay '{overlay.path}'",
                                       path=overlay.path)
        seen[overlay.path] = overlay.target
        if overlay.path in disk_images:
            raise InvalidArgumentError(f"overlay '{overlay.path}' for disk {overlay.target} is "
                                       "an image the domain already uses", path=overlay.path)
        folder = os.path.dirname(overlay.path)
        check_new_file_path(f"overlay for disk {overlay.target}", overlay.path,
                            " (a default overlay name is the image's name, a dot and the "
                            "snapshot's name: name the overlay with --diskspec)")
        if overlay.reuse:
            if overlay.path not in existing:
                raise InvalidArgumentError(
                    f"missing existing file for disk {overlay.target}: {overlay.path}",
                    path=overlay.path)
            continue
        if overlay.path in links:
            raise InvalidArgumentError(f"external snapshot file for disk {overlay.target} is a "
                                       f"symbolic link: {overlay.path} (name the file itself, "
                                       "or use --reuse-external for an existing overlay)",
                                       path=overlay.path)
        if overlay.path in nonempty:
            raise InvalidArgumentError(f"external snapshot file for disk {overlay.target} "
                                       f"already exists and is not a block device: "
                                       f"{overlay.path}", path=overlay.path)
        if folder in unwritable_dirs:
            raise InvalidArgumentError(f"cannot create the overlay '{overlay.path}' for disk "
                                       f"{overlay.target}: folder '{folder}' does not exist or "
                                       "is not writable", path=overlay.path)


def check_not_crashed(domain: str, crash: str | None, flags: CreateFlags) -> None:
    """A guest whose QEMU crashed (*crash* says how; None: it did not) left its disks as a
    power cut would, with writes half done, not as a shut-down guest does. A snapshot of
    them then is not the quiescent one a snapshot of a stopped guest promises: refused
    unless the user says they want it (``crash_consistent``). Starting or reverting the
    guest ends it (its file systems recover, or the present is discarded)."""
    if crash is not None and not flags.crash_consistent:
        raise OperationInvalidError(
            f"domain '{domain}' crashed ({crash}): its disks hold whatever the guest had "
            "half-written, not a shut-down guest's. Start it once so its file systems "
            "recover, or take the snapshot anyway with --crash-consistent", domain=domain)
