"""The intent record of a revert, and how a crash part-way is finished.

A revert stops the guest, makes new overlays (or applies internal snapshots), starts QEMU from
the snapshot's definition, loads its memory, and only then stores the new definition and
current snapshot and removes the overlays of the discarded present. A ``kill -9`` in between
would leave a guest running on images its definition does not name, or stopped with no way
back to what it was. The present was going to be discarded anyway, so the safe direction is
forward:

- ``phase == "begun"``: if the guest's QEMU is still the one from before (same pid), nothing
  was changed and the record is dropped. Otherwise the revert is done again from the start: a
  QEMU the crashed revert started is stopped, overlays it made are removed (the revert's
  checks made sure they did not exist before), and the revert runs again.
- ``phase == "started"``: QEMU holds (or held) the snapshot's state, paused; the metadata and
  the removals recorded with the phase are carried out, then the guest runs (unless the
  revert asked for it paused).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from qsnap.engine.guests import stop
from qsnap.engine.memory import read_image
from qsnap.engine.revert import (
    ImageReferences,
    carry_out_revert,
    discarded_overlays,
    run_reverted,
    with_new_overlays,
)
from qsnap.launcher.command import RuntimePaths
from qsnap.launcher.process import Launcher, RuntimeInfo
from qsnap.model.domain import parse_domain
from qsnap.model.snapshot import SnapshotDef, format_snapshot, parse_snapshot
from qsnap.plan.flags import RevertFlags
from qsnap.plan.revert import RevertPlan, plan_revert
from qsnap.store.atomic import unlink_if_present
from qsnap.store.folder import DomainFolder
from qsnap.store.intent import IntentRecord


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
    phase: str = "begun"
    put: str | None = None
    definition: str | None = None
    discarded: list[str] = field(default_factory=list)
    KIND: ClassVar[str] = "revert"

    def plan(self, snap: SnapshotDef) -> RevertPlan:
        return plan_revert(snap, parse_domain(self.before), RevertFlags(**self.flags),
                           now=self.now)

    def started(self, updated: SnapshotDef | None, plan: RevertPlan,
                discarded: list[str]) -> None:
        self.phase = "started"
        self.put = format_snapshot(updated, active=False) if updated is not None else None
        self.definition = plan.domain.to_xml()
        self.discarded = discarded


async def store_revert(work: RevertWork, folder: DomainFolder) -> None:
    """The revert's last steps: the new definition and current snapshot (and a leaf's new
    ``<disks>``), then the discarded overlays go."""
    assert work.definition is not None
    put = [parse_snapshot(work.put, redefine=True, internal=True)] if work.put else []
    await asyncio.to_thread(folder.save, put=put, current=work.snapshot,
                            definition=parse_domain(work.definition))
    for path in work.discarded:
        await asyncio.to_thread(unlink_if_present, path)


async def redo_revert(work: RevertWork, folder: DomainFolder, paths: RuntimePaths,
                      running: RuntimeInfo | None, launch: Launcher) -> RevertPlan:
    """Carry out the revert of *work* again from the start (see the module docstring)."""
    plan = work.plan(folder.read_snapshot(work.snapshot))
    if running is not None:
        await stop(paths, running)
    for overlay in plan.overlays:
        await asyncio.to_thread(unlink_if_present, overlay.path)
    memory = None
    if plan.memory == "external" and plan.memory_file:
        memory = await asyncio.to_thread(read_image, Path(plan.memory_file))
    await carry_out_revert(plan, paths, None, memory, launch=launch)
    return plan


async def finish_revert(work: RevertWork, folder: DomainFolder, paths: RuntimePaths,
                        running: RuntimeInfo | None, launch: Launcher) -> str:
    """Finish an interrupted revert; a line saying what was done."""
    name = f"domain '{folder.name}': the revert to snapshot '{work.snapshot}'"
    if work.phase == "begun":
        if work.old_pid is not None and running is not None and running.pid == work.old_pid:
            return f"{name} had not begun; nothing was changed"
        plan = await redo_revert(work, folder, paths, running, launch)
        await reverted(work, folder, plan, await image_references(folder))
        await store_revert(work, folder)
        await run_reverted(plan, paths)
        return f"{name} was done again from the start, which a crash had interrupted"
    await store_revert(work, folder)
    if running is not None:  # the QEMU the revert started, paused until the metadata was in
        await run_reverted(work.plan(folder.read_snapshot(work.snapshot)), paths)
    return f"{name} was finished (the guest had been started from it)"


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
