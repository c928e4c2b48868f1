"""QEMU arguments for each device of a completed definition (see :mod:`qsnap.plan.machine`).

Each device gets the QEMU device model, bus and address libvirt gives it for the same XML
(``virsh domxml-to-native qemu-argv``; the tests compare), and libvirt's ids for the devices
others plug into (``pci.N``, ``usb``, ``scsi0``, ``virtio-serial0``), so the migration stream
of one loads into the other. Disks keep qsnap's ids (the target name), because that is how the
monitor finds them. A device or attribute qsnap cannot start is refused by name
(:func:`refuse_unknown`), never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.chardev import chardev
from qsnap.launcher.refusal import refuse, refuse_unknown_parts
from qsnap.model.domain import GUEST_AGENT_CHANNEL, PciAddress, c_integer
from qsnap.model.options import escape_commas
from qsnap.model.units import parse_scaled_integer

# Everything a definition may say at the top level and still start; other elements are refused
# (element kept in the definition, the start names it).
_STARTABLE_TOP = {"name", "uuid", "genid", "title", "description", "metadata", "memory",
                  "memoryBacking", "iothreads", "iothreadids", "maxMemory",
                  "currentMemory", "vcpu", "os", "features", "cpu", "clock", "on_poweroff",
                  "numatune",
                  "on_reboot", "on_crash", "pm", "devices", "resource", "seclabel",
                  "{http://libvirt.org/schemas/domain/qemu/1.0}commandline"}
_STARTABLE_OS = {"type", "kernel", "initrd", "cmdline", "loader", "nvram", "boot", "firmware",
                 "bootmenu", "bios", "acpi"}
_STARTABLE_DEVICES = {"emulator", "disk", "controller", "interface", "serial", "console",
                      "channel", "input", "graphics", "video", "memballoon", "rng", "audio",
                      "sound", "watchdog", "redirdev", "parallel", "panic", "filesystem",
                      "tpm", "hub", "smartcard", "memory", "iommu",
                      "redirfilter"}
_VIDEO_DEVICES = {"cirrus": "cirrus-vga", "vga": "VGA", "virtio": "virtio-vga",
                  "bochs": "bochs-display", "qxl": "qxl-vga"}
_USB_CONTROLLERS = {"qemu-xhci": "qemu-xhci", "nec-xhci": "nec-usb-xhci",
                    "piix3-uhci": "piix3-usb-uhci", "ich9-ehci1": "ich9-usb-ehci1",
                    "piix4-uhci": "piix4-usb-uhci"}
#: The UHCI companions of an ICH9 EHCI controller: no id of their own, they feed its bus.
_USB2_COMPANIONS = ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3")
#: ``<driver>`` attributes of virtio devices, as QEMU's properties (guest-visible all).
VIRTIO_OPTIONS = {"iommu": "iommu_platform", "ats": "ats", "packed": "packed",
                   "page_per_vq": "page-per-vq"}



def refuse_unknown(root: etree._Element) -> None:
    """Refuse, by element, what the launcher would otherwise leave out of the machine."""
    if root.get("type", "qemu") not in ("qemu", "kvm"):
        raise refuse(f"<domain type='{root.get('type')}'>", "qsnap starts QEMU with TCG "
                     "(type='qemu') or KVM (type='kvm')")
    for child in root:
        if not isinstance(child.tag, str):
            continue
        if child.tag not in _STARTABLE_TOP:
            tag = str(child.tag).replace("{http://libvirt.org/schemas/domain/qemu/1.0}", "qemu:")
            raise refuse(f"<{tag}>", "not supported by qsnap's launcher")
    for device in root.findall("devices/*"):
        if isinstance(device.tag, str) and device.tag not in _STARTABLE_DEVICES:
            raise refuse(f"<devices><{device.tag}>", "this device class is not supported by "
                         "qsnap's launcher")
    for child in root.findall("os/*"):
        if child.tag not in _STARTABLE_OS:
            raise refuse(f"<os><{child.tag}>", "not supported by qsnap's launcher")


def apply_boot_order(root: etree._Element) -> None:
    """``<os><boot dev=...>`` as per-device boot indexes, as libvirt gives them
    (qemuProcessPrepareDomainDiskBootorder): the first disk, CD-ROM, floppy and NIC get the
    position of their kind in the boot list. *root* is a completed copy, changed in place."""
    order = {boot.get("dev"): position
             for position, boot in enumerate(root.findall("os/boot"), start=1)}
    if not order:
        return
    kinds = {"disk": "hd", "lun": "hd", "cdrom": "cdrom", "floppy": "fd"}
    taken: set[str] = set()
    for disk in root.iterfind("devices/disk"):
        kind = kinds.get(disk.get("device", "disk"), "")
        if kind in order and kind not in taken:
            taken.add(kind)
            etree.SubElement(disk, "boot", order=str(order[kind]))
    for nic in root.iterfind("devices/interface"):
        if "network" in order:
            etree.SubElement(nic, "boot", order=str(order["network"]))
        break


def virtio_options(node: etree._Element) -> dict[str, object]:
    """A virtio device's ``<driver iommu= ats= packed= page_per_vq=>`` as QEMU properties;
    any other ``<driver>`` attribute is refused by name."""
    return _virtio_driver(node.find("driver"), str(node.tag))


def virtio_keys(driver: etree._Element | None) -> dict[str, object]:
    """The virtio options of a ``<driver>`` that has others too (a disk's, a NIC's)."""
    if driver is None:
        return {}
    return {prop: driver.get(attribute) == "on" for attribute, prop in VIRTIO_OPTIONS.items()
            if driver.get(attribute) is not None}


def _virtio_driver(driver: etree._Element | None, tag: str) -> dict[str, object]:
    if driver is None:
        return {}
    options: dict[str, object] = {}
    for key, value in driver.attrib.items():
        name = str(key)
        if name not in VIRTIO_OPTIONS:
            raise refuse(f"<{tag}><driver {name}=>", "not supported by qsnap's launcher")
        options[VIRTIO_OPTIONS[name]] = value == "on"
    return options


def pci_bus_name(bus: int, family: str) -> str:
    """QEMU's name of PCI bus *bus*: the root is ``pcie.0`` or ``pci.0``, others ``pci.N``."""
    return ("pcie.0" if family == "q35" else "pci.0") if bus == 0 else f"pci.{bus}"


def placement(device: etree._Element, family: str) -> dict[str, object]:
    address = PciAddress.of(device)
    if address is None:
        return {}
    if address.domain:
        raise refuse(f"<{device.tag}> address domain {address.domain:#x}",
                     "PCI domains other than 0 are not supported")
    placed: dict[str, object] = {"bus": pci_bus_name(address.bus, family),
                                 "addr": address.qemu_addr}
    if address.multifunction:
        placed["multifunction"] = True
    elif device.find("address[@multifunction='off']") is not None:
        placed["multifunction"] = False  # said in the XML, so said to QEMU
    return placed


def acpi_index(device: etree._Element) -> dict[str, object]:
    """A PCI device's ``<acpi index=>``: the index the guest names its slot by (eno1...)."""
    acpi = device.find("acpi")
    if acpi is None or acpi.get("index") is None:
        return {}
    return {"acpi-index": int(acpi.get("index", "0"))}


def device_arg(properties: dict[str, object]) -> list[str]:
    """``-device`` in QEMU's JSON form, which keeps every value's type and needs no escaping."""
    return ["-device", json.dumps(properties)]


@dataclass
class DeviceArgs:
    """The arguments built so far, and what every device's arguments depend on: the machine
    family (bus names) and the domain's key (generated tap names)."""

    family: str
    domain_key: str = ""
    argv: list[str] = field(default_factory=list)
    #: The iothreads ``<iothreads>`` makes, by number.
    iothreads: set[str] = field(default_factory=set)
    #: The model of each SCSI controller by index, for the disks on it.
    scsi_models: dict[int, str] = field(default_factory=dict)
    #: An ISA floppy controller's boot indexes by drive (``bootindexA``), from its disks.
    floppy_boot: dict[str, object] = field(default_factory=dict)
    #: Where host ends the definition leaves to the host (a channel's socket) are made.
    runtime_folder: str = "/run/qsnap"
    #: Chooses a free TCP port on a host address (SPICE's autoport); tests give a fixed one.
    free_port: Callable[[str], int] = field(default=lambda host: 5900)

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def iothread(self, number: str, what: str) -> str:
        """The object id of iothread *number*, which ``<iothreads>`` must make."""
        if number not in self.iothreads:
            raise NotSupportedError(f"{what}: iothread '{number}' is not one the domain's "
                                    "<iothreads> makes")
        return f"iothread{number}"


def _root_bus_options(controller: etree._Element, out: DeviceArgs) -> None:
    """The PCI root's ``<pcihole64>`` and ``<target hotplug=>`` (i440FX's ACPI hotplug of
    the root bus), as libvirt turns them into globals of the host bridge."""
    host = "q35-pcihost" if out.family == "q35" else "i440FX-pcihost"
    refuse_unknown_parts(controller, f"<controller model='{controller.get('model')}'>",
                         {"pcihole64", "target", "model", "address"}, {"index", "model"})
    hole = controller.find("pcihole64")
    if hole is not None:
        size = parse_scaled_integer(hole.text, hole.get("unit"), "<pcihole64>", default=1024)
        out.add("-global", f"{host}.pci-hole64-size={size // 1024}K")
    target = controller.find("target")
    if target is not None and target.get("hotplug") is not None:
        if out.family == "q35":
            raise refuse("<controller model='pcie-root'><target hotplug=>", "not supported")
        out.add("-global", f"PIIX4_PM.acpi-root-pci-hotplug={target.get('hotplug')}")


def controller_args(controller: etree._Element, out: DeviceArgs) -> None:
    kind, model = controller.get("type"), controller.get("model")
    index = int(controller.get("index", "0"))
    placed = placement(controller, out.family)
    if kind == "pci":
        target = controller.find("target")
        if model in ("pcie-root", "pci-root"):
            _root_bus_options(controller, out)
            return
        if target is not None and target.get("hotplug") is not None:
            raise refuse(f"<controller type='pci' model='{model}'><target hotplug=>",
                         "not supported by qsnap's launcher")
        reserve: dict[str, object] = {}
        if target is not None:
            refuse_unknown_parts(target, f"<controller type='pci' model='{model}'><target>",
                                 set(), {"chassis", "port", "chassisNr", "memReserve"})
            if target.get("memReserve") is not None:
                # KiB of memory window kept for devices plugged in later.
                reserve["mem-reserve"] = int(target.get("memReserve", "0")) * 1024
        if model == "pcie-root-port":
            chassis = int(target.get("chassis", str(index))) if target is not None else index
            port = c_integer(target.get("port", "0")) if target is not None else 0
            model_node = controller.find("model")
            name = (model_node.get("name") if model_node is not None else None) or model
            if name not in ("pcie-root-port", "ioh3420"):
                raise refuse(f"<controller model='{model}'><model name='{name}'>",
                             "use pcie-root-port or ioh3420")
            out.add(*device_arg({"driver": name, "port": port, "chassis": chassis,
                                 **reserve, "id": f"pci.{index}", **placed}))
            return
        if model == "dmi-to-pci-bridge" and out.family == "q35":
            out.add(*device_arg({"driver": "i82801b11-bridge", "id": f"pci.{index}",
                                 **placed}))
            return
        if model == "pci-bridge":
            chassis = int(target.get("chassisNr", str(index))) if target is not None else index
            out.add(*device_arg({"driver": "pci-bridge", "chassis_nr": chassis, **reserve,
                                 "id": f"pci.{index}", **placed}))
            return
        if model == "pcie-to-pci-bridge":
            out.add(*device_arg({"driver": "pcie-pci-bridge", "id": f"pci.{index}", **placed}))
            return
        raise refuse(f"<controller type='pci' model='{model}'>", "not supported")
    if kind == "sata" and out.family == "pc":
        out.add(*device_arg({"driver": "ahci", "id": f"sata{index}", **placed}))
        return
    if kind == "fdc" and out.family == "pc" and index == 0:
        return  # the PIIX3's own floppy controller
    if kind == "fdc" and index == 0:
        # q35 has no floppy controller of its own: an ISA one, with its drives' boot order.
        out.add(*device_arg({"driver": "isa-fdc", **out.floppy_boot}))
        return
    if kind in ("sata", "ide"):
        if index == 0:
            return  # the chipset's own (ICH9 AHCI on q35, PIIX3 IDE on pc)
        raise refuse(f"<controller type='{kind}' index='{index}'>",
                     "only the chipset's own controller is supported")
    if kind == "usb":
        if model == "none":
            return
        bus_id = "usb" if index == 0 else f"usb{index}"
        if model in _USB2_COMPANIONS:
            master = controller.find("master")
            start = int(master.get("startport", "0")) if master is not None else 0
            out.add(*device_arg({"driver": model.replace("ich9-", "ich9-usb-"),
                                 "masterbus": f"{bus_id}.0", "firstport": start, **placed}))
            return
        driver = _USB_CONTROLLERS.get(model or "")
        if driver is None:
            raise refuse(f"<controller type='usb' model='{model}'>", "not supported")
        device: dict[str, object] = {"driver": driver, "id": bus_id}
        ports = controller.get("ports")
        if ports is not None and driver in ("qemu-xhci", "nec-usb-xhci"):
            device.update(p2=int(ports), p3=int(ports))
        elif ports is not None:
            raise refuse(f"<controller type='usb' model='{model}' ports=>", "not supported")
        out.add(*device_arg({**device, **virtio_options(controller), **placed}))
        return
    if kind == "scsi":
        out.scsi_models[index] = model or "lsilogic"
        if model == "lsilogic":
            out.add(*device_arg({"driver": "lsi", "id": f"scsi{index}", **placed}))
            return
        if model != "virtio-scsi":
            raise refuse(f"<controller type='scsi' model='{model}'>",
                         "only models 'virtio-scsi' and 'lsilogic' are supported")
        scsi: dict[str, object] = {"driver": "virtio-scsi-pci", "id": f"scsi{index}"}
        options = controller.find("driver")
        if options is not None:
            refuse_unknown_parts(options, "<controller type='scsi'><driver>", set(),
                                 {"iothread", "queues", "cmd_per_lun", "max_sectors",
                                  "ioeventfd", *VIRTIO_OPTIONS})
            if options.get("iothread") is not None:
                scsi["iothread"] = out.iothread(options.get("iothread", ""),
                                                "<controller type='scsi'>")
            for attribute, prop in (("queues", "num_queues"), ("cmd_per_lun", "cmd_per_lun"),
                                    ("max_sectors", "max_sectors")):
                if options.get(attribute) is not None:
                    scsi[prop] = int(options.get(attribute, "0"))
            if options.get("ioeventfd") is not None:
                scsi["ioeventfd"] = options.get("ioeventfd") == "on"
        out.add(*device_arg({**scsi, **virtio_keys(options), **placed}))
        return
    if kind == "virtio-serial":
        device = {"driver": "virtio-serial-pci", "id": f"virtio-serial{index}"}
        for attribute, option in (("ports", "max_ports"), ("vectors", "vectors")):
            if controller.get(attribute) is not None:
                device[option] = int(controller.get(attribute, "0"))
        out.add(*device_arg({**device, **virtio_options(controller), **placed}))
        return
    raise refuse(f"<controller type='{kind}'>", "not supported")


def serial_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    chardev_id = f"charserial{index}"
    out.add("-chardev", chardev(node, chardev_id))
    target = node.find("target")
    if target is not None and target.get("type", "isa-serial") != "isa-serial":
        raise refuse(f"<serial><target type='{target.get('type')}'>", "not supported")
    port = int(target.get("port", str(index))) if target is not None else index
    device: dict[str, object] = {"driver": "isa-serial", "chardev": chardev_id,
                                 "id": f"serial{index}", "index": port}
    address = node.find("address")
    if address is not None and address.get("type") == "isa":
        for attribute in ("iobase", "irq"):
            if address.get(attribute) is not None:
                device[attribute] = c_integer(address.get(attribute, "0"))
    out.add(*device_arg(device))


def parallel_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    target = node.find("target")
    if target is not None and target.get("port", str(index)) != str(index):
        raise refuse("<parallel><target port=>", "ports are numbered in order")
    chardev_id = f"charparallel{index}"
    out.add("-chardev", chardev(node, chardev_id, host_device="parallel"))
    out.add(*device_arg({"driver": "isa-parallel", "chardev": chardev_id,
                         "id": f"parallel{index}"}))


def console_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """A ``<console>`` on the serial port is that port's (built with it); a virtio one is a
    ``virtconsole`` of its own, on the first virtio-serial controller."""
    target = node.find("target")
    kind = target.get("type", "serial") if target is not None else "serial"
    if kind == "serial":
        return
    if kind != "virtio":
        raise refuse(f"<console><target type='{kind}'>", "use serial or virtio")
    chardev_id = f"charconsole{index}"
    out.add("-chardev", chardev(node, chardev_id))
    out.add(*device_arg({"driver": "virtconsole", "chardev": chardev_id,
                         "id": f"console{index}"}))


def channel_chardev(index: int) -> str:
    return f"charchannel{index}"


def virtserial_port(index: int, node: etree._Element, backend: str, name: str | None,
                    out: DeviceArgs) -> None:
    """A ``<channel>`` with a virtio target: its chardev *backend* (``-chardev``'s value,
    with the id :func:`channel_chardev` gives) and the virtio-serial port the guest sees as
    *name* (None: unnamed), at the channel's address."""
    address = node.find("address")
    port = int(address.get("port", "1")) if address is not None else 1
    controller = address.get("controller", "0") if address is not None else "0"
    out.add("-chardev", backend)
    device: dict[str, object] = {"driver": "virtserialport",
                                 "bus": f"virtio-serial{controller}.0", "nr": port,
                                 "chardev": f"charchannel{index}", "id": f"channel{index}"}
    if name:
        device["name"] = name
    out.add(*device_arg(device))


def channel_args(index: int, node: etree._Element, agent: str | None, out: DeviceArgs) -> None:
    """A ``<channel>`` with a virtio target (libvirt's qemuBuildChannelsCommandLine): the guest
    agent's socket; any other host end a serial port can have (a unix socket without a path
    gets one in the runtime folder, as libvirt's channel folder); QEMU's own clipboard and
    mouse agent (``qemu-vdagent``)."""
    kind = node.get("type")
    target = node.find("target")
    if target is None or target.get("type") != "virtio":
        raise refuse(f"<channel type='{kind}'><target type="
                     f"'{target.get('type') if target is not None else None}'>",
                     "only virtio channels are supported (guestfwd needs libvirt's user "
                     "network plumbing)")
    name = target.get("name")
    source = node.find("source")
    chardev_id = channel_chardev(index)
    if kind == "unix" and name == GUEST_AGENT_CHANNEL:
        backend = f"socket,id={chardev_id},path={escape_commas(agent or '')},server=on," \
                  "wait=off"
    elif kind == "unix" and (source is None or not source.get("path")):
        path = f"{out.runtime_folder}/channel{index}.sock"
        backend = f"socket,id={chardev_id},path={escape_commas(path)},server=on,wait=off"
    elif kind == "qemu-vdagent":
        backend = f"qemu-vdagent,id={chardev_id},name=vdagent" + _vdagent_options(source)
        name = name or "com.redhat.spice.0"
    else:
        backend = chardev(node, chardev_id)
    virtserial_port(index, node, backend, name, out)


def _vdagent_options(source: etree._Element | None) -> str:
    """``qemu-vdagent``'s clipboard sharing and mouse mode (the client's is QEMU's)."""
    if source is None:
        return ""
    refuse_unknown_parts(source, "<channel type='qemu-vdagent'><source>",
                         {"clipboard", "mouse"})
    options = ""
    clipboard = source.find("clipboard")
    if clipboard is not None:
        options += f",clipboard={'on' if clipboard.get('copypaste') == 'yes' else 'off'}"
    mouse = source.find("mouse")
    if mouse is not None:
        options += f",mouse={'on' if mouse.get('mode') == 'client' else 'off'}"
    return options


_9P_SECURITY = {"passthrough": "passthrough", "mapped": "mapped", "squash": "none"}


def filesystem_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<filesystem type='mount'>`` over 9p: a local ``-fsdev`` of the host folder and a
    ``virtio-9p-pci`` with the guest's mount tag (virtiofs: :mod:`qsnap.launcher.virtiofs`)."""
    kind = node.get("type", "mount")
    what = f"<filesystem type='{kind}'>"
    driver = node.find("driver")
    backend = (driver.get("type") if driver is not None else None) or "path"
    if kind != "mount":
        raise refuse(what, "only type='mount' (a host folder) is supported")
    if backend != "path":
        raise refuse(f"{what}<driver type='{backend}'>", "qsnap shares folders over 9p "
                     "(type='path') or virtiofs")
    refuse_unknown_parts(node, what, {"driver", "source", "target", "readonly", "address"},
                         {"accessmode", "multidevs", "fmode", "dmode"})
    if driver is not None:
        refuse_unknown_parts(driver, f"{what}<driver>", set(), {"wrpolicy", "type",
                                                                 *VIRTIO_OPTIONS})
    source, target = node.find("source"), node.find("target")
    if source is None or not source.get("dir") or target is None or not target.get("dir"):
        raise refuse(what, "it needs <source dir=...> and <target dir=...>")
    access = node.get("accessmode", "passthrough")
    if access not in _9P_SECURITY:
        raise refuse(f"{what} accessmode='{access}'", "use passthrough, mapped or squash")
    options = ["local", f"security_model={_9P_SECURITY[access]}"]
    if driver is not None and driver.get("wrpolicy") == "immediate":
        options.append("writeout=immediate")
    for attribute, option in (("fmode", "fmode"), ("dmode", "dmode"),
                              ("multidevs", "multidevs")):
        if node.get(attribute) is not None:
            options.append(f"{option}={node.get(attribute)}")
    options.append(f"id=fsdev-fs{index}")
    options.append(f"path={escape_commas(source.get('dir', ''))}")
    if node.find("readonly") is not None:
        options.append("readonly=on")
    out.add("-fsdev", ",".join(options))
    out.add(*device_arg({"driver": "virtio-9p-pci", "id": f"fs{index}", **virtio_keys(driver),
                         "fsdev": f"fsdev-fs{index}", "mount_tag": target.get("dir", ""),
                         **placement(node, out.family)}))


def panic_args(node: etree._Element, out: DeviceArgs) -> None:
    """``<panic>``: the ISA pvpanic device (at its ``iobase``); Hyper-V's (crash MSRs) is a
    CPU flag, which :mod:`qsnap.launcher.platform` adds."""
    model = node.get("model", "isa")
    if model == "hyperv":
        return
    if model != "isa":
        raise refuse(f"<panic model='{model}'>", "use isa or hyperv")
    device: dict[str, object] = {"driver": "pvpanic"}
    address = node.find("address")
    if address is not None and address.get("type") == "isa" and address.get("iobase"):
        device["ioport"] = c_integer(address.get("iobase", "0"))
    out.add(*device_arg(device))


# <iommu model='intel'><driver ...>: each attribute as intel-iommu's property and its type.
_INTEL_IOMMU = {"intremap": ("intremap", str), "caching_mode": ("caching-mode", bool),
                "eim": ("eim", str), "iotlb": ("device-iotlb", bool),
                "aw_bits": ("aw-bits", int), "dma_translation": ("dma-translation", bool)}


def iommu_args(node: etree._Element, out: DeviceArgs) -> None:
    """``<iommu model='intel'>``: QEMU's VT-d on q35, with libvirt's driver options; its
    interrupt remapping needs QEMU's own I/O APIC (``<features><ioapic driver='qemu'/>``),
    as libvirt checks."""
    model = node.get("model")
    if model != "intel":
        raise refuse(f"<iommu model='{model}'>", "qsnap builds the Intel IOMMU (model='intel')")
    if out.family != "q35":
        raise NotSupportedError("<iommu model='intel'> needs a q35 machine")
    refuse_unknown_parts(node, "<iommu>", {"driver"}, {"model"})
    device: dict[str, object] = {"driver": "intel-iommu", "id": "iommu0"}
    driver = node.find("driver")
    if driver is not None:
        refuse_unknown_parts(driver, "<iommu><driver>", set(), set(_INTEL_IOMMU))
        for attribute, (prop, kind) in _INTEL_IOMMU.items():
            value = driver.get(attribute)
            if value is not None:
                device[prop] = value == "on" if kind is bool else int(value) \
                    if kind is int else value
    out.add(*device_arg(device))


def graphics_args(node: etree._Element, audio: str | None, out: DeviceArgs) -> None:
    if node.get("type") != "vnc":
        raise refuse(f"<graphics type='{node.get('type')}'>", "only VNC and SPICE are supported")
    listen = node.find("listen")
    socket = node.get("socket") or (listen.get("socket") if listen is not None else None)
    if socket:
        display = f"vnc=unix:{escape_commas(socket)}"  # vnc=: a path may hold '='.
    else:
        host = (listen.get("address") if listen is not None else None) or node.get("listen")
        host = escape_commas(host or "127.0.0.1")
        port = int(node.get("port", "-1"))
        # Autoport: the first free display from 5900, as libvirt picks.
        display = f"{host}:0,to=99" if port < 5900 else f"{host}:{port - 5900}"
    if node.get("passwd"):
        raise refuse("<graphics passwd=...>", "VNC passwords are not supported")
    out.add("-vnc", display + (f",audiodev={audio}" if audio else ""))


def video_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """A ``<video>`` card with libvirt's memory sizes (``vram`` and friends are KiB in the
    XML; each model takes them in its own unit)."""
    model = node.find("model")
    kind = model.get("type", "cirrus") if model is not None else "cirrus"
    if kind == "none":
        return
    what = f"<video><model type='{kind}'>"
    if model is not None:
        refuse_unknown_parts(model, what, set(),
                             {"vram", "heads", "primary", "ram", "vgamem", "vram64"})
    refuse_unknown_parts(node, "<video>", {"model", "address", "driver", "acpi"})
    driver = _VIDEO_DEVICES.get(kind)
    if driver is None:
        raise refuse(what, "not supported")
    if node.find("driver") is not None and kind != "virtio":
        raise refuse("<video><driver>", "only virtio options on a virtio card")
    if index and kind == "virtio":
        driver = "virtio-gpu-pci"  # only the primary card is a VGA one
    if index and kind == "qxl":
        driver = "qxl"
    device: dict[str, object] = {"driver": driver, "id": f"video{index}"}

    def kib(attribute: str, default: int) -> int:
        return int(model.get(attribute, str(default))) if model is not None else default

    if kind == "virtio":
        device["max_outputs"] = kib("heads", 1)
        device.update(virtio_options(node))
    elif kind == "qxl":
        device.update(max_outputs=kib("heads", 1), ram_size=kib("ram", 65536) * 1024,
                      vram_size=kib("vram", 65536) * 1024,
                      vram64_size_mb=kib("vram64", 0) // 1024,
                      vgamem_mb=kib("vgamem", 16384) // 1024)
    elif kind == "vga":
        device["vgamem_mb"] = kib("vram", 16384) // 1024
    elif kind == "bochs":
        device["vgamem"] = kib("vram", 16384) * 1024
    out.add(*device_arg({**device, **acpi_index(node), **placement(node, out.family)}))


def balloon_args(node: etree._Element, out: DeviceArgs) -> None:
    model = node.get("model")
    if model == "none":
        return
    if model != "virtio":
        raise refuse(f"<memballoon model='{model}'>", "only model='virtio' is supported")
    refuse_unknown_parts(node, "<memballoon>", {"address", "stats", "driver"},
                         {"model", "autodeflate", "freePageReporting"})
    device: dict[str, object] = {"driver": "virtio-balloon-pci", "id": "balloon0"}
    for attribute, option in (("autodeflate", "deflate-on-oom"),
                              ("freePageReporting", "free-page-reporting")):
        if node.get(attribute) is not None:
            device[option] = node.get(attribute) == "on"
    out.add(*device_arg({**device, **virtio_options(node), **placement(node, out.family)}))


def rng_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    if node.get("model") != "virtio":
        raise refuse(f"<rng model='{node.get('model')}'>", "only model='virtio' is supported")
    backend = node.find("backend")
    kind = backend.get("model") if backend is not None else None
    if kind == "random":
        source = (backend.text or "").strip() if backend is not None else ""
        out.add("-object", json.dumps({"qom-type": "rng-random", "id": f"objrng{index}",
                                       "filename": source or "/dev/urandom"}))
    elif kind == "builtin":
        out.add("-object", json.dumps({"qom-type": "rng-builtin", "id": f"objrng{index}"}))
    elif kind == "egd" and backend is not None:
        # The entropy-gathering daemon's socket: a character device, as a serial port's.
        out.add("-chardev", chardev(backend, f"charrng{index}"))
        out.add("-object", json.dumps({"qom-type": "rng-egd", "id": f"objrng{index}",
                                       "chardev": f"charrng{index}"}))
    else:
        raise refuse(f"<rng><backend model='{kind}'>", "use 'random', 'builtin' or 'egd'")
    refuse_unknown_parts(node, "<rng>", {"backend", "address", "driver", "rate"}, {"model"})
    rate: dict[str, object] = {}
    rate_node = node.find("rate")
    if rate_node is not None:
        refuse_unknown_parts(rate_node, "<rng><rate>", set(), {"bytes", "period"})
        rate["max-bytes"] = int(rate_node.get("bytes", "0"))
        if rate_node.get("period") is not None:
            rate["period"] = int(rate_node.get("period", "0"))
    out.add(*device_arg({"driver": "virtio-rng-pci", "rng": f"objrng{index}", "id": f"rng{index}",
                         **rate, **virtio_options(node),
                         **placement(node, out.family)}))
