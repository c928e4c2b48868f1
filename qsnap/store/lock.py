"""One lock per domain, so qsnap processes on the same domain serialise and others do not wait.

The lock is ``flock`` on ``locks/<domain>.lock`` in the state directory. Lock files are never
deleted (deleting one while another process waits on it would let two holders in), and live
outside the domain folder so undefine can remove that folder while holding the lock. The kernel
drops an ``flock`` when its holder dies, so a killed qsnap never leaves a stale lock. flock locks
belong to an open file, so two tasks in one process also exclude each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from qsnap.errors import DomainBusyError
from qsnap.timeouts import call_deadline, call_timeout, current_operation

DEFAULT_TIMEOUT = 300.0
#: The lock file's content: the holder's pid and operation, padded to this many bytes.
HOLDER = 64


def lock_timeout() -> float:
    """Seconds to wait for a busy domain: the call's ``timeout=``, else
    ``$QSNAP_LOCK_TIMEOUT`` or 300."""
    bound = call_timeout()
    if bound is not None:
        return bound
    value = os.environ.get("QSNAP_LOCK_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


class DomainLock:
    """An exclusive lock held for the duration of a ``with`` block."""

    def __init__(self, path: Path, domain: str, timeout: float | None = None) -> None:
        self.path = path
        self.domain = domain
        self.timeout = lock_timeout() if timeout is None else timeout
        self._fd: int | None = None

    def _deadline(self) -> float:
        """Now plus the timeout, but never past the call's own deadline."""
        deadline = time.monotonic() + self.timeout
        bound = call_deadline()
        return deadline if bound is None else min(deadline, bound)

    @staticmethod
    def _pause(delay: float, deadline: float) -> float:
        """How long to sleep before the next try: backing off, but waking at the deadline
        (a wait of 0.1 s past it made timeout=0.2 take 0.3 s and more)."""
        return max(0.0, min(delay, deadline - time.monotonic()))

    def acquire(self) -> None:
        """Wait for the lock in this thread (for callers off the event loop)."""
        fd, deadline, delay = self._open(), self._deadline(), 0.005
        try:
            while not self._try(fd, deadline):
                time.sleep(self._pause(delay, deadline))
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._abandon(fd)
            raise

    async def acquire_async(self) -> None:
        """Wait for the lock without holding a thread: many tasks may wait on one domain
        while its holder still needs worker threads for its own file work. A cancelled wait
        closes its file descriptor (each wait opens one)."""
        import asyncio  # here: the synchronous read path (qsnap list) runs without asyncio

        fd, deadline, delay = self._open(), self._deadline(), 0.005
        try:
            while not self._try(fd, deadline):
                await asyncio.sleep(self._pause(delay, deadline))
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._abandon(fd)
            raise

    def _abandon(self, fd: int) -> None:
        """Close *fd* of a wait that ended without the lock (or was cancelled just after it
        took it: closing the descriptor drops the flock too)."""
        if self._fd == fd:
            self._fd = None
        with contextlib.suppress(OSError):
            os.close(fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _try(self, fd: int, deadline: float) -> bool:
        """Take the lock if it is free; False if it is busy; an error after the deadline."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() < deadline:
                return False
            raise self._busy(fd) from None
        # Always the same 64 bytes, so no truncate is needed: on ext4 a truncate of a file
        # with content costs about 0.3 ms, a tenth of a disk-only snapshot's own work.
        holder = f"{os.getpid()} {current_operation() or '-'}"[:HOLDER - 1]
        os.pwrite(fd, f"{holder:<{HOLDER - 1}}\n".encode(), 0)
        self._fd = fd
        return True

    def _busy(self, fd: int) -> DomainBusyError:
        """The error for a lock still held at the deadline, naming its holder."""
        words = os.pread(fd, HOLDER, 0).decode(errors="replace").split()
        pid = int(words[0]) if words and words[0].isdigit() else None
        operation = words[1] if len(words) > 1 and words[1] != "-" else None
        doing = f" ({operation})" if operation else ""
        if pid == os.getpid():
            who = f"another call in this process{doing}"
        elif pid is not None:
            who = f"qsnap process {pid}{doing}"
        else:
            who = "another qsnap call"
        waited = f"{self.timeout:g}"
        return DomainBusyError(
            f"domain '{self.domain}' is busy: {who} has held it for over {waited} s",
            domain=self.domain, path=str(self.path), holder_pid=pid, operation=operation)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DomainLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
