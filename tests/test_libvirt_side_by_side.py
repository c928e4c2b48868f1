"""The same guest driven by libvirt 9.0 and by qsnap: libvirt accepts the fixture's XML as it is,
and a disk-only snapshot comes out the same shape from both.

libvirt is a reference here, never a dependency: ``virsh`` (Debian's libvirt-clients) is needed
for the first test, a libvirtd with the QEMU driver for the second (the ``libvirtd`` fixture
starts one, and fails where it could but cannot).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from qemu_guest import guest_module, require_qemu, wait_for_counter

from qsnap import CreateFlags, Engine, snapshot_xml_from_args
from qsnap.model.snapshot import parse_snapshot

GUEST = guest_module()


def virsh(uri: str, *args: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", *(["-q"] if quiet else []), "-c", uri, *args],
                          capture_output=True, text=True, timeout=60)


def require_virsh() -> None:
    if not shutil.which("virsh"):
        pytest.skip("virsh not installed (Debian's libvirt-clients; scripts/test installs it "
                    "when it can)")


def test_virsh_accepts_the_fixture_xml_as_is(tmp_path: Path) -> None:
    require_qemu()
    require_virsh()
    xml = GUEST.make_guest("vt", 3, 128, tmp_path)
    result = virsh("test:///default", "define", str(xml), quiet=False)
    assert result.returncode == 0, result.stderr
    assert "Domain 'vt' defined" in result.stdout


async def test_disk_snapshot_matches_libvirt(tmp_path: Path, libvirtd: str) -> None:
    require_qemu()
    name = f"qsnap-sbs-{tmp_path.name[-8:]}"
    lv_xml = GUEST.make_guest(name, 2, 128, tmp_path / "lv")
    qs_xml = GUEST.make_guest(name, 2, 128, tmp_path / "qs")
    assert virsh("qemu:///system", "define", str(lv_xml)).returncode == 0
    try:
        assert virsh("qemu:///system", "start", name).returncode == 0
        await wait_for_counter(tmp_path / "lv" / "serial.log", 5)
        made = virsh("qemu:///system", "snapshot-create-as", name, "s1", "--disk-only")
        assert made.returncode == 0, made.stderr
        theirs = parse_snapshot(virsh("qemu:///system", "snapshot-dumpxml", name, "s1").stdout,
                                redefine=True)
    finally:
        virsh("qemu:///system", "destroy", name)
        virsh("qemu:///system", "snapshot-delete", name, "s1", "--metadata")
        virsh("qemu:///system", "undefine", name)

    engine = Engine(tmp_path / "state")
    await engine.define(qs_xml.read_text())
    await engine.start(name)
    try:
        await wait_for_counter(tmp_path / "qs" / "serial.log", 5)
        await engine.create(name, snapshot_xml_from_args("s1"), CreateFlags(disk_only=True))
        ours = parse_snapshot(await engine.get_xml(name, "s1"), redefine=True)
    finally:
        await engine.destroy(name)

    def shape(snap: object, root: Path) -> tuple:
        return (snap.name, snap.state, snap.memory, snap.parent,
                [(d.name, d.snapshot, d.type, d.driver_type,
                  d.source.file.replace(str(root), "ROOT")) for d in snap.disks])

    assert shape(ours, tmp_path / "qs") == shape(theirs, tmp_path / "lv")
