"""What a careless user and an unlucky machine do to a real guest (issue 15): files removed by
hand, names at the file system's limits, a QEMU that dies or freezes mid-operation, a backing
loop made by hand. Each case must end in a clear error that names what is wrong, with images,
guest and metadata as they were, and a domain that the next command can still use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import domain_disks, guest_module, started_guest, wait_for_counter

import qsnap
from qsnap import CreateFlags, Engine, snapshot_xml_from_args

GUEST = guest_module()
DISK_ONLY = CreateFlags(disk_only=True)


async def test_a_snapshot_whose_overlay_was_removed_by_hand_keeps_the_base(
        tmp_path: Path) -> None:
    """s1 froze the base, s2 froze o1; o1 removed by hand. Deleting s1 must not treat the base
    as unneeded: o2 (the guest's disk) still reads through the missing o1 into it."""
    engine, folder = await started_guest(tmp_path, 1)
    try:
        base = folder / "g-vda.qcow2"
        o1, o2 = folder / "o1.qcow2", folder / "o2.qcow2"
        await engine.create("g", snapshot_xml_from_args("s1", diskspecs=[f"vda,file={o1}"]),
                            DISK_ONLY)
        await engine.create("g", snapshot_xml_from_args("s2", diskspecs=[f"vda,file={o2}"]),
                            DISK_ONLY)
        o1.unlink()
        before = tree_picture(tmp_path / "state")
        for name in ("s2", "s1"):
            with pytest.raises(qsnap.OperationInvalidError, match=r"o1\.qcow2") as caught:
                await engine.delete("g", name)
            assert "does not exist" in str(caught.value)
        assert base.exists()
        assert tree_picture(tmp_path / "state") == before
        assert [s.name for s in await engine.snapshots("g")] == ["s1", "s2"]
    finally:
        await engine.destroy("g")


def _signal_qemu_on(monkeypatch: pytest.MonkeyPatch, command: str, signum: int) -> list[int]:
    """Send *signum* to the QEMU on the other end of the monitor right after it accepted
    *command*: a real QEMU dying (or freezing) at that moment. Returns the pids signalled."""
    from qsnap.monitor import client
    original = client.Monitor.execute
    signalled: list[int] = []

    async def execute(self: client.Monitor, name: str, *args: object, **kwargs: object) -> object:
        result = await original(self, name, *args, **kwargs)  # type: ignore[arg-type]
        pid = self.peer_pid()
        if name == command and pid is not None and not signalled:
            os.kill(pid, signum)
            signalled.append(pid)
        return result

    monkeypatch.setattr(client.Monitor, "execute", execute)
    return signalled


async def test_a_restore_whose_qemu_dies_while_loading_returns_and_frees_the_domain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    image = folder / "g.save"
    await engine.save("g", image)
    killed = _signal_qemu_on(monkeypatch, "migrate-incoming", signal.SIGKILL)
    # The image is whole: QEMU, killed from outside, is to blame, not the image (issue 28).
    with pytest.raises(qsnap.GuestExitedError, match=r"QEMU exited while loading '.*g\.save', "
                                                     r"which reads whole"):
        await asyncio.wait_for(engine.restore(image), 60)
    assert killed
    monkeypatch.undo()
    assert await engine.domstate("g") == "shut off"
    await engine.restore(image)  # the domain is free, and the image still good
    try:
        assert await engine.domstate("g") == "running"
    finally:
        await engine.destroy("g")


async def test_a_save_whose_qemu_is_frozen_reports_the_stall(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    monkeypatch.setenv("QSNAP_STALL_TIMEOUT", "1")
    monkeypatch.setenv("QSNAP_QMP_TIMEOUT", "2")
    frozen = _signal_qemu_on(monkeypatch, "migrate", signal.SIGSTOP)
    try:
        with pytest.raises(qsnap.OperationIncompleteError,
                           match=r"stalled during migrate.*SIGSTOP.*stays recorded"):
            await asyncio.wait_for(engine.save("g", folder / "g.save"), 60)
        assert frozen
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    monkeypatch.undo()
    # Once QEMU runs again, the next command settles the save: the image was incomplete, so
    # it is gone and the guest runs on.
    try:
        (line,) = await engine.recover("g")
        assert "was undone" in line
        assert await engine.domstate("g") == "running"
        assert not (folder / "g.save").exists()
    finally:
        await engine.destroy("g")


def _pictures(tmp_path: Path) -> dict[str, tuple[int, bytes]]:
    """Everything under tmp_path but what the running guest itself changes (its serial log
    and the content of its images and overlays; their presence and mode still count)."""
    return {k: (v[0], b"") if k.endswith(".qcow2") or "/g-vd" in k else v
            for k, v in tree_picture(tmp_path).items() if not k.endswith("serial.log")}


async def test_names_at_the_file_systems_limits_are_refused_before_anything_changes(
        tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    try:
        long_name = "a" * 251  # a valid snapshot name; its default overlay name is not
        cases = [
            (snapshot_xml_from_args(long_name), DISK_ONLY, "g-vda.aaa.*is 257 bytes"),
            (snapshot_xml_from_args("s", diskspecs=[f"vda,file={folder}/{'b' * 256}"]),
             DISK_ONLY, "overlay for disk vda.*is 256 bytes"),
            (snapshot_xml_from_args("s", memspec=f"file={folder}/{'m' * 256}"), CreateFlags(),
             "memory file.*is 256 bytes"),
        ]
        for xml, flags, match in cases:
            before = _pictures(tmp_path)
            with pytest.raises(qsnap.InvalidArgumentError, match=match):
                await engine.create("g", xml, flags)
            assert _pictures(tmp_path) == before
        with pytest.raises(qsnap.InvalidArgumentError, match=r"save image.*is 300 bytes"):
            await engine.save("g", folder / ("x" * 300))
        # The domain is not wedged: the next commands work.
        assert await engine.recover("g") == []
        await engine.create("g", snapshot_xml_from_args(long_name, diskspecs=[
            f"vda,file={folder}/short.qcow2"]), DISK_ONLY)
        assert [s.name for s in await engine.snapshots("g")] == [long_name]
        assert await engine.domstate("g") == "running"
    finally:
        await engine.destroy("g")


async def test_a_snapshot_name_with_a_newline_can_be_listed_and_deleted(tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    try:
        for name in ("two\nlines", "tab\tand space "):
            await engine.create("g", snapshot_xml_from_args(name), DISK_ONLY)
            assert (folder / f"g-vda.{name}").exists()
        assert [s.name for s in await engine.snapshots("g")] == ["tab\tand space ", "two\nlines"]
        assert await engine.current("g") == "tab\tand space "
        await engine.delete("g", "tab\tand space ")  # an active commit of the newest overlay
        await engine.delete("g", "two\nlines", qsnap.DeleteFlags(metadata_only=True))
        assert await engine.snapshots("g") == []
        await engine.create("g", snapshot_xml_from_args("after"), DISK_ONLY)
    finally:
        await engine.destroy("g")


async def test_overlays_are_private_live_and_offline(tmp_path: Path) -> None:
    """QEMU made overlays 0640 and qemu-img 0644, even over a 0600 base (libvirt fixed the
    same as CVE-2025-13193): the guest's new writes must be no more readable than its base."""
    engine, folder = await started_guest(tmp_path, 1)
    os.chmod(folder / "g-vda.qcow2", 0o600)
    try:
        await engine.create("g", snapshot_xml_from_args("live"), DISK_ONLY)
    finally:
        await engine.destroy("g")
    await engine.create("g", snapshot_xml_from_args("offline"), DISK_ONLY)
    for name in ("g-vda.live", "g-vda.offline"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name


async def test_a_frozen_qemu_is_named_as_stopped(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from qsnap.monitor import Monitor
    engine, _ = await started_guest(tmp_path, 1)
    runtime = engine._runtime("g")[1]
    assert runtime is not None
    os.kill(runtime.pid, signal.SIGSTOP)
    try:
        with pytest.raises(qsnap.QsnapError,
                           match=rf"process {runtime.pid} \(qemu-system-x86\) is stopped"):
            await Monitor.connect(runtime.qmp, timeout=1)
    finally:
        os.kill(runtime.pid, signal.SIGCONT)
    await engine.destroy("g")


def _qemu_img_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-img" in cmdline and marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


async def test_a_backing_loop_made_by_hand_is_named_and_changes_nothing(tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    base = folder / "g-vda.qcow2"
    try:
        await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
    finally:
        await engine.destroy("g")
    overlay = folder / "g-vda.s1"
    subprocess.run(["qemu-img", "rebase", "-u", "-b", str(overlay), "-F", "qcow2", str(base)],
                   check=True)  # base → overlay → base
    before = _pictures(tmp_path)
    started = time.monotonic()
    for attempt, match in (
            (engine.create("g", snapshot_xml_from_args("s2"), DISK_ONLY), "infinite loop"),
            (engine.delete("g", "s1"), "loops"),
            (engine.revert("g", "s1"), "infinite loop")):
        with pytest.raises(qsnap.QsnapError, match=match):
            await asyncio.wait_for(attempt, 60)
        assert _pictures(tmp_path) == before
    assert time.monotonic() - started < 10
    assert [s.name for s in await engine.snapshots("g")] == ["s1"]
    assert not _qemu_img_processes(str(folder))


def test_a_killed_qsnap_leaves_no_qemu_img_behind(tmp_path: Path) -> None:
    """``qemu-img check`` spins on a backing loop; the qsnap process running it is killed:
    the qemu-img goes with it instead of holding the images' locks."""
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(a), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(a), "-F", "qcow2",
                    str(b)], check=True)
    subprocess.run(["qemu-img", "rebase", "-u", "-b", str(b), "-F", "qcow2", str(a)], check=True)
    script = ("import asyncio, sys; from qsnap import images; "
              "asyncio.run(images.qemu_img('check', sys.argv[1], timeout=3600))")
    runner = subprocess.Popen([sys.executable, "-c", script, str(a)])
    deadline = time.monotonic() + 20
    while not _qemu_img_processes(str(a)):
        assert time.monotonic() < deadline, "qemu-img never started"
        time.sleep(0.05)
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 5
    while _qemu_img_processes(str(a)):
        assert time.monotonic() < deadline, "qemu-img outlived the qsnap that started it"
        time.sleep(0.05)


async def test_a_revert_to_a_damaged_image_is_refused_before_the_guest_stops(
        tmp_path: Path) -> None:
    """s1's frozen image lost its qcow2 magic (the running QEMU has its header cached and
    goes on): the revert must find that out before it stops the guest, not after."""
    engine, folder = await started_guest(tmp_path, 1)
    try:
        await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
        base = folder / "g-vda.qcow2"
        with open(base, "r+b") as image:
            image.write(b"JUNK")
        before = _pictures(tmp_path)
        with pytest.raises(qsnap.QsnapError, match=r"g-vda\.qcow2' or a backing file under "
                           "it cannot be used"):
            await engine.revert("g", "s1")
        assert await engine.domstate("g") == "running"
        assert _pictures(tmp_path) == before
    finally:
        await engine.destroy("g")


@pytest.fixture
def small_state_fs(tmp_path: Path) -> Iterator[Path]:
    """A state folder on its own 8 MiB tmpfs, so that it can really be filled."""
    mount = tmp_path / "statefs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the suite runs as root in CI): {made.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


async def test_a_full_state_folder_is_said_plainly_and_settled_later(
        tmp_path: Path, small_state_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qsnap.engine import create as create_module
    engine = Engine(small_state_fs / "state")
    xml = GUEST.make_guest("g", 1, 128, tmp_path / "g")
    await engine.define(xml.read_text())
    await engine.start("g")
    folder = tmp_path / "g"
    try:
        await wait_for_counter(folder / "serial.log", 10)
        # Full before anything: refused, nothing changed.
        filler = _fill(small_state_fs)
        before = _pictures(tmp_path / "g")
        with pytest.raises(qsnap.OperationInvalidError,
                           match=r"cannot record the snapshot 's1'.*No space left on device; "
                                 "nothing was changed"):
            await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
        assert _pictures(tmp_path / "g") == before
        filler.unlink()

        # Full once the images are in place: the snapshot was taken, and the error says so.
        original = create_module.crash_point

        def fill_at(label: str) -> None:
            original(label)
            if label == "create: images in place":
                _fill(small_state_fs)

        monkeypatch.setattr(create_module, "crash_point", fill_at)
        with pytest.raises(qsnap.OperationIncompleteError,
                           match=r"snapshot 's1' was taken.*No space left on device.*stays "
                                 "recorded.*the next command on domain 'g'"):
            await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
        monkeypatch.undo()
        assert await engine.snapshots("g") == []  # still full: reads go on, the record waits
        (small_state_fs / "filler").unlink()
        (line,) = await engine.recover("g")
        assert "was stored" in line
        assert [s.name for s in await engine.snapshots("g")] == ["s1"]
        assert await domain_disks(engine) == [str(folder / "g-vda.s1")]
    finally:
        (small_state_fs / "filler").unlink(missing_ok=True)
        await engine.destroy("g")


async def test_undefine_of_a_running_domain_keeps_it_transient_until_it_stops(
        tmp_path: Path) -> None:
    """virsh keeps a running domain it undefines, transient: manageable until it stops."""
    engine, folder = await started_guest(tmp_path, 1)
    try:
        await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
        await engine.undefine("g")  # a running domain: its snapshots are no obstacle
        assert [(d.name, d.state) for d in await engine.domains()] == [("g", "running")]
        await engine.create("g", snapshot_xml_from_args("s2"), DISK_ONLY)
        assert [s.name for s in await engine.snapshots("g")] == ["s1", "s2"]
    finally:
        await engine.destroy("g")
    assert await engine.domains() == []
    with pytest.raises(qsnap.NoDomainError):
        await engine.domstate("g")
    assert not (tmp_path / "state" / "domains" / "g").exists()
    # A transient domain whose QEMU ended on its own is gone at the next command, and can
    # be defined anew; define makes a running transient domain persistent again.
    await engine.define((folder / "g.xml").read_text())
    await engine.start("g")
    await engine.undefine("g", snapshots_metadata=True)
    await engine.define((folder / "g.xml").read_text())
    runtime = engine._runtime("g")[1]
    assert runtime is not None
    await engine.undefine("g")
    os.kill(runtime.pid, signal.SIGKILL)
    for _ in range(100):
        if engine._runtime("g")[1] is None:
            break
        await asyncio.sleep(0.05)
    assert await engine.domains() == []
    with pytest.raises(qsnap.NoDomainError, match="transient"):
        await engine.snapshots("g")


async def test_a_qemu_started_but_not_yet_recorded_is_found(tmp_path: Path) -> None:
    """qsnap killed between QEMU's start and its runtime record (the soak's random-time kills
    hit this in a revert): the QEMU is found by its own pid file, not left running unseen
    while the next command starts a second one on the same images."""
    from qsnap.launcher.runtime import runtime_paths
    engine, _ = await started_guest(tmp_path, 1)
    paths = runtime_paths(engine.state_dir, "g")
    runtime = engine._runtime("g")[1]
    assert runtime is not None
    paths.info.unlink()  # as if qsnap died before writing it
    assert await engine.domstate("g") == "running"
    with pytest.raises(qsnap.OperationInvalidError, match="already running"):
        await engine.start("g")
    await engine.destroy("g")
    assert not os.path.exists(f"/proc/{runtime.pid}/cmdline") or \
        str(paths.qmp).encode() not in Path(f"/proc/{runtime.pid}/cmdline").read_bytes()


async def test_a_transient_domain_saved_is_restored_from_its_image(tmp_path: Path) -> None:
    """Saving a transient domain stops its guest, so the domain is gone; its image still
    holds the definition, and restore defines the domain again from it."""
    engine, folder = await started_guest(tmp_path, 1)
    await engine.undefine("g")
    await engine.save("g", folder / "g.save")
    assert await engine.domains() == []
    assert (await engine.restore(folder / "g.save")).name == "g"
    try:
        assert await engine.domstate("g") == "running"
    finally:
        await engine.destroy("g")
    assert [d.name for d in await engine.domains()] == ["g"]  # defined by the restore


async def test_a_truncated_memory_file_is_refused_before_the_guest_stops(
        tmp_path: Path) -> None:
    """A revert to a snapshot whose memory file was truncated stopped the running guest and
    then failed with "QEMU closed its monitor" (issue 28). The file is checked whole first:
    against the size the snapshot noted, and, where none was noted (a save image, a
    redefined snapshot), by the end of its migration stream. The guest runs on untouched."""
    engine, folder = await started_guest(tmp_path, 1)
    serial = folder / "serial.log"
    try:
        memory = tmp_path / "s1.mem"
        await engine.create("g", snapshot_xml_from_args("s1", memspec=f"file={memory}"))
        whole = memory.stat().st_size
        assert f"memoryBytes='{whole}'" in await engine.get_xml("g", "s1")
        os.truncate(memory, whole // 2)
        before = _pictures(tmp_path)
        with pytest.raises(qsnap.SaveImageError,
                           match=rf"cannot revert to snapshot 's1': memory image '{memory}' is "
                                 rf"{whole // 2} bytes, but was {whole} when the snapshot was "
                                 r"taken: it was truncated or replaced; the guest was left as "
                                 r"it was") as refused:
            await engine.revert("g", "s1")
        assert (refused.value.snapshot, refused.value.path) == ("s1", str(memory))
        assert await engine.domstate("g") == "running"
        assert _pictures(tmp_path) == before
        await wait_for_counter(serial, (GUEST.last_serial_counter(serial) or 0) + 5)

        # A save image has no note: the end of its stream tells.
        image = tmp_path / "g.save"
        await engine.save("g", image)
        os.truncate(image, image.stat().st_size - 1000)
        with pytest.raises(qsnap.SaveImageError,
                           match=rf"memory image '{image}' is not whole: its migration stream "
                                 r"\(\d+ bytes\) stops before its end"):
            await engine.restore(image)
        assert await engine.domstate("g") == "shut off"
    finally:
        with contextlib.suppress(qsnap.QsnapError):
            await engine.destroy("g")


async def test_an_abort_asked_before_qemus_stream_begins_still_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """domjobabort that came before QEMU's stream began: the cancel it sent found nothing to
    cancel, the save then completed and the guest stopped, though the abort had been
    acknowledged (issue 28). The save checks for the abort before it pauses and before it
    seals the image; an abort that landed is an aborted save: no image, the guest running."""
    from qsnap.engine import save as save_op
    from qsnap.store import job_board

    engine, folder = await started_guest(tmp_path, 1)
    image = tmp_path / "g.save"
    real = save_op.write_intent

    def abort_then_record(where: Path, record: dict[str, object]) -> None:
        job_board.request_abort(where)  # domjobabort's request, just before the pause
        real(where, record)

    monkeypatch.setattr(save_op, "write_intent", abort_then_record)
    try:
        with pytest.raises(qsnap.OperationAbortedError, match="job 'Save' canceled by client"):
            await engine.save("g", image)
        assert not image.exists()
        assert await engine.domstate("g") == "running"
        serial = folder / "serial.log"
        await wait_for_counter(serial, (GUEST.last_serial_counter(serial) or 0) + 5)
        monkeypatch.undo()
        await engine.save("g", image)  # the board was cleared: the next save is not aborted
        assert image.exists()
    finally:
        with contextlib.suppress(qsnap.QsnapError):
            await engine.destroy("g")


async def test_a_crashed_qemu_says_so_and_its_disks_are_not_taken_for_quiescent(
        tmp_path: Path) -> None:
    """A QEMU that died under qsnap read as plain "shut off", and a disk-only snapshot then
    took the stopped-guest path as if the guest had shut down cleanly (issue 28). QEMU
    removes its pid file on a clean exit only, so one killed or crashed is told apart:
    'shut off (crashed)'; a snapshot of its disks needs --crash-consistent; a clean stop or
    a new start leaves no such note."""
    engine, folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"

    def qsnap_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qsnap.cli", "--state-dir", str(state),
                               *args], capture_output=True, text=True, timeout=120)

    info = await engine.guest("g").info()
    assert info.pid is not None and info.reason is None
    os.kill(info.pid, signal.SIGKILL)
    for _ in range(100):
        if not Path(f"/proc/{info.pid}").exists():
            break
        await asyncio.sleep(0.05)
    assert qsnap_cli("domstate", "g").stdout == "shut off\n\n"
    assert qsnap_cli("domstate", "g", "--reason").stdout == "shut off (crashed)\n\n"
    assert (await engine.guest("g").info()).reason == "crashed"
    before = _pictures(tmp_path)
    with pytest.raises(qsnap.OperationInvalidError,
                       match=rf"domain 'g' crashed \(its QEMU, pid {info.pid}, ended without a "
                             r"clean exit, killed or crashed; noticed .*\): its disks hold "
                             r"whatever the guest had half-written.*--crash-consistent"):
        await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
    assert _pictures(tmp_path) == before
    made = qsnap_cli("snapshot-create-as", "g", "s1", "--disk-only", "--crash-consistent")
    assert made.returncode == 0, made.stderr
    # Started again, then stopped cleanly: no crash any more.
    await engine.start("g")
    await wait_for_counter(folder / "serial.log", 3)
    await engine.destroy("g")
    assert qsnap_cli("domstate", "g", "--reason").stdout == "shut off (unknown)\n\n"
    assert (await engine.guest("g").info()).reason is None


async def test_guest_state_does_not_wait_behind_a_long_operation(tmp_path: Path) -> None:
    """Guest.state() waited for the domain's lock, which a long operation holds (here a
    block pull at 1 MiB/s in this process): it now asks QEMU beside it, through the same
    connection, and honours timeout= (issue 28)."""
    from qemu_guest import boot

    engine = Engine(tmp_path / "state")
    xml = GUEST.make_guest("g", 1, 128, tmp_path / "g")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 16M", str(tmp_path / "g" / "g-vda.qcow2")],
                   check=True, capture_output=True)  # 16 MiB for the pull to copy up
    await engine.define(xml.read_text())
    await boot(engine, tmp_path / "g" / "serial.log", 3)
    try:
        await engine.create("g", snapshot_xml_from_args("o"),
                            CreateFlags(disk_only=True, no_metadata=True))
        pulling = asyncio.ensure_future(engine.block_pull("g", "vda", wait=True,
                                                          bandwidth=1 << 20))
        for _ in range(100):
            if (tmp_path / "state" / "domains" / "g" / "intent.json").exists():
                break
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await engine.guest("g").state(timeout=2) == "running"
        assert loop.time() - started < 0.5
        assert not pulling.done()
        with pytest.raises(qsnap.DomainBusyError):  # the virsh path does wait for the lock
            await engine.domstate("g", timeout=0.2)
        assert await pulling == "pulled"
    finally:
        await engine.destroy("g")
