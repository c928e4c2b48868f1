"""Carrying out a revert plan: checks first, then stop the guest, make the new overlays or
apply internal snapshots, start QEMU from the snapshot's definition and load its memory.

Everything that can be checked is checked before the running guest is touched: the snapshot's
images and memory file exist and read back, the new overlays can be created, and no image that
another snapshot builds on would be rewritten. If a later step fails, the QEMU it started is
stopped and the overlays it made are removed: the guest is left stopped, never half-restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from qsnap import images
from qsnap.engine.disk_snapshot import check_overlay_files
from qsnap.engine.guests import stop
from qsnap.engine.memory import load_image, read_image
from qsnap.errors import InvalidArgumentError, OperationInvalidError, QsnapError
from qsnap.launcher.accel import choose_accel
from qsnap.launcher.command import RuntimePaths
from qsnap.launcher.process import Launcher, RuntimeInfo, read_runtime, start_qemu
from qsnap.model.domain import DomainDef
from qsnap.model.image_graph import ImageFacts
from qsnap.model.save_image import SaveImage
from qsnap.model.snapshot import DiskSource, SnapshotDef
from qsnap.monitor import Monitor
from qsnap.plan.external_delete import disk_sources
from qsnap.plan.revert import RevertPlan
from qsnap.progress import ProgressCallback
from qsnap.store.atomic import unlink_if_present


@dataclass(frozen=True)
class ImageReferences:
    """Which snapshots name which images: ``states`` maps each image a snapshot's
    ``<domain>`` uses to the snapshots that use it (for external disks the frozen state image,
    for internal ones the image holding the tag); ``overlays`` are the images snapshots made
    (their ``<disks>`` sources); ``parents`` lets a revert tell a leaf."""

    states: dict[str, list[tuple[str, bool]]]
    overlays: frozenset[str]
    parents: frozenset[str]

    @classmethod
    def of(cls, snapshots: dict[str, SnapshotDef]) -> ImageReferences:
        states: dict[str, list[tuple[str, bool]]] = {}
        overlays: set[str] = set()
        for name, snap in snapshots.items():
            external = {d.name for d in snap.disks if d.snapshot == "external"}
            for target, image in disk_sources(snap).items():
                states.setdefault(image, []).append((name, target in external))
            overlays.update(d.source.path for d in snap.disks if d.source.path)
        return cls(states, frozenset(overlays),
                   frozenset(s.parent for s in snapshots.values() if s.parent))

    def shared_bases(self, target: str) -> dict[str, str]:
        """Images that external snapshots (other than *target*) keep as their read-only base,
        each with one such snapshot's name."""
        return {image: next(n for n, ext in users if ext and n != target)
                for image, users in self.states.items()
                if any(ext and n != target for n, ext in users)}

    def has_children(self, name: str) -> bool:
        return name in self.parents


async def discarded_overlays(before: DomainDef, after: DomainDef,
                             refs: ImageReferences) -> list[str]:
    """The images a revert leaves behind that only held the discarded present: disks of the
    old definition that the new one does not use, that no snapshot names, and that are
    snapshot overlays (made by a snapshot, or by an earlier revert on a snapshot's image).
    libvirt deletes them too ("delete the current snapshot's active overlays"); a disk that
    is nobody's overlay (the user's own image) is never touched."""
    keep = {d.source for d in after.disks}
    result = []
    for disk in before.disks:
        image = disk.source
        if image is None or image in keep or image in refs.states or not os.path.isfile(image):
            continue
        if image not in refs.overlays:
            backing = ImageFacts.from_qemu_img(await images.info(image)).backing
            if backing not in refs.states:
                continue
        result.append(image)
    return result


def with_new_overlays(snap: SnapshotDef, plan: RevertPlan) -> SnapshotDef | None:
    """libvirt keeps a leaf snapshot's ``<disks>`` naming the overlays its branch writes to:
    after a revert those are the new ones."""
    if not plan.overlays:
        return None
    new = {o.target: o for o in plan.overlays}
    disks = [replace(d, source=DiskSource(file=new[d.name].path), driver_type="qcow2")
             if d.name in new and d.snapshot == "external" else d for d in snap.disks]
    return snap.copy(disks=disks)


def check_revert(plan: RevertPlan, shared_bases: dict[str, str]) -> SaveImage | None:
    """The file-system checks; returns the memory image header for an external memory revert.
    *shared_bases* maps images other snapshots build on to one such snapshot's name."""
    for overlay in plan.overlays:
        if not os.path.isfile(overlay.backing):
            raise OperationInvalidError(f"cannot revert to snapshot '{plan.target}': its image "
                                        f"'{overlay.backing}' no longer exists")
    check_overlay_files(plan.overlays, {o.backing for o in plan.overlays})
    rewritten = plan.offline_internal + [
        d.source or "" for d in plan.domain.disks if d.target in plan.internal_disks]
    for image in rewritten:
        if not os.path.isfile(image):
            raise OperationInvalidError(f"cannot revert to snapshot '{plan.target}': its image "
                                        f"'{image}' no longer exists")
        if image in shared_bases:
            raise OperationInvalidError(
                f"reverting to internal snapshot '{plan.target}' would rewrite '{image}', which "
                f"external snapshot '{shared_bases[image]}' keeps as its read-only base")
    if plan.memory == "external":
        if not plan.memory_file:
            raise InvalidArgumentError(f"snapshot '{plan.target}' has no memory file")
        return read_image(Path(plan.memory_file))
    return None


async def check_revert_images(plan: RevertPlan) -> None:
    """What qemu-img and QEMU will need, checked before the running guest is stopped: every
    image the new overlays go on, and every image an internal snapshot is applied to, opens
    with its whole backing chain (not damaged, no file missing, no loop), and the latter
    hold the snapshot's tag. A revert that would fail on them fails here, guest untouched."""
    for overlay in plan.overlays:
        await images.check_chain(overlay.backing, overlay.backing_format)
    for image in plan.offline_internal + [
            d.source or "" for d in plan.domain.disks if d.target in plan.internal_disks]:
        await images.check_chain(image, "qcow2")  # the only format with internal snapshots
        tags = images.internal_tags(await images.info(image))
        if plan.target not in tags:
            raise OperationInvalidError(f"cannot revert to snapshot '{plan.target}': image "
                                        f"'{image}' holds no internal snapshot of that name")


async def carry_out_revert(plan: RevertPlan, paths: RuntimePaths, running: RuntimeInfo | None,
                           memory: SaveImage | None, progress: ProgressCallback | None = None,
                           launch: Launcher = start_qemu) -> None:
    """Stop the guest, make the new overlays, apply internal snapshots, start QEMU and load
    the snapshot's state. The new QEMU is left paused: :func:`run_reverted` lets it run once
    the revert's metadata is stored (a running TCG guest takes the CPU that the metadata's
    syncs need: storing it took 13-24 ms once the guest ran, 2 ms before, measured here)."""
    if running is not None:
        await stop(paths, running)
    created: list[str] = []
    started: RuntimeInfo | None = None
    try:
        for overlay in plan.overlays:
            await images.create_overlay(overlay.path, overlay.format, overlay.backing,
                                        overlay.backing_format)
            created.append(overlay.path)
        for image in plan.offline_internal:
            await images.qemu_img("snapshot", "-a", plan.target, image)
        if not plan.start:
            return
        accel = choose_accel(plan.domain.type)
        started = await launch(plan.domain, paths, accel,
                                   incoming=plan.memory == "external", paused=True)
        async with await Monitor.connect(started.qmp) as monitor:
            if plan.memory == "external" and memory is not None:
                await load_image(monitor, Path(plan.memory_file or ""), memory, progress)
            elif plan.memory == "internal":
                tops = await monitor.block_tops()
                nodes = [tops[t] for t in plan.internal_disks]
                await monitor.load_internal(plan.target, nodes[0], nodes)
    except BaseException:
        if started is not None:
            with contextlib.suppress(QsnapError):
                await stop(paths, started)
        for path in created:
            await asyncio.to_thread(unlink_if_present, path)
        raise


async def run_reverted(plan: RevertPlan, paths: RuntimePaths) -> None:
    """The revert's last step: the guest :func:`carry_out_revert` started runs, unless the
    plan keeps it paused. Repeating it is harmless (a crashed revert's recovery does)."""
    if not (plan.start and plan.run):
        return
    info = read_runtime(paths)
    if info is None:
        raise OperationInvalidError("the reverted guest's QEMU is gone; it cannot be run")
    async with await Monitor.connect(info.qmp) as monitor:
        if await monitor.status() in ("paused", "prelaunch"):
            await monitor.resume()
