"""Carrying out a full-system snapshot of a running guest.

Internal: one ``snapshot-save`` job stores every disk's state and the memory (in the first
disk), the way ``savevm`` does; if the job fails, whatever it created is deleted again.
External: the guest is paused (or, with ``--live``, paused by QEMU at the end of the copy), its
memory streamed into the snapshot's memory file in libvirt's save-image format, the disks
switched to their overlays in one transaction, and the guest resumed if it was running. On
failure the memory file and any overlay are removed and the guest goes on as before.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from qsnap.engine.disk_snapshot import check_overlay_files, switch_overlays
from qsnap.engine.memory import write_image
from qsnap.errors import AlreadyExistsError, QsnapError
from qsnap.launcher.process import RuntimeInfo
from qsnap.model.domain import DomainDef
from qsnap.monitor import Monitor
from qsnap.plan.full_snapshot import FullSnapshotPlan


async def take_full_snapshot(plan: FullSnapshotPlan, domain: DomainDef, running: RuntimeInfo,
                             live: bool) -> None:
    async with await Monitor.connect(running.qmp) as monitor:
        if plan.external:
            await _external(monitor, plan, domain, live)
        else:
            await _internal(monitor, plan)


async def _internal(monitor: Monitor, plan: FullSnapshotPlan) -> None:
    tag = plan.snapshot.name or ""
    tops = await monitor.block_tops()
    nodes = [tops[target] for target in plan.internal_disks]
    held = await monitor.internal_snapshot_tags(nodes)
    for target, node in zip(plan.internal_disks, nodes, strict=True):
        if tag in held[node]:
            raise AlreadyExistsError(f"disk {target} already holds an internal snapshot named "
                                     f"'{tag}'")
    try:
        await monitor.save_internal(tag, tops[plan.vmstate_disk or ""], nodes)
    except QsnapError:
        # The tag was free on every disk before, so anything under it now is this job's leftover.
        with contextlib.suppress(QsnapError):
            await monitor.delete_internal(tag, nodes)
        raise


async def _external(monitor: Monitor, plan: FullSnapshotPlan, domain: DomainDef,
                    live: bool) -> None:
    memory = Path(plan.snapshot.memory_file or "")
    if os.path.lexists(memory):
        raise AlreadyExistsError(f"refusing to overwrite existing file '{memory}' (the "
                                 "snapshot's memory file)")
    check_overlay_files(plan.overlays, {d.source for d in domain.disks if d.source})
    was_running = await monitor.status() == "running"
    if was_running and not live:
        await monitor.pause()
    try:
        await write_image(monitor, memory, domain.to_xml(secure=True), was_running)
        try:
            await switch_overlays(monitor, plan.overlays)
        except BaseException:
            memory.unlink(missing_ok=True)
            raise
    finally:
        if was_running:
            with contextlib.suppress(QsnapError):
                await monitor.resume()
