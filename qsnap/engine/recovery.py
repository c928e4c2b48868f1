"""Finishing what a crash left half-done: the next command on a domain reads its intent
record (:mod:`qsnap.store.intent`) and hands it to the operation that wrote it, which rolls
forward or back, whichever is safe (each module's docstring says how). The record goes only
once that succeeded, so a failure here is met again by the next command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from qsnap.engine.context import Context
from qsnap.engine.kinds import OperationKind
from qsnap.errors import OperationIncompleteError, OperationInvalidError, QsnapError
from qsnap.store.intent import INTENT_NAME, clear_intent, lasts, read_intent


class Settle(Protocol):
    """An operation's ``settle``: carry its record on; a line saying what was done, or None
    while QEMU still runs its job (the record then stays)."""

    def __call__(self, ctx: Context, record: dict[str, Any]) -> Awaitable[str | None]: ...


def settler(kind: OperationKind) -> Settle:
    """The ``settle`` of the module that writes records of *kind*, walking the same steps
    as its run. Imported only when a record of its kind is found, so that a command does
    not load every operation's code."""
    match kind:
        case OperationKind.CREATE:
            from qsnap.engine import create
            return create.settle
        case OperationKind.REVERT:
            from qsnap.engine import revert
            return revert.settle
        case OperationKind.SAVE:
            from qsnap.engine import save
            return save.settle
        case OperationKind.RESTORE:
            from qsnap.engine import restore
            return restore.settle
        case OperationKind.DELETE:
            from qsnap.engine import delete
            return delete.settle
        case OperationKind.BLOCKCOMMIT | OperationKind.BLOCKPULL:
            from qsnap.engine import block_jobs
            return block_jobs.settle


async def finish_interrupted(ctx: Context) -> str | None:
    """Settle the operation a crash interrupted on the domain of *ctx*; a line saying what
    was done, or None when there was none, or when the operation is one still under way in
    QEMU (a block commit nobody waits for), whose record stays."""
    folder = ctx.folder
    record = await asyncio.to_thread(read_intent, folder.path)
    if record is None:
        return None
    try:
        settle = settler(OperationKind(record["kind"]))
    except ValueError:
        raise OperationInvalidError(f"domain '{folder.name}': unknown interrupted operation "
                                    f"'{record['kind']}' in {folder.path}/intent.json") from None
    try:
        line = await settle(ctx, record)
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
    if record is None or not lasts(record):
        return None
    from qsnap.engine.block_jobs import under_way

    return f"domain '{ctx.domain}': {under_way(record)}".replace("DOMAIN", ctx.domain)
