"""blockcommit, blockpull, blockjob and domblklist on a running tiny guest, through the
``qsnap`` command as a user types it, and the live-backup recipe of libvirt's documentation:

    qsnap snapshot-create-as DOM tmp --disk-only --atomic --no-metadata
    cp BASE /backup/
    qsnap blockcommit DOM vda --active --pivot --verbose --wait
    qsnap domblklist DOM
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import crash_step_wanted
from qemu_guest import (
    backing_chain,
    domain_disks,
    guest_module,
    started_guest,
    wait_for_counter,
)

from qsnap import Engine

GUEST = guest_module()


def qsnap(state: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    """The command's result, its output as written (a carriage return stays one)."""
    done = subprocess.run([sys.executable, "-m", "qsnap.cli", "--state-dir", str(state),
                           *args], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


async def in_thread(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(qsnap, state, *args)


async def overlaid_guest(tmp_path: Path) -> tuple[Engine, Path, str, str]:
    """A running guest "g" whose vda got an overlay from a ``--no-metadata`` disk snapshot
    (the recipe's first step): (engine, state folder, base image, overlay)."""
    engine, _folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    base = (await domain_disks(engine))[0]
    ok(await in_thread(state, "snapshot-create-as", "g", "tmp", "--disk-only",
                       "--no-metadata"))
    return engine, state, base, (await domain_disks(engine))[0]


async def test_the_live_backup_recipe(tmp_path: Path) -> None:
    """The copied base holds the moment of 'tmp' (the guest's disk counter then), the guest
    counts on through it all, and afterwards the disk is the base again, with everything
    the guest wrote meanwhile, and the overlay gone from QEMU's chain."""
    engine, folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    base = Path((await domain_disks(engine))[0])
    serial = folder / "serial.log"
    before = await wait_for_counter(serial, 15)
    made = await in_thread(state, "snapshot-create-as", "g", "tmp", "--disk-only", "--atomic",
                           "--no-metadata")
    assert ok(made) == "Domain snapshot tmp created\n"
    after = GUEST.last_serial_counter(serial) or 0
    assert ok(await in_thread(state, "snapshot-list", "g", "--name")) == "\n"  # no metadata
    overlay = Path((await domain_disks(engine))[0])
    assert overlay != base and backing_chain(overlay) == [str(overlay), str(base)]

    backup = tmp_path / "backup" / base.name
    backup.parent.mkdir()
    shutil.copy(base, backup)
    frozen = GUEST.read_disk_counter(backup)
    assert frozen is not None and before - 6 <= frozen <= after + 1, (before, frozen, after)

    await wait_for_counter(serial, after + 20)  # the guest writes on, into the overlay
    committed = await in_thread(state, "blockcommit", "g", "vda", "--active", "--pivot",
                                "--verbose", "--wait")
    assert ok(committed) == "\nSuccessfully pivoted\n"
    assert committed.stderr.endswith("\rBlock commit: [100 %]")
    listed = ok(await in_thread(state, "domblklist", "g"))
    assert listed.splitlines()[2].split() == ["vda", str(base)]
    assert await domain_disks(engine) == [str(base)]
    still = GUEST.last_serial_counter(serial) or 0
    resumed = await wait_for_counter(serial, still + 10)
    assert resumed > still  # the guest never stopped counting
    assert (GUEST.read_disk_counter(base) or 0) > frozen  # its writes went into base
    assert GUEST.read_disk_counter(backup) == frozen  # the backup is the moment of tmp
    assert await engine.domstate("g") == "running"
    assert not (state / "domains" / "g" / "intent.json").exists()

    # The backup is a whole image that a guest boots from.
    assert subprocess.run(["qemu-img", "check", str(backup)],
                          capture_output=True).returncode == 0
    await engine.destroy("g")
    copy = Engine(tmp_path / "copy-state")
    booted = tmp_path / "backup" / "serial.log"
    xml = (folder / "g.xml").read_text().replace(str(base), str(backup))
    await copy.define(xml.replace("<name>g</name>", "<name>restored</name>").replace(
        str(serial), str(booted)))
    await copy.start("restored")
    try:
        await wait_for_counter(booted, 5)
    finally:
        await copy.destroy("restored")


async def test_an_active_commit_pivot_never_stops_the_guest(tmp_path: Path) -> None:
    """Through the API, watched on a shared QMP connection: no STOP, the job stops at
    pending (where qsnap marks its decision) and the guest ends up on the base."""
    from qemu.qmp import QMPClient

    from qsnap import CreateFlags, snapshot_xml_from_args
    from qsnap.launcher.runtime import read_runtime, runtime_paths

    engine, _folder = await started_guest(tmp_path, 1)
    base = (await domain_disks(engine))[0]
    await engine.create("g", snapshot_xml_from_args("tmp"),
                        CreateFlags(disk_only=True, no_metadata=True))
    info = read_runtime(runtime_paths(engine.state_dir, "g"))
    assert info is not None
    watcher = QMPClient("watcher")
    await watcher.connect(info.qmp)
    engine.share_connection(info.qmp, watcher)
    try:
        with watcher.listener(("STOP", "RESUME", "JOB_STATUS_CHANGE")) as listener:
            assert await engine.block_commit("g", "vda", active=True, pivot=True,
                                             wait=True) == "pivoted"
            seen = []
            while not listener.empty():
                seen.append(await listener.get())
        assert [e["event"] for e in seen if e["event"] in ("STOP", "RESUME")] == []
        assert "pending" in [e["data"]["status"] for e in seen
                             if e["event"] == "JOB_STATUS_CHANGE"]
        assert (await watcher.execute("query-status"))["status"] == "running"
    finally:
        await watcher.disconnect()
    assert await domain_disks(engine) == [base]
    await engine.destroy("g")


async def test_commit_left_synchronized_then_pivoted_by_another_command(tmp_path: Path
                                                                        ) -> None:
    """``blockcommit --active`` alone returns at once; the job is QEMU's until a later
    ``blockjob --pivot`` (another process) finishes it. Meanwhile every other command on
    the domain works, and what would change images is refused by name."""
    engine, state, base, overlay = await overlaid_guest(tmp_path)
    assert ok(await in_thread(state, "blockcommit", "g", "vda", "--active")) == \
        "Active Block Commit started\n"
    again = await in_thread(state, "blockcommit", "g", "vda", "--active")
    assert again.returncode == 1 and "already in active block job" in again.stderr
    for _ in range(100):  # a tiny overlay: ready at once, but give QEMU its time
        info = await in_thread(state, "blockjob", "g", "vda", "--info")
        if info.stderr.endswith("[100 %]"):
            break
        await asyncio.sleep(0.1)
    assert ok(info) == "\n\n" and info.stderr == "\rActive Block Commit: [100 %]"
    assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    refused = await in_thread(state, "snapshot-create-as", "g", "s1", "--disk-only")
    assert refused.returncode == 1 and "blockjob g vda --pivot" in refused.stderr
    assert await domain_disks(engine) == [overlay]
    assert ok(await in_thread(state, "blockjob", "g", "vda", "--pivot")) == "\n"
    assert await domain_disks(engine) == [base]
    assert ok(await in_thread(state, "blockjob", "g", "vda")) == "No current block job for vda\n"
    gone = await in_thread(state, "blockjob", "g", "vda", "--abort")
    assert gone.returncode == 1
    assert gone.stderr == "error: invalid argument: disk vda does not have an active block job\n"
    await engine.destroy("g")


async def test_keep_overlay_and_abort_leave_the_guest_on_its_overlay(tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    ok(await in_thread(state, "snapshot-create-as", "g", "tmp", "--disk-only",
                       "--no-metadata"))
    overlay = (await domain_disks(engine))[0]
    kept = await in_thread(state, "blockcommit", "g", "vda", "--keep-overlay")
    assert ok(kept) == "\nCommit complete, overlay image kept\n"
    assert await domain_disks(engine) == [overlay]
    assert os.path.exists(overlay)
    ok(await in_thread(state, "blockcommit", "g", "vda", "--active", "--wait"))
    assert ok(await in_thread(state, "blockjob", "g", "vda", "--abort")) == "\n"
    assert await domain_disks(engine) == [overlay]
    await wait_for_counter(folder / "serial.log", (GUEST.last_serial_counter(
        folder / "serial.log") or 0) + 5)
    await engine.destroy("g")


async def test_commit_below_the_top_and_delete(tmp_path: Path) -> None:
    """base <- mid <- top: ``--top mid`` merges mid into base (the guest stays on top, whose
    backing file becomes base), ``--delete`` removes mid, and the disk data reads the same."""
    engine, _folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    base = (await domain_disks(engine))[0]
    ok(await in_thread(state, "snapshot-create-as", "g", "mid", "--disk-only",
                       "--no-metadata"))
    mid = (await domain_disks(engine))[0]
    ok(await in_thread(state, "snapshot-create-as", "g", "top", "--disk-only",
                       "--no-metadata"))
    top = (await domain_disks(engine))[0]
    needs_active = await in_thread(state, "blockcommit", "g", "vda", "--wait")
    assert needs_active.stderr == ("error: invalid argument: commit of 'vda' active layer "
                                   "requires active flag\n")
    done = await in_thread(state, "blockcommit", "g", "vda", "--top", mid, "--wait",
                           "--delete")
    assert ok(done) == "\nCommit complete\n"
    assert backing_chain(Path(top)) == [top, base]
    assert not os.path.exists(mid)
    assert await domain_disks(engine) == [top]
    await engine.destroy("g")


async def test_a_commit_into_an_image_a_snapshot_needs_is_refused(tmp_path: Path) -> None:
    engine, _folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    base = (await domain_disks(engine))[0]
    ok(await in_thread(state, "snapshot-create-as", "g", "s1", "--disk-only"))
    overlay = (await domain_disks(engine))[0]
    before = sorted(os.listdir(state / "domains" / "g"))
    refused = await in_thread(state, "blockcommit", "g", "vda", "--pivot")
    assert refused.returncode == 1
    assert f"image '{base}' is written into this commit, but snapshot 's1'" in refused.stderr
    assert sorted(os.listdir(state / "domains" / "g")) == before
    assert await domain_disks(engine) == [overlay]
    assert backing_chain(Path(overlay)) == [overlay, base]
    await engine.destroy("g")


async def test_blockpull_flattens_the_chain(tmp_path: Path) -> None:
    engine, state, base, top = await overlaid_guest(tmp_path)
    verbose_alone = await in_thread(state, "blockpull", "g", "vda", "--verbose")
    assert verbose_alone.stderr == "error: Option --wait is required by option --verbose\n"
    pulled = await in_thread(state, "blockpull", "g", "vda", "--wait", "--verbose")
    assert ok(pulled) == "\nPull complete\n"
    assert pulled.stderr.endswith("\rBlock Pull: [100 %]")
    assert backing_chain(Path(top)) == [top]
    assert os.path.exists(base)
    assert GUEST.read_disk_counter(Path(top)) is not None
    await engine.destroy("g")


#: Crash points of ``blockcommit --pivot --delete``, as QSNAP_CRASH_TRACE lists them (20):
#: 1-3 write the intent record, 4 recorded, 5 job started, 6-8 record "pivot", 9 completing,
#: 10-12 record "decided", 13 decided, 14 finalized, 15-17 write the definition, 18 journal
#: applied, 19 metadata saved, 20 record unlinked. Walked: each of the commit's own steps and
#: the last point of each write (a write's inner points are the atomic-write code's, which
#: tests/test_store.py walks), and 21, past the end; the suites on the two QEMUs share them
#: out (tests/helpers.py).
PIVOT_STEPS = [k for k in (3, 4, 5, 8, 9, 12, 13, 14, 17, 19, 20, 21) if crash_step_wanted(k)]


@pytest.mark.parametrize("step", PIVOT_STEPS)
async def test_a_crash_during_a_pivot_is_finished_by_the_next_command(tmp_path: Path,
                                                                      step: int) -> None:
    """Killed at each step of ``blockcommit --pivot --delete``: the next command leaves the
    definition naming exactly the image QEMU writes to, every file it names in place, and
    the guest running."""
    engine, state, base, _overlay = await overlaid_guest(tmp_path)
    crashed = await asyncio.to_thread(
        qsnap, state, "blockcommit", "g", "vda", "--pivot", "--delete",
        env={"QSNAP_CRASH_AT": str(step)})
    if crashed.returncode == 0:
        assert step == PIVOT_STEPS[-1] and step > 20, "a crash point was not reached"
        await engine.destroy("g")
        return
    assert crashed.returncode == 86, crashed.stderr
    ok(await in_thread(state, "recover", "g"))
    disks = await domain_disks(engine)
    from qsnap.launcher.runtime import read_runtime, runtime_paths
    from qsnap.monitor import Monitor
    info = read_runtime(runtime_paths(engine.state_dir, "g"))
    assert info is not None
    async with await Monitor.connect(info.qmp) as monitor:
        chains = await monitor.block_chains()
        jobs = await monitor.jobs.all()
    if (state / "domains" / "g" / "intent.json").exists():  # the job runs on, ready: finish it
        assert [j.status for j in jobs] == ["ready"]
        ok(await in_thread(state, "blockjob", "g", "vda", "--pivot"))
        disks = await domain_disks(engine)
        async with await Monitor.connect(info.qmp) as monitor:
            chains = await monitor.block_chains()
    assert disks == [chains["vda"][0][1]]
    assert all(os.path.exists(f) for _, f in chains["vda"])
    assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    if disks != [base]:  # the crash came before the pivot: the commit can be done again
        ok(await in_thread(state, "blockcommit", "g", "vda", "--pivot", "--delete"))
        assert await domain_disks(engine) == [base]
    await engine.destroy("g")


def _crash_point_of(state: Path, label: str, *args: str) -> int:
    """The index of crash point *label* in a run of ``qsnap ARGS`` (QSNAP_CRASH_TRACE)."""
    trace = state.parent / "trace.txt"
    trace.unlink(missing_ok=True)
    ok(qsnap(state, *args, env={"QSNAP_CRASH_TRACE": str(trace)}))
    return trace.read_text().splitlines().index(label) + 1


async def test_a_killed_blockpull_wait_leaves_no_concluded_job_behind(tmp_path: Path) -> None:
    """A ``blockpull --wait`` killed once its job concluded, before it dismissed it: QEMU 7.2
    crashed at the next command's query-named-block-nodes (three of three times, issue 28),
    taking the guest with it. The pull is recorded; the next command dismisses the job first,
    and the guest counts on through a disk-only snapshot after it."""
    engine, state, _base, _top = await overlaid_guest(tmp_path)
    step = _crash_point_of(state, "blockpull: job concluded", "blockpull", "g", "vda", "--wait")
    ok(await in_thread(state, "snapshot-create-as", "g", "again", "--disk-only",
                       "--no-metadata"))
    ok(await in_thread(state, "blockpull", "g", "vda", "--wait"))  # one not killed: its own
    crashed = await asyncio.to_thread(qsnap, state, "blockpull", "g", "vda", "--wait",
                                      env={"QSNAP_CRASH_AT": str(step)})
    assert crashed.returncode == 86, crashed.stderr
    assert (state / "domains" / "g" / "intent.json").exists()
    recovered = ok(await in_thread(state, "recover", "g"))
    assert "block pull of disk 'vda' had ended; its job was dismissed" in recovered
    ok(await in_thread(state, "snapshot-create-as", "g", "after", "--disk-only"))
    assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    serial = tmp_path / "g" / "serial.log"
    await wait_for_counter(serial, (GUEST.last_serial_counter(serial) or 0) + 5)
    await engine.destroy("g")


async def test_recover_names_a_commit_whose_waiter_was_killed(tmp_path: Path) -> None:
    """A killed ``blockcommit --active --wait`` leaves its job ready in QEMU and its record:
    'recover' said "nothing to recover" (issue 28). It now says the commit is under way and
    how to end it; the record stays until blockjob ends it."""
    engine, state, base, _overlay = await overlaid_guest(tmp_path)
    waiting = subprocess.Popen([sys.executable, "-m", "qsnap.cli", "--state-dir", str(state),
                                "blockcommit", "g", "vda", "--active", "--wait", "--bandwidth",
                                "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):  # killed while it waits, once the job runs
        if (state / "domains" / "g" / "intent.json").exists() or waiting.poll() is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    waiting.kill()
    waiting.wait()
    recovered = ok(await in_thread(state, "recover", "g"))
    assert "nothing to recover" not in recovered
    assert ("the block commit of disk 'vda' is still under way in QEMU, and stays recorded: "
            "'blockjob g vda --info' shows it; '--pivot' or '--abort' ends it") in recovered
    ok(await in_thread(state, "blockjob", "g", "vda", "--pivot"))
    assert ok(await in_thread(state, "recover", "g")) == "Domain g: nothing to recover\n\n"
    assert await domain_disks(engine) == [base]
    await engine.destroy("g")
