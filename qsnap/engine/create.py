"""``snapshot-create``: taking a snapshot, its intent record, and how a crash part-way is
settled.

:func:`run` gathers the facts (the request, the definition, the current snapshot, QEMU's run
state and what it offers), makes one plan (:mod:`qsnap.plan.disk_snapshot` or
:mod:`qsnap.plan.full_snapshot`), records it, and takes the snapshot
(:mod:`qsnap.engine.disk_snapshot`, :mod:`qsnap.engine.full_snapshot`).

Taking a snapshot changes images (overlays switched in, a memory file written, internal tags
added) before the metadata that names them is stored. A ``kill -9`` between the two would
leave images nobody knows about, or a guest writing to an overlay its definition does not
name. So :class:`CreateWork` is recorded before the first change, and :func:`settle_create`
decides from what the images and QEMU show whether the snapshot was complete:

- complete (every overlay in place, the memory image finished, every internal tag present):
  roll forward, store the metadata as the create would have;
- otherwise roll back: stop a migration QEMU is still writing, remove the memory file,
  merge overlays the guest may have written to back into their images (a live commit on a
  running guest, ``qemu-img commit`` when QEMU is gone), remove the rest, and delete
  partial internal tags.

Either way a guest that qsnap had paused runs again. The create's own error path settles the
same way, so one piece of code decides in both cases.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qsnap import images
from qsnap.engine.context import Context
from qsnap.engine.disk_snapshot import check_overlay_files, take_disk_snapshot
from qsnap.engine.guests import state_from, stop
from qsnap.engine.kinds import OperationKind
from qsnap.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    OperationIncompleteError,
    OperationInvalidError,
    QsnapError,
)
from qsnap.faults import crash_point
from qsnap.launcher.runtime import RuntimeInfo, RuntimePaths, crash_words, read_crash
from qsnap.launcher.tpm import permanent_state
from qsnap.logs import logger
from qsnap.model.capture import CaptureStrategy
from qsnap.model.domain import NVRAM_TARGET, DomainDef, parse_domain_element
from qsnap.model.names import check_new_file_path, default_snapshot_name
from qsnap.model.snapshot import SnapshotDef, parse_snapshot
from qsnap.monitor import Monitor
from qsnap.plan.create import check_create_request
from qsnap.plan.disk_snapshot import (
    DiskSnapshotPlan,
    Overlay,
    check_not_crashed,
    plan_disk_snapshot,
)
from qsnap.plan.flags import CreateFlags
from qsnap.plan.full_snapshot import (
    FullSnapshotPlan,
    background_wanted,
    choose_capture,
    plan_full_snapshot,
)
from qsnap.plan.save import check_migratable, device_blockers
from qsnap.store.atomic import unlink_if_present
from qsnap.store.folder import KEEP, NVRAM_COPIES, TPM_COPIES, DomainFolder
from qsnap.store.intent import INTENT_NAME, IntentRecord, clear_intent, write_intent
from qsnap.store.journal import Batch

log = logger("qsnap")


@dataclass
class CreateWork(IntentRecord):
    """What a create is about to do, as JSON-able data.

    ``where`` is "running" (through QEMU) or "offline" (qemu-img); ``overlays`` are
    ``Overlay`` fields of the overlays it makes or reuses; ``internal`` lists (disk target,
    image) pairs that get tag ``snapshot``; ``memory_file`` is the external memory image and
    ``strategy`` how it is captured (a background capture switches the disks first).
    ``existed`` names overlay paths that were there before (an empty file may be reused, as
    libvirt allows): a roll back never removes those.

    ``metadata`` is the change of metadata files that stores the snapshot (and the domain
    definition its disks now use), as :meth:`Batch.to_record` gives it, planned before the
    first image changes. The record holds it byte for byte, so storing it needs no journal
    of its own (:meth:`DomainFolder.apply_covered`): a crash part-way is finished by
    settling this record, which applies it again."""

    snapshot: str
    metadata: dict[str, Any]
    where: str
    halt: bool = False
    was_running: bool = False
    overlays: list[dict[str, Any]] = field(default_factory=list)
    internal: list[list[str]] = field(default_factory=list)
    memory_file: str | None = None
    strategy: CaptureStrategy | None = None
    existed: list[str] = field(default_factory=list)
    leave_paused: bool = False  # a ``manual`` disk: the finished snapshot leaves it paused
    KIND: ClassVar[str] = OperationKind.CREATE

    @classmethod
    def build(cls, snapshot: SnapshotDef, metadata: Batch, *, running: bool,
              overlays: list[Overlay], internal: list[tuple[str, str]], halt: bool,
              was_running: bool, strategy: CaptureStrategy | None = None,
              leave_paused: bool = False) -> CreateWork:
        return cls(snapshot.name or "", metadata.to_record(),
                   "running" if running else "offline", halt,
                   was_running, [asdict(o) for o in overlays], [list(p) for p in internal],
                   snapshot.memory_file if snapshot.memory == "external" else None, strategy,
                   [o.path for o in overlays if os.path.lexists(o.path)], leave_paused)

    @staticmethod
    def plan_metadata(folder: DomainFolder, snapshot: SnapshotDef, definition: DomainDef, *,
                      keep: bool) -> Batch:
        """The metadata change a create stores: the snapshot as the new current one (unless
        *keep* is false: ``--no-metadata``) and the domain definition after it."""
        if keep:
            return folder.plan_save(put=[snapshot], current=snapshot.name,
                                    definition=definition)
        return folder.plan_save(current=KEEP, definition=definition)

    @property
    def overlay_list(self) -> list[Overlay]:
        return [Overlay(**o) for o in self.overlays]


def check_new_files(overlays: list[Overlay], snapshot: SnapshotDef, domain: DomainDef) -> None:
    """Refuse, before the intent is recorded, files that would overwrite something: a roll
    back removes the files the record names, so they must not exist yet."""
    check_overlay_files(overlays, {d.source for d in domain.disks if d.source})
    memory = snapshot.memory_file if snapshot.memory == "external" else None
    if memory:
        check_new_file_path("the snapshot's memory file", memory)
    if memory and os.path.islink(memory):
        raise InvalidArgumentError(f"the snapshot's memory file '{memory}' is a symbolic link; "
                                   "name the file itself", path=memory)
    if memory and os.path.lexists(memory):
        raise AlreadyExistsError(f"refusing to overwrite existing file '{memory}' (the "
                                 "snapshot's memory file)", path=memory)


async def store_snapshot(work: CreateWork, folder: DomainFolder, paths: RuntimePaths,
                         running: RuntimeInfo | None, snapshot: SnapshotDef | None = None, *,
                         clear: bool = False) -> None:
    """Roll forward: the metadata the create stores once its images are in place (then
    ``--halt`` stops the guest); with *clear*, the intent record is removed last. *snapshot*
    carries what only the create itself knew (how its memory was captured); after a crash
    the record's own copy is stored instead."""
    batch = Batch.from_record(work.metadata)
    if snapshot is not None:
        where, data = folder.snapshot_file(snapshot, current=True)
        if where in batch.writes:
            batch.write(where, data)
    halting = work.halt and running is not None

    def apply() -> None:  # and clear, in the same worker-thread trip
        folder.apply_covered(batch)
        if clear and not halting:
            clear_intent(folder.path)

    await asyncio.to_thread(apply)
    if halting:
        assert running is not None
        await stop(paths, running)
        if clear:
            await asyncio.to_thread(clear_intent, folder.path)


async def settle(ctx: Context, record: dict[str, Any]) -> str:
    """Settle a create a crash interrupted (see the module docstring); a line saying which
    way it went."""
    work = CreateWork.from_record(record)
    done = await settle_create(work, ctx.folder, ctx.paths, ctx.running)
    return (f"domain '{ctx.domain}': snapshot '{work.snapshot}', which a crash had "
            + ("interrupted once its images were in place, was stored" if done else
               "interrupted before it was complete, was undone; nothing of it is left"))


async def settle_create(work: CreateWork, folder: DomainFolder, paths: RuntimePaths,
                        running: RuntimeInfo | None) -> bool:
    """Roll the interrupted create forward or back (see the module docstring); True when
    the snapshot was complete and its metadata is now stored."""
    if running is not None and work.where == "running":
        async with await Monitor.connect(running.qmp) as monitor:
            complete = await _settle_live(work, monitor)
            if complete:
                await store_snapshot(work, folder, paths, None)
            # A finished snapshot with a manual disk stays paused for the user (rolled
            # back, the guest goes on as it was).
            if work.was_running and not (complete and work.leave_paused):
                await monitor.resume_if_stopped()
        if not complete:
            await asyncio.to_thread(folder.drop_kept, work.snapshot)
        if complete and work.halt:
            await stop(paths, running)
        return complete
    complete = await _settle_offline(work)
    if complete:
        await store_snapshot(work, folder, paths, None)
    else:
        await asyncio.to_thread(folder.drop_kept, work.snapshot)
    return complete


async def _settle_live(work: CreateWork, monitor: Monitor) -> bool:
    """Settle against the QEMU that took (part of) the snapshot; True if it is complete."""
    if work.memory_file is not None:
        # Only a background snapshot keeps the guest's RAM write-protected while QEMU writes
        # it; cancelling that one is the path on which QEMU 7.2 was seen to hang the guest,
        # so it is waited for instead (it ends on its own, at disk speed).
        await monitor.end_migration(cancel=work.strategy != "background")
    if work.internal:
        await monitor.jobs.settle("snapshot-save")
        return await _settle_live_tags(work, monitor)
    from qsnap.engine.full_snapshot import finish_merge_backs, merge_back
    from qsnap.engine.memory import image_is_complete

    await finish_merge_backs(monitor)
    chains = await monitor.block_chains()
    overlays = work.overlay_list
    switched = [o for o in overlays
                if chains.get(o.target) and chains[o.target][0][1] == o.path]
    memory_done = work.memory_file is None or image_is_complete(Path(work.memory_file))
    if len(switched) == len(overlays) and memory_done:
        return True
    _remove_memory_file(work)
    if switched:
        await merge_back(monitor, switched)
    _remove_new_overlays(work, keep={o.path for o in switched})
    return False


async def _settle_live_tags(work: CreateWork, monitor: Monitor) -> bool:
    tops = await monitor.block_tops(nvram=True)
    nodes = [tops[target] for target, _ in work.internal if target in tops]
    held = await monitor.internal_snapshot_tags(nodes)
    having = [n for n in nodes if work.snapshot in held[n]]
    if len(having) == len(work.internal):
        return True
    if having:
        await monitor.delete_internal(work.snapshot, having)
    return False


async def _settle_offline(work: CreateWork) -> bool:
    """Settle from the files alone: the guest is stopped, or its QEMU died mid-create."""
    from qsnap.engine.memory import image_is_complete

    if work.internal:
        having = [image for _, image in work.internal if await _has_tag(image, work.snapshot)]
        if len(having) == len(work.internal):
            return True
        for image in having:
            await images.snapshot_delete(image, work.snapshot)
        return False
    overlays = [o for o in work.overlay_list if not o.reuse]
    valid = [o for o in overlays if await _is_overlay_of(o)]
    memory_done = work.memory_file is None or image_is_complete(Path(work.memory_file))
    if len(valid) == len(overlays) and memory_done:
        return True
    _remove_memory_file(work)
    for overlay in valid:
        # The guest may have written to it before QEMU died: its data goes down, not away.
        await images.commit(overlay.path, overlay.backing)
    _remove_new_overlays(work, keep=set())
    return False


async def _has_tag(image: str, tag: str) -> bool:
    try:
        return tag in (await images.facts(image)).tags
    except QsnapError:
        return False


async def _is_overlay_of(overlay: Overlay) -> bool:
    """Whether *overlay* exists as a readable image on its planned backing file (a file
    QEMU or qemu-img was killed while creating is not, and holds no guest data)."""
    if not os.path.isfile(overlay.path):
        return False
    try:
        backing = (await images.facts(overlay.path)).backing
    except QsnapError:
        return False
    return backing is not None and os.path.realpath(str(backing)) == \
        os.path.realpath(overlay.backing)


def _remove_memory_file(work: CreateWork) -> None:
    if work.memory_file is not None:
        unlink_if_present(work.memory_file)


def _remove_new_overlays(work: CreateWork, keep: set[str]) -> None:
    """Remove the overlay files this create made: never a reused one, one that was there
    before, or one in *keep*."""
    for overlay in work.overlay_list:
        if not overlay.reuse and overlay.path not in keep and overlay.path not in work.existed:
            unlink_if_present(overlay.path)


def regular_disk_files(domain: DomainDef, snap: SnapshotDef) -> set[str]:
    """Disk sources that are regular files (the one fact overlay naming needs from disk)."""
    sources = {d.source for d in domain.disks if d.source}
    if snap.domain is not None:
        sources |= {d.source for d in parse_domain_element(snap.domain).disks if d.source}
    return {s for s in sources if os.path.isfile(s)}


# -- the run -----------------------------------------------------------------------------------

async def run(ctx: Context, xml: str | bytes | None, flags: CreateFlags,
              live_strategy: str | None) -> str:
    """Take the snapshot *xml* asks for (see the module docstring); returns its name."""
    if ctx.running is None:
        return await _run(ctx, None, xml, flags, live_strategy)
    async with await Monitor.connect(ctx.running.qmp) as monitor:
        return await _run(ctx, monitor, xml, flags, live_strategy)


@dataclass(frozen=True)
class _Decision:
    """What a create decided before its first change: the plan, how the memory is captured,
    the guest's run state (for the settling to resume it), the internal snapshots' images
    and the TPM state file to keep."""

    definition: DomainDef
    plan: DiskSnapshotPlan | FullSnapshotPlan
    strategy: CaptureStrategy | None
    state: str
    internal: list[tuple[str, str]]
    tpm_file: Path | None


async def _decide(ctx: Context, monitor: Monitor | None, xml: str | bytes | None,
                  flags: CreateFlags, live_strategy: str | None) -> _Decision:
    """Gather the facts and plan (the rules are :mod:`qsnap.plan`'s). QEMU is asked only what
    the plan needs: the run state for a full-system snapshot or one that pauses the guest,
    the background-snapshot probe where one is wanted."""
    folder, info = ctx.folder, ctx.running
    active = info is not None
    if not active and not flags.redefine:
        check_not_crashed(folder.name, crash_words(read_crash(ctx.paths)), flags)
    request = parse_snapshot(xml if xml is not None else "<domainsnapshot/>",
                             validate=flags.validate, offline=flags.disk_only or not active)
    definition = folder.definition
    now = int(time.time())
    name = request.name if request.name is not None else default_snapshot_name(now)
    check_create_request(request.copy(name=name), flags, folder.name,
                         name_taken=folder.has_snapshot(name))
    current = folder.read_current()
    if current is not None and not folder.has_snapshot(current):
        current = None
    regular_files = regular_disk_files(definition, request)
    tpm_file = permanent_state(definition.element, ctx.tpm_state)
    if monitor is not None and not flags.disk_only:
        state = await state_from(monitor)
        full = plan_full_snapshot(request, definition, flags, state=state, current=current,
                                  now=now, regular_files=regular_files)
        strategy = await _capture(monitor, full, definition, flags, live_strategy, state)
        sources = {d.target: d.source or "" for d in definition.disks}
        sources[NVRAM_TARGET] = definition.nvram or ""
        return _Decision(definition, full, strategy, state,
                         [(t, sources[t]) for t in full.internal_disks], tpm_file)
    if live_strategy is not None:
        raise InvalidArgumentError("a live strategy applies to full-system snapshots of a "
                                   "running guest only")
    plan = plan_disk_snapshot(request, definition, flags, active=active, current=current,
                              now=now, regular_files=regular_files)
    # Only a snapshot that pauses the guest may have to resume it when settled; a disk-only
    # one does not ask QEMU for the run state otherwise (a round trip).
    state = await state_from(monitor) if plan.leave_paused and monitor is not None else \
        "shut off"
    return _Decision(definition, plan, None, state,
                     [("", image) for image in plan.internal_images], tpm_file)


async def _capture(monitor: Monitor, plan: FullSnapshotPlan, definition: DomainDef,
                   flags: CreateFlags, live_strategy: str | None,
                   state: str) -> CaptureStrategy:
    """How a full-system snapshot's memory is captured; refused where QEMU cannot save it."""
    refusal = None
    if background_wanted(external=plan.external, live=flags.live, requested=live_strategy):
        from qsnap.engine.full_snapshot import background_refusal

        refusal = await background_refusal(monitor, definition,
                                           plan.snapshot.memory_file or "")
    strategy = choose_capture(external=plan.external, live=flags.live,
                              requested=live_strategy, running=state == "running",
                              background_refusal=refusal)
    check_migratable(definition.name, await monitor.migration_blockers()
                     + device_blockers(definition), "take a memory snapshot")
    return strategy


def _record(ctx: Context, decision: _Decision, flags: CreateFlags) -> CreateWork:
    """The file checks, the kept firmware and TPM states, the metadata planned and the
    intent recorded: one worker-thread trip, before the first image changes."""
    folder, plan, definition = ctx.folder, decision.plan, decision.definition
    check_new_files(plan.overlays, plan.snapshot, definition)
    if definition.nvram and plan.snapshot.is_external and not flags.no_metadata:
        # The firmware's variables as the snapshot finds them, for its revert.
        folder.keep_state(NVRAM_COPIES, plan.snapshot.name or "", definition.nvram)
    if decision.tpm_file is not None and not flags.no_metadata:
        # The TPM's permanent state as the snapshot finds it (internal or external: only a
        # memory snapshot's stream has it otherwise).
        folder.keep_state(TPM_COPIES, plan.snapshot.name or "", decision.tpm_file)
    metadata = CreateWork.plan_metadata(folder, plan.snapshot, plan.domain_after,
                                        keep=not flags.no_metadata)
    work = CreateWork.build(
        plan.snapshot, metadata, running=ctx.running is not None, overlays=plan.overlays,
        internal=decision.internal, halt=flags.halt, was_running=decision.state == "running",
        strategy=decision.strategy, leave_paused=plan.leave_paused)
    write_intent(folder.path, work.record())
    return work


async def _take(ctx: Context, monitor: Monitor | None, decision: _Decision,
                flags: CreateFlags) -> SnapshotDef:
    """Make the snapshot's images (and memory); the snapshot as it is to be stored."""
    plan, definition = decision.plan, decision.definition
    if isinstance(plan, FullSnapshotPlan):
        # Here, not at the top: a disk-only snapshot needs none of the memory-stream code.
        from qsnap.engine.full_snapshot import take_full_snapshot
        from qsnap.model.capture import with_capture

        assert monitor is not None and decision.strategy is not None
        capture = await take_full_snapshot(plan, definition, monitor, decision.strategy,
                                           ctx.progress, ctx.checkpoint)
        return plan.snapshot.copy(cookie=with_capture(plan.snapshot.cookie, capture))
    if definition.nvram in plan.internal_images:
        from qsnap.launcher.process import create_nvram

        await create_nvram(definition)  # never started: none yet to take the tag
    agent = None
    if flags.quiesce:
        from qsnap.launcher.command import agent_socket

        agent = agent_socket(definition, ctx.paths)
    await take_disk_snapshot(plan, monitor, agent)
    return plan.snapshot


async def _run(ctx: Context, monitor: Monitor | None, xml: str | bytes | None,
               flags: CreateFlags, live_strategy: str | None) -> str:
    folder = ctx.folder
    decision = await _decide(ctx, monitor, xml, flags, live_strategy)
    try:
        work = await asyncio.to_thread(_record, ctx, decision, flags)
    except OSError as exc:
        raise OperationInvalidError(
            f"cannot record the snapshot '{decision.plan.snapshot.name}' in {folder.path}: "
            f"{exc.strerror or exc}; nothing was changed") from None
    crash_point("create: intent recorded")
    in_place = False
    try:
        snapshot = await _take(ctx, monitor, decision, flags)
        crash_point("create: images in place")
        in_place = True
        await store_snapshot(work, folder, ctx.paths, ctx.running, snapshot, clear=True)
        return work.snapshot
    except BaseException as exc:
        if in_place and isinstance(exc, OSError):  # the state folder is full, say
            raise OperationIncompleteError(
                f"snapshot '{work.snapshot}' was taken (its images are in place), but "
                f"storing its metadata in {folder.path} failed: {exc.strerror or exc}. "
                f"It stays recorded in {folder.path / INTENT_NAME}; the next command on "
                f"domain '{folder.name}' (or 'qsnap recover {folder.name}') stores it "
                "once that works again") from exc
        if not await _settle_failed(ctx, work, exc) or not isinstance(exc, Exception):
            raise
        log.warning("snapshot '%s' was taken although a step after it failed: %s",
                    work.snapshot, exc)
    await asyncio.to_thread(clear_intent, folder.path)
    return work.snapshot


async def _settle_failed(ctx: Context, work: CreateWork, exc: BaseException) -> bool:
    """After a failed create, settle its intent as a crash would be, so that whatever
    the failure left (an overlay its own clean-up could not remove) is undone now; True
    if the snapshot turned out complete and is stored. If settling fails too, the intent
    stays for the next command and the error says so."""
    folder = ctx.folder
    if isinstance(exc, AlreadyExistsError):  # refused before any change; the file is
        await asyncio.to_thread(clear_intent, folder.path)  # someone else's
        return False
    was_running = ctx.running is not None
    now_running = ctx.refresh()  # QEMU may have died meanwhile
    try:
        complete = await settle_create(work, folder, ctx.paths,
                                       now_running if was_running else None)
    except QsnapError as undo:
        raise OperationIncompleteError(
            f"{exc}; undoing the snapshot '{work.snapshot}' failed too ({undo}): it stays "
            "recorded, and the next command on the domain (or 'qsnap recover "
            f"{folder.name}') settles it") from exc
    if not complete:
        await asyncio.to_thread(clear_intent, folder.path)
    return complete
