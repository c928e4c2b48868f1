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
import math
import os
from pathlib import Path

from qsnap.procfs import same_process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any

JOB_NAME = "job.json"
ABORT_NAME = "job.abort"
DONE_NAME = "job.completed.json"


def post(folder: Path, job: dict[str, Any], *, name: str = JOB_NAME) -> None:
    """Replace the posted job (write and rename, no fsync: see the module docstring). The
    entry carries the poster's pid and start time (:func:`live`)."""
    path = folder / name
    temporary = folder / f".{name}.{os.getpid()}"
    temporary.unlink(missing_ok=True)  # one a killed process with this pid left
    try:
        # A new file, never one found there (nor what a symlink there names); private, as
        # every file of the state folder is (0600, whatever the umask).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(job))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written entry
        raise


#: Every entry's fields and their types; numbers must be finite ("elapsed": NaN, written by
#: hand, once made domjobinfo fail with an internal error).
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "pid": int, "pid_start": str, "type": str, "operation": str, "abortable": bool,
    "started": (int, float), "elapsed": (int, float)}
_OPTIONAL_NUMBERS = ("processed", "total", "remaining", "rate", "seconds_left")


def well_formed(job: object) -> bool:
    """Whether *job* is an entry as :class:`~qsnap.engine.jobs.JobWatch` posts it."""
    if not isinstance(job, dict):
        return False
    for key, kind in _FIELDS.items():
        value = job.get(key)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return False
    numbers = [job[k] for k in ("started", "elapsed")]
    for key in _OPTIONAL_NUMBERS:
        value = job.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            return False
        numbers.append(value)
    return job["pid"] > 0 and all(math.isfinite(n) for n in numbers)


def read(folder: Path, *, name: str = JOB_NAME) -> dict[str, Any] | None:
    """The entry posted in *folder*, or None: also for an entry that is not one qsnap
    writes (edited, or left by an older qsnap). Whether its process still runs is
    :func:`live`'s question."""
    try:
        job = json.loads((folder / name).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return job if well_formed(job) else None


def live(folder: Path) -> dict[str, Any] | None:
    """The job running on *folder*'s domain: the posted entry, if the process that posted it
    still runs. A pid alone is not enough (a stale entry's pid may belong to some other
    process by now, which showed a phantom job and made domjobabort wait a minute): it must
    be the same process, by its start time."""
    job = read(folder)
    return job if job is not None and same_process(job["pid"], job["pid_start"]) else None


def clear(folder: Path) -> None:
    for name in (JOB_NAME, ABORT_NAME):
        (folder / name).unlink(missing_ok=True)


def request_abort(folder: Path) -> None:
    os.close(os.open(folder / ABORT_NAME, os.O_WRONLY | os.O_CREAT, 0o600))


def abort_requested(folder: Path) -> bool:
    return (folder / ABORT_NAME).exists()
