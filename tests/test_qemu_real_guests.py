"""The guests people define (fixtures/guest.py --profile virt-install: q35, UEFI, a user-mode
NIC, a virtio-scsi disk, a SATA CD-ROM, RNG, USB tablet, VNC) under real QEMU, and the proof that
qsnap builds the machine libvirt builds: the same completed XML as ``virsh dumpxml``, the same
devices as ``virsh domxml-to-native``, and save images that move both ways between ``virsh`` and
``qsnap`` with the guest's counter continuing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import tree_picture
from libvirt_daemon import Libvirt
from lxml import etree
from qemu_guest import (
    assert_one_moment,
    guest_module,
    read_counters,
    require_qemu,
    resumed_counter,
    wait_for_counter,
)
from test_machine import VIRT_INSTALL, pci_addresses

import qsnap
from qsnap import CreateFlags, DeleteFlags, Engine, RevertFlags, snapshot_xml_from_args
from qsnap.engine.memory import read_image
from qsnap.launcher.command import qemu_command
from qsnap.launcher.desktop import free_tcp_port
from qsnap.launcher.machines import machine_aliases
from qsnap.launcher.runtime import RuntimePaths
from qsnap.model.domain import parse_domain
from qsnap.monitor import Monitor
from qsnap.plan.machine import complete_machine

GUEST = guest_module()
URI = "qemu:///system"


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          timeout=120)


def virt_install_guest(name: str, directory: Path, memory: int = 256,
                       profile: str = "virt-install") -> Path:
    require_qemu()
    if not Path("/usr/share/qemu/firmware").is_dir():
        pytest.fail("QEMU's firmware descriptors are missing: scripts/test installs Debian's "
                    "ovmf")
    return GUEST.make_guest(name, 2, memory, directory, profile=profile)


def libvirt_completion(xml: str) -> etree._Element:
    """What libvirt makes of *xml* at define (``virsh define`` + ``dumpxml``)."""
    name = etree.fromstring(xml).findtext("name") or ""
    virsh("undefine", name, "--nvram")
    with open(f"/tmp/qsnap-test-{name}.xml", "w") as handle:
        handle.write(xml)
    defined = virsh("define", f"/tmp/qsnap-test-{name}.xml")
    assert defined.returncode == 0, defined.stderr
    try:
        return etree.fromstring(virsh("dumpxml", name).stdout)
    finally:
        virsh("undefine", name, "--nvram")


def _this_qemus(alias: str) -> str:
    """The versioned machine type *alias* stands for in the QEMU under test."""
    binary = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    return machine_aliases(binary)[alias]


def _drives(root: etree._Element) -> dict[str, dict[str, str]]:
    return {d.find("target").get("dev", ""): dict(d.find("address").attrib)  # type: ignore[union-attr]
            for d in root.iterfind("devices/disk") if d.find("address") is not None
            and d.find("address").get("type") == "drive"}  # type: ignore[union-attr]


MINIMAL_Q35 = ("<domain type='qemu'><name>qsnap-m1</name><memory unit='MiB'>128</memory><os>"
               "<type machine='pc-q35-7.2'>hvm</type></os><devices><disk type='file' "
               "device='disk'><source file='/nonexistent/a'/><target dev='vda' bus='virtio'/>"
               "</disk></devices></domain>")
PC_WITH_EVERYTHING = (
    "<domain type='qemu'><name>qsnap-m2</name><memory unit='MiB'>128</memory><os><type "
    "machine='pc-i440fx-7.2'>hvm</type></os><devices><disk type='file' device='disk'><source "
    "file='/nonexistent/a'/><target dev='vda' bus='virtio'/></disk><disk type='file' "
    "device='cdrom'><target dev='hdc' bus='ide'/></disk><interface type='user'><mac "
    "address='52:54:00:00:00:07'/><model type='e1000e'/></interface><graphics type='vnc'/>"
    "<serial type='pty'/><channel type='unix'><target type='virtio' "
    "name='org.qemu.guest_agent.0'/></channel><rng model='virtio'><backend model='random'>"
    "/dev/urandom</backend></rng><controller type='scsi' model='virtio-scsi'/></devices>"
    "</domain>")
Q35_MANY = (
    "<domain type='qemu'><name>qsnap-m3</name><memory unit='MiB'>128</memory><os><type "
    "machine='pc-q35-7.2'>hvm</type></os><devices><controller type='scsi' "
    "model='virtio-scsi'/><channel type='unix'><target type='virtio' "
    "name='org.qemu.guest_agent.0'/></channel><disk type='file' device='disk'><source "
    "file='/nonexistent/d'/><target dev='sdb' bus='scsi'/></disk><disk type='file' "
    "device='cdrom'><target dev='hdc' bus='sata'/></disk><interface type='user'><mac "
    "address='52:54:00:00:00:01'/><model type='virtio'/></interface><interface type='user'>"
    "<mac address='52:54:00:00:00:02'/><model type='e1000e'/></interface><input type='tablet' "
    "bus='usb'/><input type='keyboard' bus='usb'/><video><model type='virtio'/></video>"
    "<graphics type='vnc'/><disk type='file' device='disk'><source file='/nonexistent/b'/>"
    "<target dev='vdb' bus='virtio'/></disk><disk type='file' device='disk'><source "
    "file='/nonexistent/c'/><target dev='vdc' bus='virtio'/></disk></devices></domain>")


@pytest.mark.parametrize("xml", [VIRT_INSTALL.replace("<name>vi<", "<name>qsnap-vi<"),
                                 MINIMAL_Q35, PC_WITH_EVERYTHING, Q35_MANY],
                         ids=["virt-install", "minimal-q35", "pc", "q35-many"])
def test_completion_matches_libvirt(xml: str, libvirtd: str) -> None:
    theirs = libvirt_completion(xml)
    ours = complete_machine(etree.fromstring(xml))
    assert pci_addresses(ours) == pci_addresses(theirs)
    assert _drives(ours) == _drives(theirs)
    kinds = [(c.get("type"), c.get("index"), c.get("model"))
             for c in ours.iterfind("devices/controller")]
    assert sorted(kinds, key=str) == sorted(
        [(c.get("type"), c.get("index"), c.get("model"))
         for c in theirs.iterfind("devices/controller")], key=str)
    for tag in ("memballoon", "video/model", "input", "console", "audio"):
        assert [dict(n.attrib) for n in ours.iterfind(f"devices/{tag}")] == \
            [dict(n.attrib) for n in theirs.iterfind(f"devices/{tag}")], tag


def _libvirt_devices(argv: list[str]) -> set[tuple[str, str | None, str | None]]:
    found = set()
    for i, arg in enumerate(argv):
        if arg == "-device" and argv[i + 1].startswith("{"):
            device = json.loads(argv[i + 1])
            found.add((device["driver"], device.get("bus"), device.get("addr")))
    return found


def test_command_line_matches_libvirt(tmp_path: Path, libvirtd: str) -> None:
    """``virsh domxml-to-native`` and qsnap's argv for the virt-install guest: the same device
    models on the same buses and addresses, machine type, firmware, CPU and topology."""
    xml_path = virt_install_guest("qsnap-native", tmp_path)
    engine_xml = tmp_path / "defined.xml"

    async def define() -> str:
        engine = Engine(tmp_path / "state")
        await engine.define(xml_path.read_text())
        return await engine.domain_xml("qsnap-native")

    engine_xml.write_text(asyncio.run(define()))
    virsh("undefine", "qsnap-native", "--nvram")
    native = virsh("domxml-to-native", "qemu-argv", str(xml_path))
    assert native.returncode == 0, native.stderr
    theirs = shlex.split(native.stdout.strip().split(" /usr/bin/qemu-system-x86_64 ", 1)[1]
                         if " /usr/bin/qemu-system-x86_64 " in native.stdout else native.stdout)
    ours = qemu_command(parse_domain(engine_xml.read_text()), RuntimePaths(tmp_path / "run"),
                        "tcg")
    ours_devices = _libvirt_devices(ours)
    theirs_devices = _libvirt_devices(theirs)
    assert ours_devices == theirs_devices
    assert len(ours_devices) >= 14  # the root ports, controllers, disks, NIC, input, video...

    def machine(argv: list[str]) -> dict[str, str]:
        props = argv[argv.index("-machine") + 1].split(",")
        return {"type": props[0], **dict(p.split("=", 1) for p in props[1:])}

    theirs_machine, ours_machine = machine(theirs), machine(ours)
    assert ours_machine["type"] == theirs_machine["type"] == _this_qemus("q35")
    assert ours_machine.get("smm", "off") == theirs_machine.get("smm", "off")

    def pflash(argv: list[str]) -> list[str]:
        return [json.loads(argv[i + 1])["filename"] for i, a in enumerate(argv)
                if a == "-blockdev" and "pflash0" in argv[i + 1] and '"filename"' in argv[i + 1]]

    assert pflash(ours) == pflash(theirs) == ["/usr/share/OVMF/OVMF_CODE_4M.fd"]
    assert ours[ours.index("-cpu") + 1] == theirs[theirs.index("-cpu") + 1]
    assert ours[ours.index("-smp") + 1] == theirs[theirs.index("-smp") + 1]


@pytest.mark.parametrize("profile", ["virt-install", "desktop"])
async def test_virt_install_guest_snapshots_reverts_and_restores(tmp_path: Path,
                                                                 profile: str) -> None:
    """Disk-only (one moment across virtio and virtio-scsi), external and internal full-system
    snapshots, their reverts, and save/restore of a q35 + OVMF + network guest (its NVRAM in
    qcow2, which internal snapshots need); the desktop profile has virt-install's Windows 11
    devices too (SPICE, QXL, ICH9 sound, USB redirection, Hyper-V, its timers)."""
    folder = tmp_path / "g"
    xml = virt_install_guest("g", folder, profile=profile)
    engine = Engine(tmp_path / "state")
    await engine.define(xml.read_text().replace("<cmdline>", "<nvram format='qcow2'/><cmdline>"))
    defined = parse_domain(await engine.domain_xml("g"))
    nvram = defined.element.findtext("os/nvram") or ""
    assert defined.element.find("os/type").get("machine") == _this_qemus("q35")  # type: ignore[union-attr]
    assert not Path(nvram).exists()  # created from its template at the first start
    await engine.start("g")
    serial = folder / "serial.log"
    try:
        await wait_for_counter(serial, 10, timeout=90)
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", nvram],
                                         capture_output=True, text=True, check=True).stdout)
        template = defined.element.find("os/nvram").get("template") or ""  # type: ignore[union-attr]
        assert (info["format"], info["virtual-size"]) == ("qcow2", Path(template).stat().st_size)
        pid = (await engine.guest_info("g")).pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert any('"virtio-net-pci"' in a for a in cmdline)
        if profile == "desktop":
            assert any('"qxl-vga"' in a for a in cmdline)
            assert any('"ich9-intel-hda"' in a for a in cmdline)
            assert any("hv-relaxed=on" in a for a in cmdline)
        else:
            assert (folder / "vnc.sock").is_socket()
        genid = defined.element.findtext("genid")
        assert genid and await generation_id(engine) == genid  # a start keeps it

        await engine.create("g", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))
        assert (await engine.get("g", "d1")).state == "disk-snapshot"
        # The guest writes /dev/sda (virtio-scsi) then /dev/vda in each round.
        assert_one_moment(read_counters([folder / "g-sda.qcow2", folder / "g-vda.qcow2"]))

        for name, memspec in (("m1", f"file={folder / 'm1.mem'}"), ("i1", None)):
            await engine.create("g", snapshot_xml_from_args(name, memspec=memspec),
                                CreateFlags())
            taken_at = GUEST.last_serial_counter(serial) or 0
            await wait_for_counter(serial, taken_at + 50)
            offset = serial.stat().st_size
            await engine.revert("g", name)
            # The old QEMU may print a few more counters before it stops: the reverted guest
            # is the first count below where the old one was.
            for _ in range(300):
                if any(c < taken_at + 40 for c in _counters_since(serial, offset)):
                    break
                await asyncio.sleep(0.1)
            resumed = min(_counters_since(serial, offset))
            assert taken_at - 5 <= resumed <= taken_at + 5, (name, taken_at, resumed)
            rewound = await generation_id(engine)
            assert rewound != genid, name  # the guest can tell it was rewound
            # ...and dumpxml of the running domain shows the ID it now has, as libvirt's
            # live XML does (the stored definition keeps the defined one).
            assert parse_domain(await engine.domain_xml("g")).element.findtext(
                "genid") == rewound
            genid = rewound

        assert "i1" in internal_tags(nvram)  # the firmware's variables took the tag too

        saved_at = GUEST.last_serial_counter(serial) or 0
        await engine.save("g", folder / "g.save")
        assert await engine.domstate("g") == "shut off"
        offset = serial.stat().st_size
        await engine.restore(folder / "g.save")
        await wait_for_counter(serial, saved_at + 10)
        assert b"qsnap-guest ready" not in serial.read_bytes()[offset:]
        assert saved_at - 5 <= _counters_since(serial, offset)[0] <= saved_at + 5
        restored_id = await generation_id(engine)
        assert restored_id != genid
        assert parse_domain(await engine.domain_xml("g")).element.findtext(
            "genid") == restored_id
    finally:
        await engine.destroy("g")


async def generation_id(engine: Engine) -> str:
    async with await Monitor.connect((await engine.guest_info("g")).qmp or "") as monitor:
        return await monitor.generation_id()


def internal_tags(image: str) -> list[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-l", "-U", image], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[1] for line in out.splitlines()[2:] if line.split()]


def same_content(a: str, b: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", a, b],
                          capture_output=True).returncode == 0


async def test_uefi_variables_follow_snapshots(tmp_path: Path) -> None:
    """An external snapshot keeps the NVRAM as it was, and a revert puts it back;
    ``--reset-nvram`` starts from the template instead; internal snapshots of a raw NVRAM are
    refused (libvirt 10.9's rule), and a qcow2 NVRAM's tag goes when the snapshot does.

    The file is compared after reverts to a disk-only snapshot, which leave the guest shut off:
    after a memory snapshot's revert QEMU itself writes the flash contents of the memory image
    back to the file once the guest runs (pflash's post-load), so it holds the snapshot's
    variables whatever the file held before."""
    folder = tmp_path / "g"
    xml = virt_install_guest("g", folder).read_text()
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    defined = parse_domain(await engine.domain_xml("g"))
    nvram, template = defined.nvram or "", defined.element.find("os/nvram").get("template")  # type: ignore[union-attr]
    await engine.start("g")
    try:
        await wait_for_counter(folder / "serial.log", 5, timeout=90)
        before = tree_picture(tmp_path / "state"), Path(nvram).read_bytes()
        with pytest.raises(qsnap.NotSupportedError, match=r"need its NVRAM .* in qcow2 format"):
            await engine.create("g", snapshot_xml_from_args("i"), CreateFlags())
        assert (tree_picture(tmp_path / "state"), Path(nvram).read_bytes()) == before
        assert await engine.domstate("g") == "running"
        await engine.create("g", snapshot_xml_from_args(
            "m1", memspec=f"file={folder / 'm1.mem'}"), CreateFlags())
        await engine.create("g", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))
        copies = tmp_path / "state" / "domains" / "g" / "nvram"
        assert sorted(p.name for p in copies.iterdir()) == ["d1", "m1"]
        assert same_content(str(copies / "d1"), nvram)
        await engine.destroy("g")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", nvram, "4M"], check=True)
        assert not same_content(str(copies / "d1"), nvram)
        await engine.revert("g", "d1")
        assert await engine.domstate("g") == "shut off"
        assert same_content(str(copies / "d1"), nvram)  # the snapshot's variables are back
        await engine.revert("g", "d1", RevertFlags(reset_nvram=True))
        assert same_content(str(template), nvram)
        await engine.revert("g", "m1")  # QEMU writes the image's flash back: it still boots
        await wait_for_counter(folder / "serial.log", 5)
        await engine.delete("g", "m1", DeleteFlags(metadata_only=True))
        assert sorted(p.name for p in copies.iterdir()) == ["d1"]  # went with the metadata
    finally:
        await engine.destroy("g")

    qcow2 = Engine(tmp_path / "state2")
    await qcow2.define(xml.replace("<cmdline>", "<nvram format='qcow2'/><cmdline>")
                       .replace("<name>g</name>", "<name>q</name>"))
    varstore = parse_domain(await qcow2.domain_xml("q")).nvram or ""
    await qcow2.create("q", snapshot_xml_from_args("off"), CreateFlags())  # shut off: qemu-img
    assert internal_tags(varstore) == ["off"]
    await qcow2.delete("q", "off")
    assert internal_tags(varstore) == []


def _counters_since(serial: Path, offset: int) -> list[int]:
    return [int(n) for n in re.findall(rb"qsnap-counter (\d+)", serial.read_bytes()[offset:])]


@pytest.mark.parametrize("profile", ["virt-install", "desktop"])
async def test_save_images_move_between_libvirt_and_qsnap(tmp_path: Path, libvirtd: str,
                                                          profile: str) -> None:
    """``virsh save`` of the q35 + OVMF + network + virtio-scsi + CD-ROM guest (and of the
    desktop one: SPICE, QXL, sound, USB redirection, Hyper-V) restores under ``qsnap
    restore``, and qsnap's save restores under ``virsh restore``; each time the guest goes on
    counting from where it was saved (no boot in between)."""
    name = f"qsnap-lx-{tmp_path.name[-6:]}"
    folder = tmp_path / "g"
    xml = virt_install_guest(name, folder, profile=profile)
    serial = folder / "serial.log"
    virsh("undefine", name, "--nvram")
    assert virsh("define", str(xml)).returncode == 0
    engine = Engine(tmp_path / "state")
    try:
        started = virsh("start", name)
        assert started.returncode == 0, started.stderr
        await wait_for_counter(serial, 10, timeout=90)
        saved = virsh("save", name, str(folder / "libvirt.save"))
        assert saved.returncode == 0, saved.stderr
        at_save = GUEST.last_serial_counter(serial) or 0
        offset = serial.stat().st_size

        await engine.restore(str(folder / "libvirt.save"))
        await wait_for_counter(serial, at_save + 10)
        resumed = _counters_since(serial, offset)
        assert b"qsnap-guest ready" not in serial.read_bytes()[offset:]
        assert at_save - 5 <= resumed[0] <= at_save + 5, (at_save, resumed[:3])

        await engine.save(name, str(folder / "qsnap.save"))
        at_save = GUEST.last_serial_counter(serial) or 0
        restored = virsh("restore", str(folder / "qsnap.save"))
        assert restored.returncode == 0, restored.stderr
        # libvirt opens the serial file anew (truncated): whatever the guest prints now
        # continues from the saved moment instead of starting at a boot.
        await wait_for_counter(serial, at_save + 10)
        resumed = _counters_since(serial, 0)
        assert b"qsnap-guest ready" not in serial.read_bytes()
        assert at_save - 5 <= resumed[0] <= at_save + 5, (at_save, resumed[:3])
    finally:
        virsh("destroy", name)
        virsh("undefine", name, "--nvram")
        if await engine.domstate(name) == "running":
            await engine.destroy(name)


def _link(name: str) -> dict[str, object] | None:
    shown = subprocess.run(["ip", "-j", "link", "show", name], capture_output=True, text=True)
    return json.loads(shown.stdout)[0] if shown.returncode == 0 else None


async def test_tap_interfaces_on_a_bridge_and_by_name(tmp_path: Path) -> None:
    """``<interface type='ethernet'>`` opens (creating) the tap its ``<target dev>`` names,
    ``type='bridge'`` a tap qsnap names and puts on the bridge, both up while the guest runs
    and gone when it stops; the guest sees both NICs at libvirt's addresses."""
    require_qemu()
    if os.geteuid() != 0:
        pytest.fail("tap devices need root (CAP_NET_ADMIN); CI runs the suite as root")
    bridge = f"qsbr{tmp_path.name[-6:]}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    engine = Engine(tmp_path / "state")
    try:
        xml = GUEST.make_guest("g", 1, 128, tmp_path / "g").read_text().replace(
            "<memballoon", "<interface type='ethernet'><target dev='qsnapeth0'/><model "
            "type='virtio'/></interface><interface type='bridge'><source "
            f"bridge='{bridge}'/><model type='e1000e'/></interface><memballoon")
        await engine.define(xml)
        await engine.start("g")
        await wait_for_counter(tmp_path / "g" / "serial.log", 3)
        ethernet = _link("qsnapeth0")
        assert ethernet is not None and "UP" in ethernet["flags"]  # type: ignore[operator]
        on_bridge = [link for link in json.loads(subprocess.run(
            ["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True,
            check=True).stdout)]
        assert len(on_bridge) == 1 and on_bridge[0]["ifname"].startswith("qs")
        tap = on_bridge[0]["ifname"]
        async with await Monitor.connect((await engine.guest_info("g")).qmp or "") as monitor:
            nics = {d["qdev_id"]: d for bus in await monitor.execute("query-pci")
                    for d in bus["devices"] if d.get("qdev_id", "").startswith("net")}
        assert sorted(nics) == ["net0", "net1"]
        await engine.destroy("g")
        assert _link("qsnapeth0") is None and _link(tap) is None

        # A bridge that does not exist: the start fails naming the tap and the bridge, and
        # no QEMU or tap is left.
        await engine.define(xml.replace(f"bridge='{bridge}'", "bridge='qsnosuchbr0'"))
        with pytest.raises(qsnap.LaunchError, match=r"cannot bring the guest's tap 'qs[0-9a-f]+' "
                                                    r"up on bridge 'qsnosuchbr0'"):
            await engine.start("g")
        assert await engine.domstate("g") == "shut off"
        assert _link("qsnapeth0") is None
    finally:
        if await engine.domstate("g") != "shut off":
            await engine.destroy("g")
        subprocess.run(["ip", "link", "del", bridge], check=False)


EXTRA_Q35 = (
    "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{media}'/>"
    "<target dev='sdc' bus='sata'/><readonly/><boot order='2'/></disk>"
    "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{media}'/>"
    "<target dev='sdd' bus='scsi'/><readonly/></disk>"
    "<controller type='scsi' model='virtio-scsi'/>"
    "<controller type='pci' index='20' model='pcie-root-port'><address type='pci' "
    "domain='0x0000' bus='0x00' slot='0x10' function='0x0'/></controller>"
    "<controller type='pci' index='21' model='pcie-to-pci-bridge'><address type='pci' "
    "domain='0x0000' bus='0x14' slot='0x00' function='0x0'/></controller>"
    "<interface type='user'><model type='rtl8139'/><address type='pci' domain='0x0000' "
    "bus='0x15' slot='0x01' function='0x0'/></interface>"
    "<serial type='pty'><target port='1'/></serial>"
    "<input type='keyboard' bus='usb'/><controller type='usb' model='qemu-xhci'/>"
    "<video><model type='vga'/></video><graphics type='vnc' port='-1'/>"
    "<rng model='virtio'><backend model='builtin'/></rng>"
    "<controller type='pci' index='30' model='dmi-to-pci-bridge'/><controller type='pci' "
    "index='31' model='pci-bridge'/><interface type='user'><model type='e1000'/></interface>")
EXTRA_PC = (
    "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{media}'/>"
    "<target dev='hdc' bus='ide'/><readonly/></disk>"
    "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{data}'/>"
    "<target dev='hda' bus='ide'/><boot order='1'/></disk>"
    "<interface type='user'><model type='rtl8139'/></interface>"
    "<input type='tablet' bus='usb'/><controller type='usb' model='piix3-uhci'/>"
    "<video><model type='cirrus'/></video><graphics type='vnc' port='-1'/>")


@pytest.mark.parametrize("machine", ["q35", "pc"])
async def test_more_device_classes_start_and_save(tmp_path: Path, machine: str) -> None:
    """The device classes the virt-install guest does not have (CD-ROMs with media on SATA,
    SCSI and IDE, boot order, a pty serial port, a pcie-to-pci-bridge with a conventional NIC
    behind it, a dmi-to-pci-bridge with a pci-bridge and another conventional NIC, USB
    keyboard, VGA and cirrus, the builtin RNG, CPU topology) start under real
    QEMU, and their state survives a save and restore."""
    folder = tmp_path / "g"
    xml = GUEST.make_guest("g", 1, 128, folder).read_text()
    media, data = folder / "media.iso", folder / "data.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(media), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(data), "8M"], check=True)
    extra = (EXTRA_Q35 if machine == "q35" else EXTRA_PC).format(media=media, data=data)
    xml = xml.replace("<controller type='usb' index='0' model='none'/>", "").replace(
        "<memballoon", extra + "<memballoon").replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu><cpu "
        "mode='custom'><model>qemu64</model><topology sockets='1' dies='1' cores='2' "
        "threads='1'/></cpu>")
    if machine == "q35":
        xml = xml.replace("machine='pc'", "machine='q35'")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("g")
    serial = folder / "serial.log"
    try:
        await wait_for_counter(serial, 5, timeout=60)
        pid = (await engine.guest_info("g")).pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        drivers = {json.loads(a)["driver"] for a in argv if a.startswith('{"driver"')}
        expected = {"ide-cd", "usb-kbd" if machine == "q35" else "usb-tablet",
                    "VGA" if machine == "q35" else "cirrus-vga"}
        if machine == "q35":
            expected |= {"scsi-cd", "pcie-pci-bridge", "rtl8139", "virtio-rng-pci",
                         "i82801b11-bridge", "pci-bridge", "e1000"}
        else:
            expected |= {"ide-hd", "rtl8139", "piix3-usb-uhci"}
        assert expected <= drivers, expected - drivers
        assert argv[argv.index("-smp") + 1] == "2,sockets=1,dies=1,cores=2,threads=1"
        await save_restore_resumes(engine, "g", folder)
    finally:
        await engine.destroy("g")


DEVICE_OPTIONS = (
    "<disk type='file' device='disk'><driver name='qemu' type='raw' queues='2' "
    "queue_size='128' event_idx='on' ioeventfd='on' error_policy='report' "
    "rerror_policy='ignore' packed='on'/><source file='{data}'/><target dev='vdb' "
    "bus='virtio'/></disk>"
    "<interface type='user'><model type='virtio'/><driver txmode='iothread' "
    "rx_queue_size='512' event_idx='off'><host csum='off' tso4='off'/><guest ecn='off'/>"
    "</driver></interface>"
    "<rng model='virtio'><rate bytes='1024' period='1000'/><backend model='egd' "
    "type='unix'><source mode='bind' path='{egd}'/></backend></rng>")


async def test_device_options_start_and_save(tmp_path: Path) -> None:
    """libvirt's options of virtio disks (queues, notification, error policies, packed
    rings) and NICs (transmit mode, queue sizes, offloads), an entropy daemon's
    socket with a rate limit, the CPU's L3 cache and physical address width, a clock in a
    named time zone (QEMU's TZ), and ``<qemu:commandline>`` arguments and environment reach
    QEMU; the guest's state survives
    a save and restore with them."""
    require_qemu()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("o", 1, 128, folder).read_text()
    data = folder / "data.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(data), "8M"], check=True)
    xml = xml.replace("<memballoon", DEVICE_OPTIONS.format(data=data, egd=folder / "egd.sock")
                      + "<memballoon").replace(
        "<vcpu>1</vcpu>", "<vcpu>1</vcpu><cpu mode='custom'><model>qemu64</model><cache "
        "level='3' mode='emulate'/><maxphysaddr mode='emulate' bits='40'/></cpu>").replace(
        "</devices>", "</devices><qemu:commandline xmlns:qemu='http://libvirt.org/schemas/"
        "domain/qemu/1.0'><qemu:arg value='-global'/><qemu:arg value='kvm-pit.lost_tick_"
        "policy=discard'/><qemu:env name='QSNAP_PASSED' value='yes'/></qemu:commandline>"
    ).replace("<on_poweroff>", "<clock offset='timezone' timezone='Europe/Paris'/><on_poweroff>")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("o")
    serial = folder / "serial.log"
    try:
        await wait_for_counter(serial, 5, timeout=60)
        pid = (await engine.guest_info("o")).pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        devices = {d.get("id"): d for d in (json.loads(a) for a in argv
                                            if a.startswith('{"driver"'))}
        assert {k: devices["vdb"][k] for k in ("num-queues", "queue-size", "event_idx",
                                               "ioeventfd", "werror", "rerror", "packed")} \
            == {"num-queues": 2, "queue-size": 128, "event_idx": True, "ioeventfd": True,
                "werror": "report", "rerror": "ignore", "packed": True}
        assert {k: devices["net0"][k] for k in ("tx", "rx_queue_size", "event_idx", "csum",
                                                "host_tso4", "guest_ecn")} \
            == {"tx": "bh", "rx_queue_size": 512,
                "event_idx": False, "csum": False, "host_tso4": False, "guest_ecn": False}
        assert (devices["rng0"]["max-bytes"], devices["rng0"]["period"]) == (1024, 1000)
        assert (folder / "egd.sock").is_socket()
        assert argv[argv.index("-cpu") + 1] == "qemu64,l3-cache=on,phys-bits=40"
        assert argv[-3:] == ["-global", "kvm-pit.lost_tick_policy=discard", ""]  # NUL-ended
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"QSNAP_PASSED=yes\0" in environment and b"TZ=Europe/Paris\0" in environment
        assert argv[argv.index("-rtc") + 1].startswith("base=localtime")
        await save_restore_resumes(engine, "o", folder)
        pid = (await engine.guest_info("o")).pid
        assert b"QSNAP_PASSED=yes\0" in Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        await engine.destroy("o")


USB_TREE = (
    "<controller type='usb' index='0' model='piix3-uhci'/>"
    "<input type='mouse' bus='usb'/><input type='keyboard' bus='usb'/>"
    "<input type='tablet' bus='usb'/>"
    "<smartcard mode='passthrough' type='unix'><source mode='bind' path='{socket}'/>"
    "</smartcard>")


async def test_usb_hubs_and_smartcards_start_and_save(tmp_path: Path) -> None:
    """More USB devices than the controller has ports: libvirt's hub is added and the
    devices fill the controller's ports, then the hub's; a smartcard reader with a card
    passed through a socket takes its port too; the guest's state survives a save and
    restore."""
    require_qemu()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("u", 1, 128, folder).read_text().replace(
        "<controller type='usb' index='0' model='none'/>", "").replace(
        "<memballoon", USB_TREE.format(socket=folder / "card.sock") + "<memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("u")
    serial = folder / "serial.log"
    try:
        await wait_for_counter(serial, 5, timeout=60)
        placed = {(d["driver"], d.get("port")) for d in await running_devices(engine, "u")}
        # libvirt's order: hubs, readers, then input devices.
        assert {("usb-hub", "1"), ("usb-ccid", "2"), ("usb-mouse", "1.1"),
                ("usb-kbd", "1.2"), ("usb-tablet", "1.3"),
                ("ccid-card-passthru", None)} <= placed
        await save_restore_resumes(engine, "u", folder)
    finally:
        await engine.destroy("u")


Q35_IOMMU_AND_CHANNELS = (
    "<iommu model='intel'><driver intremap='on' caching_mode='on'/></iommu>"
    "<channel type='unix'><target type='virtio' name='org.example.data'/></channel>"
    "<channel type='pty'><target type='virtio'/></channel>"
    "<controller type='usb' model='qemu-xhci'/>"
    "<redirdev bus='usb' type='unix'><source mode='bind' path='{redir}'/><boot order='9'/>"
    "</redirdev><redirfilter><usbdev class='0x08' version='2.0' allow='yes'/><usbdev "
    "allow='no'/></redirfilter>")


async def test_an_iommu_and_virtio_channels_start_and_save(tmp_path: Path) -> None:
    """q35 with QEMU's I/O APIC and the Intel IOMMU (interrupt remapping on), virtio channels
    (a socket qsnap places in the runtime folder, a pty) and a USB port redirected from a
    usbredir socket with a filter: the guest starts, and its state survives a save and
    restore."""
    require_qemu()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("io", 1, 128, folder).read_text().replace(
        "machine='pc'", "machine='q35'").replace(
        "<acpi/>", "<acpi/><ioapic driver='qemu'/>").replace(
        "<controller type='usb' index='0' model='none'/>", "").replace(
        "<memballoon", Q35_IOMMU_AND_CHANNELS.format(redir=folder / "redir.sock")
        + "<memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("io")
    serial = folder / "serial.log"
    try:
        await wait_for_counter(serial, 5, timeout=60)
        info = await engine.guest_info("io")
        argv = Path(f"/proc/{info.pid}/cmdline").read_text().split("\0")
        assert "kernel_irqchip=split" in argv[argv.index("-machine") + 1]
        devices = [json.loads(a) for a in argv if a.startswith('{"driver"')]
        assert {"driver": "intel-iommu", "id": "iommu0", "intremap": "on",
                "caching-mode": True} in devices
        ports = {d.get("name"): d["nr"] for d in devices if d["driver"] == "virtserialport"}
        assert ports == {"org.qemu.guest_agent.0": 1, "org.example.data": 2, None: 3}
        runtime = Path(info.qmp or "").parent
        assert (runtime / "channel1.sock").is_socket()  # the channel's socket, made by QEMU
        redir = next(d for d in devices if d["driver"] == "usb-redir")
        assert (redir["filter"], redir["bootindex"]) == ("0x08:-1:-1:0x0200:1|-1:-1:-1:-1:0", 9)
        await save_restore_resumes(engine, "io", folder)
    finally:
        await engine.destroy("io")


async def test_qemus_own_vdagent_channel_starts(tmp_path: Path) -> None:
    """``<channel type='qemu-vdagent'>``: QEMU's clipboard and mouse agent on the SPICE
    agent's port, beside SPICE on a unix socket. (QEMU 7.2 cannot migrate it, so a memory
    snapshot is refused up front with QEMU's reason, as any migration blocker is.)"""
    require_qemu()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("va", 1, 128, folder).read_text().replace(
        "<memballoon", "<channel type='qemu-vdagent'><target type='virtio'/><source>"
        "<clipboard copypaste='no'/><mouse mode='client'/></source></channel>"
        "<graphics type='spice'><listen type='socket'/></graphics><memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("va")
    try:
        argv = Path(f"/proc/{(await engine.guest_info('va')).pid}/cmdline").read_text()
        assert "qemu-vdagent,id=charchannel1,name=vdagent,clipboard=off,mouse=on" in argv
        assert '"name": "com.redhat.spice.0"' in argv
        assert await engine.domstate("va") == "running"
        # SPICE on a unix socket the definition leaves to the host: in the runtime folder.
        runtime = Path((await engine.guest_info("va")).qmp or "").parent
        assert (runtime / "spice.sock").is_socket()
    finally:
        await engine.destroy("va")


DISK_IDENTITY = (
    "<controller type='usb' model='piix3-uhci'/>"
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{usb}'/>"
    "<target dev='sdb' bus='usb' removable='on'/></disk>"
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{ide}'/>"
    "<target dev='hdb' bus='ide'/><wwn>5000c50015ea71ad</wwn><serial>QS-1</serial>"
    "<geometry cyls='16' heads='16' secs='63' trans='lba'/><blockio "
    "logical_block_size='512' physical_block_size='4096'/><shareable/></disk>")


async def test_a_usb_stick_and_disk_identities_snapshot_and_revert(tmp_path: Path) -> None:
    """A qcow2 USB stick (usb-storage on the controller's first port) and an IDE disk with
    what the guest reads about it (WWN, serial, geometry, block sizes, shared): both take
    part in a disk-only snapshot and an external full-system one, and the revert finds them
    by their targets."""
    require_qemu()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("us", 1, 128, folder).read_text()
    usb, ide = folder / "usb.qcow2", folder / "ide.qcow2"
    for image in (usb, ide):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"],
                       check=True)
    xml = xml.replace("<controller type='usb' index='0' model='none'/>", "").replace(
        "<memballoon", DISK_IDENTITY.format(usb=usb, ide=ide) + "<memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("us")
    try:
        devices = {d["id"]: d for d in await running_devices(engine, "us") if "id" in d}
        assert {k: devices["sdb"][k] for k in ("driver", "bus", "port", "removable")} == \
            {"driver": "usb-storage", "bus": "usb.0", "port": "1", "removable": True}
        assert {k: devices["hdb"][k] for k in ("wwn", "serial", "cyls", "bios-chs-trans",
                                               "physical_block_size", "share-rw")} == \
            {"wwn": 0x5000c50015ea71ad, "serial": "QS-1", "cyls": 16, "bios-chs-trans": "lba",
             "physical_block_size": 4096, "share-rw": True}
        await engine.create("us", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))
        snapshot = etree.fromstring((await engine.get_xml("us", "d1")).encode())
        assert {d.get("name") for d in snapshot.iterfind("disks/disk")
                if d.get("snapshot") == "external"} >= {"sdb", "hdb"}
        await revert_resumes_where_taken(engine, "us", folder)
    finally:
        await engine.destroy("us")


def _spice_certificates(folder: Path) -> None:
    """A CA and a server certificate it signed, as SPICE's TLS wants them."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=qsnap CA", "-keyout", "ca-key.pem", "-out", "ca-cert.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
            "server-key.pem", "-out", "server.csr")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "2", "-out", "server-cert.pem")


async def test_spice_with_tls_starts_and_without_certificates_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``<graphics type='spice' tlsPort=>``: with certificates in $QSNAP_SPICE_X509_DIR QEMU
    serves SPICE over TLS on that port (the main channel only over TLS); without them the
    start is refused before anything is made, naming the missing files."""
    require_qemu()
    folder = tmp_path / "g"
    port = free_tcp_port("127.0.0.1", 15900)
    xml = GUEST.make_guest("sp", 1, 128, folder).read_text().replace(
        "<memballoon", f"<graphics type='spice' port='-1' autoport='no' tlsPort='{port}'>"
        "<listen type='address' address='127.0.0.1'/><channel name='main' mode='secure'/>"
        "</graphics><memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    monkeypatch.setenv("QSNAP_SPICE_X509_DIR", str(tmp_path / "certs"))
    with pytest.raises(qsnap.NotSupportedError, match=r"SPICE's TLS needs ca-cert.pem, "
                       r"server-cert.pem, server-key.pem in .*certs"):
        await engine.start("sp")
    assert await engine.domstate("sp") == "shut off"
    _spice_certificates(tmp_path / "certs")
    await engine.start("sp")
    try:
        argv = Path(f"/proc/{(await engine.guest_info('sp')).pid}/cmdline").read_text()
        assert f"tls-port={port}," in argv and "tls-channel=main" in argv
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # QEMU listens on the TLS port
    finally:
        await engine.destroy("sp")


#: Every format libvirt 11 writes, and the three qsnap writes.
LIBVIRT_FORMATS = ("raw", "sparse", "gzip", "bzip2", "xz", "lzop", "zstd")
QSNAP_FORMATS = ("sparse", "zstd", "raw")


async def test_every_save_image_format_moves_between_libvirt_11_and_qsnap(
        tmp_path: Path, libvirt_11: Libvirt) -> None:
    """On the QEMU under test, a guest goes back and forth between libvirt 11 and qsnap: each
    format libvirt writes (``virsh save --image-format F``, sparse with ``--parallel-channels
    4`` where the QEMU has mapped-ram) restores under qsnap, and each format qsnap writes
    restores under ``virsh restore``; every time the guest counts on from the saved moment,
    and never boots again."""
    name = f"qsnap-lv11-{tmp_path.name[-6:]}"
    folder = tmp_path / "g"
    xml = GUEST.make_guest(name, 2, 256, folder)
    serial = folder / "serial.log"
    engine = Engine(tmp_path / "state")
    assert libvirt_11.virsh("define", str(xml)).returncode == 0

    def saved_moment() -> tuple[int, int]:
        return GUEST.last_serial_counter(serial) or 0, serial.stat().st_size

    async def resumes_at(at_save: int, offset: int) -> None:
        """The first counter after *offset* follows the saved one."""
        await wait_for_counter(serial, at_save + 5)
        after = serial.read_bytes()[offset:]
        assert b"qsnap-guest ready" not in after
        resumed = [int(n) for n in re.findall(rb"qsnap-counter (\d+)", after)]
        assert at_save - 5 <= resumed[0] <= at_save + 5, (at_save, resumed[:3])

    try:
        started = libvirt_11.virsh("start", name)
        assert started.returncode == 0, started.stderr
        await wait_for_counter(serial, 10, timeout=90)
        libvirts, ours_formats = list(LIBVIRT_FORMATS), list(QSNAP_FORMATS)
        round_ = 0
        while round_ < len(libvirts):
            theirs = libvirts[round_]
            image = folder / f"libvirt.{theirs}"
            channels = ("--parallel-channels", "4") if theirs == "sparse" else ()
            saved = libvirt_11.virsh("save", name, str(image), "--image-format", theirs,
                                     *channels)
            assert saved.returncode == 0, (theirs, saved.stderr)
            assert read_image(image).format == theirs
            at_save, offset = saved_moment()
            await engine.restore(image)
            await resumes_at(at_save, offset)
            if round_ == 0:  # raw, which every QEMU reads: now ask the QEMU under test
                async with await Monitor.connect(engine._runtime(name)[1].qmp) as monitor:  # type: ignore[union-attr]
                    if not (await monitor.stream_support()).mapped_ram:
                        # QEMU 7.2: libvirt and qsnap both refuse sparse (scripts/test runs
                        # this on QEMU 10 too); every other format still goes both ways.
                        libvirts.remove("sparse")
                        ours_formats.remove("sparse")

            ours = ours_formats[round_ % len(ours_formats)]
            image = folder / f"qsnap.{round_}.{ours}"
            await engine.save(name, image, image_format=ours,
                              parallel_channels=4 if ours == "sparse" else None)
            at_save = GUEST.last_serial_counter(serial) or 0
            restored = libvirt_11.virsh("restore", str(image))
            assert restored.returncode == 0, (ours, restored.stderr)
            await resumes_at(at_save, 0)  # libvirt truncates the serial file as it starts QEMU
            round_ += 1
        assert {"gzip", "bzip2", "xz", "lzop", "zstd"} < set(libvirts)
    finally:
        libvirt_11.virsh("destroy", name)
        libvirt_11.virsh("undefine", name)
        if await engine.domstate(name) == "running":
            await engine.destroy(name)


async def save_restore_resumes(engine: Engine, domain: str, folder: Path) -> None:
    """A save of the running guest (``folder/DOMAIN.save``) and its restore, which counts on
    from where it was saved."""
    serial = folder / "serial.log"
    saved_at = GUEST.last_serial_counter(serial) or 0
    await engine.save(domain, folder / f"{domain}.save")
    offset = serial.stat().st_size
    await engine.restore(folder / f"{domain}.save")
    await wait_for_counter(serial, saved_at + 5)
    assert saved_at - 5 <= _counters_since(serial, offset)[0] <= saved_at + 5


async def running_devices(engine: Engine, domain: str) -> list[dict[str, Any]]:
    """The ``-device`` properties (JSON form) of the domain's running QEMU."""
    pid = (await engine.guest_info(domain)).pid
    return [json.loads(a) for a in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            if a.startswith('{"driver"')]


async def revert_resumes_where_taken(engine: Engine, domain: str, folder: Path) -> None:
    """A running guest's external full-system snapshot (``m1``), and a revert to it that
    resumes the guest's counter where the snapshot was taken."""
    serial = folder / "serial.log"
    await wait_for_counter(serial, 10)
    await engine.create(domain, snapshot_xml_from_args(
        "m1", memspec=f"file={folder / 'm1.mem'}"), CreateFlags())
    taken_at = GUEST.last_serial_counter(serial) or 0
    await wait_for_counter(serial, taken_at + 30)
    offset = serial.stat().st_size
    await engine.revert(domain, "m1")
    assert taken_at - 5 <= await resumed_counter(serial, offset) <= taken_at + 5


@pytest.fixture
def huge_pages(tmp_path: Path) -> Iterator[Path]:
    """A hugetlbfs of 2 MiB pages with 160 MiB reserved, for the test's duration.

    The host's page pool is one for every suite: CI runs the suites side by side, and a
    second suite's guest taking its pages (or giving the pool back) in the middle would make
    this test's counts wrong, so the fixture holds a host-wide lock while it runs."""
    if os.geteuid() != 0:
        pytest.fail("huge pages need root (mount, nr_hugepages): run the tests as root")
    with open("/tmp/qsnap-tests-huge-pages.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _reserved_huge_pages(tmp_path)


def _reserved_huge_pages(tmp_path: Path) -> Iterator[Path]:
    """Mount a hugetlbfs and reserve 80 more pages of 2 MiB; give both back afterwards."""
    count = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    before = count.read_text().strip()
    mount = tmp_path / "hugepages"
    mount.mkdir()
    count.write_text(str(int(before) + 80))
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mount)],
                   check=True)
    try:
        if int(count.read_text()) < int(before) + 80:
            pytest.fail("the kernel could not reserve 80 huge pages of 2 MiB")
        yield mount
    finally:
        for _ in range(50):  # QEMU's last file there may close a moment after it exits
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mount)], check=True)
        count.write_text(before)


async def test_a_huge_page_guest_bound_to_a_node_snapshots_and_saves(
        tmp_path: Path, huge_pages: Path) -> None:
    """``<hugepages/>`` with ``<numatune>``: the guest's RAM is a file QEMU makes on the host's
    hugetlbfs (its pages taken at start), bound to NUMA node 0; a full-system snapshot and
    its revert, a save and a restore go on from where they were."""
    require_qemu()
    free = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
    folder = tmp_path / "g"
    xml = GUEST.make_guest("hp", 1, 128, folder).read_text()
    xml = re.sub(r"(</memory>)", r"\1<memoryBacking><hugepages><page size='2048' "
                 r"unit='KiB'/></hugepages></memoryBacking><numatune><memory mode='strict' "
                 r"nodeset='0'/></numatune>", xml, count=1)
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    idle = int(free.read_text())
    await engine.start("hp")
    try:
        pid = (await engine.guest_info("hp")).pid
        objects = [json.loads(a) for a in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                   if a.startswith('{"qom-type"')]
        ram = next(o for o in objects if o["id"] == "pc.ram")
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if " hugetlbfs " in line and "pagesize=2M" in line]
        assert ram["mem-path"] in mounts and str(huge_pages) in mounts
        assert (ram["prealloc"], ram["host-nodes"], ram["policy"]) == (True, [0], "bind")
        assert idle - int(free.read_text()) == 64  # 128 MiB of 2 MiB pages, taken at start
        await revert_resumes_where_taken(engine, "hp", folder)
        serial = folder / "serial.log"
        saved_at = GUEST.last_serial_counter(serial) or 0
        await engine.save("hp", folder / "hp.save")
        assert int(free.read_text()) == idle  # given back with the guest
        offset = serial.stat().st_size
        await engine.restore(folder / "hp.save")
        await wait_for_counter(serial, saved_at + 5)
        assert saved_at - 5 <= _counters_since(serial, offset)[0] <= saved_at + 5
    finally:
        await engine.destroy("hp")


async def test_a_guest_with_a_memory_module_snapshots_and_saves(tmp_path: Path) -> None:
    """A DIMM in a slot of ``<maxMemory slots=>`` (its own RAM block, ``memdimm0``, beside the
    cell's ``ram-node0``): a full-system snapshot and its revert, a save and a restore carry
    both blocks."""
    require_qemu()
    folder = tmp_path / "g"
    # (With memory hotplug on, the guest's kernel runs out of memory in 128 MiB.)
    xml = GUEST.make_guest("dm", 1, 256, folder).read_text()
    xml = re.sub(r"<memory unit='MiB'>256</memory>",
                 "<maxMemory slots='4' unit='MiB'>1024</maxMemory><memory unit='MiB'>320"
                 "</memory>", xml, count=1)
    assert "<maxMemory" in xml and "<cpu" not in xml
    xml = xml.replace("<vcpu>1</vcpu>", "<vcpu>1</vcpu><cpu mode='custom'><model>qemu64"
                      "</model><numa><cell id='0' cpus='0' memory='256' unit='MiB'/></numa>"
                      "</cpu>").replace("<memballoon", "<memory model='dimm'><target><size "
                                        "unit='MiB'>64</size><node>0</node></target></memory>"
                                        "<memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("dm")
    try:
        pid = (await engine.guest_info("dm")).pid
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        assert argv[argv.index("-m") + 1] == "size=262144k,slots=4,maxmem=1048576k"
        dimm = next(json.loads(a) for a in argv if a.startswith('{"driver": "pc-dimm"'))
        assert (dimm["memdev"], dimm["node"], dimm["slot"]) == ("memdimm0", 0, 0)
        await revert_resumes_where_taken(engine, "dm", folder)
        await save_restore_resumes(engine, "dm", folder)
    finally:
        await engine.destroy("dm")


async def test_huge_pages_without_hugetlbfs_are_refused_by_name(tmp_path: Path) -> None:
    """A page size no hugetlbfs serves is refused at start, naming the size and the fix,
    and nothing is started."""
    require_qemu()
    xml = GUEST.make_guest("hq", 1, 128, tmp_path / "g").read_text()
    xml = re.sub(r"(</memory>)", r"\1<memoryBacking><hugepages><page size='1' unit='GiB'/>"
                 r"</hugepages></memoryBacking>", xml, count=1)
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    with pytest.raises(qsnap.NotSupportedError, match=r"no hugetlbfs of 1048576 KiB pages is "
                       r"mounted on this host .*mount -t hugetlbfs -o pagesize=1048576k"):
        await engine.start("hq")
    assert await engine.domstate("hq") == "shut off"


NUMA_CELLS = ("<numa><cell id='0' cpus='0' memory='64' unit='MiB'/>"
              "<cell id='1' memory='64' unit='MiB' memAccess='shared'/></numa>")


@pytest.mark.parametrize("layout", ["memfd", "numa"])
async def test_memory_backing_guests_save_restore_and_revert(tmp_path: Path,
                                                             layout: str) -> None:
    """A guest whose RAM is shared memfd memory, allocated at start (``<memoryBacking>``, what
    virtiofs guests need), or two NUMA cells (a RAM block each): a full-system snapshot and
    its revert, a save and a restore, and (memfd) the save image restored with plain
    anonymous RAM (the RAM block is ``pc.ram`` either way), each time counting on from where
    it was."""
    require_qemu()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("mb", 1, 128, folder).read_text()
    backing = ("<memoryBacking><source type='memfd'/><access mode='shared'/>"
               "<allocation mode='immediate'/></memoryBacking>")
    xml = re.sub(r"(</memory>|</currentMemory>)", r"\1" + backing, xml, count=1)
    assert backing in xml
    if layout == "numa":
        xml = xml.replace(backing, "")
        assert "<cpu" not in xml
        xml = re.sub(r"(</vcpu>)", r"\1<cpu mode='custom'><model>qemu64</model>"
                     + NUMA_CELLS + "</cpu>", xml, count=1)
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    serial = folder / "serial.log"
    await engine.start("mb")
    try:
        pid = (await engine.guest_info("mb")).pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        if layout == "numa":
            assert "node,nodeid=1,memdev=ram-node1" in cmdline
        else:
            assert '"memory-backend-memfd"' in cmdline and "memory-backend=pc.ram" in cmdline
        await revert_resumes_where_taken(engine, "mb", folder)

        for round_, plain in enumerate((False, True) if layout == "memfd" else (False,)):
            current = etree.fromstring((await engine.domain_xml("mb")).encode())
            node = current.find("memoryBacking")
            if plain and node is not None:
                current.remove(node)
            definition = etree.tostring(current).decode() if plain else None
            saved_at = GUEST.last_serial_counter(serial) or 0
            await engine.save("mb", folder / f"mb{round_}.save")
            offset = serial.stat().st_size
            await engine.restore(folder / f"mb{round_}.save", xml=definition)
            await wait_for_counter(serial, saved_at + 5)
            assert saved_at - 5 <= _counters_since(serial, offset)[0] <= saved_at + 5
            assert b"qsnap-guest ready" not in serial.read_bytes()[offset:]
    finally:
        await engine.destroy("mb")


async def test_a_guest_with_a_virtiofs_share(tmp_path: Path) -> None:
    """``<filesystem><driver type='virtiofs'>`` on shared memfd RAM: qsnap starts a virtiofsd
    for the share (nobody's child, on a socket in the runtime folder), QEMU's
    vhost-user-fs-pci carries the mount tag, and the daemon ends with QEMU. A disk-only
    snapshot and its revert work; a memory snapshot and a save are refused up front (QEMU
    cannot migrate the device: 7.2 names it a blocker, 10 fails in the middle of the stream),
    nothing is written, and the guest runs on."""
    require_qemu()
    folder = tmp_path / "g"
    share = tmp_path / "share"
    share.mkdir()
    xml = GUEST.make_guest("vf", 1, 128, folder).read_text()
    xml = re.sub(r"(</memory>)", r"\1<memoryBacking><source type='memfd'/><access "
                 r"mode='shared'/></memoryBacking>", xml, count=1).replace(
        "<memballoon", f"<filesystem type='mount' accessmode='passthrough'><driver "
        f"type='virtiofs' queue='256'/><binary xattr='on'><sandbox mode='chroot'/></binary>"
        f"<source dir='{share}'/><target dir='hostshare'/></filesystem><memballoon")
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("vf")
    serial = folder / "serial.log"
    try:
        await wait_for_counter(serial, 5, timeout=60)
        info = await engine.guest_info("vf")
        argv = Path(f"/proc/{info.pid}/cmdline").read_text()
        assert '"driver": "vhost-user-fs-pci"' in argv and '"tag": "hostshare"' in argv
        socket = Path(info.qmp or "").parent / "fs0-fs.sock"
        daemon = int(socket.with_suffix(".pid").read_text())
        assert f"source={share}" in Path(f"/proc/{daemon}/cmdline").read_text()
        assert os.getppid() != daemon and Path(f"/proc/{daemon}/stat").read_text().split()[3] \
            != str(os.getpid())  # not our child
        await engine.create("vf", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))
        for attempt in (engine.create("vf", snapshot_xml_from_args(
                "m1", memspec=f"file={folder / 'm1.mem'}"), CreateFlags()),
                engine.save("vf", folder / "vf.save")):
            with pytest.raises(qsnap.OperationInvalidError, match=r"QEMU cannot save its "
                               r"state: .*vhost-user-fs"):
                await attempt
        assert not (folder / "m1.mem").exists() and not (folder / "vf.save").exists()
        assert await engine.domstate("vf") == "running"
        await engine.destroy("vf")
        for _ in range(100):  # the daemon ends when QEMU closes its socket
            if not Path(f"/proc/{daemon}").exists() or \
                    Path(f"/proc/{daemon}/stat").read_text().split()[2] == "Z":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("virtiofsd outlived its QEMU")
        await engine.revert("vf", "d1", RevertFlags(running=True))
        await wait_for_counter(serial, 5, timeout=60)
    finally:
        if await engine.domstate("vf") != "shut off":
            await engine.destroy("vf")


async def test_a_guest_with_a_9p_share_starts_and_snapshots(tmp_path: Path) -> None:
    """``<filesystem type='mount'>``: the host folder is a 9p share the guest sees by its
    mount tag; the guest (which does not mount it) takes a full-system snapshot and reverts
    to it as any other."""
    require_qemu()
    folder = tmp_path / "g"
    share = tmp_path / "share, with a comma"
    share.mkdir()
    xml = GUEST.make_guest("fs", 1, 128, folder).read_text().replace(
        "<devices>", f"<devices><filesystem type='mount' accessmode='mapped'><source "
        f"dir='{share}'/><target dir='hostshare'/></filesystem>", 1)
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    await engine.start("fs")
    try:
        pid = (await engine.guest_info("fs")).pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert '"virtio-9p-pci"' in cmdline and '"mount_tag": "hostshare"' in cmdline
        await revert_resumes_where_taken(engine, "fs", folder)
    finally:
        await engine.destroy("fs")
