"""Carrying out a full-system snapshot of a running guest.

Internal: one ``snapshot-save`` job stores every disk's state and the memory (in the first
disk), the way ``savevm`` does; if the job fails, whatever it created is deleted again.
External, by the strategy :func:`qsnap.plan.full_snapshot.choose_capture` picked: *paused*, the
guest is paused, its memory streamed into the memory file (libvirt's save-image format), the
disks switched to their overlays in one transaction, and the guest resumed; *precopy*, the
same but QEMU pauses the guest only at the end of the copy; *background*, the guest is paused
only while the disks switch and QEMU saves the device state, then runs while QEMU writes its
RAM as it was at that moment. On failure the memory file and any overlay are removed and the
guest goes on as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from qsnap.engine.disk_snapshot import check_tops, switch_overlays
from qsnap.engine.memory import write_image
from qsnap.errors import AlreadyExistsError, JobFailedError, OperationFailedError, QsnapError
from qsnap.logs import logger
from qsnap.model.capture import Capture, CaptureStrategy
from qsnap.model.domain import DomainDef
from qsnap.monitor import BlockDevice, Monitor
from qsnap.monitor.jobs import JobPurpose
from qsnap.plan.disk_snapshot import Overlay
from qsnap.plan.full_snapshot import FullSnapshotPlan
from qsnap.plan.save import choose_image_format
from qsnap.progress import ProgressCallback

log = logger("qsnap")


async def take_full_snapshot(plan: FullSnapshotPlan, domain: DomainDef, monitor: Monitor,
                             strategy: CaptureStrategy, progress: ProgressCallback | None = None,
                             checkpoint: Callable[[], None] | None = None) -> Capture:
    """Take the snapshot through *monitor* (connected to the guest's QEMU); returns how its
    memory was captured and how long the guest paused (measured from QEMU's own STOP/RESUME
    event timestamps). *progress* hears how the memory file is written (external only: an
    internal save is one QEMU job with no byte counts). *checkpoint* raises where the
    operation was aborted (domjobabort): called before the memory file is sealed."""
    async with monitor.pause_clock() as clock:
        devices = await monitor.disks()
        check_tops(devices, {d.target: d.source for d in domain.disks if d.source})
        if plan.external:
            await _external(monitor, plan, domain, strategy, progress, devices, checkpoint)
        else:
            await _internal(monitor, plan)
    memory = plan.snapshot.memory_file if plan.external else None
    return Capture(strategy, clock.paused, os.path.getsize(memory) if memory else None)


async def background_refusal(monitor: Monitor, domain: DomainDef,
                             memory_file: str) -> str | None:
    """Why a background snapshot of this guest into *memory_file* cannot be taken, or None.

    Besides QEMU's own answer, the memory file's file system must have room for all of the
    guest's RAM: when QEMU 7.2's background snapshot fails part-way (measured here with a full
    tmpfs), it leaves the guest's RAM write-protected, and the guest hangs for good while QEMU
    still reports it running; even ``stop`` then never returns. Other strategies fail cleanly.
    """
    ram = domain.memory_bytes
    try:
        stats = os.statvfs(os.path.dirname(memory_file) or ".")
    except OSError as exc:
        return f"cannot inspect the memory file's folder: {exc.strerror}"
    free = stats.f_bavail * stats.f_frsize
    if free < ram + _SPACE_MARGIN:
        return (f"the memory file's file system has {free >> 20} MiB free, less than the "
                f"guest's {ram >> 20} MiB of RAM and {_SPACE_MARGIN >> 20} MiB to spare, and a "
                "background snapshot that runs out of space leaves the guest hung")
    return await monitor.background_snapshot_refusal()


_SPACE_MARGIN = 64 << 20


async def _internal(monitor: Monitor, plan: FullSnapshotPlan) -> None:
    tag = plan.snapshot.name or ""
    tops = await monitor.block_tops(nvram=True)
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
                    strategy: CaptureStrategy, progress: ProgressCallback | None,
                    devices: dict[str, BlockDevice],
                    checkpoint: Callable[[], None] | None) -> None:
    # The files were checked before the intent was recorded (create.check_new_files);
    # the memory file is still created exclusively, which catches a race with another writer.
    memory = Path(plan.snapshot.memory_file or "")
    if strategy == "background":
        await _background(monitor, plan, domain, memory, progress, devices, checkpoint)
        return
    was_running = await monitor.status() == "running"
    if was_running and strategy == "paused":
        await monitor.pause()
    done = False
    try:
        # A paused save takes the faster format this QEMU has; a live pre-copy stays raw (its
        # stream is bounded by qsnap as it passes through: see memory.PRECOPY_BOUND).
        image_format = (choose_image_format(None, None, await monitor.stream_support())
                        if strategy == "paused" else "raw")
        await write_image(monitor, memory, domain.to_xml(secure=True), was_running,
                          progress=progress, ram=domain.memory_bytes, image_format=image_format,
                          before_seal=checkpoint)
        try:
            await switch_overlays(monitor, plan.overlays, devices=devices)
        except BaseException:
            memory.unlink(missing_ok=True)
            raise
        done = True
    finally:
        # A manual disk keeps the finished snapshot's guest paused, for the user's own
        # storage snapshot; anything else (or a failure) runs it again.
        if was_running and not (done and plan.leave_paused):
            with contextlib.suppress(QsnapError):
                await monitor.resume()


async def _background(monitor: Monitor, plan: FullSnapshotPlan, domain: DomainDef,
                      memory: Path, progress: ProgressCallback | None,
                      devices: dict[str, BlockDevice],
                      checkpoint: Callable[[], None] | None) -> None:
    """Pause, switch the disks, start the background snapshot (QEMU saves the device state
    and runs the guest again at once), then wait while QEMU writes RAM as it was at the pause.
    If the save fails after the switch, the overlays are merged back (active commit), so the
    guest ends on its old images with nothing lost, as if no snapshot had been asked for."""
    switched = False

    async def pause_and_switch() -> None:
        nonlocal switched
        await monitor.pause()
        try:
            await switch_overlays(monitor, plan.overlays, devices=devices)
        except BaseException:
            with contextlib.suppress(QsnapError):
                await monitor.resume()
            raise
        switched = True

    try:
        await write_image(monitor, memory, domain.to_xml(secure=True), True, background=True,
                          at_start=pause_and_switch, progress=progress,
                          ram=domain.memory_bytes, before_seal=checkpoint)
    except BaseException:
        with contextlib.suppress(QsnapError):
            if await monitor.status() == "paused":
                await monitor.resume()
        if switched:
            await merge_back(monitor, plan.overlays)
        raise


async def finish_merge_backs(monitor: Monitor) -> None:
    """Finish the merge-back jobs a crash left behind (:func:`merge_back` was undoing a
    failed snapshot): each runs on to its pivot. One left at ``pending`` holds its disk's
    I/O until it is finalized. One that failed leaves its disk on the overlay, which the
    caller then finds in the chain."""
    for commit in await monitor.jobs.leftover_commits(JobPurpose.UNDO):
        try:
            await commit.run_to_end()
        except JobFailedError as exc:
            log.warning("a merge-back left by a crash failed: %s", exc.reason)
    await monitor.drop_detached_nodes()


async def merge_back(monitor: Monitor, overlays: list[Overlay]) -> None:
    """Undo a disk switch on a running guest: commit each new overlay into the image below it
    (active commit, then pivot) and remove the overlay file."""
    chains = await monitor.block_chains()
    for overlay in overlays:
        chain = chains[overlay.target]
        commit = monitor.jobs.commit(JobPurpose.UNDO, overlay.target)
        await commit.start(chain[0][0], chain[1][0], None)
        try:
            await commit.run_to_end()
        except JobFailedError as exc:
            raise OperationFailedError(
                f"merging overlay '{overlay.path}' back after the failed snapshot failed: "
                f"{exc.reason}; disk '{overlay.target}' stays on it", path=overlay.path) \
                from None
        await monitor.drop_detached_nodes()
        Path(overlay.path).unlink(missing_ok=True)
