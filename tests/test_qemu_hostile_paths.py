"""Paths that try to get qsnap to write where it should not, with real images and QEMU.

Overlay and memory file paths through symbolic links (dangling or not), with ``..``, or naming
existing files are refused or behave as documented, and a refusal changes nothing: not the
state folder, not the guest's folder, not the place a link points to. Snapshot names can never
leave the state folder. Memory files are 0600 and the state folder is private.
"""

from __future__ import annotations

import os
import stat
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
