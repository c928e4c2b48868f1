"""``restore`` (and ``start`` from a managed save): a new QEMU waits for a saved state and is
fed the image.

Steps: record the intent; start QEMU with ``-incoming defer``; load the stream; then
:func:`_forward` (run the guest if asked, drop a managed save image). Killed in between, a
QEMU is left half-loaded. If QEMU says the stream was loaded completely, :func:`_forward`;
otherwise :func:`_back` stops that QEMU: the image is untouched, so the restore can simply be
asked for again. A restore that fails while running takes :func:`_back` too.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qsnap.engine.context import Context
from qsnap.engine.guests import stop
from qsnap.engine.kinds import OperationKind
from qsnap.engine.memory import check_whole, load_failure, load_image
from qsnap.errors import DomainRunningError, MonitorClosedError
from qsnap.faults import crash_point
from qsnap.launcher.accel import choose_accel
from qsnap.launcher.runtime import RuntimeInfo
from qsnap.model.domain import DomainDef, rewound
from qsnap.model.save_image import SaveImage
from qsnap.monitor import Monitor
from qsnap.plan.external_delete import frozen_images
from qsnap.plan.save import check_resumable
from qsnap.store.folder import DomainFolder
from qsnap.store.intent import IntentRecord, clear_intent, write_intent


@dataclass
class RestoreWork(IntentRecord):
    """A restore from ``image``; ``run``: whether the guest runs after it; ``managed``: the
    image is the domain's managed save, removed once the guest is restored from it."""

    image: str
    run: bool
    managed: bool = False
    KIND: ClassVar[str] = OperationKind.RESTORE


async def run(ctx: Context, domain: DomainDef, source: Path, image: SaveImage,
              running: bool | None, *, managed: bool = False,
              channels: int | None = None) -> RuntimeInfo:
    """Start *domain* from *image* (read from *source*); its QEMU is stopped again if
    loading fails: a guest is never left half-restored."""
    if ctx.running is not None:
        raise DomainRunningError(f"domain '{domain.name}' is already running",
                                 domain=domain.name)
    check_resumable(domain, str(source), await asyncio.to_thread(_frozen_images, ctx.folder),
                    managed=managed)
    ctx.launch.check(domain)
    await asyncio.to_thread(check_whole, source, image)
    work = RestoreWork(str(source), image.was_running if running is None else running, managed)
    await asyncio.to_thread(write_intent, ctx.folder.path, work.record())
    crash_point("restore: intent recorded")
    try:
        info = await ctx.launch(rewound(domain, str(uuid.uuid4())), ctx.paths,
                                choose_accel(domain.type), incoming=True)
    except BaseException:
        await asyncio.to_thread(clear_intent, ctx.folder.path)
        raise
    ctx.running = info
    crash_point("restore: QEMU started")
    try:
        async with await Monitor.connect(info.qmp) as monitor:
            try:
                await load_image(monitor, source, image, ctx.progress, channels)
            except MonitorClosedError:
                raise load_failure(f"restoring from '{source}'", source, image,
                                   aborted=ctx.abort_asked is not None and ctx.abort_asked(),
                                   domain=domain.name) from None
            crash_point("restore: state loaded")
            await _forward(work, monitor)
    except BaseException:
        await _back(ctx)
        await asyncio.to_thread(clear_intent, ctx.folder.path)
        raise
    crash_point("restore: guest resumed")
    _drop_managed(work)
    await asyncio.to_thread(clear_intent, ctx.folder.path)
    return info


def _frozen_images(folder: DomainFolder) -> dict[str, tuple[str, str]]:
    """The images the domain's external snapshots froze (only those snapshots are read)."""
    external = [s.name for s in folder.load_tree() if s.external]
    return frozen_images({name: folder.read_snapshot(name) for name in external})


async def _forward(work: RestoreWork, monitor: Monitor) -> None:
    """The whole stream is loaded: the guest runs, if that was asked for."""
    if work.run and await monitor.status() in ("paused", "prelaunch"):
        await monitor.resume()


def _drop_managed(work: RestoreWork) -> None:
    if work.managed:
        Path(work.image).unlink(missing_ok=True)


async def _back(ctx: Context) -> None:
    """The stream was not (wholly) loaded: the half-loaded QEMU stops."""
    if ctx.running is not None:
        await stop(ctx.paths, ctx.running)


async def settle(ctx: Context, record: dict[str, Any]) -> str:
    """Finish or undo an interrupted restore (see the module docstring)."""
    work = RestoreWork.from_record(record)
    name = f"domain '{ctx.domain}': the restore from '{work.image}'"
    if ctx.running is None:
        return f"{name} was undone: its QEMU is not running; the image is untouched"
    async with await Monitor.connect(ctx.running.qmp) as monitor:
        loaded = await monitor.migration_status() == "completed"
        if loaded:
            await _forward(work, monitor)
    if not loaded:
        await _back(ctx)
        return f"{name} was undone: the half-loaded QEMU was stopped; the image is untouched"
    _drop_managed(work)
    return f"{name} was finished"
