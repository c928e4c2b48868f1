"""A cache of what listings need of each snapshot, so that listing 10,000 snapshots does not
parse 10,000 XML files (each carries a whole domain definition).

``domains/NAME/summaries.json`` maps each snapshot's name to the identity of its file when it
was read (inode, size, modification time in ns) and its :class:`~qsnap.model.tree.SnapshotSummary`.
A listing stats every snapshot file and re-reads only those whose identity changed. Snapshot
files are only ever replaced by rename (:mod:`qsnap.store.atomic`), which gives them a new inode,
so a changed file is always noticed. ``definition.checked`` likewise holds the identity of the
domain definition that last parsed. The cache is never the authority: it is written without
fsync, a missing or unreadable one is simply rebuilt, and a crash can at worst leave it stale,
which the identity check catches.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from qsnap.store.atomic import TEMP_PREFIX, temp_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any

    from qsnap.model.tree import SnapshotSummary

CACHE = "summaries.json"
_VERSION = 1


def load_summaries(folder: Path, snapshots: Path, suffix: str,
                   summarize: Callable[[str], SnapshotSummary]) -> list[SnapshotSummary]:
    """The summaries of every snapshot file in *snapshots* (named NAME + *suffix*); those the
    cache in *folder* does not vouch for come from *summarize*, and the cache is updated."""
    from qsnap.model.tree import SnapshotSummary

    cached = _read(folder / CACHE)
    fresh: dict[str, list[Any]] = {}
    result = []
    try:
        entries = list(os.scandir(snapshots))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.name.endswith(suffix) or entry.name.startswith(TEMP_PREFIX):
            continue
        name = entry.name[:-len(suffix)]
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue
        identity = [stat.st_ino, stat.st_size, stat.st_mtime_ns]
        hit = cached.get(name)
        if isinstance(hit, list) and len(hit) == 7 and hit[:3] == identity:
            summary = SnapshotSummary(name, hit[3], hit[4], hit[5], hit[6])
        else:
            summary = summarize(name)
        fresh[name] = [*identity, summary.parent, summary.creation_time, summary.state,
                       summary.external]
        result.append(summary)
    if fresh != cached:
        _write(folder / CACHE, fresh)
    return result


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return {}
    entries = data.get("snapshots")
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict[str, list[Any]]) -> None:
    _replace(path, json.dumps({"version": _VERSION, "snapshots": entries},
                              separators=(",", ":")))


#: The identity of the domain definition that last parsed without error.
CHECKED_DEFINITION = "definition.checked"


def file_identity(path: Path) -> str:
    """Inode, size and modification time of *path*: files here are only ever replaced by
    rename, so another file, or one edited by hand, has another identity."""
    stat = path.stat()
    return f"{stat.st_ino} {stat.st_size} {stat.st_mtime_ns}"


def checked_definition(folder: Path) -> str | None:
    """The identity (:func:`file_identity`) of the domain definition in *folder* that last
    parsed without error, so that commands which need nothing from it (``snapshot-current``,
    listings) still refuse a definition edited into garbage without parsing it each time."""
    try:
        return (folder / CHECKED_DEFINITION).read_text()
    except (OSError, ValueError):
        return None


def note_checked_definition(folder: Path, identity: str) -> None:
    """Note that the definition with *identity* parsed without error."""
    _replace(folder / CHECKED_DEFINITION, identity)


def _replace(path: Path, data: str) -> None:
    """Replace a cache file by rename (no fsync: see the module docstring); a cache that
    cannot be written (a read-only state directory) is simply not kept."""
    temp = temp_path(path)
    try:
        # 0600 like every other file in the state folder: it lists snapshot names.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode())
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
