"""Carrying out a disk-snapshot plan: one QMP transaction for a running guest, qemu-img for a
stopped one. Whatever fails, files this step created are removed and nothing is half-switched."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from qsnap import images
from qsnap.errors import InvalidArgumentError, OperationInvalidError, QsnapError
from qsnap.logs import logger
from qsnap.monitor import BlockDevice, Monitor, OverlaySwitch
from qsnap.monitor.agent import GuestAgent
from qsnap.plan.disk_snapshot import (
    DiskSnapshotPlan,
    Overlay,
    check_overlay_targets,
)
from qsnap.store.atomic import unlink_if_present

log = logger("qsnap")


async def take_disk_snapshot(plan: DiskSnapshotPlan, monitor: Monitor | None,
                             agent: str | None) -> None:
    """Make the images of *plan* exist: overlays switched in (running: *monitor* is connected
    to its QEMU) or created (stopped), or internal snapshots in every qcow2 image (stopped).
    The caller has checked the files (:func:`qsnap.engine.create.check_new_files`)
    before recording its intent.

    With *agent* (``--quiesce``), guest file systems are frozen through the guest agent
    just before the transaction and thawed right after, whatever happened. With a
    ``manual`` disk the guest is paused first (QEMU flushes every image as it stops) and
    left paused; if the switch fails, it runs again."""
    paused_here = False
    if plan.leave_paused and monitor is not None and await monitor.status() == "running":
        await monitor.pause()
        paused_here = True
    try:
        await _take(plan, monitor, agent)
    except BaseException:
        if paused_here and monitor is not None:
            with contextlib.suppress(QsnapError):
                await monitor.resume()
        raise


async def _take(plan: DiskSnapshotPlan, monitor: Monitor | None, agent: str | None) -> None:
    if plan.external and monitor is not None:
        await switch_overlays(monitor, plan.overlays, around=lambda: _frozen(agent))
    elif plan.external:
        await _create_overlays_offline(plan)
    else:
        await _internal_snapshots_offline(plan)


async def switch_overlays(
        monitor: Monitor, overlays: list[Overlay], *,
        around: Callable[[], AbstractAsyncContextManager[object]] = contextlib.nullcontext,
        devices: dict[str, BlockDevice] | None = None
) -> None:
    """One ``transaction`` that puts every overlay on top of its disk; if QEMU refuses any, the
    overlay files it had already created are removed and no disk is switched. The transaction
    alone runs inside *around* (a guest file-system freeze), after every check.

    *devices* are the block devices as :meth:`Monitor.disks` gave them earlier on
    this same connection, if the caller has them. QEMU's monitor serves one client at a time,
    so nobody else can have changed them since, and not asking again saves a round trip
    inside the guest's pause (about 0.5 ms of a background snapshot's 10)."""
    if devices is None:
        devices = await monitor.disks()
    for overlay in overlays:
        if overlay.target not in devices:
            raise OperationInvalidError(
                f"the running QEMU has no disk '{overlay.target}': it does not match "
                "the domain definition")
    check_tops(devices, {o.target: o.backing for o in overlays})
    tops = {target: device.node for target, device in devices.items()}
    for overlay in overlays:
        if overlay.reuse:
            await _check_reused_overlay(overlay)
    new_nodes = {o.target: f"qs-{o.target}-{secrets.token_hex(4)}" for o in overlays}
    existed = {o.path for o in overlays if os.path.lexists(o.path)}
    try:
        for overlay in overlays:
            if not overlay.reuse and overlay.path not in existed:
                images.reserve_private_file(overlay.path)  # QEMU keeps its mode: 0600
        async with around():
            await monitor.switch_to_overlays([
                OverlaySwitch(tops[o.target], o.path, new_nodes[o.target], o.format, o.reuse)
                for o in overlays])
    except BaseException:
        for overlay in overlays:
            if not overlay.reuse and overlay.path not in existed:
                unlink_if_present(overlay.path)
        raise


def check_tops(devices: dict[str, BlockDevice], expected: dict[str, str]) -> None:
    """Each disk in *expected* (target → the image the definition names) writes to that image
    in QEMU (*devices* as :meth:`Monitor.disks` gives them). If they ever differ, a
    snapshot would record images that do not hold its state: refuse, naming both, rather than
    store metadata that lies."""
    for target, image in expected.items():
        device = devices.get(target)
        writes_to = device.writes_to if device is not None else ""
        if not writes_to or writes_to.startswith("json:") or not image:
            continue  # QEMU describes it by options, not by one file: nothing to compare
        if os.path.realpath(writes_to) != os.path.realpath(image):
            raise OperationInvalidError(
                f"the running QEMU's disk '{target}' writes to '{writes_to}', but the domain "
                f"definition names '{image}'; refusing to snapshot from a definition that "
                "does not match the guest")


def check_overlay_files(overlays: list[Overlay], disk_images: set[str]) -> None:
    """Gather what the overlay checks need from the file system, then apply them.
    *disk_images* are the images in use, which no overlay may be."""
    paths = [o.path for o in overlays]
    folders = {os.path.dirname(p) for p in paths}
    check_overlay_targets(
        overlays,
        nonempty={p for p in paths if os.path.isfile(p) and os.path.getsize(p) > 0},
        existing={p for p in paths if os.path.exists(p)},
        unwritable_dirs={f for f in folders if not (os.path.isdir(f) and os.access(f, os.W_OK))},
        disk_images=disk_images,
        links={p for p in paths if os.path.islink(p)})


async def _check_reused_overlay(overlay: Overlay) -> None:
    """--reuse-external: the file must be a valid image whose backing is the disk's image."""
    details = await images.facts(overlay.path)
    backing = details.backing
    if details.format != overlay.format:
        raise InvalidArgumentError(f"existing overlay '{overlay.path}' for disk {overlay.target} "
                                   f"is {details.format}, not {overlay.format}",
                                   path=overlay.path)
    if backing is not None and os.path.realpath(str(backing)) != \
            os.path.realpath(overlay.backing):
        raise InvalidArgumentError(f"existing overlay '{overlay.path}' for disk {overlay.target} "
                                   f"has backing file '{backing}', not '{overlay.backing}'",
                                   path=overlay.path)


async def _create_overlays_offline(plan: DiskSnapshotPlan) -> None:
    """qemu-img overlays for a stopped guest; on failure the ones made so far are removed."""
    created: list[str] = []
    try:
        for overlay in plan.overlays:
            if overlay.reuse:
                await _check_reused_overlay(overlay)
                continue
            await images.create_overlay(overlay.path, overlay.format, overlay.backing,
                                        overlay.backing_format)
            created.append(overlay.path)
    except BaseException:
        for path in created:
            unlink_if_present(path)
        raise


async def _internal_snapshots_offline(plan: DiskSnapshotPlan) -> None:
    """qemu-img snapshot -c on every image; on failure the ones made so far are deleted."""
    name = plan.snapshot.name or ""
    done: list[str] = []
    try:
        for image in plan.internal_images:
            await images.snapshot_create(image, name)
            done.append(image)
    except BaseException:
        for image in done:
            with contextlib.suppress(QsnapError):
                await images.snapshot_delete(image, name)
        raise


@contextlib.asynccontextmanager
async def _frozen(agent_path: str | None) -> AsyncIterator[None]:
    """Guest file systems frozen through the guest agent for the block (no-op without one)."""
    if agent_path is None:
        yield
        return
    async with await GuestAgent.connect(agent_path) as agent:
        log.debug("guest agent froze %s file systems", await agent.freeze())
        try:
            yield
        finally:
            await agent.thaw()
