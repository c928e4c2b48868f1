"""Paths that try to get qsnap to write where it should not, with real images and QEMU.

Overlay and memory file paths through symbolic links (dangling or not), with ``..``, or naming
existing files are refused or behave as documented, and a refusal changes nothing: not the
state folder, not the guest's folder, not the place a link points to. Snapshot names can never
leave the state folder. Memory files are 0600 and the state folder is private.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import guest_module, require_qemu, started_guest

import qsnap
from qsnap import CreateFlags, Engine, snapshot_xml_from_args

GUEST = guest_module()
DISK_ONLY = CreateFlags(disk_only=True)


@pytest.fixture
async def stopped(tmp_path: Path) -> tuple[Engine, Path]:
    require_qemu()
    engine = Engine(tmp_path / "state")
    xml = GUEST.make_guest("g", 1, 128, tmp_path / "g")
    await engine.define(xml.read_text())
    return engine, tmp_path / "g"


def pictures(tmp_path: Path) -> dict[str, tuple[int, bytes]]:
    """Everything under tmp_path, but for what a running guest itself changes: its serial log,
    and the content of its disk images (it writes a counter to them every 100 ms; a refusal
    that took longer than that made this test fail by the guest's own write, CI 2026-11-29).
    Those images' presence and mode still count, and no refused request creates any."""
    return {k: (v[0], b"") if k.endswith(".qcow2") else v
            for k, v in tree_picture(tmp_path).items() if not k.endswith("serial.log")}


async def refused(engine: Engine, tmp_path: Path, xml: str, match: str,
                  flags: CreateFlags = DISK_ONLY) -> None:
    before = pictures(tmp_path)
    with pytest.raises(qsnap.QsnapError, match=match):
        await engine.create("g", xml, flags)
    assert pictures(tmp_path) == before
    assert await engine.snapshots("g") == []


async def test_overlay_paths(stopped: tuple[Engine, Path], tmp_path: Path) -> None:
    engine, folder = stopped
    outside = tmp_path / "outside"
    outside.mkdir()
    dangling = folder / "dangling.qcow2"
    dangling.symlink_to(outside / "planted.qcow2")
    await refused(engine, tmp_path, snapshot_xml_from_args(
        "s1", diskspecs=[f"vda,file={dangling}"]), "is a symbolic link")
    assert not (outside / "planted.qcow2").exists()

    victim = outside / "victim.txt"
    victim.write_text("precious\n")
    pointing = folder / "pointing.qcow2"
    pointing.symlink_to(victim)
    await refused(engine, tmp_path, snapshot_xml_from_args(
        "s1", diskspecs=[f"vda,file={pointing}"]), "is a symbolic link")
    assert victim.read_text() == "precious\n"

    await refused(engine, tmp_path, snapshot_xml_from_args(
        "s1", diskspecs=[f"vda,file={victim}"]), "already exists")
    await refused(engine, tmp_path, snapshot_xml_from_args(
        "s1", diskspecs=[f"vda,file={folder}/missing/../ov.qcow2"]), "does not exist")
    await refused(engine, tmp_path, snapshot_xml_from_args(
        "s1", diskspecs=["vda,file=relative.qcow2"]), "must be absolute")

    # `..` through folders that exist is an ordinary path, used as given (as libvirt does).
    through = f"{folder}/../g/ov.qcow2"
    await engine.create("g", snapshot_xml_from_args("s1", diskspecs=[f"vda,file={through}"]),
                        DISK_ONLY)
    assert (folder / "ov.qcow2").is_file()
    snap = await engine.get("g", "s1")
    assert [d.source.path for d in snap.disks] == [through]


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".", "..", "a/../b"])
async def test_snapshot_names_stay_in_the_state_folder(stopped: tuple[Engine, Path],
                                                       tmp_path: Path, name: str) -> None:
    engine, _ = stopped
    before = pictures(tmp_path)
    with pytest.raises(qsnap.QsnapError):
        await engine.create("g", snapshot_xml_from_args(name), DISK_ONLY)
    assert pictures(tmp_path) == before


async def test_memory_file_paths_and_modes(tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        link = folder / "link.mem"
        link.symlink_to(outside / "planted.mem")
        await refused(engine, tmp_path, snapshot_xml_from_args("m1", memspec=f"file={link}"),
                      "symbolic link", CreateFlags())
        assert not (outside / "planted.mem").exists()
        existing = folder / "existing.mem"
        existing.write_bytes(b"keep me")
        await refused(engine, tmp_path, snapshot_xml_from_args("m1", memspec=f"file={existing}"),
                      "refusing to overwrite", CreateFlags())
        assert existing.read_bytes() == b"keep me"
        assert await engine.domstate("g") == "running"

        memory = folder / "m1.mem"
        await engine.create("g", snapshot_xml_from_args("m1", memspec=f"file={memory}"),
                            CreateFlags())
        assert stat.S_IMODE(memory.stat().st_mode) == 0o600
        for path in [engine.state_dir, *engine.state_dir.rglob("*")]:
            if path.is_dir() or path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    finally:
        if await engine.domstate("g") != "shut off":
            await engine.destroy("g")
    assert os.path.islink(link)


async def test_commas_and_odd_characters_in_every_path_reach_qemu_as_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path qsnap puts into a QEMU option, and the domain name, with a comma, '=', a
    colon, a space and non-ASCII in it; the serial log's name goes on with
    ',logfile=VICTIM,logappend=off'. Unescaped, QEMU split the value at the comma: it
    truncated the victim and wrote the console into it, and a folder with a comma could not
    start at all (issue 28). Now each is one name: the guest counts into the log file of
    exactly that name, its agent and VNC sockets appear where asked, and the victim stays."""
    require_qemu()
    odd = tmp_path / "d,x=1: é"
    odd.mkdir()
    import tempfile

    # Short, as a socket path must be (tmp_path alone is too long for one).
    runtime = tempfile.mkdtemp(prefix="r,t=1: é", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    xml = GUEST.make_guest("g", 1, 128, odd).read_text()
    kernel, initrd = GUEST.build()
    for source, name in ((kernel, "vmlinuz,a=b"), (initrd, "initrd,c=d")):
        (odd / name).write_bytes(Path(source).read_bytes())
        xml = xml.replace(f">{source}<", f">{odd / name}<")
    injected = xml.replace(str(odd / "serial.log"),
                           f"{odd / 'serial.log'},logfile={victim},logappend=off")
    serial = odd / "serial,log=1.txt"
    xml = xml.replace(str(odd / "serial.log"), str(serial))
    xml = xml.replace("<target type='virtio' name='org.qemu.guest_agent.0'/>",
                      f"<source mode='bind' path='{odd / 'agent,x=y.sock'}'/>"
                      "<target type='virtio' name='org.qemu.guest_agent.0'/>")
    xml = xml.replace("<memballoon model='none'/>",
                      f"<graphics type='vnc' socket='{odd / 'vnc,to=99.sock'}'/>"
                      "<memballoon model='none'/>")
    xml = xml.replace("<name>g</name>", "<name>g,debug-threads=off é</name>")
    engine = Engine(tmp_path / "state,s=1")
    # The injection: one file name, which does not exist (its "folder" serial.log,logfile=
    # is none); QEMU says so, and the victim is untouched.
    import re

    name = await engine.define(re.sub(r"<uuid>.*</uuid>", "", injected)
                               .replace("<name>g</name>", "<name>h</name>"))
    with pytest.raises(qsnap.LaunchError, match=r"Could not open '.*/serial\.log,logfile="):
        await engine.start(name)
    assert victim.read_text() == "precious"
    name = await engine.define(xml)
    assert name == "g,debug-threads=off é"
    await engine.start(name)
    try:
        from qemu_guest import wait_for_counter

        await wait_for_counter(serial, 3)
        assert (odd / "agent,x=y.sock").exists() and (odd / "vnc,to=99.sock").exists()
        await engine.create(name, snapshot_xml_from_args("s1"), DISK_ONLY)
        assert await engine.domstate(name) == "running"
    finally:
        await engine.destroy(name)
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
    assert victim.read_text() == "precious"


async def test_a_runtime_folder_someone_else_made_is_never_used(
        stopped: tuple[Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the runtime folders in a place every user can write (/tmp without
    XDG_RUNTIME_DIR), another local user made qsnap's folder first and planted a symlink
    where qsnap writes its record: root's 'qsnap start' truncated a root-owned file, and the
    folder stayed the other user's (issue 28). A folder that is not the caller's, that
    others can write, or that is a symlink is refused, naming it, before anything in it is
    read or written; no QEMU starts, and the victim is untouched."""
    import tempfile

    from qsnap.launcher.runtime import runtime_paths

    engine, _folder = stopped
    runtime = Path(tempfile.mkdtemp(prefix="qsnap-rt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    paths = runtime_paths(engine.state_dir, "g")
    other_uid = 65534 if os.geteuid() == 0 else None  # 'nobody', where we may chown
    try:
        cases = []
        paths.folder.mkdir(parents=True)
        (paths.folder / "runtime.tmp").symlink_to(victim)
        (paths.folder / "runtime.json").write_text(
            '{"pid": 1, "qmp": "/tmp/theirs.sock", "accel": "tcg", "owner": "attached"}')
        if other_uid is not None:
            os.chown(paths.folder.parent, other_uid, other_uid)
            cases.append((r"belongs to uid 65534, not to you", paths.folder.parent))
        cases.append((r"can be written by others \(mode 0777\)", paths.folder.parent))
        for why, where in cases:
            os.chmod(where, 0o777 if "others" in why else 0o700)
            if "others" in why and other_uid is not None:
                os.chown(paths.folder.parent, os.geteuid(), os.getegid())
            for attempt in (engine.start("g"), engine.domstate("g")):
                with pytest.raises(qsnap.OperationInvalidError,
                                   match=rf"runtime folder '{where}' {why}") as refused:
                    await attempt
                assert refused.value.path == str(where)
            assert victim.read_text() == "precious"
        # A symlink in place of the folder (to one the attacker controls) is refused too.
        os.chmod(paths.folder.parent, 0o700)
        elsewhere = runtime / "elsewhere"
        paths.folder.rename(elsewhere)
        paths.folder.symlink_to(elsewhere)
        with pytest.raises(qsnap.OperationInvalidError, match=r"is not a folder \(a symbolic"):
            await engine.start("g")
        assert victim.read_text() == "precious"
        assert subprocess.run(["pgrep", "-f", str(tmp_path / "g")],
                              capture_output=True).returncode == 1  # no QEMU started
    finally:
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
