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
from pathlib import Path

from qsnap import images
from qsnap.engine.disk_snapshot import check_overlay_files
from qsnap.engine.guests import stop
from qsnap.engine.memory import load_image, read_image
from qsnap.errors import InvalidArgumentError, OperationInvalidError, QsnapError
from qsnap.launcher.accel import choose_accel
from qsnap.launcher.command import RuntimePaths
from qsnap.launcher.process import RuntimeInfo, start_qemu
from qsnap.model.save_image import SaveImage
from qsnap.monitor import Monitor
from qsnap.plan.revert import RevertPlan


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


async def carry_out_revert(plan: RevertPlan, paths: RuntimePaths, running: RuntimeInfo | None,
                           memory: SaveImage | None) -> None:
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
        started = await start_qemu(plan.domain, paths, accel,
                                   incoming=plan.memory == "external", paused=True)
        async with await Monitor.connect(started.qmp) as monitor:
            if plan.memory == "external" and memory is not None:
                await load_image(monitor, Path(plan.memory_file or ""), memory)
            elif plan.memory == "internal":
                tops = await monitor.block_tops()
                nodes = [tops[t] for t in plan.internal_disks]
                await monitor.load_internal(plan.target, nodes[0], nodes)
            if plan.run:
                await monitor.resume()
    except BaseException:
        if started is not None:
            with contextlib.suppress(QsnapError):
                await stop(paths, started)
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, path)
        raise
