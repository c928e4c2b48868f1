"""The intent records of save and restore, and how a crash part-way is settled.

A save pauses the guest, has QEMU write its state into a new image, and stops QEMU. Killed in
between, qsnap would leave the guest paused, or QEMU still writing an image that is never
finished. The image tells which: its final magic is set only once the whole stream is on disk.
Finished: roll forward (stop QEMU, as the save would have). Not finished: roll back (let QEMU's
migration end, remove the partial image, run the guest again if qsnap paused it).

A restore starts QEMU waiting for a stream and feeds it the image. Killed in between, a QEMU
is left half-loaded. If QEMU says the stream was loaded completely, roll forward (run the guest
if that was asked for, drop a managed save image); otherwise stop that QEMU: the image is
untouched, so the restore can simply be asked for again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from qsnap.engine.guests import stop
from qsnap.engine.memory import image_is_complete
from qsnap.launcher.command import RuntimePaths
from qsnap.launcher.process import RuntimeInfo
from qsnap.monitor import Monitor
from qsnap.store.folder import DomainFolder
from qsnap.store.intent import IntentRecord


@dataclass
class SaveWork(IntentRecord):
    """A save of the guest into ``image``; ``was_running``: whether qsnap pauses it."""

    image: str
    was_running: bool
    KIND: ClassVar[str] = "save"


@dataclass
class RestoreWork(IntentRecord):
    """A restore from ``image``; ``run``: whether the guest runs after it; ``managed``: the
    image is the domain's managed save, removed once the guest is restored from it."""

    image: str
    run: bool
    managed: bool = False
    KIND: ClassVar[str] = "restore"


async def settle_save(work: SaveWork, folder: DomainFolder, paths: RuntimePaths,
                      running: RuntimeInfo | None) -> str:
    """Finish or undo an interrupted save (see the module docstring); a line saying which."""
    name = f"domain '{folder.name}': the save into '{work.image}'"
    image = Path(work.image)
    complete = image_is_complete(image)  # qsnap sets the final magic, so QEMU cannot
    if running is not None:                # finish an image on its own
        async with await Monitor.connect(running.qmp) as monitor:
            await monitor.end_migration(cancel=not complete)
            if not complete:
                image.unlink(missing_ok=True)
                if work.was_running:
                    await monitor.resume_if_stopped()
                return f"{name} was undone: the image was incomplete and the guest runs on"
        await stop(paths, running)
        return f"{name} was finished: the image is complete, and the guest is stopped"
    if complete:
        return f"{name} had finished: the image is complete"
    image.unlink(missing_ok=True)
    return (f"{name} was undone: the image was incomplete, and the guest's QEMU had "
            "stopped as well")


async def settle_restore(work: RestoreWork, folder: DomainFolder, paths: RuntimePaths,
                         running: RuntimeInfo | None) -> str:
    """Finish or undo an interrupted restore (see the module docstring)."""
    name = f"domain '{folder.name}': the restore from '{work.image}'"
    if running is None:
        return f"{name} was undone: its QEMU is not running; the image is untouched"
    async with await Monitor.connect(running.qmp) as monitor:
        loaded = await monitor.migration_status() == "completed"
        if loaded and work.run and await monitor.status() == "paused":
            await monitor.resume()
    if not loaded:
        await stop(paths, running)
        return f"{name} was undone: the half-loaded QEMU was stopped; the image is untouched"
    if work.managed:
        Path(work.image).unlink(missing_ok=True)
    return f"{name} was finished"
