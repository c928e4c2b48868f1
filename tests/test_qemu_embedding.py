"""A QEMU someone else launched, with a command line unlike qsnap's, as a first-class guest
(issue 16): attached, snapshotted, reverted, saved, restored and its snapshots deleted, with
qsnap starting the same machine again from the attached command line, or through the
embedder's relaunch hook. Real QEMU throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from qemu_guest import (
    first_counter_after,
    guest_module,
    require_qemu,
    resumed_counter,
    wait_for_counter,
)

import qsnap
from qsnap import CreateFlags, DeleteFlags, Engine, RevertFlags, snapshot_xml_from_args
from qsnap.model.domain import DomainDef, parse_domain

GUEST = guest_module()


def _disk_args(form: str, domain: DomainDef) -> list[str]:
    """The embedder's disks, in three syntaxes, with ids unlike qsnap's."""
    first, second = (d.source or "" for d in domain.disks)
    if form == "drive":
        return ["-drive", f"file={first},format=qcow2,if=none,id=hd0",
                "-device", "virtio-blk-pci,drive=hd0,id=system",
                "-drive", f"file={second},format=qcow2,if=none,id=hd1",
                "-device", "virtio-blk-pci,drive=hd1,id=data"]
    if form == "blockdev":
        return ["-blockdev", f"driver=file,node-name=f0,filename={first}",
                "-blockdev", "driver=qcow2,node-name=d0,file=f0",
                "-device", "virtio-blk-pci,drive=d0,id=system",
                "-blockdev", f"driver=file,node-name=f1,filename={second}",
                "-blockdev", "driver=qcow2,node-name=d1,file=f1",
                "-device", "virtio-blk-pci,drive=d1,id=data"]
    return ["-blockdev", json.dumps({"driver": "qcow2", "node-name": "d0", "file": {
                "driver": "file", "filename": first}}),
            "-device", "virtio-blk-pci,drive=d0,id=system,bus=pcie.0,addr=0x5",
            "-blockdev", json.dumps({"driver": "qcow2", "node-name": "d1", "file": {
                "driver": "file", "filename": second}}),
            "-device", "virtio-blk-pci,drive=d1,id=data,bus=pcie.0,addr=0x6"]


def _raw_data_disk_args(domain: DomainDef) -> list[str]:
    """The first disk as a -drive, the second raw, as two -blockdev nodes in two syntaxes:
    a JSON protocol node and a key=value format node naming it (issue 28's data loss)."""
    first, second = (d.source or "" for d in domain.disks)
    raw = second.removesuffix(".qcow2") + ".raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", second, raw], check=True)
    return ["-drive", f"file={first},format=qcow2,if=none,id=hd0",
            "-device", "virtio-blk-pci,drive=hd0,id=system",
            "-blockdev", json.dumps({"driver": "file", "filename": raw,
                                     "node-name": "data-proto"}),
            "-blockdev", "driver=raw,node-name=data-fmt,file=data-proto",
            "-device", "virtio-blk-pci,drive=data-fmt,id=data"]


def foreign_argv(form: str, folder: Path, domain: DomainDef) -> list[str]:
    machine = "q35" if form == "json-q35" else "pc"
    argv = ["qemu-system-x86_64", "-compat", os.environ["QSNAP_QEMU_COMPAT"],
            "-machine", f"{machine},accel=tcg", "-m", "128",
            "-nodefaults", "-display", "none", "-kernel", domain.kernel or "",
            "-initrd", domain.initrd or "", "-append", "console=ttyS0 quiet panic=-1",
            *(_raw_data_disk_args(domain) if form == "raw-data" else _disk_args(form, domain)),
            # append=on: the log goes on across QEMU runs, so a revert shows as a jump back
            "-chardev", f"file,id=log,path={folder / 'serial.log'},append=on",
            "-serial", "chardev:log",
            "-qmp", f"unix:{folder / 'mon.sock'},server=on,wait=off"]
    if form == "json-q35":
        argv += ["-netdev", "user,id=net0", "-device",
                 "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:12:34:56"]
    return argv


@contextlib.contextmanager
def foreign_guest(tmp_path: Path, form: str) -> Iterator[tuple[Path, Path, DomainDef]]:
    """The embedder's QEMU, started by hand (not daemonized: the embedder's own child)."""
    folder = tmp_path / "ext"
    xml = GUEST.make_guest("emb", 2, 128, folder)
    domain = parse_domain(xml.read_text())
    proc = subprocess.Popen(foreign_argv(form, folder, domain), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if (folder / "mon.sock").exists():
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            subprocess.run(["sleep", "0.05"], check=True)
        yield folder / "mon.sock", folder / "serial.log", domain
    finally:
        proc.kill()
        proc.wait()
        _kill_qemus_of(folder)


def _kill_qemus_of(folder: Path) -> None:
    """QEMUs qsnap started again for this test (daemonized: nobody's child)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(folder / "mon.sock").encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def counters(serial: Path, since: int = 0) -> list[int]:
    return [int(c) for c in re.findall(rb"qsnap-counter (\d+)\s", serial.read_bytes()[since:])]


async def taken(serial: Path, snapshot: Awaitable[object]) -> tuple[int, int]:
    """Take a snapshot; return the guest's counters in the log just before, and a moment
    after (the log lags the guest's own count when TCG guests load the CPUs: a counter
    the guest had printed into its serial buffer reaches the file later), between which
    the snapshot's moment lies."""
    before = counters(serial)[-1]
    await snapshot
    await asyncio.sleep(1.0)
    return before, counters(serial)[-1]


def qemu_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.parametrize("form", ["drive", "blockdev", "json-q35"])
async def test_an_attached_qemu_is_started_again_as_its_embedder_started_it(
        tmp_path: Path, form: str) -> None:
    """Every kind of revert, a save and restore, and deletes, on a QEMU whose command line
    qsnap did not write: the relaunched QEMU has the embedder's devices and ids, and the
    guest goes on from the right moment."""
    require_qemu()
    engine = Engine(tmp_path / "state")
    with foreign_guest(tmp_path, form) as (sock, serial, _domain):
        info = await engine.attach("emb", str(sock))
        assert info.owner == "attached"
        await wait_for_counter(serial, 10)

        # An external full-system snapshot, and a disk-only one after it.
        memory = tmp_path / "s1.mem"
        before, after = await taken(serial, engine.create(
            "emb", snapshot_xml_from_args("s1", memspec=f"file={memory}")))
        await wait_for_counter(serial, after + 10)
        await engine.create("emb", snapshot_xml_from_args("s2"), CreateFlags(disk_only=True))
        await wait_for_counter(serial, counters(serial)[-1] + 10)

        # Revert to the memory snapshot: a new QEMU, from the embedder's command line.
        mark = serial.stat().st_size
        await engine.revert("emb", "s1")
        resumed = await resumed_counter(serial, mark)
        assert before <= resumed <= after + 1, (before, resumed, after)
        relaunched = (await engine.guest("emb").info()).pid
        assert relaunched != info.pid
        argv = qemu_cmdline(relaunched)
        assert "id=system" in " ".join(argv) and "id=data" in " ".join(argv)
        if form == "json-q35":
            assert any("virtio-net-pci" in a and "id=nic0" in a for a in argv)
            assert "q35,accel=tcg" in argv

        # An internal full-system snapshot and its revert (a new QEMU again).
        await wait_for_counter(serial, resumed + 10)
        before, after = await taken(serial, engine.create("emb",
                                                          snapshot_xml_from_args("i1")))
        await wait_for_counter(serial, after + 10)
        mark = serial.stat().st_size
        await engine.revert("emb", "i1")
        assert before <= await resumed_counter(serial, mark) <= after + 1

        # Save, then restore: a new QEMU waiting for the state.
        saved = tmp_path / "emb.save"
        await engine.save("emb", saved)
        assert await engine.domstate("emb") == "shut off"
        stopped_at = counters(serial)[-1]
        mark = serial.stat().st_size
        guest = await engine.restore(saved)
        assert guest.name == "emb" and guest.owner == "attached"
        assert stopped_at < await first_counter_after(serial, mark) <= stopped_at + 2

        # Deletes merge on the running, relaunched guest.
        await engine.delete("emb", "i1", DeleteFlags())

        # A disk-only snapshot: the machine boots again on new overlays of its disks.
        await engine.revert("emb", "s2", RevertFlags(running=True))
        booted = (await engine.guest("emb").info()).pid
        assert booted is not None and "id=system" in " ".join(qemu_cmdline(booted))
        mark = serial.stat().st_size
        await first_counter_after(serial, mark)  # it counts again

        await engine.delete("emb", "s1", DeleteFlags(children=True))
        assert await engine.snapshots("emb") == []
        assert await engine.domstate("emb") == "running"
        await wait_for_counter(serial, counters(serial)[-1] + 5)
        await engine.destroy("emb")


async def test_a_relaunch_hook_starts_the_guest_its_own_way(tmp_path: Path) -> None:
    """With a hook, qsnap asks the embedder: the request names each disk's image, the start
    mode, and a command line to adjust; the hook's QEMU is the guest from then on."""
    require_qemu()
    requests: list[qsnap.RelaunchRequest] = []

    async def relaunch(request: qsnap.RelaunchRequest) -> str:
        requests.append(request)
        argv = [a for a in request.argv if a not in ("-daemonize",)]
        pidfile = argv.index("-pidfile")
        del argv[pidfile:pidfile + 2]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        children.append(proc)
        socket = Path(argv[argv.index("-qmp") + 1].split(",")[0].removeprefix("unix:"))
        for _ in range(200):
            if socket.exists():
                break
            await asyncio.sleep(0.025)
        return str(socket)

    children: list[asyncio.subprocess.Process] = []
    engine = Engine(tmp_path / "state")
    with foreign_guest(tmp_path, "blockdev") as (sock, serial, _domain):
        await engine.attach("emb", str(sock), relaunch=relaunch)
        await wait_for_counter(serial, 10)
        memory = tmp_path / "s1.mem"
        before, after = await taken(serial, engine.create(
            "emb", snapshot_xml_from_args("s1", memspec=f"file={memory}")))
        await wait_for_counter(serial, after + 10)
        mark = serial.stat().st_size
        await engine.revert("emb", "s1")
        assert before <= await resumed_counter(serial, mark) <= after + 1
        (request,) = requests
        assert request.incoming and request.domain == "emb"
        assert set(request.disks) == {"system", "data"}
        # New overlays on the snapshot's images, which the request names.
        assert all(d.format == "qcow2" and Path(d.path).exists()
                   for d in request.disks.values())
        state = await engine.guest("emb").info()
        assert state.pid == children[0].pid and state.state == "running"
        await engine.destroy("emb")
        await children[0].wait()


async def test_qsnap_works_through_the_embedders_own_connection(tmp_path: Path) -> None:
    """QEMU answers one QMP client at a time: an embedder that keeps its connection open
    shares it, and qsnap works through it (before: qsnap waited, then failed)."""
    require_qemu()
    from qemu.qmp import QMPClient, Runstate

    clients: list[QMPClient] = []

    async def connected(socket: str) -> QMPClient:
        client = QMPClient("embedder")
        await client.connect(socket)
        clients.append(client)
        return client

    async def relaunch(request: qsnap.RelaunchRequest) -> str:
        await asyncio.to_thread(subprocess.run, request.argv, check=True)  # it daemonizes
        socket = request.argv[request.argv.index("-qmp") + 1].split(",")[0][len("unix:"):]
        engine.share_connection(socket, await connected(socket))
        return socket

    engine = Engine(tmp_path / "state")
    with foreign_guest(tmp_path, "drive") as (sock, serial, _domain):
        ours = await connected(str(sock))
        await engine.attach("emb", str(sock), relaunch=relaunch, connection=ours,
                            timeout=5)
        await wait_for_counter(serial, 10)
        await engine.create("emb", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True),
                            timeout=5)
        before, after = await taken(serial, engine.create(
            "emb", snapshot_xml_from_args("i1"), timeout=30))
        assert (await ours.execute("query-status"))["status"] == "running"
        await wait_for_counter(serial, after + 10)
        mark = serial.stat().st_size
        await engine.revert("emb", "i1", timeout=30)
        assert before <= await resumed_counter(serial, mark) <= after + 1
        assert len(clients) == 2 and clients[1].runstate == Runstate.RUNNING
        assert (await clients[1].execute("query-status"))["status"] == "running"
        await engine.delete("emb", "d1", DeleteFlags(children=True), timeout=30)
        assert await engine.snapshots("emb") == []
        await engine.destroy("emb")
        for client in clients:  # the first one's QEMU is gone: its reader ends in EOFError
            with contextlib.suppress(EOFError):
                await client.disconnect()


async def test_each_operation_connects_once_to_each_qemu(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One QMP connection per QEMU per operation (a delete used to open seven)."""
    from qemu_guest import started_guest

    from qsnap.monitor.client import Monitor

    opened: list[str] = []
    real_open = Monitor._open.__func__  # type: ignore[attr-defined]

    async def counting_open(cls: type[Monitor], socket_path: str,
                            timeout: float | None) -> Monitor:
        opened.append(socket_path)
        return await real_open(cls, socket_path, timeout)

    monkeypatch.setattr(Monitor, "_open", classmethod(counting_open))
    engine, folder = await started_guest(tmp_path, 2)
    assert isinstance(engine, Engine)
    try:
        counts = {}
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("disk-only create", lambda: engine.create(
                "g", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))),
            ("external full create", lambda: engine.create("g", snapshot_xml_from_args(
                "f1", memspec=f"file={tmp_path / 'f1.mem'}"))),
            ("internal create", lambda: engine.create("g", snapshot_xml_from_args("i1"))),
            ("internal delete", lambda: engine.delete("g", "i1", DeleteFlags())),
            ("active commit delete", lambda: engine.delete("g", "f1", DeleteFlags())),
            ("revert", lambda: engine.revert("g", "d1", RevertFlags(running=True))),
            ("domstate", lambda: engine.domstate("g"))]
        for name, step in steps:
            opened.clear()
            await step()
            counts[name] = len(opened)
        # A revert talks to the old QEMU (to stop it) and to the new one.
        assert counts == {"disk-only create": 1, "external full create": 1,
                          "internal create": 1, "internal delete": 1,
                          "active commit delete": 1, "revert": 2, "domstate": 1}, counts
    finally:
        await engine.destroy("g")
    del folder


def image_info(path: str) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


async def test_a_raw_disk_of_two_nodes_goes_on_as_a_qcow2_overlay_after_a_revert(
        tmp_path: Path) -> None:
    """Issue 28's data loss: reverted to a full snapshot with no hook, the rewritten command
    line opened the data disk's new qcow2 overlay as raw, and the guest wrote over its
    header (a 32 MiB disk became a 192 KiB raw file without its backing link). Now the
    format node follows the overlay, and QEMU is checked to have opened it as qcow2."""
    require_qemu()
    engine = Engine(tmp_path / "state")
    with foreign_guest(tmp_path, "raw-data") as (sock, serial, _domain):
        await engine.attach("emb", str(sock))
        await wait_for_counter(serial, 10)
        await engine.create("emb", snapshot_xml_from_args(
            "s1", memspec=f"file={tmp_path / 's1.mem'}"))
        await wait_for_counter(serial, counters(serial)[-1] + 10)
        mark = serial.stat().st_size
        await engine.revert("emb", "s1")
        resumed = await resumed_counter(serial, mark)
        await wait_for_counter(serial, resumed + 3 * 5 + 5)  # the guest wrote vdb again
        data = {d.target: d for d in await engine.disks("emb")}["data"]
        assert data.source is not None and data.driver_type == "qcow2"
        info = image_info(data.source)
        assert info["format"] == "qcow2", info
        assert str(info["backing-filename"]).endswith(".raw"), info
        argv = qemu_cmdline((await engine.guest("emb").info()).pid or 0)
        assert "driver=qcow2,node-name=data-fmt,file=data-proto" in argv
        await engine.destroy("emb")
        subprocess.run(["qemu-img", "check", data.source], check=True, capture_output=True)


async def test_relaunch_hooks_that_fail_lie_or_are_cancelled_leave_no_qemu_behind(
        tmp_path: Path) -> None:
    """A hook that raises, one that returns a socket nobody answers on, one whose QEMU opens
    a disk in another format than asked, and a revert cancelled while its hook runs: each
    ends in a LaunchError with the cause (or the cancellation), the guest shut off, the
    QEMU the hook started stopped, and the snapshot there to revert to again."""
    require_qemu()
    started: list[int] = []

    def run_daemonized(argv: list[str]) -> str:
        subprocess.run(argv, check=True, capture_output=True)
        started.append(int(Path(argv[argv.index("-pidfile") + 1]).read_text()))
        return argv[argv.index("-qmp") + 1].split(",")[0].removeprefix("unix:")

    async def raising(request: qsnap.RelaunchRequest) -> str:
        raise RuntimeError("the embedder's launcher is out of order")

    async def dead_socket(request: qsnap.RelaunchRequest) -> str:
        return str(tmp_path / "nobody.sock")

    async def lying(request: qsnap.RelaunchRequest) -> str:
        # Starts its own idea of the machine: the system disk's new qcow2 overlay as raw.
        argv = [a.replace("format=qcow2,if=none,id=hd0", "format=raw,if=none,id=hd0")
                for a in request.argv]
        return await asyncio.to_thread(run_daemonized, argv)

    hook_running = asyncio.Event()

    async def slow(request: qsnap.RelaunchRequest) -> str:
        socket = await asyncio.to_thread(run_daemonized, request.argv)
        hook_running.set()
        await asyncio.sleep(1.0)
        return socket

    with foreign_guest(tmp_path, "drive") as (sock, serial, _domain):
        await Engine(tmp_path / "state").attach("emb", str(sock))
        await wait_for_counter(serial, 10)
        await Engine(tmp_path / "state").create("emb", snapshot_xml_from_args("d1"),
                                                CreateFlags(disk_only=True))
        folder = tmp_path / "state" / "domains" / "emb"
        def images() -> list[str]:
            return sorted(p.name for p in (tmp_path / "ext").iterdir() if p.suffix != ".sock")

        before = images()

        async def revert_with(hook: qsnap.RelaunchHook) -> None:
            await Engine(tmp_path / "state", relaunch=hook).revert(
                "emb", "d1", RevertFlags(running=True))

        with pytest.raises(qsnap.LaunchError, match="the relaunch hook of domain 'emb' "
                                                    "failed: RuntimeError: the embedder's") as e:
            await revert_with(raising)
        assert isinstance(e.value.__cause__, RuntimeError)
        with pytest.raises(qsnap.LaunchError, match=r"returned QMP socket .*nobody\.sock, but "
                                                    r"no QEMU answers there"):
            await revert_with(dead_socket)
        with pytest.raises(qsnap.LaunchError, match=r"opened disk 'system' as raw image .* not "
                                                    r"as qcow2 image .*stopped before its guest"):
            await revert_with(lying)
        task = asyncio.ensure_future(revert_with(slow))
        await hook_running.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for pid in started:
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z", pid
        engine = Engine(tmp_path / "state")
        assert await engine.domstate("emb") == "shut off"
        assert not (folder / "intent.json").exists()
        assert images() == before
        assert [s.name for s in await engine.snapshots("emb")] == ["d1"]
        # Without a hook, the attached command line starts it again.
        mark = serial.stat().st_size
        await engine.revert("emb", "d1", RevertFlags(running=True))
        await first_counter_after(serial, mark)
        await engine.destroy("emb")
