"""The job board: what a long operation on a domain is doing, for other processes to read
(virsh domjobinfo) and to stop (domjobabort).

The process that runs the operation holds the domain's lock, and often QEMU's one QMP
connection too, so another process can ask neither. Instead the operation posts its progress
in ``job.json`` in the domain's folder a few times a second, and looks for ``job.abort``
there as often. The files are not made durable: a crash makes them stale, and a job whose
process is gone is no job (its pid says so); the intent record, not this board, is what
recovery reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any

JOB_NAME = "job.json"
ABORT_NAME = "job.abort"
DONE_NAME = "job.completed.json"


def post(folder: Path, job: dict[str, Any], *, name: str = JOB_NAME) -> None:
    """Replace the posted job (write and rename, no fsync: see the module docstring)."""
    path = folder / name
    temporary = folder / f".{name}.{os.getpid()}"
    try:
        # Private, as every file of the state folder is (0600, whatever the umask).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(job))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written entry
        raise


def read(folder: Path, *, name: str = JOB_NAME) -> dict[str, Any] | None:
    """The entry posted in *folder*, or None. Whether its process still runs is the
    reader's question (its ``pid``)."""
    try:
        job = json.loads((folder / name).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(job, dict):
        return None
    return job


def clear(folder: Path) -> None:
    for name in (JOB_NAME, ABORT_NAME):
        (folder / name).unlink(missing_ok=True)


def request_abort(folder: Path) -> None:
    os.close(os.open(folder / ABORT_NAME, os.O_WRONLY | os.O_CREAT, 0o600))


def abort_requested(folder: Path) -> bool:
    return (folder / ABORT_NAME).exists()
