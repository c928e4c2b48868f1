"""Finishing what a crash left half-done: the next command on a domain reads its intent
record (:mod:`qsnap.store.intent`) and hands it to the operation that wrote it, which rolls
forward or back, whichever is safe (each module's docstring says how). The record goes only
once that succeeded, so a failure here is met again by the next command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from qsnap.engine import create_work, delete, revert_work, save_work
from qsnap.errors import OperationIncompleteError, OperationInvalidError, QsnapError
from qsnap.launcher.command import RuntimePaths
from qsnap.launcher.process import Launcher, RuntimeInfo
from qsnap.store.folder import DomainFolder
from qsnap.store.intent import INTENT_NAME, clear_intent, read_intent

Handler = Callable[[dict[str, Any], DomainFolder, RuntimePaths, RuntimeInfo | None, Launcher],
                   Awaitable[str]]


async def _create(record: dict[str, Any], folder: DomainFolder, paths: RuntimePaths,
                  running: RuntimeInfo | None, launch: Launcher) -> str:
    work = create_work.CreateWork.from_record(record)
    done = await create_work.settle_create(work, folder, paths, running)
    return (f"domain '{folder.name}': snapshot '{work.snapshot}', which a crash had "
            + ("interrupted once its images were in place, was stored" if done else
               "interrupted before it was complete, was undone; nothing of it is left"))


async def _revert(record: dict[str, Any], folder: DomainFolder, paths: RuntimePaths,
                  running: RuntimeInfo | None, launch: Launcher) -> str:
    return await revert_work.finish_revert(revert_work.RevertWork.from_record(record),
                                           folder, paths, running, launch)


async def _save(record: dict[str, Any], folder: DomainFolder, paths: RuntimePaths,
                running: RuntimeInfo | None, launch: Launcher) -> str:
    work = save_work.SaveWork.from_record(record)
    return await save_work.settle_save(work, folder, paths, running)


async def _restore(record: dict[str, Any], folder: DomainFolder, paths: RuntimePaths,
                   running: RuntimeInfo | None, launch: Launcher) -> str:
    work = save_work.RestoreWork.from_record(record)
    return await save_work.settle_restore(work, folder, paths, running)


async def _delete(record: dict[str, Any], folder: DomainFolder, paths: RuntimePaths,
                  running: RuntimeInfo | None, launch: Launcher) -> str:
    return await delete.finish_delete(record, folder, running)


HANDLERS: dict[str, Handler] = {
    create_work.CreateWork.KIND: _create,
    revert_work.RevertWork.KIND: _revert,
    save_work.SaveWork.KIND: _save,
    save_work.RestoreWork.KIND: _restore,
    delete.DeleteWork.KIND: _delete,
}


async def finish_interrupted(folder: DomainFolder, paths: RuntimePaths,
                             running: RuntimeInfo | None, launch: Launcher) -> str | None:
    """Settle the operation a crash interrupted on *folder*; a line saying what was done,
    or None when there was none."""
    record = await asyncio.to_thread(read_intent, folder.path)
    if record is None:
        return None
    handler = HANDLERS.get(record["kind"])
    if handler is None:
        raise OperationInvalidError(f"domain '{folder.name}': unknown interrupted operation "
                                    f"'{record['kind']}' in {folder.path}/intent.json")
    try:
        line = await handler(record, folder, paths, running, launch)
    except (QsnapError, OSError, KeyError, TypeError, ValueError) as exc:  # a damaged record
        raise OperationIncompleteError(
            f"domain '{folder.name}': settling the interrupted {record['kind']} failed: "
            f"{exc}. The record stays in {folder.path / INTENT_NAME}: fix the cause and run "
            f"'qsnap recover {folder.name}', or move the record away by hand after checking "
            "the images it names") from None
    await asyncio.to_thread(clear_intent, folder.path)
    return f"settled an interrupted {record['kind']}: {line}"
