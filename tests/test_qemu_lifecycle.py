"""Starting, stopping and adopting real QEMU guests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import assert_one_moment, guest_module, require_qemu, wait_for_counter

import qsnap
from qsnap import CreateFlags, Engine, snapshot_xml_from_args
from qsnap.cli import main

GUEST = guest_module()


async def _wait_state(engine: Engine, domain: str, state: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.1)):
        if await engine.domstate(domain) == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"domain '{domain}' never became {state}")


def test_start_shutdown_destroy_from_the_cli(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Synchronous on purpose: the CLI runs its own event loop."""
    require_qemu()
    xml = GUEST.make_guest("life", 1, 128, tmp_path / "g")
    state = str(tmp_path / "state")

    def cli(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--state-dir", state, *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert cli("define", str(xml))[0] == 0
    assert cli("start", "life")[1] == "Domain 'life' started\n\n"
    assert cli("domstate", "life")[1] == "running\n\n"
    assert "running" in cli("list")[1]
    asyncio.run(wait_for_counter(tmp_path / "g" / "serial.log", 5))
    assert cli("shutdown", "life")[1] == "Domain 'life' is being shutdown\n\n"
    asyncio.run(_wait_state(Engine(state), "life", "shut off"))
    assert b"power button pressed" in (tmp_path / "g" / "serial.log").read_bytes()
    code, _, err = cli("shutdown", "life")
    assert (code, err) == (1, "error: Failed to shutdown domain 'life'\n"
                              "error: Requested operation is not valid: domain is not running\n")
    assert cli("start", "life")[0] == 0
    assert cli("destroy", "life")[1] == "Domain 'life' destroyed\n\n"
    assert cli("domstate", "life")[1] == "shut off\n\n"
    assert cli("list", "--inactive", "--name")[1] == "life\n\n"


async def test_bad_emulator_is_reported(tmp_path: Path) -> None:
    require_qemu()
    xml = GUEST.make_guest("bad", 1, 128, tmp_path / "g").read_text()
    engine = Engine(tmp_path / "state")
    await engine.define(xml.replace(str(tmp_path / "g" / "bad-vda.qcow2"), "/nonexistent.qcow2"))
    with pytest.raises(qsnap.QsnapError,
                       match=r"QEMU failed to start domain 'bad': .*nonexistent\.qcow2"):
        await engine.start("bad")
    assert await engine.domstate("bad") == "shut off"


@contextlib.contextmanager
def foreign_qemu(tmp_path: Path) -> object:
    """A QEMU launched by hand, legacy -drive style, with its own device ids."""
    xml = GUEST.make_guest("a", 2, 128, tmp_path / "ext")
    domain = qsnap.model.domain.parse_domain(xml.read_text())
    sock, pidfile = tmp_path / "ext" / "mon.sock", tmp_path / "ext" / "qemu.pid"
    subprocess.run(
        ["qemu-system-x86_64", "-compat", os.environ["QSNAP_QEMU_COMPAT"],
         "-machine", "pc,accel=tcg", "-m", "128", "-nodefaults",
         "-display", "none", "-kernel", domain.kernel, "-initrd", domain.initrd,
         "-append", "console=ttyS0 quiet panic=-1",
         "-drive", f"file={domain.disks[0].source},format=qcow2,if=none,id=disk0",
         "-device", "virtio-blk-pci,drive=disk0,id=vda",
         "-drive", f"file={domain.disks[1].source},format=qcow2,if=none,id=disk1",
         "-device", "virtio-blk-pci,drive=disk1",
         "-serial", f"file:{tmp_path / 'ext' / 'serial.log'}",
         "-qmp", f"unix:{sock},server=on,wait=off", "-daemonize", "-pidfile", str(pidfile)],
        check=True)
    pid = int(pidfile.read_text())
    try:
        yield sock, domain
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


async def test_attach_adopts_a_foreign_qemu(tmp_path: Path) -> None:
    require_qemu()
    engine = Engine(tmp_path / "state")
    with foreign_qemu(tmp_path) as (sock, domain):
        info = await engine.attach("ext", str(sock))
        assert (info.owner, info.accel) == ("attached", "tcg")
        adopted = qsnap.model.domain.parse_domain(await engine.domain_xml("ext"))
        assert [(d.target, d.source, d.driver_type) for d in adopted.disks] == [
            ("vda", domain.disks[0].source, "qcow2"), ("disk1", domain.disks[1].source, "qcow2")]
        assert adopted.memory_kib == 128 * 1024
        assert await engine.domstate("ext") == "running"
        await wait_for_counter(tmp_path / "ext" / "serial.log", 5)
        await engine.create("ext", snapshot_xml_from_args("s1"), CreateFlags(disk_only=True))
        assert_one_moment([GUEST.read_disk_counter(Path(d.source)) for d in domain.disks])
        with pytest.raises(qsnap.OperationInvalidError, match="already running"):
            await engine.attach("ext", str(sock))
        await engine.destroy("ext")
        assert await engine.domstate("ext") == "shut off"


async def test_attach_refuses_what_is_not_qemu(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSNAP_QMP_TIMEOUT", "1")
    engine = Engine(tmp_path / "state")
    before = tree_picture(tmp_path / "state")
    with pytest.raises(qsnap.QsnapError, match=r"cannot connect to QMP socket .*No such file"):
        await engine.attach("x", str(tmp_path / "missing.sock"))

    for greeting in (b"", b"hello, I am not QEMU\n", b'{"QMP": 1}\n'):
        path = tmp_path / f"fake{len(greeting)}.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen()

        async def serve(server: socket.socket = server, greeting: bytes = greeting) -> None:
            loop = asyncio.get_running_loop()
            server.setblocking(False)
            conn, _ = await loop.sock_accept(server)
            if greeting:
                await loop.sock_sendall(conn, greeting)
            await asyncio.sleep(3)
            conn.close()

        task = asyncio.create_task(serve())
        with pytest.raises(qsnap.QsnapError, match=r"not a QEMU monitor|did not greet"):
            await engine.attach("x", str(path))
        task.cancel()
        server.close()
    assert tree_picture(tmp_path / "state") == before


async def test_attach_to_a_defined_domain_checks_its_uuid(tmp_path: Path) -> None:
    require_qemu()
    engine = Engine(tmp_path / "state")
    with foreign_qemu(tmp_path) as (sock, domain):
        await engine.define(domain.to_xml().replace("<name>a</name>", "<name>mine</name>"))
        # The foreign QEMU was started without -uuid, so only disk names can disagree here.
        with pytest.raises(qsnap.InvalidArgumentError,
                           match=re.escape(f"QEMU at {sock} has no disk vdb of domain 'mine'")):
            await engine.attach("mine", str(sock))
        assert await engine.domstate("mine") == "shut off"
