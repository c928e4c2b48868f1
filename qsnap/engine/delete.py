"""Deleting snapshots' data: internal tags, external merges, and finishing what a crash left.

Order, chosen so that a crash (of qsnap or of QEMU) at any point leaves every image readable,
every remaining snapshot's data intact, and a record from which the next command finishes:

1. everything that can be checked is checked (tags present, images writable, space for the
   merges, no other block job): a refusal changes nothing;
2. the whole operation, metadata result included, is written to the intent record;
3. internal tags are deleted; images are merged (QEMU block-commit for the running guest's
   chain, ``qemu-img commit`` otherwise), each merge marked done in the record;
4. the metadata is saved in one atomic change; 5. merged and unneeded files are removed;
6. the record is cleared.

Why a half-done merge is safe to redo: while the data of *top* is copied into *base*, reading
through *top* gives exactly what it gave before (top's own data wins over base's), and nothing
else reads *base* (the plan only merges into an image with one needed image above it). So a
merge is finished by doing it again. The one step that is not repeatable is the pivot of an
active commit, after which the guest writes to *base* alone, so that merging *top* into it
again would overwrite newer data. Every commit job therefore runs with auto-finalize off: it
stops at ``pending`` once *base* holds everything the guest wrote through *top*, with QEMU
holding the disk's new I/O until the finalize. The merge is marked done there, before the
finalize pivots: from then on *base* is the image to keep whether the pivot happened or not,
and before it, *top* and *base* hold the same data, so redoing the merge is still right. The
guest's vCPUs never stop for this (qsnap paused the guest around the pivot before; a record
from then may still say ``paused``, and recovery resumes such a guest). What the guest sees
is its disk I/O held from the end of the copy to the finalize: the last dirty data, one
record write, one QMP round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from qsnap import images
from qsnap.engine.context import Context
from qsnap.engine.kinds import OperationKind
from qsnap.errors import (
    JobFailedError,
    OperationIncompleteError,
    OperationInvalidError,
    QsnapError,
)
from qsnap.faults import crash_point
from qsnap.launcher.runtime import RuntimeInfo
from qsnap.logs import logger
from qsnap.model.domain import DomainDef, parse_domain
from qsnap.model.image_graph import ImageGraph
from qsnap.model.snapshot import SnapshotDef, format_snapshot, parse_snapshot
from qsnap.monitor import Monitor
from qsnap.monitor.jobs import CommitJob, JobPurpose, JobStatus
from qsnap.plan.delete import (
    InternalRemoval,
    MetadataDeletePlan,
    needs_open_images,
    plan_delete_data,
)
from qsnap.plan.external_delete import (
    ExternalDeletePlan,
    Merge,
    plan_external_delete,
    renamed_definition,
    renamed_snapshot,
    snapshot_images,
)
from qsnap.progress import ProgressCallback, ProgressMeter
from qsnap.store import KEEP, DomainFolder
from qsnap.store.atomic import unlink_if_present
from qsnap.store.intent import IntentRecord, clear_intent, write_intent

log = logger("qsnap")

T = TypeVar("T")



# -- facts --------------------------------------------------------------------------------------

async def image_graph(snapshots: dict[str, SnapshotDef], definition: DomainDef) -> ImageGraph:
    """What ``qemu-img info`` says about every image the metadata names, and their chains."""
    named = {d.source for d in definition.disks if d.source}
    named.update(snapshot_images(snapshots, list(snapshots)))
    graph = ImageGraph()
    limit = asyncio.Semaphore(8)

    async def look(path: str) -> None:
        async with limit:
            graph.add(await images.facts(path))

    pending = {p for p in named if os.path.exists(p)}
    while pending:
        await asyncio.gather(*(look(p) for p in sorted(pending)))
        pending = {p for p in graph.missing_backings() if os.path.exists(p)}
    return graph


Chains = dict[str, list[tuple[str, str]]]


async def running_chains(running: RuntimeInfo | None) -> Chains | None:
    """Each disk's chain in the running QEMU, (node, file) top first; None when stopped."""
    if running is None:
        return None
    async with await Monitor.connect(running.qmp) as monitor:
        return await monitor.block_chains()


# -- checks -------------------------------------------------------------------------------------

async def check_internal(removals: list[InternalRemoval], running: RuntimeInfo | None) -> None:
    """Every tag to delete is present: a deletion does not stop half-way over a missing one."""
    for removal in removals:
        for _, image in (removal.offline if running is not None else
                         removal.disks + removal.offline):
            if removal.name not in (await images.facts(image)).tags:
                raise OperationInvalidError(f"image '{image}' holds no internal snapshot "
                                            f"'{removal.name}'", snapshot=removal.name,
                                            path=image)
    if running is None or not any(r.disks for r in removals):
        return
    async with await Monitor.connect(running.qmp) as monitor:
        tops = await monitor.block_tops(nvram=True)
        held = await monitor.internal_snapshot_tags(list(tops.values()))
        for removal in removals:
            for target, image in removal.disks:
                if removal.name not in held[tops[target]]:
                    raise OperationInvalidError(f"image '{image}' holds no internal snapshot "
                                                f"'{removal.name}'")


async def check_external(plan: ExternalDeletePlan, graph: ImageGraph,
                         running: RuntimeInfo | None) -> None:
    """What would make a merge fail part-way, found before it starts."""
    if running is not None and any(m.live for m in plan.merges):
        async with await Monitor.connect(running.qmp) as monitor:
            if await monitor.jobs.all():
                raise OperationInvalidError("cannot delete external snapshots when there is "
                                            "another active block job")
    needs: dict[int, int] = {}
    for merge in plan.merges:
        if not os.access(merge.base, os.W_OK):
            raise OperationInvalidError(f"cannot merge into image '{merge.base}': it is not "
                                        "writable")
        device = os.stat(merge.base).st_dev
        needs[device] = needs.get(device, 0) + sum(graph[p].allocated
                                                   for p in merge.merged_away)
        stats = os.statvfs(merge.base)
        free = stats.f_bavail * stats.f_frsize
        if needs[device] > free:
            raise OperationInvalidError(
                f"not enough free space to merge into '{merge.base}': the merge may need up to "
                f"{_mib(needs[device])}, and its file system has {_mib(free)} free")
    for path in plan.remove_files:
        if os.path.lexists(path) and not os.access(os.path.dirname(path) or ".", os.W_OK):
            raise OperationInvalidError(f"cannot remove '{path}': its folder is not writable")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


# -- the record -----------------------------------------------------------------------------------

@dataclass
class DeleteWork(IntentRecord):
    """A whole delete, as the intent record keeps it (metadata as XML text)."""

    snapshot: str
    internal: list[InternalRemoval] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    merged: list[bool] = field(default_factory=list)
    remove_files: list[str] = field(default_factory=list)
    put: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    current: str | None = None
    current_changes: bool = False
    definition: str | None = None
    paused: bool = False
    KIND: ClassVar[str] = OperationKind.DELETE

    @classmethod
    def build(cls, snapshot: str, internal: list[InternalRemoval], plan: ExternalDeletePlan,
              put: list[SnapshotDef], drop: list[str], current: str | None,
              current_changes: bool, definition: DomainDef | None) -> DeleteWork:
        return cls(snapshot, internal, list(plan.merges), [False] * len(plan.merges),
                   list(plan.remove_files),
                   [format_snapshot(s, active=False) for s in put], drop, current,
                   current_changes, definition.to_xml() if definition is not None else None)


# -- carrying it out ------------------------------------------------------------------------------

class DeleteRun:
    """Carries out (or, after a crash, finishes) one :class:`DeleteWork`."""

    def __init__(self, work: DeleteWork, folder: DomainFolder, running: RuntimeInfo | None,
                 progress: ProgressCallback | None = None, chains: Chains | None = None
                 ) -> None:
        self.work = work
        self.folder = folder
        self.running = running
        self.progress = progress
        #: The running QEMU's chains as the plan saw them (a recovery asks QEMU again).
        self.chains = chains
        self.changed = False  # whether any image has been touched yet

    async def _record(self) -> None:
        await asyncio.to_thread(write_intent, self.folder.path, self.work.record())

    async def start(self) -> None:
        """Record the intent, then carry it out. A failure before any image changed removes
        the record again (nothing happened); after, the record stays, and the error says that
        the delete will be finished once its cause is fixed."""
        await self._record()
        crash_point("delete: intent recorded")
        try:
            await self.finish()
        except QsnapError as exc:
            if not self.changed:
                await asyncio.to_thread(clear_intent, self.folder.path)
                raise
            raise OperationIncompleteError(
                f"{exc}; the delete of snapshot '{self.work.snapshot}' had begun changing "
                "images, so it stays recorded and the next command on the domain (or 'qsnap "
                f"recover {self.folder.name}') finishes it once the cause is fixed") from None

    async def finish(self) -> None:
        work = self.work
        await self._delete_tags()
        crash_point("delete: internal snapshots removed")
        if self.running is not None and work.merges:
            await self._merge_live()  # also finishes a job a crash left pending
        if not all(work.merged):
            await self._merge_offline()
        await self._rebase_children()
        crash_point("delete: images merged")
        await asyncio.to_thread(self._store_metadata)
        crash_point("delete: metadata saved")
        for path in work.remove_files:
            await asyncio.to_thread(unlink_if_present, path)
            crash_point(f"delete: removed {os.path.basename(path)}")
        await asyncio.to_thread(clear_intent, self.folder.path)

    def _store_metadata(self) -> None:
        """The metadata result, applied without a journal of its own: the intent record
        holds all of it durably, and a crash part-way is finished from there by running
        this again (files already written are written again, the same)."""
        work = self.work
        folder = self.folder
        folder.apply_covered(folder.plan_save(
            put=[parse_snapshot(x, redefine=True, internal=True) for x in work.put],
            drop=[n for n in work.drop if folder.has_snapshot(n)],
            current=work.current if work.current_changes else KEEP,
            definition=parse_domain(work.definition) if work.definition else None))

    async def _delete_tags(self) -> None:
        """Delete each internal tag still present (a repeat after a crash skips the done)."""
        removals = self.work.internal
        if not removals:
            return
        for removal in removals:  # with qemu-img: images QEMU does not have open
            for _, image in (removal.offline if self.running is not None else
                             removal.disks + removal.offline):
                if removal.name in (await images.facts(image)).tags:
                    self.changed = True
                    await images.snapshot_delete(image, removal.name)
        if self.running is None or not any(r.disks for r in removals):
            return
        async with await Monitor.connect(self.running.qmp) as monitor:
            tops = await monitor.block_tops(nvram=True)
            held = await monitor.internal_snapshot_tags(list(tops.values()))
            for removal in removals:
                nodes = [tops[t] for t, _ in removal.disks if removal.name in held[tops[t]]]
                if nodes:
                    self.changed = True
                    await monitor.delete_internal(removal.name, nodes)

    async def _mark_merged(self, merge: Merge) -> None:
        self.work.merged[self.work.merges.index(merge)] = True
        await self._record()

    def _meter(self, merge: Merge) -> ProgressMeter:
        return ProgressMeter(f"merge {merge.target}: {os.path.basename(merge.top)} into "
                             f"{os.path.basename(merge.base)}", self.progress)

    async def _merge_live(self) -> None:
        """Block-commit every merge whose top the running guest has open, all at once. The
        guest keeps running: each job stops at ``pending`` (auto-finalize off), where QEMU has
        copied everything into *base* and holds the disk's I/O, and the merge is marked done
        there, before ``job-finalize`` pivots an active commit onto *base* (see the module
        docstring)."""
        assert self.running is not None
        work = self.work
        async with await Monitor.connect(self.running.qmp) as monitor:
            chains = self.chains if self.chains is not None else await monitor.block_chains()
            # A recovery takes over the jobs a crash left; a run has checked there were none.
            leftover = ({job.id for job in await monitor.jobs.all()} if self.chains is None
                        else set())
            commits: list[tuple[CommitJob, Merge]] = []
            for merge, done in zip(list(work.merges), list(work.merged), strict=True):
                commit = monitor.jobs.commit(JobPurpose.DELETE, merge.target)
                if done:
                    # Marked at pending, then a crash before the finalize: QEMU still holds
                    # the disk's I/O for it.
                    if commit.id in leftover:
                        await _worded(commit.finish(None), "finishing block job", merge)
                    continue
                chain = chains.get(merge.target, [])
                if commit.id not in leftover:
                    if merge.top not in [f for _, f in chain]:
                        if merge.live:
                            await self._mark_merged(merge)  # QEMU finished it before a crash
                        continue
                    node = {f: n for n, f in chain}
                    self.changed = True
                    await commit.start(chain[0][0], node[merge.base],
                                       None if merge.active else node[merge.top])
                    crash_point(f"delete: commit of {merge.target} started")
                self.changed = True  # started now or by the run a crash interrupted
                commits.append((commit, merge))
            for commit, merge in commits:
                job = await _worded(commit.wait_copied(progress=self._meter(merge)),
                                    "block commit", merge)
                if job.status is JobStatus.READY:  # an active commit: copy what is left
                    await commit.complete()
            crash_point("delete: commits completing")
            for commit, merge in commits:
                # Pending: base holds every write the guest made through top, and QEMU holds
                # new ones until the finalize. From here base is the image to keep, pivoted
                # or not, so a crash must not merge top into it again.
                await _worded(commit.finish(functools.partial(self._mark_pending, merge)),
                              "finishing block job", merge)
            crash_point("delete: commits done")
            await monitor.drop_detached_nodes()

    async def _mark_pending(self, merge: Merge) -> None:
        await self._mark_merged(merge)
        crash_point(f"delete: commit of {merge.target} pending")

    async def _merge_offline(self) -> None:
        """qemu-img for merges the running guest does not have open (or any, when stopped)."""
        for merge, done in zip(list(self.work.merges), list(self.work.merged), strict=True):
            if done:
                continue
            self.changed = True
            if os.path.exists(merge.top):
                total = sum(_allocated(p) for p in merge.merged_away)
                await images.commit(merge.top, merge.base,
                                    self._meter(merge).fraction(total))
                crash_point(f"delete: {merge.target} committed offline")
            await self._mark_merged(merge)

    async def _rebase_children(self) -> None:
        """Point every image built on a merged-away top at its merge's base. QEMU rewrote
        the one in its own chain; the others (branches a revert left, which other snapshots
        still name) are rewritten here. Done after every merge is marked, and again in full
        by a recovery, since ``rebase -u`` only rewrites a header: a crash after a merge was
        marked done but before its children were rebased would otherwise leave them naming
        a file the delete then removes."""
        open_files: set[str] = set()
        if self.running is not None and any(m.rebase for m in self.work.merges):
            with contextlib.suppress(QsnapError):  # QEMU gone: nothing is open
                async with await Monitor.connect(self.running.qmp) as monitor:
                    open_files = {f for chain in (await monitor.block_chains()).values()
                                  for _, f in chain}
        for merge in self.work.merges:
            for child in merge.rebase:
                if child not in open_files and os.path.exists(child):
                    await images.rebase_unsafe(child, merge.base, merge.base_format)
            if merge.rebase:
                crash_point(f"delete: children of {os.path.basename(merge.top)} rebased")


async def _worded(step: Awaitable[T], what: str, merge: Merge) -> T:
    """Run a commit job's *step*; its failure in the delete's words (libvirt's)."""
    try:
        return await step
    except JobFailedError as exc:
        raise OperationInvalidError(f"{what} failed while deleting disk '{merge.target}' "
                                    f"snapshot: '{exc.reason}'") from None


def _allocated(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


async def resume_if_paused_by_us(work: DeleteWork, running: RuntimeInfo | None) -> None:
    """A crash between the pause and the resume around a pivot leaves the guest paused."""
    if not work.paused or running is None:
        return
    async with await Monitor.connect(running.qmp) as monitor:
        await monitor.resume_if_stopped()


async def settle(ctx: Context, record: dict[str, Any]) -> str:
    """Finish a delete a crash interrupted (the same :meth:`DeleteRun.finish` as the run);
    a line saying what was done."""
    work = DeleteWork.from_record(record)
    done_before = sum(work.merged)
    try:
        await DeleteRun(work, ctx.folder, ctx.running).finish()
    finally:
        await resume_if_paused_by_us(work, ctx.running)
    return (f"domain '{ctx.domain}': finished deleting snapshot '{work.snapshot}', which a "
            f"crash had interrupted ({done_before} of {len(work.merges)} merges had been done)")


async def run(ctx: Context, name: str, plan: MetadataDeletePlan,
              moved: dict[str, SnapshotDef]) -> None:
    """Delete the data of the snapshots *plan* removes (its metadata part is already
    planned: *moved* are the children that get a new parent). Every fact first (the
    snapshots, the images' chains and sizes, what the running guest has open), then the
    plans of internal removals and merges, the checks, and the record; :class:`DeleteRun`
    carries it out."""
    folder, info = ctx.folder, ctx.running
    definition = folder.definition
    external = any(folder.read_snapshot(n).is_external for n in plan.remove)
    names = folder.snapshot_names() if external else plan.remove
    snapshots = await asyncio.to_thread(lambda: {n: folder.read_snapshot(n) for n in names})
    chains: Chains | None = None
    if info is not None and (external or needs_open_images(snapshots, plan.remove,
                                                           definition)):
        chains = await running_chains(info)
    removals = plan_delete_data(
        snapshots, plan, definition, active=info is not None,
        open_images=None if chains is None else {f for c in chains.values() for _, f in c})
    await check_internal(removals, info)
    images_plan = ExternalDeletePlan()
    if external:
        graph = await image_graph(snapshots, definition)
        images_plan = plan_external_delete(
            snapshots, plan.remove, definition, graph,
            None if chains is None else {t: [f for _, f in c] for t, c in chains.items()})
        await check_external(images_plan, graph, info)
    moved = dict(moved)
    for other, snap in snapshots.items():
        if other in plan.remove:
            continue
        renamed = renamed_snapshot(moved.get(other, snap), images_plan.renames)
        if renamed is not None:
            moved[other] = renamed
    work = DeleteWork.build(
        name, removals, images_plan, list(moved.values()), plan.remove, plan.current,
        plan.current_changes, renamed_definition(definition, images_plan.renames))
    await DeleteRun(work, folder, info, ctx.progress, chains).start()
