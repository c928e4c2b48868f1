"""Finishing what a crash left half-done: the next command on a domain reads its intent
record (:mod:`qsnap.store.intent`) and hands it to the operation that wrote it, which rolls
forward or back, whichever is safe (each module's docstring says how). The record goes only
once that succeeded, so a failure here is met again by the next command."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from qsnap.engine.context import Context
from qsnap.errors import OperationIncompleteError, OperationInvalidError, QsnapError
from qsnap.store.intent import INTENT_NAME, clear_intent, read_intent

#: The module that settles each kind of record (the one that wrote it, walking the same steps
#: as its run; its ``settle``). Imported only when a record of its kind is found, so that a
#: command does not load every operation's code (each module's ``*Work.KIND`` is its key).
HANDLERS = {"create": "qsnap.engine.create", "revert": "qsnap.engine.revert",
            "save": "qsnap.engine.save", "restore": "qsnap.engine.restore",
            "delete": "qsnap.engine.delete", "blockcommit": "qsnap.engine.block_jobs",
            "blockpull": "qsnap.engine.block_jobs"}


async def finish_interrupted(ctx: Context) -> str | None:
    """Settle the operation a crash interrupted on the domain of *ctx*; a line saying what
    was done, or None when there was none, or when the operation is one still under way in
    QEMU (a block commit nobody waits for), whose record stays."""
    folder = ctx.folder
    record = await asyncio.to_thread(read_intent, folder.path)
    if record is None:
        return None
    module = HANDLERS.get(record["kind"])
    if module is None:
        raise OperationInvalidError(f"domain '{folder.name}': unknown interrupted operation "
                                    f"'{record['kind']}' in {folder.path}/intent.json")
    settle: Any = importlib.import_module(module).settle
    try:
        line: str | None = await settle(ctx, record)
    except (QsnapError, OSError, KeyError, TypeError, ValueError) as exc:  # a damaged record
        raise OperationIncompleteError(
            f"domain '{folder.name}': settling the interrupted {record['kind']} failed: "
            f"{exc}. The record stays in {folder.path / INTENT_NAME}: fix the cause and run "
            f"'qsnap recover {folder.name}', or move the record away by hand after checking "
            "the images it names") from None
    if line is None:
        return None
    await asyncio.to_thread(clear_intent, folder.path)
    return f"settled an interrupted {record['kind']}: {line}"


def still_under_way(ctx: Context) -> str | None:
    """A line for ``recover`` about a record that stays because QEMU still runs its job (a
    block commit or pull whose waiter was killed, or that nobody waits for): "nothing to
    recover" would hide it."""
    record = read_intent(ctx.folder.path)
    if record is None:
        return None
    module = HANDLERS.get(record["kind"])
    describe: Any = getattr(importlib.import_module(module), "under_way", None) \
        if module else None
    if describe is None:
        return None
    return f"domain '{ctx.domain}': {describe(record)}".replace("DOMAIN", ctx.domain)
