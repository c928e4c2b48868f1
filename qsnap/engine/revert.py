"""``snapshot-revert``: the guest goes back to a snapshot's moment.

Steps (:func:`run`): everything that can be checked is checked before the running guest is
touched (the snapshot's images and memory file exist and read back, the new overlays can be
created, no image another snapshot builds on would be rewritten); the intent is recorded;
:func:`_carry_out` stops the guest, makes the new overlays or applies internal snapshots,
starts QEMU from the snapshot's definition (paused) and loads its memory; :func:`_started`
records what is left to store and remove, then :func:`_finish` stores the new definition and
current snapshot, removes the overlays of the discarded present and lets the guest run. If
:func:`_carry_out` fails, the QEMU it started is stopped and the overlays it made are
removed: the guest is left stopped, never half-restored.

A ``kill -9`` in between would leave a guest running on images its definition does not name,
or stopped with no way back to what it was. The present was going to be discarded anyway, so
recovery (:func:`settle`) walks the same steps forward:

- ``phase == "begun"``: if the guest's QEMU is still the one from before (same pid), nothing
  was changed and the record is dropped. Otherwise a QEMU the crashed revert started is
  stopped, overlays it made are removed (the revert's checks made sure they did not exist
  before), and :func:`_carry_out` and :func:`_started` run again.
- ``phase == "started"``: QEMU holds (or held) the snapshot's state, paused: :func:`_finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from qsnap import images
from qsnap.engine.context import Context
from qsnap.engine.disk_snapshot import check_overlay_files
from qsnap.engine.guests import stop
from qsnap.engine.kinds import OperationKind
from qsnap.engine.memory import check_whole, load_failure, load_image, read_image
from qsnap.errors import (
    InvalidArgumentError,
    MonitorClosedError,
    OperationInvalidError,
    QsnapError,
    SaveImageError,
)
from qsnap.faults import crash_point
from qsnap.launcher.accel import choose_accel
from qsnap.launcher.process import create_nvram, end_swtpm
from qsnap.launcher.runtime import RuntimeInfo, forget_crash, read_runtime
from qsnap.launcher.tpm import permanent_state
from qsnap.model.capture import capture_of
from qsnap.model.domain import DomainDef, parse_domain, rewound
from qsnap.model.save_image import SaveImage
from qsnap.model.snapshot import DiskSource, SnapshotDef, format_snapshot, parse_snapshot
from qsnap.monitor import Monitor
from qsnap.plan.external_delete import disk_sources
from qsnap.plan.flags import RevertFlags
from qsnap.plan.revert import RevertPlan, plan_revert
from qsnap.store.atomic import unlink_if_present
from qsnap.store.folder import NVRAM_COPIES, TPM_COPIES, DomainFolder
from qsnap.store.intent import IntentRecord, clear_intent, write_intent


@dataclass(frozen=True)
class ImageReferences:
    """Which snapshots name which images: ``states`` maps each image a snapshot's
    ``<domain>`` uses to the snapshots that use it (for external disks the frozen state image,
    for internal ones the image holding the tag); ``overlays`` are the images snapshots made
    (their ``<disks>`` sources); ``parents`` lets a revert tell a leaf."""

    states: dict[str, list[tuple[str, bool]]]
    overlays: frozenset[str]
    parents: frozenset[str]

    @classmethod
    def of(cls, snapshots: dict[str, SnapshotDef]) -> ImageReferences:
        states: dict[str, list[tuple[str, bool]]] = {}
        overlays: set[str] = set()
        for name, snap in snapshots.items():
            external = {d.name for d in snap.disks if d.snapshot == "external"}
            for target, image in disk_sources(snap).items():
                states.setdefault(image, []).append((name, target in external))
            overlays.update(d.source.path for d in snap.disks if d.source.path)
        return cls(states, frozenset(overlays),
                   frozenset(s.parent for s in snapshots.values() if s.parent))

    def shared_bases(self, target: str) -> dict[str, str]:
        """Images that external snapshots (other than *target*) keep as their read-only base,
        each with one such snapshot's name."""
        return {image: next(n for n, ext in users if ext and n != target)
                for image, users in self.states.items()
                if any(ext and n != target for n, ext in users)}

    def has_children(self, name: str) -> bool:
        return name in self.parents


async def discarded_overlays(before: DomainDef, after: DomainDef,
                             refs: ImageReferences) -> list[str]:
    """The images a revert leaves behind that only held the discarded present: disks of the
    old definition that the new one does not use, that no snapshot names, and that are
    snapshot overlays (made by a snapshot, or by an earlier revert on a snapshot's image).
    libvirt deletes them too ("delete the current snapshot's active overlays"); a disk that
    is nobody's overlay (the user's own image) is never touched."""
    keep = {d.source for d in after.disks}
    result = []
    for disk in before.disks:
        image = disk.source
        if image is None or image in keep or image in refs.states or not os.path.isfile(image):
            continue
        if image not in refs.overlays:
            backing = (await images.facts(image)).backing
            if backing not in refs.states:
                continue
        result.append(image)
    return result


def with_new_overlays(snap: SnapshotDef, plan: RevertPlan) -> SnapshotDef | None:
    """libvirt keeps a leaf snapshot's ``<disks>`` naming the overlays its branch writes to:
    after a revert those are the new ones."""
    if not plan.overlays:
        return None
    new = {o.target: o for o in plan.overlays}
    disks = [replace(d, source=DiskSource(file=new[d.name].path), driver_type="qcow2")
             if d.name in new and d.snapshot == "external" else d for d in snap.disks]
    return snap.copy(disks=disks)


def check_revert(plan: RevertPlan, shared_bases: dict[str, str],
                 memory_bytes: int | None = None) -> SaveImage | None:
    """The file-system checks; returns the memory image header for an external memory revert,
    whose file must be whole (with *memory_bytes*, the size the snapshot noted for it).
    *shared_bases* maps images other snapshots build on to one such snapshot's name."""
    for overlay in plan.overlays:
        if not os.path.isfile(overlay.backing):
            raise OperationInvalidError(f"cannot revert to snapshot '{plan.target}': its image "
                                        f"'{overlay.backing}' no longer exists")
    check_overlay_files(plan.overlays, {o.backing for o in plan.overlays})
    rewritten = plan.offline_internal + [
        d.source or "" for d in plan.domain.disks if d.target in plan.internal_disks]
    for image in rewritten:
        if not os.path.isfile(image):
            raise OperationInvalidError(f"cannot revert to snapshot '{plan.target}': its image "
                                        f"'{image}' no longer exists")
        if image in shared_bases:
            raise OperationInvalidError(
                f"reverting to internal snapshot '{plan.target}' would rewrite '{image}', which "
                f"external snapshot '{shared_bases[image]}' keeps as its read-only base")
    if plan.memory == "external":
        if not plan.memory_file:
            raise InvalidArgumentError(f"snapshot '{plan.target}' has no memory file")
        saved = read_image(Path(plan.memory_file))
        try:
            check_whole(Path(plan.memory_file), saved, memory_bytes)
        except SaveImageError as exc:
            raise SaveImageError(f"cannot revert to snapshot '{plan.target}': {exc}; the "
                                 "guest was left as it was", snapshot=plan.target,
                                 path=plan.memory_file) from None
        return saved
    return None


async def check_revert_images(plan: RevertPlan) -> None:
    """What qemu-img and QEMU will need, checked before the running guest is stopped: every
    image the new overlays go on, and every image an internal snapshot is applied to, opens
    with its whole backing chain (not damaged, no file missing, no loop), and the latter
    hold the snapshot's tag. A revert that would fail on them fails here, guest untouched."""
    for overlay in plan.overlays:
        await images.check_chain(overlay.backing, overlay.backing_format)
    for image in plan.offline_internal + [
            d.source or "" for d in plan.domain.disks if d.target in plan.internal_disks]:
        await images.check_chain(image, "qcow2")  # the only format with internal snapshots
        tags = (await images.facts(image)).tags
        if plan.target not in tags:
            raise OperationInvalidError(f"cannot revert to snapshot '{plan.target}': image "
                                        f"'{image}' holds no internal snapshot of that name")


class RevertPhase(StrEnum):
    """Where a revert is (see the module docstring): the old QEMU may still run, or the new
    one holds the snapshot's state."""

    BEGUN = "begun"
    STARTED = "started"


@dataclass
class RevertWork(IntentRecord):
    """A revert to ``snapshot`` planned at ``now`` (which names its overlays) from the
    definition ``before``; ``old_pid`` is the guest's QEMU before it. Once the new QEMU runs,
    ``phase`` becomes "started" and the record gains what to store and remove."""

    snapshot: str
    flags: dict[str, bool]
    now: int
    before: str
    old_pid: int | None
    phase: RevertPhase = RevertPhase.BEGUN
    put: str | None = None
    definition: str | None = None
    discarded: list[str] = field(default_factory=list)
    KIND: ClassVar[str] = OperationKind.REVERT

    def plan(self, snap: SnapshotDef) -> RevertPlan:
        return plan_revert(snap, parse_domain(self.before), RevertFlags(**self.flags),
                           now=self.now)

    def started(self, updated: SnapshotDef | None, plan: RevertPlan,
                discarded: list[str]) -> None:
        self.phase = RevertPhase.STARTED
        self.put = format_snapshot(updated, active=False) if updated is not None else None
        self.definition = plan.domain.to_xml()
        self.discarded = discarded


async def image_references(folder: DomainFolder) -> ImageReferences:
    """Which snapshots name which images, read from every snapshot of *folder*."""
    return await asyncio.to_thread(
        lambda: ImageReferences.of({n: folder.read_snapshot(n) for n in folder.snapshot_names()}))


async def reverted(work: RevertWork, folder: DomainFolder, plan: RevertPlan,
                   refs: ImageReferences) -> None:
    """The guest runs the snapshot's state: note in *work* what remains to store and remove
    (a leaf snapshot's ``<disks>`` follow its new overlays, as libvirt does)."""
    snap = folder.read_snapshot(work.snapshot)
    updated = with_new_overlays(snap, plan) if not refs.has_children(work.snapshot) else None
    discarded = await discarded_overlays(parse_domain(work.before), plan.domain, refs)
    work.started(updated, plan, discarded)


# -- the steps, walked by the run and by recovery --------------------------------------------------

async def prepare(ctx: Context, name: str, flags: RevertFlags
                  ) -> tuple[RevertWork, RevertPlan, ImageReferences, SaveImage | None]:
    """Every fact first (the snapshot, free overlay names, which images others share, the
    memory image, the images' chains), then the plan and the record."""
    folder = ctx.folder
    snap = folder.read_snapshot(name)
    now = int(time.time())
    for stamp in range(now, now + 100):  # overlays are named by the second: a free one
        plan = plan_revert(snap, folder.definition, flags, now=stamp)
        if not any(os.path.lexists(o.path) for o in plan.overlays):
            break
    if plan.start:
        ctx.launch.check(plan.domain)  # an attached QEMU's command line, before it stops
    refs = await image_references(folder)
    capture = capture_of(snap.cookie)
    memory = await asyncio.to_thread(check_revert, plan, refs.shared_bases(name),
                                     capture.memory_bytes if capture is not None else None)
    await check_revert_images(plan)
    work = RevertWork(name, asdict(flags), stamp, folder.definition.to_xml(),
                      ctx.running.pid if ctx.running is not None else None)
    return work, plan, refs, memory


async def run(ctx: Context, name: str, flags: RevertFlags) -> None:
    work, plan, refs, memory = await prepare(ctx, name, flags)
    await asyncio.to_thread(write_intent, ctx.folder.path, work.record())
    crash_point("revert: intent recorded")
    try:
        await _carry_out(ctx, plan, memory)
    except BaseException:
        # It left the guest stopped and removed what it made: nothing to finish.
        await asyncio.to_thread(clear_intent, ctx.folder.path)
        raise
    await _started(ctx, work, plan, refs)
    forget_crash(ctx.paths)  # the crashed present, if it was one, is gone
    await asyncio.to_thread(clear_intent, ctx.folder.path)


async def settle(ctx: Context, record: dict[str, Any]) -> str:
    """Finish an interrupted revert (see the module docstring); a line saying what was done."""
    work = RevertWork.from_record(record)
    name = f"domain '{ctx.domain}': the revert to snapshot '{work.snapshot}'"
    if work.phase is RevertPhase.STARTED:
        await _finish(ctx, work, work.plan(ctx.folder.read_snapshot(work.snapshot)),
                      gone_is_fine=True)
        return f"{name} was finished (the guest had been started from it)"
    if work.old_pid is not None and ctx.running is not None and \
            ctx.running.pid == work.old_pid:
        return f"{name} had not begun; nothing was changed"
    plan = work.plan(ctx.folder.read_snapshot(work.snapshot))
    if ctx.running is not None:  # the QEMU the crashed revert started
        await stop(ctx.paths, ctx.running)
        ctx.running = None
    for overlay in plan.overlays:
        await asyncio.to_thread(unlink_if_present, overlay.path)
    memory = None
    if plan.memory == "external" and plan.memory_file:
        memory = await asyncio.to_thread(read_image, Path(plan.memory_file))
    await _carry_out(ctx, plan, memory)
    await _started(ctx, work, plan, await image_references(ctx.folder))
    return f"{name} was done again from the start, which a crash had interrupted"


async def _nvram(ctx: Context, plan: RevertPlan) -> None:
    """The UEFI variable store the snapshot had (its kept copy), or a fresh one from the
    template with ``--reset-nvram``. Done again after a crash, it gives the same file."""
    if plan.nvram_from == "template":
        await create_nvram(plan.domain, reset=True)
    elif plan.nvram_from == "snapshot" and plan.domain.nvram:
        await asyncio.to_thread(ctx.folder.restore_state, NVRAM_COPIES, plan.target,
                                plan.domain.nvram)


async def _tpm(ctx: Context, plan: RevertPlan) -> None:
    """The emulated TPM's permanent state as the snapshot found it (its kept copy), once the
    old guest's swtpm has ended; a memory snapshot's stream then sets the rest. A snapshot
    that kept none (taken before qsnap kept them) leaves the TPM as it is, as libvirt does."""
    target = permanent_state(plan.domain.element, ctx.tpm_state)
    if target is None or not target.parent.is_dir():
        return  # never started: its first start makes it
    await end_swtpm(ctx.paths)
    if await asyncio.to_thread(ctx.folder.restore_state, TPM_COPIES, plan.target, target):
        for stale in target.parent.glob("*.volatilestate"):
            await asyncio.to_thread(unlink_if_present, str(stale))


async def _carry_out(ctx: Context, plan: RevertPlan, memory: SaveImage | None) -> None:
    """Stop the guest, make the new overlays, apply internal snapshots, start QEMU and load
    the snapshot's state. The new QEMU is left paused: :func:`_finish` lets it run once the
    revert's metadata is stored (a running TCG guest takes the CPU that the metadata's syncs
    need: storing it took 13-24 ms once the guest ran, 2 ms before, measured here)."""
    if ctx.running is not None:
        await stop(ctx.paths, ctx.running)
        ctx.running = None
    await _nvram(ctx, plan)
    await _tpm(ctx, plan)
    created: list[str] = []
    started: RuntimeInfo | None = None
    try:
        for overlay in plan.overlays:
            await images.create_overlay(overlay.path, overlay.format, overlay.backing,
                                        overlay.backing_format)
            created.append(overlay.path)
        for image in plan.offline_internal:
            await images.qemu_img("snapshot", "-a", plan.target, image)
        if not plan.start:
            return
        launched = plan.domain if plan.memory is None else rewound(plan.domain,
                                                                   str(uuid.uuid4()))
        started = await ctx.launch(launched, ctx.paths, choose_accel(plan.domain.type),
                                   incoming=plan.memory == "external", paused=True)
        ctx.running = started
        async with await Monitor.connect(started.qmp) as monitor:
            if plan.memory == "external" and memory is not None:
                source = Path(plan.memory_file or "")
                try:
                    await load_image(monitor, source, memory, ctx.progress)
                except MonitorClosedError:
                    raise load_failure(f"reverting to snapshot '{plan.target}'", source,
                                       memory, aborted=False, domain=ctx.domain) from None
            elif plan.memory == "internal":
                tops = await monitor.block_tops(nvram=True)
                nodes = [tops[t] for t in plan.internal_disks]
                await monitor.load_internal(plan.target, nodes[0], nodes)
    except BaseException:
        if started is not None:
            with contextlib.suppress(QsnapError):
                await stop(ctx.paths, started)
            ctx.running = None
        for path in created:
            await asyncio.to_thread(unlink_if_present, path)
        raise


async def _started(ctx: Context, work: RevertWork, plan: RevertPlan,
                   refs: ImageReferences) -> None:
    """The guest holds the snapshot's state: record what remains to store and remove, then
    :func:`_finish`."""
    await reverted(work, ctx.folder, plan, refs)
    await asyncio.to_thread(write_intent, ctx.folder.path, work.record())
    crash_point("revert: guest started")
    await _finish(ctx, work, plan)


async def _finish(ctx: Context, work: RevertWork, plan: RevertPlan, *,
                  gone_is_fine: bool = False) -> None:
    """Store the new definition and current snapshot (and a leaf's new ``<disks>``), remove
    the discarded overlays, and let the guest run unless the plan keeps it paused. Repeating
    any of it is harmless. *gone_is_fine*: a recovery finds the new QEMU gone (it died with
    the crashed qsnap): the revert is still complete, and the guest stays shut off."""
    assert work.definition is not None
    put = [parse_snapshot(work.put, redefine=True, internal=True)] if work.put else []
    await asyncio.to_thread(ctx.folder.save, put=put, current=work.snapshot,
                            definition=parse_domain(work.definition))
    for path in work.discarded:
        await asyncio.to_thread(unlink_if_present, path)
    crash_point("revert: metadata stored")
    if not (plan.start and plan.run):
        return
    info = read_runtime(ctx.paths)
    if info is None and gone_is_fine:
        return
    if info is None:
        raise OperationInvalidError("the reverted guest's QEMU is gone; it cannot be run")
    async with await Monitor.connect(info.qmp) as monitor:
        if await monitor.status() in ("paused", "prelaunch"):
            await monitor.resume()
