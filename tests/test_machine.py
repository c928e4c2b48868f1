"""The machine built for a definition, without QEMU: libvirt's completion and addresses
(qsnap.plan.machine), firmware choice, what define records, and what start refuses by name.

The expected addresses were read from libvirt 9.0's ``virsh dumpxml`` for the same XML;
tests/test_qemu_real_guests.py compares with a running libvirt directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from qsnap.errors import NotSupportedError, XMLError
from qsnap.launcher.command import qemu_command
from qsnap.launcher.firmware import read_descriptors
from qsnap.launcher.host_memory import HostMemory
from qsnap.launcher.runtime import RuntimePaths
from qsnap.model.domain import PciAddress, parse_domain, parse_domain_element
from qsnap.plan.domain_define import DefineFacts, resolve_definition
from qsnap.plan.firmware import FirmwareDescriptor, choose_firmware
from qsnap.plan.machine import complete_machine, disk_index

VIRT_INSTALL = """<domain type='qemu'><name>vi</name><memory unit='MiB'>256</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><kernel>/k</kernel></os>
<features><acpi/><apic/></features><cpu mode='custom'><model>qemu64</model></cpu>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/root.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/data.qcow2'/>
<target dev='sda' bus='scsi'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdb' bus='sata'/>
<readonly/></disk>
<controller type='scsi' model='virtio-scsi'/>
<interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>
<serial type='pty'/><console type='pty'/>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<input type='tablet' bus='usb'/><graphics type='vnc' port='-1'/>
<video><model type='virtio'/></video>
<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
</devices></domain>"""

# libvirt 9.0's addresses for VIRT_INSTALL (virsh define + dumpxml).
LIBVIRT_ADDRESSES = {
    "interface": PciAddress(1, 0), "controller scsi 0": PciAddress(2, 0),
    "controller usb 0": PciAddress(3, 0), "controller virtio-serial 0": PciAddress(4, 0),
    "disk vda": PciAddress(5, 0), "memballoon": PciAddress(6, 0), "rng": PciAddress(7, 0),
    "video": PciAddress(0, 1), "controller sata 0": PciAddress(0, 0x1F, 2),
    **{f"controller pci {i}": PciAddress(0, 2, i - 1, multifunction=i == 1)
       for i in range(1, 9)},
}


def _name(node: etree._Element) -> str:
    if node.tag == "controller":
        return f"controller {node.get('type')} {node.get('index')}"
    if node.tag == "disk":
        return f"disk {node.find('target').get('dev')}"  # type: ignore[union-attr]
    return node.tag


def pci_addresses(root: etree._Element) -> dict[str, PciAddress]:
    return {_name(node): address for node in root.find("devices")  # type: ignore[union-attr]
            if (address := PciAddress.of(node)) is not None}


def test_q35_guest_gets_libvirts_root_ports_and_addresses() -> None:
    completed = complete_machine(etree.fromstring(VIRT_INSTALL))
    assert pci_addresses(completed) == LIBVIRT_ADDRESSES
    drives = {d.find("target").get("dev"): dict(d.find("address").attrib)  # type: ignore[union-attr]
              for d in completed.iterfind("devices/disk")
              if d.find("target").get("bus") != "virtio"}  # type: ignore[union-attr]
    assert drives == {"sda": {"type": "drive", "controller": "0", "bus": "0", "target": "0",
                              "unit": "0"},
                      "sdb": {"type": "drive", "controller": "0", "bus": "0", "target": "0",
                              "unit": "1"}}
    ports = [c for c in completed.iterfind("devices/controller") if c.get("model") ==
             "pcie-root-port"]
    assert [(p.find("target").get("chassis"), p.find("target").get("port"))  # type: ignore[union-attr]
            for p in ports] == [(str(i), f"{0x10 + i - 1:#x}") for i in range(1, 9)]


def test_completion_is_idempotent() -> None:
    """libvirt's own completed XML (in its save images and snapshots) comes back unchanged."""
    once = complete_machine(etree.fromstring(VIRT_INSTALL))
    twice = complete_machine(once)
    assert etree.tostring(twice) == etree.tostring(once)


def test_pc_guest_slots_follow_the_video_card() -> None:
    xml = """<domain><name>p</name><os><type machine='pc-i440fx-7.2'>hvm</type></os><devices>
    <disk type='file'><source file='/a'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><model type='e1000e'/></interface><graphics type='vnc'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <controller type='scsi' model='virtio-scsi'/></devices></domain>"""
    addresses = pci_addresses(complete_machine(etree.fromstring(xml)))
    assert addresses == {"video": PciAddress(0, 2), "interface": PciAddress(0, 3),
                         "controller scsi 0": PciAddress(0, 4),
                         "controller usb 0": PciAddress(0, 1, 2),
                         "controller virtio-serial 0": PciAddress(0, 5),
                         "disk vda": PciAddress(0, 6), "memballoon": PciAddress(0, 7),
                         "rng": PciAddress(0, 8)}


def test_a_lone_root_port_slot_is_not_multifunction() -> None:
    xml = VIRT_INSTALL.replace("<rng model='virtio'>", "<rng model='virtio'><backend "
                               "model='builtin'/></rng><rng model='virtio'>")
    ports = {k: v for k, v in pci_addresses(complete_machine(etree.fromstring(xml))).items()
             if k.startswith("controller pci")}
    assert ports["controller pci 9"] == PciAddress(0, 3, 0, multifunction=False)
    assert ports["controller pci 1"].multifunction


def test_disk_names_give_drive_units() -> None:
    assert [disk_index(n) for n in ("sda", "sdb", "hdc", "vdz", "sdaa")] == [0, 1, 2, 25, 26]
    with pytest.raises(XMLError, match="'sda1'"):
        disk_index("sda1")


def test_any_pci_bus_is_accepted_in_metadata() -> None:
    """libvirt's own test XML puts disks on bus 1 (virsh's snapshot-s2.xml)."""
    xml = ("<domain><name>d</name><devices><disk type='file' device='disk'><source file='/a'/>"
           "<target dev='vda' bus='virtio'/><address type='pci' domain='0x0000' bus='0x01' "
           "slot='0x00' function='0x0'/></disk></devices></domain>")
    domain = parse_domain_element(etree.fromstring(xml))
    assert PciAddress.of(domain.element.find("devices/disk")) == PciAddress(1, 0)  # type: ignore[arg-type]


def _descriptor(name: str, features: list[str], machines: list[str]) -> FirmwareDescriptor:
    return FirmwareDescriptor.from_json(name, {
        "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": f"/fw/{name}.code",
                                                      "format": "raw"},
                    "nvram-template": {"filename": f"/fw/{name}.vars", "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": machines}], "features": features})


DEBIAN_FIRMWARE = [
    _descriptor("60-plain", ["acpi-s3"], ["pc-i440fx-*", "pc-q35-*"]),
    _descriptor("40-enrolled", ["enrolled-keys", "requires-smm", "secure-boot"], ["pc-q35-*"]),
    _descriptor("50-secure", ["requires-smm", "secure-boot"], ["pc-q35-*"]),
]


@pytest.mark.parametrize(("machine", "wanted", "smm", "chosen"), [
    ("pc-q35-7.2", {}, None, "40-enrolled"),  # libvirt 9.0 on Debian picks the same
    ("pc-q35-7.2", {"secure-boot": False}, None, "60-plain"),
    ("pc-q35-7.2", {"enrolled-keys": False}, None, "50-secure"),
    ("pc-q35-7.2", {}, False, "60-plain"),
    ("pc-i440fx-7.2", {}, None, "60-plain"),
])
def test_firmware_is_chosen_as_libvirt_chooses(machine: str, wanted: dict[str, bool],
                                               smm: bool | None, chosen: str) -> None:
    assert choose_firmware(DEBIAN_FIRMWARE, arch="x86_64", machine=machine, wanted=wanted,
                           smm=smm).name == chosen


def test_no_fitting_firmware_is_named() -> None:
    with pytest.raises(NotSupportedError, match=r"no UEFI firmware for x86_64 machine "
                                                r"'pc-i440fx-7\.2' with secure-boot=yes"):
        choose_firmware(DEBIAN_FIRMWARE, arch="x86_64", machine="pc-i440fx-7.2",
                        wanted={"secure-boot": True}, smm=None)


def test_descriptor_folders_override_and_mask(tmp_path: Path) -> None:
    system, local = tmp_path / "share", tmp_path / "etc"
    system.mkdir()
    local.mkdir()
    for folder, name, exe in ((system, "50-a.json", "/sys"), (system, "60-b.json", "/b"),
                              (local, "50-a.json", "/local")):
        (folder / name).write_text(json.dumps({"interface-types": ["uefi"], "mapping": {
            "device": "flash", "executable": {"filename": exe}}}))
    (local / "60-b.json").write_text("")
    assert [(d.name, d.executable) for d in read_descriptors([system, local])] == [
        ("50-a.json", "/local")]


def _facts(aliases: dict[str, str] | None = None) -> DefineFacts:
    return DefineFacts(machine_aliases=aliases if aliases is not None else
                       {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"},
                       firmware=DEBIAN_FIRMWARE, nvram_path="/state/domains/vi/vi_VARS.fd",
                       new_mac=lambda: "52:54:00:aa:bb:cc", new_guid=lambda: "1" * 8 + "-" +
                       "-".join(["1" * 4] * 3) + "-" + "1" * 12)


def test_define_records_machine_mac_genid_and_firmware() -> None:
    xml = ("<domain><name>vi</name><genid/><os firmware='efi'><type machine='q35'>hvm</type>"
           "</os><devices><interface type='user'/></devices></domain>")
    root = resolve_definition(etree.fromstring(xml), _facts())
    assert root.find("os/type").get("machine") == "pc-q35-7.2"  # type: ignore[union-attr]
    assert root.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"  # type: ignore[union-attr]
    assert root.findtext("genid") == "11111111-1111-1111-1111-111111111111"
    os_node = root.find("os")
    assert os_node is not None and os_node.get("firmware") is None
    loader, nvram = os_node.find("loader"), os_node.find("nvram")
    assert loader is not None and nvram is not None
    assert (loader.text, dict(loader.attrib)) == ("/fw/40-enrolled.code", {
        "readonly": "yes", "type": "pflash", "format": "raw", "secure": "yes"})
    assert (nvram.text, nvram.get("template")) == ("/state/domains/vi/vi_VARS.fd",
                                                   "/fw/40-enrolled.vars")
    assert root.find("features/smm").get("state") == "on"  # type: ignore[union-attr]
    assert etree.tostring(resolve_definition(root, _facts())) == etree.tostring(root)


def test_define_keeps_the_machine_when_qemu_cannot_be_asked() -> None:
    xml = "<domain><name>vi</name><os><type machine='q35'>hvm</type></os></domain>"
    root = resolve_definition(etree.fromstring(xml), _facts({}))
    assert root.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]


#: A host with no hugetlbfs mounted and one NUMA node, whatever this one has.
PLAIN_HOST = HostMemory()


def _argv(xml: str, accel: str = "tcg") -> list[str]:
    return qemu_command(parse_domain(xml), RuntimePaths(Path("/run/q")), accel,
                        host_memory=PLAIN_HOST)


def test_disk_driver_options_reach_qemu() -> None:
    argv = _argv(VIRT_INSTALL.replace(
        "type='qcow2'/><source file='/i/root",
        "type='qcow2' cache='none' io='native' discard='unmap'/><serial>S1</serial>"
        "<source file='/i/root"))
    nodes = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    vda = next(n for n in nodes if n["node-name"] == "qs-vda-file")
    assert (vda["cache"], vda["aio"], vda["discard"]) == (
        {"direct": True, "no-flush": False}, "native", "unmap")
    devices = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]
    assert next(d for d in devices if d.get("id") == "vda")["serial"] == "S1"


def test_command_line_has_libvirts_devices() -> None:
    argv = _argv(VIRT_INSTALL)
    devices = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]
    placed = {(d["driver"], d.get("bus"), d.get("addr")) for d in devices}
    assert {("virtio-net-pci", "pci.1", "0x0"), ("virtio-scsi-pci", "pci.2", "0x0"),
            ("qemu-xhci", "pci.3", "0x0"), ("virtio-serial-pci", "pci.4", "0x0"),
            ("virtio-blk-pci", "pci.5", "0x0"), ("virtio-balloon-pci", "pci.6", "0x0"),
            ("virtio-rng-pci", "pci.7", "0x0"), ("virtio-vga", "pcie.0", "0x1"),
            ("scsi-hd", "scsi0.0", None), ("ide-cd", "ide.1", None),
            ("usb-tablet", "usb.0", None), ("isa-serial", None, None)} <= placed
    assert argv[argv.index("-machine") + 1].startswith("pc-q35-7.2,accel=tcg,acpi=on,usb=off")
    assert argv[argv.index("-cpu") + 1] == "qemu64"
    assert argv[argv.index("-vnc") + 1] == "127.0.0.1:0,to=99,audiodev=audio1"


def _with(device: str) -> str:
    return VIRT_INSTALL.replace("</devices>", device + "</devices>")


@pytest.mark.parametrize(("xml", "message"), [
    (_with("<sound model='pcspk'/>"), r"<sound model='pcspk'>: not supported"),
    (VIRT_INSTALL.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu><memoryBacking><hugepages/>"
                          "</memoryBacking>"), r"<memoryBacking><hugepages>: this host's kernel "
     r"has no huge pages"),
    (VIRT_INSTALL.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu><memoryBacking><hugepages><page "
                          "size='2' unit='MiB'/></hugepages></memoryBacking>"),
     r"no hugetlbfs of 2048 KiB pages is mounted on this host \(mounted: none\)"),
    (VIRT_INSTALL.replace("<cpu mode='custom'>", "<cpu mode='custom' match='minimum'>"),
     r"<cpu match='minimum'>"),
    (VIRT_INSTALL.replace("<devices>", "<clock offset='timezone' timezone='../etc/x'/>"
                          "<devices>"), r"timezone='../etc/x'>: not a time zone name"),
    (_with("<watchdog model='i6300esb' action='dump'><address type='pci' bus='0' slot='9'/>"
           "</watchdog>"), r"<watchdog action='dump'>"),
    (_with("<input type='mouse' bus='usb'><address type='usb' bus='0' port='5'/></input>"),
     r"<input> on USB bus 0 port 5: no USB controller or hub of the domain has that port"),
    (_with("<input type='mouse' bus='usb'><address type='usb' bus='0' port='2.1'/></input>"),
     r"<input> on USB bus 0 port 2.1: no USB controller or hub"),
    (_with("<hub type='usb'><address type='usb' bus='0' port='1'/></hub><input type='mouse' "
           "bus='usb'><address type='usb' bus='0' port='1'/></input>"),
     r"<input> on USB bus 0 port 1: the port is taken"),
    (_with("<input type='mouse' bus='usb'><address type='usb' bus='0'/></input>"),
     r"<input><address type='usb'> without a port"),
    (_with("<memballoon model='virtio'><address type='pci' bus='9' slot='1'/></memballoon>"),
     r"<memballoon> sits on PCI bus 9, which no <controller type='pci' index='9'>"),
    (_with("<filesystem type='mount'><driver type='virtiofs'/><source dir='/s'/>"
           "<target dir='t'/></filesystem>"),
     r"<driver type='virtiofs'>: virtiofs needs the guest's RAM shared"),
    (_with("<filesystem type='mount'><driver type='virtiofs'/><source dir='/s'/>"
           "<target dir='t'/><idmap><uid start='0' target='1' count='1'/></idmap>"
           "</filesystem>"), r"<driver type='virtiofs'>: <idmap>: not supported"),
    (_with("<filesystem type='mount'><driver type='virtiofs' cache='x'/><source dir='/s'/>"
           "<target dir='t'/></filesystem>").replace(
        "<vcpu>2</vcpu>", "<vcpu>2</vcpu><memoryBacking><access mode='shared'/>"
        "</memoryBacking>"), r"<driver type='virtiofs'>: attribute cache=: not supported"),
    (_with("<filesystem type='mount'><driver type='virtiofs'/><source dir='/a,b'/>"
           "<target dir='t'/></filesystem>").replace(
        "<vcpu>2</vcpu>", "<vcpu>2</vcpu><memoryBacking><access mode='shared'/>"
        "</memoryBacking>"), r"<source dir='/a,b'>: virtiofsd reads the folder from a "
     r"comma-separated option"),
    (_with("<graphics type='spice' passwd='x'/>"), r"<graphics type='spice' passwd=>"),
    (_with("<interface type='network'><source network='default'/><model type='virtio'/>"
           "</interface>"), r"<interface type='network'> #2: libvirt virtual networks"),
    (VIRT_INSTALL.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu><numatune><memory "
                          "mode='strict' nodeset='0-1'/></numatune>"),
     r"<numatune><memory> nodeset='0-1' names NUMA nodes this host lacks \(\[1\]; it has "
     r"\[0\]\)"),
    (VIRT_INSTALL.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu><numatune><memory "
                          "mode='strict' placement='auto'/></numatune>"),
     r"placement='auto': libvirt asks numad"),
    (VIRT_INSTALL.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu><numatune><memnode cellid='1' "
                          "mode='strict' nodeset='0'/></numatune>"),
     r"<numatune><memnode cellid='1'>: the guest has no such NUMA cell"),
    (VIRT_INSTALL.replace("type='qcow2'/><source file='/i/root",
                          "type='qcow2' iothread='2'/><source file='/i/root"),
     r"disk 'vda': iothread '2' is not one the domain's <iothreads> makes"),
    (VIRT_INSTALL.replace("<apic/>", "<apic/><hyperv><evmcs state='on'/><tlbflush "
                              "state='on'><direct state='on'/></tlbflush></hyperv>"),
         r"<hyperv><tlbflush>"),
        (VIRT_INSTALL.replace("<apic/>", "<apic/><gic/>"), r"<features><gic>"),
    (VIRT_INSTALL.replace("<cpu mode='custom'><model>qemu64</model></cpu>",
                          "<cpu mode='host-model'/>"), r"host-model'> under TCG"),
    (_with("<graphics type='spice' tlsPort='5901' defaultMode='paranoid'/>"),
     r"<graphics type='spice' defaultMode='paranoid'>: use secure, insecure or any"),
        (_with("<graphics type='sdl'/>"), r"<graphics type='sdl'>: only VNC and SPICE"),
    (VIRT_INSTALL.replace("<devices>", "<devices><controller type='pci' index='0' "
                          "model='pcie-root'/><controller type='pci' model='pci-bridge'/>"),
     r"<controller model='pci-bridge'> on q35 plugs into a dmi-to-pci-bridge"),
    (VIRT_INSTALL.replace("bus='sata'", "bus='sd'"), r"bus 'sd' is not supported"),
    (VIRT_INSTALL.replace("<target dev='sdb' bus='sata'/>",
                          "<target dev='sdb' bus='sata' tray='open'/>"),
     r"disk 'sdb' <target tray='open'>: qsnap starts a removable drive with its tray closed"),
    (VIRT_INSTALL.replace("<target dev='sdb' bus='sata'/>",
                          "<target dev='sdb' bus='sata' removable='on'/>"),
     r"disk 'sdb': removable= is for USB and SCSI disks"),
    (VIRT_INSTALL.replace("<target dev='sdb' bus='sata'/>",
                          "<target dev='sdb' bus='sata'/><vendor>X</vendor>"),
     r"disk 'sdb': <vendor> is for SCSI disks"),
    (VIRT_INSTALL.replace("<readonly/>", "<readonly/><iotune><total_bytes_sec>1"
                          "</total_bytes_sec></iotune>"), r"disk 'sdb': <iotune>"),
    (VIRT_INSTALL.replace("type='qcow2'/><source file='/i/root",
                          "type='qcow2' copy_on_read='on'/><source file='/i/root"),
     r"disk 'vda' <driver>: attribute copy_on_read="),
    (VIRT_INSTALL.replace("<model type='virtio'/></interface>", "<model type='virtio'/>"
                          "<bandwidth/></interface>"), r"#1: <bandwidth>"),
    (VIRT_INSTALL.replace("<model type='virtio'/></interface>", "<model type='virtio'/>"
                          "<driver queues='4'/></interface>"),
     r"#1: <driver queues='4'>: multiqueue needs a tap"),
    (_with("<interface type='user'><model type='e1000e'/><driver txmode='iothread'/>"
           "</interface>"), r"#2: <driver>: driver options are for virtio NICs"),
    (VIRT_INSTALL.replace("<model>qemu64</model>", "<model>qemu64</model><cache "
                          "mode='passthrough'/>"),
     r"<cpu><cache mode='passthrough'> needs <cpu mode='host-passthrough'>"),
    (VIRT_INSTALL.replace("<model>qemu64</model>", "<model>qemu64</model><cache "
                          "level='2' mode='emulate'/>"), r"needs level='3'"),
    (VIRT_INSTALL.replace("</domain>", "<qemu:capabilities xmlns:qemu='http://libvirt.org/"
                          "schemas/domain/qemu/1.0'/></domain>"),
     r"<qemu:capabilities>: not supported"),
    (VIRT_INSTALL.replace("type='qcow2'/><source file='/i/root",
                          "type='qcow2' rerror_policy='enospace'/><source file='/i/root"),
     r"<driver rerror_policy='enospace'> is not a policy"),
    (VIRT_INSTALL.replace("<driver name='qemu' type='raw'/><target dev='sdb'",
                          "<driver name='qemu' type='raw' queues='2'/><target dev='sdb'"),
     r"disk 'sdb': <driver queues=> needs bus 'virtio'"),
    (_with("<tpm><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"),
     r"<tpm><backend type='passthrough'>: a passthrough TPM"),
    (_with("<tpm><backend type='emulator' version='2.0'><encryption secret="
           "'32ee7e76-2178-47a1-ab7b-269e6e348015'/></backend></tpm>"),
     r"<tpm><backend type='emulator'>: <encryption>"),
    (_with("<tpm model='tpm-crb'><backend type='emulator' version='1.2'/></tpm>"),
     r"<tpm model='tpm-crb'>: a CRB interface needs TPM version 2.0"),
    (_with("<tpm model='tpm-spapr'><backend type='emulator'/></tpm>"),
     r"<tpm model='tpm-spapr'>: not an x86 TPM interface"),
    (_with("<tpm><backend type='emulator'/></tpm><tpm><backend type='emulator'/></tpm>"),
     r"<tpm> #2: an x86 guest has one TPM"),
    (_with("<tpm><backend type='emulator' version='1.2'><active_pcr_banks><sha256/>"
           "</active_pcr_banks></backend></tpm>"), r"<active_pcr_banks> needs TPM version 2.0"),
])
def test_what_cannot_start_is_refused_by_name(xml: str, message: str) -> None:
    with pytest.raises(NotSupportedError, match=message):
        _argv(xml)


@pytest.mark.parametrize(("tpm", "model", "socket"), [
    ("<tpm><backend type='emulator'/></tpm>", "tpm-tis", "/run/q/swtpm.sock"),
    ("<tpm model='tpm-crb'><backend type='emulator'/></tpm>", "tpm-crb", "/run/q/swtpm.sock"),
    ("<tpm><backend type='external'><source type='unix' mode='connect' path='/s,x.sock'/>"
     "</backend></tpm>", "tpm-tis", "/s,,x.sock"),
])
def test_a_tpm_is_built_as_libvirt_builds_it(tpm: str, model: str, socket: str) -> None:
    """libvirt's three arguments (qemuBuildTPMCommandLine), on qsnap's swtpm socket in the
    runtime folder or the external one the XML names; the completed definition gets
    libvirt's defaults (TIS, and TPM 2.0 only for CRB)."""
    argv = _argv(_with(tpm))
    at = argv.index("-tpmdev")
    assert argv[at - 2:at + 4] == [
        "-chardev", f"socket,id=chrtpm,path={socket}", "-tpmdev",
        "emulator,id=tpm-tpm0,chardev=chrtpm", "-device",
        json.dumps({"driver": model, "tpmdev": "tpm-tpm0", "id": "tpm0"})]
    completed = complete_machine(etree.fromstring(_with(tpm))).find("devices/tpm")
    assert completed is not None and completed.get("model") == model
    backend = completed.find("backend")
    assert backend is not None
    if backend.get("type") == "emulator":
        assert backend.get("version") == ("2.0" if model == "tpm-crb" else "1.2")


def test_conventional_pci_devices_on_q35_go_behind_a_bridge_libvirt_adds() -> None:
    """A conventional PCI NIC and SCSI controller on q35 (no PCI Express form) take slots 1
    and 2 of a pcie-to-pci-bridge, added on a new root port as libvirt adds it (with one
    spare root port); a listed dmi-to-pci-bridge takes slot 0x1e and a pci-bridge plugs into
    it, and conventional devices then go there."""
    root = complete_machine(etree.fromstring(_with(
        "<interface type='user'><model type='rtl8139'/></interface>"
        "<controller type='scsi' index='1' model='lsilogic'/>")))
    controllers = {c.get("index"): c for c in root.iterfind("devices/controller[@type='pci']")}
    bridge = [i for i, c in controllers.items() if c.get("model") == "pcie-to-pci-bridge"]
    assert len(bridge) == 1
    port = controllers[str(int(bridge[0]) - 1)]
    assert port.get("model") == "pcie-root-port"
    assert PciAddress.of(controllers[bridge[0]]) == PciAddress(int(port.get("index", "")), 0)
    nic = root.findall("devices/interface")[-1]
    scsi = root.find("devices/controller[@type='scsi'][@index='1']")
    assert scsi is not None
    assert (PciAddress.of(nic), PciAddress.of(scsi)) == (
        PciAddress(int(bridge[0]), 1), PciAddress(int(bridge[0]), 2))
    dmi = complete_machine(etree.fromstring(VIRT_INSTALL.replace("<devices>", (
        "<devices><controller type='pci' index='0' model='pcie-root'/><controller type='pci' "
        "model='dmi-to-pci-bridge'/><controller type='pci' model='pci-bridge'/><interface "
        "type='user'><model type='e1000'/></interface>"))))
    made = {c.get("model"): c for c in dmi.iterfind("devices/controller[@type='pci']")}
    assert PciAddress.of(made["dmi-to-pci-bridge"]) == PciAddress(0, 0x1E)
    dmi_bus = int(made["dmi-to-pci-bridge"].get("index", ""))
    assert PciAddress.of(made["pci-bridge"]) == PciAddress(dmi_bus, 0)
    assert PciAddress.of(dmi.find("devices/interface/model[@type='e1000']/..")) == \
        PciAddress(int(made["pci-bridge"].get("index", "")), 1)
    assert "pcie-to-pci-bridge" not in made


def test_a_floppy_on_q35_has_an_isa_controller_with_its_boot_order() -> None:
    """q35 has no floppy controller of its own: libvirt gives it an ISA one, whose property
    holds the drive's boot index (on pc it is a global of the PIIX3's)."""
    xml = _with("<disk type='file' device='floppy'><source file='/f.img'/><target dev='fda' "
                "bus='fdc'/><boot order='1'/></disk>").replace(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source "
        "file='/i/root.qcow2'/>\n<target dev='vda' bus='virtio'/>",
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source "
        "file='/i/root.qcow2'/>\n<target dev='vda' bus='virtio'/><boot order='2'/>")
    devices = _devices(_argv(xml))
    assert {"driver": "isa-fdc", "bootindexA": 1} in devices
    assert any(d["driver"] == "floppy" and d["unit"] == 0 for d in devices)
    assert not any(a.startswith("isa-fdc.bootindex") for a in _argv(xml))


def test_pci_controller_zero_is_the_root() -> None:
    """libvirt refuses a definition whose PCI controller 0 is not the machine's root (the
    first root port listed without an index would take that index)."""
    xml = VIRT_INSTALL.replace("<devices>", "<devices><controller type='pci' "
                               "model='pcie-root-port'/>")
    with pytest.raises(XMLError, match=r"<controller type='pci' index='0' "
                                       r"model='pcie-root-port'>: PCI controller 0"):
        complete_machine(etree.fromstring(xml))


@pytest.mark.parametrize(("device", "message"), [
    ("<sound model='pcspk'/>", r"<sound model='pcspk'>: not supported"),
    ("<filesystem type='mount'><driver type='virtiofs'/><source dir='/s'/><target dir='t'/>"
     "</filesystem>", r"virtiofs needs the guest's RAM shared"),
    ("<memballoon model='virtio'><address type='pci' bus='9' slot='1'/></memballoon>",
     r"<memballoon> sits on PCI bus 9"),
])
async def test_a_refused_start_changes_nothing(tmp_path: Path, device: str,
                                               message: str) -> None:
    """A definition start cannot build is refused before anything is made: no NVRAM from its
    template, no runtime record, no QEMU; the state folder is as define left it."""
    from helpers import tree_picture

    from qsnap import Engine
    if not read_descriptors():
        pytest.fail("QEMU's firmware descriptors are missing: scripts/test installs ovmf")
    engine = Engine(tmp_path / "state")
    xml = VIRT_INSTALL.replace("<os>", "<os firmware='efi'>").replace(
        "</devices>", device + "</devices>")
    await engine.define(xml)
    nvram = parse_domain(await engine.domain_xml("vi")).nvram
    assert nvram is not None
    before = tree_picture(tmp_path / "state")
    with pytest.raises(NotSupportedError, match=message):
        await engine.start("vi")
    assert tree_picture(tmp_path / "state") == before
    assert not Path(nvram).exists()
    assert await engine.domstate("vi") == "shut off"


async def test_define_without_fitting_firmware_defines_nothing(tmp_path: Path) -> None:
    from qsnap import Engine
    engine = Engine(tmp_path / "state")
    xml = VIRT_INSTALL.replace("<os>", "<os firmware='efi'><firmware><feature enabled='yes' "
                               "name='secure-boot'/></firmware>").replace(
        "machine='pc-q35-7.2'", "machine='pc-i440fx-7.2'")
    with pytest.raises(NotSupportedError, match=r"no UEFI firmware for x86_64 machine "
                                                r"'pc-i440fx-7\.2' with secure-boot=yes"):
        await engine.define(xml)
    assert await engine.domains() == []
    assert not (tmp_path / "state" / "domains" / "vi").exists()


# The eight silent differences real guests showed (issue 29), each pinned by a case.

def _devices(argv: list[str]) -> list[dict[str, object]]:
    return [json.loads(argv[i + 1]) for i, a in enumerate(argv)
            if a == "-device" and argv[i + 1].startswith("{")]


PC_BARE = ("<domain type='qemu'><name>p</name><memory unit='KiB'>{memory}</memory><os><type "
           "machine='pc-i440fx-7.2'>hvm</type></os>{clock}<devices>{devices}</devices>"
           "</domain>")


def test_root_ports_listed_without_addresses_take_libvirts_slots() -> None:
    """virt-install lists 14 root ports with no index or address; libvirt (11.3's
    domxml-to-native, tests/test_qemu_virt_install_guests.py) puts them at 0x2.0-0x2.7 and
    0x3.0-0x3.5 beside the video card at 0x1, function 0 of each slot multifunction."""
    xml = VIRT_INSTALL.replace("<devices>", "<devices><controller type='pci' model='pcie-root'/>"
                               + "<controller type='pci' model='pcie-root-port'/>" * 14)
    ports = [d for d in _devices(_argv(xml)) if d["driver"] == "pcie-root-port"]
    assert [(p["addr"], p.get("multifunction"), p["port"], p["chassis"]) for p in ports[:9]] \
        == [("0x2", True, 16, 1), *[(f"0x2.0x{f}", None, 16 + f, 1 + f) for f in range(1, 8)],
            ("0x3", True, 24, 9)]
    assert len(ports) == 14 and len({p["addr"] for p in ports}) == 14
    assert [d["addr"] for d in _devices(_argv(xml)) if d["driver"] == "virtio-vga"] == ["0x1"]


def test_a_lone_pty_console_is_the_first_serial_port() -> None:
    xml = PC_BARE.format(memory=131072, clock="", devices="<console type='pty'/>")
    argv = _argv(xml)
    assert "pty,id=charserial0" in argv
    assert {"driver": "isa-serial", "chardev": "charserial0", "id": "serial0",
            "index": 0} in _devices(argv)


def test_pc_without_video_keeps_no_slot_free() -> None:
    xml = PC_BARE.format(memory=131072, clock="", devices="<memballoon model='virtio'/>")
    assert [d["addr"] for d in _devices(_argv(xml))
            if d["driver"] == "virtio-balloon-pci"] == ["0x2"]


def test_pci_address_attributes_are_read_as_libvirt_reads_them() -> None:
    """strtoul with base 0: ``18`` is decimal, ``0x12`` hexadecimal, ``022`` octal."""
    for spelling in ("18", "0x12", "022"):
        xml = PC_BARE.format(memory=131072, clock="", devices=(
            "<memballoon model='virtio'><address type='pci' domain='0' bus='0' "
            f"slot='{spelling}' function='0'/></memballoon>"))
        assert [d["addr"] for d in _devices(_argv(xml))
                if d["driver"] == "virtio-balloon-pci"] == ["0x12"], spelling


def test_memory_is_whole_mib_as_libvirt_rounds_it() -> None:
    argv = _argv(PC_BARE.format(memory=219100, clock="", devices=""))
    assert argv[argv.index("-m") + 1] == "size=219136k"  # 214 MiB


@pytest.mark.parametrize(("clock", "rtc"), [
    ("", "base=utc"),
    ("<clock offset='localtime'/>", "base=localtime"),
    ("<clock offset='utc'><timer name='rtc' tickpolicy='catchup' track='guest'/></clock>",
     "base=utc,clock=vm,driftfix=slew"),
    ("<clock offset='variable' adjustment='3600' basis='utc'/>", "base=2009-02-14T00:31:30"),
    ("<clock offset='absolute' start='0'/>", "base=1970-01-01T00:00:00"),
])
def test_clock_offsets_and_timers_reach_the_rtc(clock: str, rtc: str) -> None:
    xml = PC_BARE.format(memory=131072, clock=clock, devices="")
    argv = qemu_command(parse_domain(xml), RuntimePaths(Path("/run/qsnap/t")), "tcg",
                        now=1234567890)
    assert argv[argv.index("-rtc") + 1] == rtc


def test_an_ioh3420_root_port_is_one() -> None:
    xml = VIRT_INSTALL.replace("<devices>", "<devices><controller type='pci' index='1' "
                               "model='pcie-root-port'><model name='ioh3420'/></controller>")
    drivers = [d["driver"] for d in _devices(_argv(xml)) if d.get("id") == "pci.1"]
    assert drivers == ["ioh3420"]


def test_host_model_is_refused_naming_it_under_kvm_too() -> None:
    """libvirt expands host-model to a named model and features from its CPU map; qsnap has
    no CPU map, so it refuses rather than start ``-cpu host`` (another guest)."""
    xml = VIRT_INSTALL.replace("<cpu mode='custom'><model>qemu64</model></cpu>",
                               "<cpu mode='host-model'/>")
    for accel in ("kvm", "tcg"):
        with pytest.raises(NotSupportedError, match=r"<cpu mode='host-model'>"):
            _argv(xml, accel)
