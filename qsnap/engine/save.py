"""``save`` (and ``managedsave``): the guest's memory and device state into a new image in
libvirt's format, then its QEMU stops.

Steps: record the intent; pause the guest; QEMU writes the image (its final magic is set only
once the whole stream is on disk); then :func:`_forward` stops QEMU. Killed in between, the
image tells which way is safe: complete, :func:`_forward` (stop QEMU, as the save would have);
not complete, :func:`_back` (let QEMU's migration end, remove the partial image, run the guest
again if qsnap paused it). A save that fails while running takes :func:`_back` as well, so
the run and the recovery share their tail and their undo.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from qsnap.engine.context import Context
from qsnap.engine.guests import stop
from qsnap.engine.kinds import OperationKind
from qsnap.engine.memory import image_is_complete, write_image
from qsnap.errors import (
    AlreadyExistsError,
    DomainNotRunningError,
    MonitorClosedError,
    OperationIncompleteError,
    QsnapError,
)
from qsnap.faults import crash_point
from qsnap.model.names import check_new_file_path
from qsnap.monitor import Monitor
from qsnap.plan.save import (
    check_migratable,
    choose_image_format,
    device_blockers,
    image_definition,
)
from qsnap.store.intent import IntentRecord, clear_intent, write_intent


@dataclass
class SaveWork(IntentRecord):
    """A save of the guest into ``image``; ``was_running``: whether qsnap pauses it."""

    image: str
    was_running: bool
    KIND: ClassVar[str] = OperationKind.SAVE


async def run(ctx: Context, target: Path, *, running: bool | None,
              xml: str | None, image_format: str | None = None,
              channels: int | None = None) -> None:
    """Save the guest into *target*; it restores running if it was, unless *running* says
    otherwise. *image_format* and *channels*: see :func:`choose_image_format`. On failure
    the guest goes on as it was and no file is left."""
    info = ctx.running
    if info is None:
        raise DomainNotRunningError(f"domain '{ctx.domain}' is not running", domain=ctx.domain)
    definition = ctx.folder.definition
    domain_xml = image_definition(definition, xml)
    check_new_file_path("the save image", str(target))
    if os.path.lexists(target):
        raise AlreadyExistsError(f"refusing to overwrite existing file '{target}'",
                                 domain=ctx.domain, path=str(target))
    async with await Monitor.connect(info.qmp) as monitor:
        check_migratable(ctx.domain, await monitor.migration_blockers()
                         + device_blockers(definition), "save the memory")
        chosen = choose_image_format(image_format, channels, await monitor.stream_support())
        work = SaveWork(str(target), await monitor.status() == "running")
        ctx.checkpoint()
        await asyncio.to_thread(write_intent, ctx.folder.path, work.record())
        crash_point("save: intent recorded")
        try:
            if work.was_running:
                await monitor.pause()
            await write_image(monitor, target, domain_xml,
                              work.was_running if running is None else running,
                              progress=ctx.progress, ram=definition.memory_bytes,
                              image_format=chosen, channels=channels,
                              before_seal=ctx.checkpoint)
        except BaseException as exc:
            try:
                await _back(work, monitor)
            except MonitorClosedError:
                pass  # QEMU is gone: nothing is paused, and the image was removed
            except QsnapError as cleanup:
                # The guest stays paused and QEMU may still hold the stream: the record
                # stays, and the next command settles it (settle, below).
                raise OperationIncompleteError(
                    f"{exc}; the guest could not be resumed ({cleanup}), so the save stays "
                    f"recorded: the next command on domain '{ctx.domain}' (or 'qsnap "
                    "recover') settles it once QEMU answers again", domain=ctx.domain) \
                    from exc
            await asyncio.to_thread(clear_intent, ctx.folder.path)
            raise
    crash_point("save: image written")
    await _forward(ctx)
    await asyncio.to_thread(clear_intent, ctx.folder.path)


async def _forward(ctx: Context) -> None:
    """The image is complete: the guest's QEMU stops."""
    if ctx.running is not None:
        await stop(ctx.paths, ctx.running)


async def _back(work: SaveWork, monitor: Monitor) -> None:
    """The image is not complete: QEMU's migration ends, the partial image goes, and the
    guest runs again if qsnap paused it."""
    await monitor.end_migration(cancel=True)
    Path(work.image).unlink(missing_ok=True)
    if work.was_running:
        await monitor.resume_if_stopped()


async def settle(ctx: Context, record: dict[str, Any]) -> str:
    """Finish or undo an interrupted save (see the module docstring); a line saying which."""
    work = SaveWork.from_record(record)
    name = f"domain '{ctx.domain}': the save into '{work.image}'"
    complete = image_is_complete(Path(work.image))  # qsnap sets the final magic, so QEMU
    if ctx.running is not None:                       # cannot finish an image on its own
        if not complete:
            async with await Monitor.connect(ctx.running.qmp) as monitor:
                await _back(work, monitor)
            return f"{name} was undone: the image was incomplete and the guest runs on"
        async with await Monitor.connect(ctx.running.qmp) as monitor:
            await monitor.end_migration(cancel=False)
        await _forward(ctx)
        return f"{name} was finished: the image is complete, and the guest is stopped"
    if complete:
        return f"{name} had finished: the image is complete"
    Path(work.image).unlink(missing_ok=True)
    return (f"{name} was undone: the image was incomplete, and the guest's QEMU had "
            "stopped as well")
