"""QEMU's jobs, typed: the one owner of their states, their ids and the block-commit sequence.

What reads ``query-jobs`` and ``query-block-jobs`` lives here, as libvirt's ``qemu_blockjob``
does for it: a :class:`Job` is a frozen view of one entry, :class:`JobStatus` its status, and
:data:`UNDER_WAY` the statuses in which a job still copies or waits for someone's decision,
defined once. Callers above the monitor see no raw dict.

:class:`CommitJob` walks a block commit from its start to its dismissal, with auto-finalize
and auto-dismiss off, so that nothing happens to the guest's chain that the caller did not
record first: the job copies (an active commit then turns ``ready`` and mirrors the guest's
writes), ``job-complete`` makes it copy the rest, and at ``pending`` QEMU has everything in
the base image and holds the disk's new I/O. There the caller's one piece of policy runs
(``on_pending``: it marks its intent record, since from here base is the image to keep),
and only then ``job-finalize`` pivots the guest (or rewrites the backing file above an
intermediate commit). A snapshot delete, a failed snapshot's merge-back and virsh's
``blockcommit`` all use it, and their recoveries take leftover jobs over with
:meth:`CommitJob.of`.

Job ids are ``qsnap-PURPOSE-TARGET`` (:func:`job_id`), so that a recovery finds the job a
killed command left by the disk it worked on; generic one-shot jobs (``snapshot-save``,
``blockdev-create``) get numbered ids from :meth:`Jobs.unique_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from qemu.qmp import EventListener

from qsnap.errors import JobFailedError, MonitorClosedError, MonitorError, MonitorTimeoutError
from qsnap.faults import crash_point


class Connection(Protocol):
    """What the jobs need of a monitor connection (:class:`qsnap.monitor.client.Monitor`)."""

    @property
    def open(self) -> bool: ...

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None, *,
                      timeout: float | None = None) -> Any: ...

    def events(self, *names: str) -> AbstractAsyncContextManager[EventListener]: ...

#: How long a wait with no deadline of the caller's waits: a month.
FOREVER = 30 * 86400.0


class JobStatus(StrEnum):
    """QEMU's ``JobStatus`` (``qapi/job.json``)."""

    UNDEFINED = "undefined"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"
    STANDBY = "standby"
    WAITING = "waiting"
    PENDING = "pending"
    ABORTING = "aborting"
    CONCLUDED = "concluded"
    NULL = "null"


#: A job in these still copies, or waits for a decision (``ready``: complete or cancel).
UNDER_WAY = frozenset({JobStatus.CREATED, JobStatus.RUNNING, JobStatus.PAUSED,
                       JobStatus.READY, JobStatus.STANDBY, JobStatus.WAITING})


class JobPurpose(StrEnum):
    """What qsnap started a block job for: the middle part of its id. The spellings are
    those earlier releases used, since a recovery looks a leftover job up by its id."""

    BLOCKCOMMIT = "blockcommit"  # virsh blockcommit
    BLOCKPULL = "blockpull"      # virsh blockpull
    DELETE = "commit"            # a snapshot delete's merge
    UNDO = "undo"                # a failed snapshot's overlay merged back


def job_id(purpose: JobPurpose, target: str) -> str:
    """The id of qsnap's block job for *purpose* on disk *target*."""
    return f"qsnap-{purpose}-{target}"


@dataclass(frozen=True)
class Job:
    """One job as QEMU reports it (``query-jobs``, or ``query-block-jobs`` for a block job's
    byte counts)."""

    id: str
    type: str  # "commit", "stream", "mirror", "backup", "snapshot-save", ...
    status: JobStatus
    done: int
    total: int
    error: str | None = None

    @classmethod
    def from_qmp(cls, entry: Mapping[str, Any]) -> Job:
        """From a ``query-jobs`` entry (``id``, progress) or a ``query-block-jobs`` one
        (``device`` is its id, ``offset``/``len`` its progress)."""
        if "id" in entry:
            return cls(str(entry["id"]), str(entry.get("type", "")),
                       JobStatus(entry["status"]), int(entry.get("current-progress", 0)),
                       int(entry.get("total-progress", 0)), entry.get("error"))
        status = entry.get("status") or ("ready" if entry.get("ready") else "running")
        return cls(str(entry["device"]), str(entry.get("type", "")), JobStatus(status),
                   int(entry.get("offset", 0)), int(entry.get("len", 0)), entry.get("error"))

    @property
    def under_way(self) -> bool:
        return self.status in UNDER_WAY

    @property
    def concluded(self) -> bool:
        return self.status is JobStatus.CONCLUDED

    @property
    def ours(self) -> bool:
        """Whether qsnap started it (an id of :func:`job_id` or :meth:`Jobs.unique_id`)."""
        return self.id.startswith("qsnap-")

    def is_for(self, purpose: JobPurpose) -> bool:
        return self.id.startswith(f"qsnap-{purpose}-")


class Jobs:
    """QEMU's jobs through one monitor: listing, waiting, and the single-step commands."""

    def __init__(self, monitor: Connection) -> None:
        self._monitor = monitor
        self._numbered = 0

    async def execute(self, command: str, arguments: Mapping[str, object]) -> Any:
        return await self._monitor.execute(command, arguments)

    def unique_id(self, prefix: str) -> str:
        """A fresh id for a one-shot job (``qsnap-PREFIX-PID-N``)."""
        self._numbered += 1
        return f"qsnap-{prefix}-{os.getpid()}-{self._numbered}"

    async def all(self) -> list[Job]:
        return [Job.from_qmp(j) for j in await self._monitor.execute("query-jobs")]

    async def block_jobs(self) -> list[Job]:
        """``query-block-jobs``: block jobs, with their byte counts."""
        return [Job.from_qmp(j) for j in await self._monitor.execute("query-block-jobs")]

    async def get(self, id_: str) -> Job | None:
        return next((j for j in await self.all() if j.id == id_), None)

    async def wait(self, id_: str, until: frozenset[JobStatus] = frozenset(), *,
                   progress: Callable[[int, int], None] | None = None,
                   timeout: float = 3600.0, interval: float = 0.25) -> Job:
        """Wait until job *id_* reaches one of *until* or concludes, and return it.
        *progress* gets (bytes done, bytes in all) about every *interval* seconds; status
        changes wake the wait at once. MonitorTimeoutError after *timeout* seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._monitor.events("JOB_STATUS_CHANGE") as listener:
            while True:
                job = await self.get(id_)
                if job is None:
                    raise MonitorError("query-jobs", "GenericError",
                                       f"job '{id_}' no longer exists")
                if progress is not None:
                    progress(job.done, job.total)
                if job.status in until or job.concluded:
                    return job
                left = deadline - loop.time()
                if left <= 0:
                    raise MonitorTimeoutError(f"QEMU job '{id_}' did not reach "
                                              f"{'/'.join(sorted(until)) or 'its end'} "
                                              f"within {timeout:g} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.get(), min(interval, left))

    async def cancel(self, id_: str) -> None:
        """``job-cancel``. A mirror (or active commit) that is ``ready`` ends cleanly without
        switching the guest to its target; any other job stops where it is."""
        await self._monitor.execute("job-cancel", {"id": id_})

    async def complete(self, id_: str) -> None:
        await self._monitor.execute("job-complete", {"id": id_})

    async def finalize(self, id_: str) -> None:
        await self._monitor.execute("job-finalize", {"id": id_})

    async def dismiss(self, id_: str) -> None:
        await self._monitor.execute("job-dismiss", {"id": id_})

    async def abort(self, id_: str) -> Job | None:
        """Stop job *id_* wherever it is and dismiss it; its last state (None: no such job)."""
        job = await self.get(id_)
        if job is None:
            return None
        if job.status not in (JobStatus.CONCLUDED, JobStatus.ABORTING, JobStatus.NULL):
            await self.cancel(id_)
        with contextlib.suppress(MonitorError):  # an auto-dismissed job goes once concluded
            job = await self.wait(id_)
            await self.dismiss(id_)
        return job

    async def settle(self, job_type: str) -> list[Job]:
        """Wait for every job of *job_type* (one a killed qsnap started) to conclude, dismiss
        them; their last states."""
        ended = []
        for job in await self.all():
            if job.type == job_type:
                ended.append(await self.wait(job.id))
                await self.dismiss(job.id)
        return ended

    async def dismiss_concluded(self) -> list[str]:
        """Dismiss every job of qsnap's that QEMU holds concluded (its waiter was killed);
        their ids. QEMU 7.2 crashed at the next ``query-named-block-nodes`` with one left."""
        dismissed = []
        for job in await self.all():
            if job.ours and job.concluded:
                await self.dismiss(job.id)
                dismissed.append(job.id)
        return dismissed

    async def run(self, command: str, arguments: Mapping[str, object], id_: str, *,
                  timeout: float = 600.0) -> None:
        """Start a one-shot job, wait until it concludes, dismiss it, raise if it failed
        (MonitorError with QEMU's reason, as if it refused the command); on *timeout* it is
        cancelled (MonitorTimeoutError)."""
        monitor = self._monitor
        async with monitor.events("JOB_STATUS_CHANGE") as listener:
            await monitor.execute(command, {**arguments, "job-id": id_})
            crash_point(f"{command}: started")
            try:
                await asyncio.wait_for(self._concluded(listener, id_), timeout)
            except TimeoutError:
                with contextlib.suppress(MonitorError, MonitorClosedError):
                    await self.cancel(id_)
                raise MonitorTimeoutError(f"QEMU job {command} did not finish within "
                                          f"{timeout:g} s; it was cancelled") from None
        job = await self.get(id_)
        await self.dismiss(id_)
        if job is not None and job.error:
            raise MonitorError(command, "GenericError", job.error)

    async def _concluded(self, listener: EventListener, id_: str) -> None:
        while True:
            if not self._monitor.open:
                raise MonitorClosedError(f"QEMU closed its monitor during job '{id_}' (it "
                                         "exited or was killed)")
            try:
                event: Any = await asyncio.wait_for(listener.get(), 0.25)
            except TimeoutError:
                continue
            data = event.get("data", {})
            if data.get("id") == id_ and data.get("status") == JobStatus.CONCLUDED:
                return

    def commit(self, purpose: JobPurpose, target: str) -> CommitJob:
        """qsnap's commit job for *purpose* on disk *target* (started or to be started)."""
        return CommitJob(self, job_id(purpose, target))

    def commit_of(self, id_: str) -> CommitJob:
        """The commit job with id *id_* (an intent record keeps it)."""
        return CommitJob(self, id_)

    async def leftover_commits(self, purpose: JobPurpose) -> list[CommitJob]:
        """The commit jobs for *purpose* that QEMU still holds (a killed qsnap started them)."""
        return [CommitJob(self, job.id) for job in await self.all()
                if job.type == "commit" and job.is_for(purpose)]

    async def start_stream(self, id_: str, device: str, base_node: str | None, *,
                           auto_dismiss: bool, speed: int = 0) -> None:
        """Start pulling the data of the images below *device*'s top (down to *base_node*,
        the whole chain without it) into the top image (``block-stream``). QEMU rewrites the
        top's backing file when it finishes; the images below stay as they were. With
        *auto_dismiss* off the concluded job stays for the caller to read and dismiss."""
        arguments: dict[str, object] = {"job-id": id_, "device": device,
                                        "auto-dismiss": auto_dismiss}
        if base_node is not None:
            arguments["base-node"] = base_node
        if speed:
            arguments["speed"] = speed  # bytes per second
        await self._monitor.execute("block-stream", arguments)


class CommitJob:
    """One block-commit job of qsnap's, from its start to its dismissal (see the module
    docstring). Every failure is a :class:`JobFailedError` carrying QEMU's reason, raised
    after the job was dismissed; the caller words it for its own operation."""

    def __init__(self, jobs: Jobs, id_: str) -> None:
        self._jobs = jobs
        self.id = id_

    async def start(self, device: str, base_node: str, top_node: str | None, *,
                    speed: int = 0) -> None:
        """Start merging the chain above *base_node* (up to *top_node*) into it.

        Without *top_node* this is an active commit: it turns ``ready`` once the image the
        guest writes to is mirrored into base. With it, an intermediate commit that stops at
        ``pending``. Neither is finalized or dismissed without being asked.
        """
        arguments: dict[str, object] = {"job-id": self.id, "device": device,
                                        "base-node": base_node, "auto-dismiss": False,
                                        "auto-finalize": False}
        if top_node is not None:
            arguments["top-node"] = top_node
        if speed:
            arguments["speed"] = speed
        await self._jobs.execute("block-commit", arguments)

    async def state(self) -> Job | None:
        """Where the job is; None when QEMU has no such job."""
        return await self._jobs.get(self.id)

    async def wait_copied(self, *, progress: Callable[[int, int], None] | None = None,
                          timeout: float | None = None) -> Job:
        """Wait until the copy is done: ``ready`` (an active commit) or ``pending``.
        MonitorTimeoutError after *timeout* seconds (the job runs on); JobFailedError when
        it ended first."""
        job = await self._jobs.wait(self.id, frozenset({JobStatus.READY, JobStatus.PENDING}),
                                    progress=progress, timeout=timeout or FOREVER)
        if job.concluded:
            await self._failed(job)
        return job

    async def complete(self) -> None:
        """Make a ``ready`` active commit copy what is left and stop at ``pending``."""
        await self._jobs.complete(self.id)

    async def finish(self, on_pending: Callable[[], Awaitable[None]] | None) -> None:
        """From ``pending`` (or on the way to it) to the end: call *on_pending* there, then
        ``job-finalize`` (the pivot), wait until concluded, dismiss.

        *on_pending* None means the caller already marked its record at ``pending`` (a
        recovery taking the job over after a kill): a job QEMU already concluded is then
        only dismissed. Otherwise a job that concluded before ``pending`` failed."""
        job = await self._jobs.wait(self.id, frozenset({JobStatus.PENDING}))
        if on_pending is not None:
            if job.concluded:
                await self._failed(job)
            await on_pending()
        if job.status is JobStatus.PENDING:
            await self._jobs.finalize(self.id)
            job = await self._jobs.wait(self.id)
        await self._jobs.dismiss(self.id)
        if job.error:
            raise JobFailedError(job.error, job_id=self.id, reason=job.error)

    async def run_to_end(self, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy, complete (an active commit) and finish with nothing to record: a merge-back,
        or a leftover job of one that a recovery takes over."""
        job = await self.state()
        if job is not None and job.status is not JobStatus.PENDING and not job.concluded:
            job = await self.wait_copied(progress=progress)
        if job is not None and job.status is JobStatus.READY:
            await self.complete()
        await self.finish(None)

    async def abort(self) -> None:
        """Stop the job and dismiss it (a ``ready`` active commit ends cleanly, the guest
        staying on its top image)."""
        await self._jobs.abort(self.id)

    async def _failed(self, job: Job) -> None:
        await self._jobs.dismiss(self.id)
        reason = job.error or "the job ended early"
        raise JobFailedError(reason, job_id=self.id, reason=reason)
