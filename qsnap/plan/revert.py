"""Reverting to a snapshot: which images, which memory, what definition, what state after.

Like libvirt (since 7.10), a revert always starts a fresh QEMU from the snapshot's own
``<domain>``: the snapshot's images are the ones its definition names. For an external snapshot
those images became read-only backing files when it was taken, so the revert puts NEW overlays
on top of them (named as libvirt names them, ``<image stem>.<unix time>``): the snapshot's images
stay unchanged and the snapshot can be reverted to again. libvirt refuses disk-only snapshots of
running guests ("Invalid target domain state 'disk-snapshot'"); qsnap reverts them to a stopped
guest on those images, as its issue asks.

The state afterwards is the snapshot's (running, paused, or shut off for disk snapshots) unless
``--running``/``--paused`` say otherwise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from qsnap.errors import InvalidArgumentError, NotSupportedError, OperationInvalidError
from qsnap.model.domain import (
    NVRAM_TARGET,
    DomainDef,
    parse_domain_element,
    same_uuid,
    with_disk_images,
)
from qsnap.model.names import check_new_file_path
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.disk_snapshot import Overlay
from qsnap.plan.disks import default_overlay_path
from qsnap.plan.flags import RevertFlags

_ONLINE = ("running", "paused")
_OFFLINE = ("shutoff", "shutdown", "crashed")


@dataclass(frozen=True)
class RevertPlan:
    """``memory`` is "internal" (snapshot-load), "external" (the save image in
    ``memory_file``) or None. ``overlays`` are new overlays to create on the snapshot's images;
    ``offline_internal`` lists (image, tag) pairs to apply with ``qemu-img snapshot -a``."""

    target: str
    domain: DomainDef
    memory: str | None
    memory_file: str | None = None
    overlays: list[Overlay] = field(default_factory=list)
    internal_disks: list[str] = field(default_factory=list)
    offline_internal: list[str] = field(default_factory=list)
    start: bool = False
    run: bool = False
    #: Where the UEFI NVRAM comes from: "template" (``--reset-nvram``), "snapshot" (the copy
    #: an external snapshot kept, if it kept one), or None (it is in the internal snapshot,
    #: or the guest has none).
    nvram_from: str | None = None


def snapshot_domain(snap: SnapshotDef, current: DomainDef, flags: RevertFlags) -> DomainDef:
    """The definition to revert to: the snapshot's, under today's name and UUID."""
    if snap.domain is None:
        if not flags.force:
            raise OperationInvalidError(
                f"snapshot '{snap.name}' lacks domain '{current.name}' rollback info (it has no "
                "<domain> definition); --force reverts with the current definition")
        return current
    element = copy.deepcopy(snap.domain)
    name = element.find("name")
    if name is None:
        name = etree.SubElement(element, "name")
    name.text = current.name
    recorded = parse_domain_element(element, f"the <domain> of snapshot '{snap.name}'")
    if recorded.uuid and current.uuid and not same_uuid(recorded.uuid, current.uuid):
        raise InvalidArgumentError(f"snapshot '{snap.name}' belongs to uuid {recorded.uuid}, "
                                   f"not to domain '{current.name}' ({current.uuid})")
    return recorded


def plan_revert(snap: SnapshotDef, current: DomainDef, flags: RevertFlags, *,
                now: int) -> RevertPlan:
    name = snap.name or ""
    state = snap.state or ""
    if state == "pmsuspended":
        raise NotSupportedError("qemu doesn't support reversion of snapshot taken in "
                                "PMSUSPENDED state")
    if state not in (*_ONLINE, *_OFFLINE, "disk-snapshot"):
        raise InvalidArgumentError(f"Invalid target domain state '{state}'. Refusing snapshot "
                                   "reversion")
    domain = snapshot_domain(snap, current, flags)
    by_target = {d.target: d for d in domain.disks}
    external = [d for d in snap.disks if d.snapshot == "external"]
    internal = [d.name for d in snap.disks if d.snapshot == "internal"]

    overlays = []
    for disk in external:
        image = by_target.get(disk.name)
        if image is None or image.source is None:
            raise InvalidArgumentError(f"snapshot '{name}' has disk '{disk.name}', which its "
                                       "domain definition does not describe")
        path = check_new_file_path(f"the new overlay for disk {disk.name}",
                                   default_overlay_path(image.source, str(now)))
        overlays.append(Overlay(disk.name, path, "qcow2", image.source,
                                image.driver_type or "raw", False))
    if overlays:
        domain = with_disk_images(domain, {o.target: (o.path, o.format) for o in overlays})

    if snap.memory == "internal" and state in _ONLINE and not internal:
        # Metadata that lists no disks (e.g. redefined): internal state lives in every qcow2.
        internal = [d.target for d in domain.disks if d.driver_type == "qcow2"]
        if not internal:
            raise InvalidArgumentError(f"snapshot '{name}' keeps its memory internally, but no "
                                       "qcow2 disk of the domain can hold it")
    online = state in _ONLINE
    if online:
        start, run = True, flags.running or (state == "running" and not flags.paused)
    else:
        start, run = flags.running or flags.paused, flags.running
    memory = snap.memory if online and snap.memory in ("internal", "external") else None
    offline_internal = [by_target[t].source or "" for t in internal] \
        if memory != "internal" else []
    nvram_from = None
    if domain.nvram is not None:
        if flags.reset_nvram:
            nvram_from = "template"
        elif internal and domain.nvram_takes_tags:
            # The NVRAM holds the snapshot's tag (nvram_takes_part).
            if memory == "internal":
                internal = [*internal, NVRAM_TARGET]
            else:
                offline_internal.append(domain.nvram)
        elif external or snap.memory == "external":
            nvram_from = "snapshot"
    return RevertPlan(
        target=name, domain=domain, memory=memory,
        memory_file=snap.memory_file if memory == "external" else None,
        overlays=overlays,
        internal_disks=internal if memory == "internal" else [],
        offline_internal=offline_internal, start=start, run=run, nvram_from=nvram_from)
