"""The intent record of a snapshot being taken, and how a crash part-way is settled.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qsnap import images
from qsnap.engine.disk_snapshot import check_overlay_files
from qsnap.engine.full_snapshot import merge_back
from qsnap.engine.guests import stop
from qsnap.engine.memory import image_is_complete
from qsnap.errors import AlreadyExistsError, InvalidArgumentError, QsnapError
from qsnap.launcher.command import RuntimePaths
from qsnap.launcher.process import RuntimeInfo
from qsnap.model.domain import DomainDef
from qsnap.model.names import check_new_file_path
from qsnap.model.snapshot import SnapshotDef
from qsnap.monitor import Monitor
from qsnap.plan.disk_snapshot import Overlay
from qsnap.store.atomic import unlink_if_present
from qsnap.store.folder import KEEP, DomainFolder
from qsnap.store.intent import IntentRecord, clear_intent
from qsnap.store.journal import Batch


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
    strategy: str | None = None
    existed: list[str] = field(default_factory=list)
    KIND: ClassVar[str] = "create"

    @classmethod
    def build(cls, snapshot: SnapshotDef, metadata: Batch, *, running: bool,
              overlays: list[Overlay], internal: list[tuple[str, str]], halt: bool,
              was_running: bool, strategy: str | None = None) -> CreateWork:
        return cls(snapshot.name or "", metadata.to_record(),
                   "running" if running else "offline", halt,
                   was_running, [asdict(o) for o in overlays], [list(p) for p in internal],
                   snapshot.memory_file if snapshot.memory == "external" else None, strategy,
                   [o.path for o in overlays if os.path.lexists(o.path)])

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
                                   "name the file itself")
    if memory and os.path.lexists(memory):
        raise AlreadyExistsError(f"refusing to overwrite existing file '{memory}' (the "
                                 "snapshot's memory file)")


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


async def settle_create(work: CreateWork, folder: DomainFolder, paths: RuntimePaths,
                        running: RuntimeInfo | None) -> bool:
    """Roll the interrupted create forward or back (see the module docstring); True when
    the snapshot was complete and its metadata is now stored."""
    if running is not None and work.where == "running":
        async with await Monitor.connect(running.qmp) as monitor:
            complete = await _settle_live(work, monitor)
            if complete:
                await store_snapshot(work, folder, paths, None)
            if work.was_running:
                await monitor.resume_if_stopped()
        if complete and work.halt:
            await stop(paths, running)
        return complete
    complete = await _settle_offline(work)
    if complete:
        await store_snapshot(work, folder, paths, None)
    return complete


async def _settle_live(work: CreateWork, monitor: Monitor) -> bool:
    """Settle against the QEMU that took (part of) the snapshot; True if it is complete."""
    if work.memory_file is not None:
        # Only a background snapshot keeps the guest's RAM write-protected while QEMU writes
        # it; cancelling that one is the path on which QEMU 7.2 was seen to hang the guest,
        # so it is waited for instead (it ends on its own, at disk speed).
        await monitor.end_migration(cancel=work.strategy != "background")
    if work.internal:
        await monitor.settle_jobs("snapshot-save")
        return await _settle_live_tags(work, monitor)
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
    tops = await monitor.block_tops()
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
        return tag in images.internal_tags(await images.info(image))
    except QsnapError:
        return False


async def _is_overlay_of(overlay: Overlay) -> bool:
    """Whether *overlay* exists as a readable image on its planned backing file (a file
    QEMU or qemu-img was killed while creating is not, and holds no guest data)."""
    if not os.path.isfile(overlay.path):
        return False
    try:
        details = await images.info(overlay.path)
    except QsnapError:
        return False
    backing = details.get("full-backing-filename") or details.get("backing-filename")
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
