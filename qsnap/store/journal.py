"""Multi-file metadata changes that happen all at once or not at all.

A change that touches several files (a new current snapshot rewrites two snapshot files and the
marker; a delete re-parents children) is first written whole to ``journal.json`` in the domain
folder. That atomic write is the commit point. The files are then changed one by one and the
journal removed. After a crash, :func:`replay` (run under the domain lock before any read) finds
the journal and applies it again; every step is idempotent, so replaying twice is harmless.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from qsnap.errors import CorruptMetadataError
from qsnap.faults import crash_point
from qsnap.store.atomic import (
    atomic_write,
    atomic_write_many,
    fsync_dir,
    make_dirs,
    remove_durably,
)

JOURNAL_NAME = "journal.json"


class Batch:
    """File changes inside one folder: paths relative to it, written first, then moved
    (renamed, e.g. a snapshot's NVRAM copy when the snapshot is renamed), then removed."""

    def __init__(self) -> None:
        self.writes: dict[str, bytes] = {}
        self.moves: dict[str, str] = {}
        self.removals: list[str] = []

    def move(self, source: str, target: str) -> None:
        """Rename *source* to *target* (replacing it), if *source* exists when applied: a
        replay after the move finds the source gone and the target in place."""
        self.moves[_checked(source)] = _checked(target)

    def write(self, relative: str, data: bytes) -> None:
        self.writes[_checked(relative)] = data
        if relative in self.removals:
            self.removals.remove(relative)

    def remove(self, relative: str) -> None:
        self.writes.pop(relative, None)
        if relative not in self.removals:
            self.removals.append(_checked(relative))

    def __len__(self) -> int:
        return len(self.writes) + len(self.moves) + len(self.removals)

    def to_record(self) -> dict[str, object]:
        """As JSON-able data (metadata files are UTF-8 text)."""
        return {"writes": {k: v.decode("utf-8") for k, v in self.writes.items()},
                "moves": dict(self.moves), "removals": list(self.removals)}

    @classmethod
    def from_record(cls, record: object) -> Batch:
        """The batch :meth:`to_record` gave; ValueError naming the fault when *record* is
        not one (it comes from a file a crash or a person may have damaged)."""
        writes = record.get("writes") if isinstance(record, dict) else None
        moves = record.get("moves", {}) if isinstance(record, dict) else None
        removals = record.get("removals") if isinstance(record, dict) else None
        if not isinstance(writes, dict) or not isinstance(removals, list) or \
                not isinstance(moves, dict) or \
                not all(isinstance(v, str) for v in (*writes.values(), *moves.values())) or \
                not all(isinstance(r, str) for r in removals):
            raise ValueError("a metadata change needs 'writes' (file -> text), 'moves' (file "
                             "-> file) and 'removals' (a list of files)")
        batch = cls()
        for relative, data in writes.items():
            batch.write(relative, data.encode("utf-8"))
        for source, target in moves.items():
            batch.move(source, target)
        for relative in removals:
            batch.remove(relative)
        return batch


def _checked(relative: str) -> str:
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"journal path must stay inside its folder: {relative!r}")
    return relative


def _apply(folder: Path, batch: Batch) -> None:
    atomic_write_many({folder / relative: data for relative, data in batch.writes.items()},
                      temp_dir=folder)
    crash_point("journal: applied writes")
    for source, target in batch.moves.items():
        if (folder / source).exists():
            make_dirs((folder / target).parent)
            os.replace(folder / source, folder / target)
            fsync_dir((folder / target).parent)
            fsync_dir((folder / source).parent)
        crash_point(f"journal: applied move {source}")
    for relative in batch.removals:
        remove_durably(folder / relative)
        crash_point(f"journal: applied removal {relative}")


def commit(folder: Path, batch: Batch) -> None:
    """Apply *batch* to *folder* atomically (see the module docstring)."""
    if len(batch) == 0:
        return
    if len(batch) == 1:  # one file changes: its own atomic write or unlink is enough
        _apply(folder, batch)
        return
    atomic_write(folder / JOURNAL_NAME, json.dumps(batch.to_record()).encode("utf-8"))
    crash_point("journal: committed, nothing applied")
    _apply(folder, batch)
    remove_durably(folder / JOURNAL_NAME)


def apply_covered(folder: Path, batch: Batch) -> None:
    """Apply *batch* to *folder* without a journal of its own, durably by the return.

    Only for a change that a durable record written earlier already holds in full, and
    whose owner finishes it from that record after a crash (a create's intent record
    carries the metadata it stores, see :mod:`qsnap.engine.create`): a crash part-way
    leaves some files new and some old until then. This saves the journal's write and
    removal, three of the dozen syncs a snapshot's metadata took."""
    _apply(folder, batch)


def replay(folder: Path) -> bool:
    """Finish a change a crash interrupted; True if there was one."""
    path = folder / JOURNAL_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    try:
        batch = Batch.from_record(json.loads(text))
    except ValueError as exc:
        raise CorruptMetadataError(f"unfinished-change journal '{path}' is corrupt ({exc}); "
                                   "move it away to continue") from None
    _apply(folder, batch)
    remove_durably(path)
    return True
