"""virsh blockcommit, blockpull and blockjob: QEMU block jobs on a running guest's chain.

A commit is recorded in the domain's intent record, as a snapshot delete's merges are, and
walks the same steps whether a command runs it or recovery finishes it:

1. the plan is checked (:mod:`qsnap.plan.block_jobs`), and the whole outcome (the definition
   and snapshot metadata that name the merged images afterwards, the files ``--delete``
   removes) is written to the record; then the job starts, with auto-finalize off;
2. the job copies; an active commit turns ``ready`` and waits there: for ``--pivot`` (or
   ``blockjob --pivot`` from a later command) it is completed, for ``--keep-overlay`` (or
   ``blockjob --abort``) cancelled, which leaves the guest on its top image;
3. at ``pending`` QEMU has copied everything into base and holds the disk's new I/O: the
   record is marked ``decided`` (from here base is the image to keep, pivoted or not), then
   ``job-finalize`` pivots (or rewrites the backing file above top);
4. the metadata is saved, ``--delete`` removes the merged-away files, the record goes.

A commit that nobody waits for (no ``--wait``) keeps its record while QEMU runs it: each
later command on the domain looks at the job first (:func:`settle`), and finishes it once it
reached ``pending`` (a commit below the top) or leaves it running (``ready`` active commits
wait for ``blockjob --pivot`` or ``--abort``, as libvirt's do). A crash anywhere is finished
the same way. The guest never stops for any of it.

A pull changes neither the definition nor any file qsnap removes, and a half-done pull
leaves the chain reading as before; but one a command waits for runs with auto-dismiss off
(so that its outcome can be read), and a killed waiter left the job ``concluded`` in QEMU:
QEMU 7.2 then crashed at the next ``query-named-block-nodes``, taking the running guest with
it. So a waited-for pull is recorded too (:class:`PullWork`), and the next command dismisses
its job (and any other concluded job of qsnap's) before it sends anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from qsnap import images
from qsnap.engine.context import Context
from qsnap.engine.kinds import OperationKind
from qsnap.errors import (
    DomainNotRunningError,
    InvalidArgumentError,
    JobFailedError,
    MonitorTimeoutError,
    OperationFailedError,
    OperationInvalidError,
    QsnapError,
)
from qsnap.faults import crash_point
from qsnap.logs import logger
from qsnap.model.block_jobs import BlockJobAction, JobOutcome
from qsnap.model.domain import parse_domain
from qsnap.model.snapshot import format_snapshot, parse_snapshot
from qsnap.monitor import Monitor
from qsnap.monitor.jobs import FOREVER, CommitJob, JobPurpose, JobStatus, job_id
from qsnap.plan.block_jobs import CommitPlan, find_disk, plan_commit, plan_pull
from qsnap.plan.external_delete import renamed_definition, renamed_snapshot
from qsnap.progress import ProgressMeter
from qsnap.store import DomainFolder
from qsnap.store.atomic import unlink_if_present
from qsnap.store.intent import IntentRecord, clear_intent, read_intent, write_intent

log = logger("qsnap")

@dataclass(frozen=True)
class BlockJobInfo:
    """``blockjob --info``: a disk's job, as virsh labels it, and its progress in bytes."""

    target: str
    kind: str  # "Block Commit", "Active Block Commit", "Block Pull", ...
    done: int
    total: int
    ready: bool


@dataclass
class CommitWork(IntentRecord):
    """A block commit, as the intent record keeps it."""

    target: str
    job_id: str
    top_file: str
    base_file: str
    active: bool
    merged_away: list[str]
    delete: bool = False
    definition: str | None = None
    put: list[str] = field(default_factory=list)
    #: The guest is to be pivoted onto base (--pivot, blockjob --pivot): job-complete sent.
    pivot: bool = False
    #: At pending, before the finalize: base is the image to keep.
    decided: bool = False
    KIND: ClassVar[str] = OperationKind.BLOCKCOMMIT
    LASTING: ClassVar[bool] = True

    def refusal(self) -> str:
        return _refusal(self.KIND, self.target)


@dataclass
class PullWork(IntentRecord):
    """A block pull a command waits for: its job must be dismissed, whoever ends it."""

    target: str
    job_id: str
    KIND: ClassVar[str] = OperationKind.BLOCKPULL
    LASTING: ClassVar[bool] = True

    def refusal(self) -> str:
        return _refusal(self.KIND, self.target)


def _refusal(kind: str, target: str) -> str:
    """What another operation meets while a block job's record lasts (IntentRecord.refusal)."""
    return (f"disk '{target}' is in a block job ({kind}); finish it with "
            f"'blockjob {{domain}} {target} --pivot' or '--abort' first")


# -- starting -------------------------------------------------------------------------------

async def _running_monitor(ctx: Context) -> Monitor:
    if ctx.running is None:
        raise DomainNotRunningError(f"domain '{ctx.domain}' is not running", domain=ctx.domain)
    return await Monitor.connect(ctx.running.qmp)


async def _refuse_busy(monitor: Monitor, target: str) -> None:
    for job in await monitor.jobs.block_jobs():
        if job.id.endswith(f"-{target}"):
            raise OperationInvalidError(f"disk '{target}' already in active block job")


async def start_commit(ctx: Context, disk: str, *, base: str | None, top: str | None,
                       active: bool, shallow: bool, delete: bool,
                       bandwidth: int = 0) -> CommitWork:
    """Check, record and start a commit; returns its record."""
    folder = ctx.folder
    if ctx.running is None:
        # libvirt names a chain with nothing to commit before the stopped guest.
        found = find_disk(folder.definition, disk)
        if found.source and os.path.exists(found.source) and \
                (await images.facts(found.source)).backing is None:
            raise InvalidArgumentError(f"could not find base image in chain for "
                                       f"'{found.target}'")
    async with await _running_monitor(ctx) as monitor:
        recorded = _recorded_target(folder)
        if recorded is not None:  # the session settled all else: a commit QEMU still runs
            raise OperationInvalidError(
                f"disk '{recorded}' already in active block job"
                if recorded == find_disk(folder.definition, disk).target else
                f"domain '{ctx.domain}' has another block job under way (disk '{recorded}')")
        chains = await monitor.block_chains()
        definition = folder.definition
        snapshots = await asyncio.to_thread(
            lambda: {n: folder.read_snapshot(n) for n in folder.snapshot_names()})
        target = find_disk(definition, disk).target
        files = [f for _, f in chains.get(target, [])]
        formats = {f: (await images.facts(f)).format for f in files[1:]}
        plan = plan_commit(definition, disk, chains, formats, snapshots, base=base, top=top,
                           active=active, shallow=shallow)
        await _refuse_busy(monitor, plan.target)
        work = _work(plan, folder, snapshots, delete)
        await asyncio.to_thread(write_intent, folder.path, work.record())
        crash_point("blockcommit: intent recorded")
        try:
            await monitor.jobs.commit_of(work.job_id).start(
                plan.nodes[0], plan.nodes[plan.base],
                None if plan.active else plan.nodes[plan.top], speed=bandwidth)
        except QsnapError:
            await asyncio.to_thread(clear_intent, folder.path)
            raise
        crash_point("blockcommit: job started")
        return work


def _recorded_target(folder: DomainFolder) -> str | None:
    record = read_intent(folder.path)
    return record.get("target") if record and record.get("kind") == CommitWork.KIND else None


def _work(plan: CommitPlan, folder: DomainFolder, snapshots: dict[str, Any],
          delete: bool) -> CommitWork:
    definition = renamed_definition(folder.definition, plan.renames) if plan.active else None
    put = [renamed_snapshot(s, plan.renames) for s in snapshots.values()]
    return CommitWork(plan.target, job_id(JobPurpose.BLOCKCOMMIT, plan.target),
                      plan.top_file, plan.base_file, plan.active, list(plan.merged_away), delete,
                      definition.to_xml() if definition is not None else None,
                      [format_snapshot(s, active=False) for s in put if s is not None])


# -- carrying it on -------------------------------------------------------------------------

class CommitRun:
    """Carries a recorded commit on from wherever it is (the run, ``blockjob``, recovery);
    the job's own steps are :class:`qsnap.monitor.jobs.CommitJob`'s, the record's here."""

    def __init__(self, ctx: Context, work: CommitWork, monitor: Monitor | None) -> None:
        self.ctx = ctx
        self.work = work
        self.monitor = monitor

    @property
    def job(self) -> CommitJob:
        assert self.monitor is not None
        return self.monitor.jobs.commit_of(self.work.job_id)

    async def _record(self) -> None:
        await asyncio.to_thread(write_intent, self.ctx.folder.path, self.work.record())

    async def _failed(self, exc: JobFailedError) -> NoReturn:
        """The job ended before base was decided: nothing changed; the record goes."""
        await asyncio.to_thread(clear_intent, self.ctx.folder.path)
        raise OperationFailedError(f"block commit of disk '{self.work.target}' failed: "
                                   f"{exc.reason}") from None

    async def wait_copied(self, meter: ProgressMeter | None, timeout: float | None) -> bool:
        """Wait until the copy is done (active: ``ready``; else ``pending``); False when
        *timeout* seconds passed first (the job runs on)."""
        try:
            job = await self.job.wait_copied(progress=meter, timeout=timeout)
        except MonitorTimeoutError:
            return False
        except JobFailedError as exc:
            await self._failed(exc)
        if meter is not None:
            meter(job.total, job.total)
        return True

    async def pivot(self) -> None:
        """Complete an active commit and switch the guest onto base."""
        assert self.work.active
        job = await self.job.state()
        if job is None or job.status not in (JobStatus.READY, JobStatus.PENDING):
            raise OperationInvalidError(f"block job '{self.work.target}' not ready for pivot "
                                        "yet")
        if job.status is JobStatus.READY:
            self.work.pivot = True
            await self._record()
            await self.job.complete()
            crash_point("blockcommit: completing")
        await self.finish()

    async def _decide(self) -> None:
        self.work.decided = True
        await self._record()
        crash_point("blockcommit: pending, decided")

    async def finish(self) -> None:
        """From ``pending`` (or later): mark, finalize, save the metadata, remove files."""
        assert self.monitor is not None
        try:
            await self.job.finish(None if self.work.decided else self._decide)
        except JobFailedError as exc:
            if not self.work.decided:
                await self._failed(exc)
            # Failed at its finalize, after base was decided: concluded as decided (as it
            # always was here; whether QEMU pivoted is not looked at).
            log.warning("block commit of disk '%s' reported at its end: %s",
                        self.work.target, exc.reason)
        crash_point("blockcommit: finalized")
        with contextlib.suppress(QsnapError):
            await self.monitor.drop_detached_nodes()
        await self.conclude()

    async def conclude(self) -> None:
        """The decided commit's metadata, then its files, then the record."""
        folder = self.ctx.folder
        work = self.work
        await asyncio.to_thread(folder.apply_covered, folder.plan_save(
            put=[parse_snapshot(x, redefine=True, internal=True) for x in work.put],
            definition=parse_domain(work.definition) if work.definition else None))
        crash_point("blockcommit: metadata saved")
        if work.delete:
            for path in work.merged_away:
                await asyncio.to_thread(unlink_if_present, path)
        await asyncio.to_thread(clear_intent, folder.path)

    async def cancel(self) -> None:
        """Stop the job (an active commit that is ``ready`` ends cleanly, the guest staying
        on its top image); nothing in the metadata changes."""
        assert self.monitor is not None
        job = await self.job.state()
        if job is not None and job.status is JobStatus.PENDING:
            # Already copied and held: cancelling now would still be clean, but the work is
            # done, so finish it as decided (the guest's writes are all in base).
            await self.finish()
            return
        await self.job.abort()
        with contextlib.suppress(QsnapError):
            await self.monitor.drop_detached_nodes()
        await asyncio.to_thread(clear_intent, self.ctx.folder.path)


async def run_commit(ctx: Context, disk: str, *, base: str | None, top: str | None,
                     active: bool, shallow: bool, delete: bool, wait: bool, pivot: bool,
                     keep_overlay: bool, timeout: float | None,
                     meter: ProgressMeter | None, bandwidth: int = 0) -> JobOutcome:
    """virsh blockcommit. Returns what happened: ``started`` (no wait), ``synchronized``
    (an active commit left ready), ``pivoted``, ``kept`` (--keep-overlay), ``committed``,
    or ``aborted`` (--timeout passed: the job was cancelled, nothing changed)."""
    work = await start_commit(ctx, disk, base=base, top=top, active=active, shallow=shallow,
                              delete=delete, bandwidth=bandwidth)
    if not wait:
        return JobOutcome.STARTED
    async with await _running_monitor(ctx) as monitor:
        run = CommitRun(ctx, work, monitor)
        if not await run.wait_copied(meter, timeout):
            await run.cancel()
            return JobOutcome.ABORTED
        if not work.active:
            await run.finish()
            return JobOutcome.COMMITTED
        if pivot:
            await run.pivot()
            return JobOutcome.PIVOTED
        if keep_overlay:
            await run.cancel()
            return JobOutcome.KEPT
        return JobOutcome.SYNCHRONIZED


async def _recorded(ctx: Context, target: str) -> CommitWork | None:
    record = await asyncio.to_thread(read_intent, ctx.folder.path)
    if record is None or record.get("kind") != CommitWork.KIND:
        return None
    work = CommitWork.from_record(record)
    return work if work.target == target else None


async def block_job(ctx: Context, disk: str, asked: str) -> BlockJobInfo | None:
    """virsh blockjob: *asked* is ``info`` (the disk's job, None without one), ``abort``
    or ``pivot``."""
    try:
        action = BlockJobAction(asked)
    except ValueError:
        raise InvalidArgumentError(f"unknown blockjob action '{asked}': use "
                                   f"{', '.join(BlockJobAction)}") from None
    target = find_disk(ctx.folder.definition, disk).target
    async with await _running_monitor(ctx) as monitor:
        work = await _recorded(ctx, target)
        if action is BlockJobAction.INFO:
            return await _job_info(monitor, target, work)
        if work is None:
            pull = await monitor.jobs.get(job_id(JobPurpose.BLOCKPULL, target))
            if action is BlockJobAction.ABORT and pull is not None:
                await monitor.jobs.abort(pull.id)
                record = await asyncio.to_thread(read_intent, ctx.folder.path)
                if record is not None and record["kind"] == PullWork.KIND:
                    await asyncio.to_thread(clear_intent, ctx.folder.path)
                return None
            raise InvalidArgumentError(f"disk {target} does not have an active block job")
        run = CommitRun(ctx, work, monitor)
        if action is BlockJobAction.PIVOT:
            if not work.active:
                raise OperationInvalidError(f"block job '{target}' not ready for pivot yet")
            await run.pivot()
        else:
            await run.cancel()
        return None


async def _job_info(monitor: Monitor, target: str, work: CommitWork | None
                    ) -> BlockJobInfo | None:
    ours = (job_id(JobPurpose.BLOCKCOMMIT, target), job_id(JobPurpose.BLOCKPULL, target))
    for job in await monitor.jobs.block_jobs():
        if job.id not in ours:
            continue
        kind = {"commit": "Block Commit", "stream": "Block Pull", "mirror": "Block Copy",
                "backup": "Backup"}.get(job.type, "Unknown job")
        if work is not None and work.active and kind == "Block Commit":
            kind = "Active Block Commit"
        return BlockJobInfo(target, kind, job.done, job.total, job.status is JobStatus.READY)
    return None


async def run_pull(ctx: Context, disk: str, *, base: str | None, wait: bool,
                   timeout: float | None, meter: ProgressMeter | None,
                   bandwidth: int = 0) -> JobOutcome:
    """virsh blockpull; returns ``started``, ``pulled`` or ``aborted`` (--timeout)."""
    async with await _running_monitor(ctx) as monitor:
        recorded = read_intent(ctx.folder.path)
        if recorded is not None:  # the session settled all else: a block job QEMU still runs
            raise OperationInvalidError(
                f"disk '{recorded.get('target')}' already in active block job"
                if recorded.get("target") == find_disk(ctx.folder.definition, disk).target
                else f"domain '{ctx.domain}' has another block job under way (disk "
                     f"'{recorded.get('target')}')", domain=ctx.domain)
        plan = plan_pull(ctx.folder.definition, disk, await monitor.block_chains(), base=base)
        pull_id = job_id(JobPurpose.BLOCKPULL, plan.target)
        await _refuse_busy(monitor, plan.target)
        work = PullWork(plan.target, pull_id)
        if wait:
            await asyncio.to_thread(write_intent, ctx.folder.path, work.record())
            crash_point("blockpull: intent recorded")
        try:
            await monitor.jobs.start_stream(pull_id, plan.nodes[0],
                                       None if plan.base is None else plan.nodes[plan.base],
                                       auto_dismiss=not wait, speed=bandwidth)
        except QsnapError:
            if wait:
                await asyncio.to_thread(clear_intent, ctx.folder.path)
            raise
        if not wait:
            return JobOutcome.STARTED
        crash_point("blockpull: job started")
        try:
            job = await monitor.jobs.wait(pull_id, progress=meter, timeout=timeout or FOREVER)
        except MonitorTimeoutError:
            await monitor.jobs.abort(pull_id)
            await asyncio.to_thread(clear_intent, ctx.folder.path)
            return JobOutcome.ABORTED
        crash_point("blockpull: job concluded")
        await monitor.jobs.dismiss(pull_id)
        await asyncio.to_thread(clear_intent, ctx.folder.path)
        if job.error:
            raise OperationFailedError(f"block pull of disk '{plan.target}' failed: "
                                       f"{job.error}")
        if meter is not None:
            meter(1, 1)
        with contextlib.suppress(QsnapError):
            await monitor.drop_detached_nodes()
        return JobOutcome.PULLED


# -- recovery -------------------------------------------------------------------------------

async def _settle_pull(ctx: Context, work: PullWork) -> str | None:
    if ctx.running is None:
        return f"block pull of disk '{work.target}' ended with the guest"
    async with await Monitor.connect(ctx.running.qmp) as monitor:
        job = await monitor.jobs.get(work.job_id)
        if job is not None and job.under_way:
            return None
        await monitor.jobs.dismiss_concluded()
    error = f": {job.error}" if job is not None and job.error else ""
    return f"block pull of disk '{work.target}' had ended{error}; its job was dismissed"


def under_way(record: dict[str, Any]) -> str:
    """What a record of a job still under way in QEMU says, and how to end it."""
    kind = "block pull" if record["kind"] == PullWork.KIND else "block commit"
    target = record.get("target", "?")
    return (f"the {kind} of disk '{target}' is still under way in QEMU, and stays recorded: "
            f"'blockjob DOMAIN {target} --info' shows it; '--pivot' or '--abort' ends it")


async def settle(ctx: Context, record: dict[str, Any]) -> str | None:
    """Carry a recorded commit or pull on (see the module docstring); None while its job is
    still under way in QEMU, which keeps the record."""
    if record["kind"] == PullWork.KIND:
        return await _settle_pull(ctx, PullWork.from_record(record))
    work = CommitWork.from_record(record)
    if ctx.running is None:
        if work.decided:
            await CommitRun(ctx, work, None).conclude()
            return f"block commit of disk '{work.target}' finished (the guest had stopped)"
        await asyncio.to_thread(clear_intent, ctx.folder.path)
        return (f"block commit of disk '{work.target}' ended with the guest, which stays on "
                f"'{work.top_file}'")
    async with await Monitor.connect(ctx.running.qmp) as monitor:
        run = CommitRun(ctx, work, monitor)
        job = await run.job.state()
        if job is None:
            if work.decided:
                await run.conclude()
                return f"block commit of disk '{work.target}' finished"
            await asyncio.to_thread(clear_intent, ctx.folder.path)
            return f"block commit of disk '{work.target}' had ended; nothing changed"
        if job.under_way:
            return None
        if job.concluded and not work.decided:
            await monitor.jobs.dismiss(work.job_id)
            await asyncio.to_thread(clear_intent, ctx.folder.path)
            return (f"block commit of disk '{work.target}' ended without a pivot"
                    + (f": {job.error}" if job.error else ""))
        await run.finish()
        return f"block commit of disk '{work.target}' finished"
