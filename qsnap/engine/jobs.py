"""Job control from another process: a long operation posts its progress on the domain's job
board (:mod:`qsnap.store.job_board`) and honours an abort request posted there.

An abort does not tear anything down itself: it asks QEMU to stop the work the operation is
waiting on (``migrate_cancel`` for a save or a memory snapshot; ``job-cancel`` for a block
job; ``quit`` for a QEMU still loading a restore), so the operation sees its QEMU work fail
and takes its ordinary failure path: the guest runs on as before, nothing is lost, the
intent record is cleared. The error it raises then says that the job was aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from qsnap.errors import OperationAbortedError, QsnapError
from qsnap.launcher.runtime import RuntimePaths, read_runtime
from qsnap.logs import logger
from qsnap.monitor import Monitor
from qsnap.monitor.jobs import JobPurpose, JobStatus
from qsnap.procfs import start_time
from qsnap.progress import Progress, ProgressCallback
from qsnap.store import job_board

log = logger("qsnap")

#: How often the board is refreshed and the abort request looked for (seconds).
POLL = 0.2


class JobWatch:
    """One operation's entry on the board; the watch itself is the progress callback to hand
    the operation (it forwards every report to *progress*), and tells it whether an abort
    was asked for (:meth:`abort_asked`)."""

    def __init__(self, folder: Path, paths: RuntimePaths, operation: str,
                 progress: ProgressCallback | None, abortable: bool,
                 details: dict[str, object] | None = None) -> None:
        self.folder = folder
        self.paths = paths
        self.operation = operation
        self.progress = progress
        self.abortable = abortable
        #: What else readers of the board need (a block job's disk and virsh's label for it).
        self.details = details or {}
        self.started = time.time()
        #: Who posts: this process, by pid and start time (job_board.live).
        self.poster = {"pid": os.getpid(), "pid_start": start_time(os.getpid()) or "?"}
        self.last: Progress | None = None
        self.aborted = False
        self._stop = asyncio.Event()

    def __call__(self, progress: Progress) -> None:
        """The progress callback handed to the operation."""
        self.last = progress
        if self.progress is not None:
            self.progress(progress)

    def abort_asked(self) -> bool:
        """Whether an abort was posted for this job (looked up now, not at the next poll)."""
        if self.abortable and not self.aborted and job_board.abort_requested(self.folder):
            self.aborted = True
        return self.aborted

    def _entry(self, kind: str) -> dict[str, object]:
        entry: dict[str, object] = {**self.poster, "type": kind,
                                    "operation": self.operation, "abortable": self.abortable,
                                    "started": self.started,
                                    "elapsed": time.time() - self.started, **self.details}
        if self.last is not None:
            entry.update(processed=self.last.done, total=self.last.total,
                         remaining=max(self.last.total - self.last.done, 0),
                         rate=self.last.rate, seconds_left=self.last.remaining)
        return entry

    def _refresh(self) -> bool:
        """Post the entry; whether an abort is asked for (in a worker thread: file work)."""
        with contextlib.suppress(OSError):  # the board is a courtesy (a full disk...)
            job_board.post(self.folder, self._entry("unbounded"))
        return job_board.abort_requested(self.folder)

    async def _watch(self) -> None:
        """Post the entry every POLL seconds. Once an abort is asked for, QEMU's work is
        cancelled at every poll until the operation ends: a cancel sent before QEMU's stream
        began found nothing to cancel, and the save then completed though domjobabort had
        said yes (issue 28). The operation checks too (Context.checkpoint)."""
        warned = False
        while not self._stop.is_set():
            asked = await asyncio.to_thread(self._refresh)
            if asked and self.abortable:
                self.aborted = True
                try:
                    await cancel_qemu_work(self.paths)
                except QsnapError as exc:
                    if not warned:
                        log.warning("the abort of '%s' could not reach QEMU: %s",
                                    self.operation, exc)
                    warned = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL)

    def _clear(self) -> None:
        with contextlib.suppress(OSError):
            job_board.clear(self.folder)

    def _completed(self) -> None:
        with contextlib.suppress(OSError):
            job_board.post(self.folder, self._entry("completed"), name=job_board.DONE_NAME)

    @contextlib.asynccontextmanager
    async def posted(self) -> AsyncIterator[JobWatch]:
        """Post the job for the block's duration. Nothing on the board may fail the
        operation (a board that cannot be written, on a full disk, is simply not there), and
        its file work runs in worker threads. The watcher is stopped, not cancelled, so that
        no post of it is still under way when the board is cleared."""
        await asyncio.to_thread(self._clear)
        task = asyncio.ensure_future(self._watch())
        try:
            yield self
        except QsnapError as exc:
            if self.aborted:
                why = "" if isinstance(exc, OperationAbortedError) else f": {exc}"
                raise OperationAbortedError(
                    f"job '{self.operation}' canceled by client{why}",
                    domain=exc.domain, snapshot=exc.snapshot, path=exc.path) from None
            raise
        else:
            await asyncio.to_thread(self._completed)
        finally:
            self._stop.set()
            try:
                await task
            except (QsnapError, OSError) as exc:
                log.warning("the job board of '%s' failed: %s", self.operation, exc)
            await asyncio.to_thread(self._clear)


async def cancel_qemu_work(paths: RuntimePaths) -> None:
    """Stop what the domain's QEMU is doing for qsnap (see the module docstring)."""
    info = read_runtime(paths)
    if info is None:
        return
    async with await Monitor.connect(info.qmp) as monitor:
        if await monitor.status() == "inmigrate":
            await monitor.quit()
            return
        await monitor.cancel_migration()
        for job in await monitor.jobs.all():
            if (job.is_for(JobPurpose.BLOCKCOMMIT) or job.is_for(JobPurpose.BLOCKPULL)) \
                    and (job.under_way or job.status is JobStatus.UNDEFINED):
                await monitor.jobs.cancel(job.id)
