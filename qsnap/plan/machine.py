"""The whole machine libvirt builds for a definition: implicit devices and automatic addresses.

libvirt completes every x86 definition the same way before it starts it (and records the result
at ``define``): the PCI root and the chipset's own controllers, a USB controller, a memory
balloon, PS/2 input, an audio backend, a video card for graphics, a console for the first
serial port, the PCI Express root ports a q35 guest's devices sit on, and an address for every
device the XML leaves unaddressed. A memory image only loads into a QEMU whose devices sit at
the same addresses, so qsnap computes exactly that machine: :func:`complete_machine` takes a
domain element and returns a completed copy (XML in, XML out, as ``virsh dumpxml`` shows it).
qsnap does this at every start rather than recording it at ``define`` (the definition stays as
the user wrote it); being deterministic, it gives the same machine each time. It is
idempotent, so libvirt's own completed XML (a save image's, a snapshot's) comes back
unchanged.

The rules were taken from libvirt 9.0 on QEMU 7.2 by defining definitions and reading back
``virsh dumpxml`` (the tests compare with it): devices are addressed in the order interfaces,
controllers, virtio disks, memory balloon, RNG; on q35 each PCI Express device gets a root port
of its own (root ports fill functions 0-7 of the first free slots on ``pcie.0``, and one spare
port is added), the video card takes slot 1 and the ICH9 functions slot 0x1f; on pc the PIIX3
takes slot 1 and devices follow the video card from slot 2.
"""

from __future__ import annotations

import copy

from lxml import etree

from qsnap.errors import NotSupportedError, XMLError
from qsnap.model.domain import PciAddress

# Where a disk of each bus sits: how many units one controller has (virDomainDiskDefAssignAddress).
_UNITS_PER_CONTROLLER = {"scsi": 7, "sata": 6}
_AFTER_CONTROLLERS = ("interface", "serial", "console", "channel", "input", "graphics", "audio",
                      "video", "memballoon", "rng")
#: The controllers whose PCI function the chipset itself provides.
_CHIPSET_CONTROLLERS = {("sata", "q35"): (0x1F, 2), ("ide", "pc"): (0x01, 1),
                        ("usb", "pc"): (0x01, 2)}


def machine_type(root: etree._Element) -> str:
    """The definition's ``<os><type machine=>`` (QEMU's default ``pc`` when it names none)."""
    os_type = root.find("os/type")
    return (os_type.get("machine") if os_type is not None else None) or "pc"


def machine_family(machine: str) -> str:
    """``q35`` or ``pc`` for a machine type (``pc-q35-7.2`` is q35; ``pc-i440fx-*`` is pc)."""
    return "q35" if "q35" in machine else "pc"


def disk_index(target: str) -> int:
    """The index a disk name encodes (``sda`` 0, ``sdb`` 1, ``sdaa`` 26), as virDiskNameToIndex."""
    letters = target.lstrip("abcdefghijklmnopqrstuvwxyz")  # digits (partitions) are not allowed
    stem = target[:2] if target[:2] in ("sd", "hd", "vd", "xv") else None
    if stem is None or letters or len(target) < 3:
        raise XMLError(f"disk target '{target}' is not a disk name such as sda, hdc or vda")
    index = 0
    for char in target[2:]:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def _sub(parent: etree._Element, tag: str, attrs: dict[str, str] | None = None,
         before: str | None = None) -> etree._Element:
    node = etree.Element(tag, attrs or {})
    anchor = parent.find(before) if before else None
    if anchor is not None:
        anchor.addprevious(node)
    else:
        parent.append(node)
    return node


def _controllers(devices: etree._Element, kind: str) -> list[etree._Element]:
    return [c for c in devices.findall("controller") if c.get("type") == kind]


def _ensure_controller(devices: etree._Element, kind: str, index: int = 0,
                       model: str | None = None) -> etree._Element:
    for controller in _controllers(devices, kind):
        if int(controller.get("index", "0")) == index:
            controller.set("index", str(index))
            if model and controller.get("model") is None:
                controller.set("model", model)
            return controller
    attrs = {"type": kind, "index": str(index)}
    if model:
        attrs["model"] = model
    node = etree.Element("controller", attrs)
    # After the controllers already there: libvirt hands out PCI slots in that order.
    existing = devices.findall("controller")
    if existing:
        existing[-1].addnext(node)
    else:
        later = [d for d in devices if d.tag in _AFTER_CONTROLLERS]
        if later:
            later[0].addprevious(node)
        else:
            devices.append(node)
    return node


def _controller_indexes(devices: etree._Element) -> None:
    """A controller without an index gets the first one its type has free, as in libvirt."""
    for controller in devices.findall("controller"):
        if controller.get("index") is None:
            taken = {c.get("index") for c in _controllers(devices, controller.get("type", ""))}
            controller.set("index", str(next(i for i in range(1 << 16) if str(i) not in taken)))


def _drive_addresses(devices: etree._Element, family: str) -> None:
    """libvirt's drive addresses: sata and scsi units by the disk name's index; the
    controllers those disks need are added."""
    for disk in devices.findall("disk"):
        target = disk.find("target")
        bus = target.get("bus") if target is not None else None
        if bus not in ("scsi", "sata", "ide") or target is None:
            continue
        address = disk.find("address")
        if address is None:
            index = disk_index(target.get("dev", ""))
            if bus == "ide":
                attrs = {"controller": str(index // 4), "bus": str(index % 4 // 2),
                         "target": "0", "unit": str(index % 2)}
            else:
                per = _UNITS_PER_CONTROLLER[bus]
                attrs = {"controller": str(index // per), "bus": "0", "target": "0",
                         "unit": str(index % per)}
            address = etree.SubElement(disk, "address", {"type": "drive", **attrs})
        controller = int(address.get("controller", "0"))
        if bus == "sata" and family == "pc":
            raise NotSupportedError(f"disk '{target.get('dev')}': bus 'sata' on a pc machine "
                                    "needs an AHCI controller qsnap does not add; use q35")
        if bus == "ide" and family == "q35":
            raise NotSupportedError(f"disk '{target.get('dev')}': IDE controllers are not "
                                    "supported on a q35 machine (use sata)")
        # A SCSI controller without a model is an LSI one, as libvirt's default on x86.
        _ensure_controller(devices, bus, controller, "lsilogic" if bus == "scsi" else None)


def _implicit_devices(root: etree._Element, devices: etree._Element, family: str) -> None:
    """What libvirt adds to every x86 definition (qemuDomainDefAddDefaultDevices and friends)."""
    if any(ch.find("target") is not None and ch.find("target").get("type") == "virtio"  # type: ignore[union-attr]
           for ch in devices.findall("channel")):
        _ensure_controller(devices, "virtio-serial", 0)
    serials = devices.findall("serial")
    for port, serial in enumerate(serials):
        if serial.find("target") is None:
            target = etree.SubElement(serial, "target", type="isa-serial", port=str(port))
            etree.SubElement(target, "model", name="isa-serial")
    if serials and not devices.findall("console"):
        console = copy.deepcopy(serials[0])
        console.tag = "console"
        for child in list(console):
            if child.tag in ("target", "alias", "address"):
                console.remove(child)
        etree.SubElement(console, "target", type="serial", port="0")
        serials[-1].addnext(console)
    inputs = devices.findall("input")
    for kind in ("mouse", "keyboard"):
        if not any(i.get("type") == kind and i.get("bus") == "ps2" for i in inputs):
            _sub(devices, "input", {"type": kind, "bus": "ps2"}, before="graphics")
    for graphics in devices.findall("graphics"):
        if graphics.get("type") == "vnc" and graphics.find("listen") is None:
            socket = graphics.get("socket")
            if socket:
                etree.SubElement(graphics, "listen", type="socket", socket=socket)
            else:
                graphics.set("port", graphics.get("port", "-1"))
                if graphics.get("port") == "-1":
                    graphics.set("autoport", "yes")
                etree.SubElement(graphics, "listen", type="address")
        elif graphics.get("type") == "vnc":
            listen = graphics.find("listen")
            if listen is not None and listen.get("type") == "socket" and listen.get("socket"):
                graphics.set("socket", listen.get("socket", ""))
    if root.find("devices/audio") is None:
        _sub(devices, "audio", {"id": "1", "type": "none"}, before="video")
    if devices.findall("graphics") and not devices.findall("video"):
        video = _sub(devices, "video", before="memballoon")
        etree.SubElement(video, "model", type="cirrus", vram="16384", heads="1", primary="yes")
    for index, video in enumerate(devices.findall("video")):
        model = video.find("model")
        if model is not None and index == 0 and model.get("type") != "none":
            model.set("heads", model.get("heads", "1"))
            model.set("primary", "yes")
            if model.get("type") == "cirrus":
                model.set("vram", model.get("vram", "16384"))
    if devices.find("memballoon") is None:
        _sub(devices, "memballoon", {"model": "virtio"}, before="rng")


def _pci_endpoints(devices: etree._Element) -> list[etree._Element]:
    """The devices that need a PCI address, in the order libvirt hands them out."""
    ordered: list[etree._Element] = list(devices.findall("interface"))
    for controller in devices.findall("controller"):
        kind, model = controller.get("type"), controller.get("model")
        if kind in ("pci", "sata", "ide") or (kind == "usb" and model == "none"):
            continue
        if kind == "usb" and model == "piix3-uhci":
            continue  # the chipset's, fixed below
        ordered.append(controller)
    ordered += [d for d in devices.findall("disk")
                if d.find("target") is not None and d.find("target").get("bus") == "virtio"]  # type: ignore[union-attr]
    ordered += [m for m in devices.findall("memballoon") if m.get("model") != "none"]
    ordered += devices.findall("rng")
    videos = devices.findall("video")
    ordered += [v for v in videos[1:] if v.find("model") is None
                or v.find("model").get("type") != "none"]  # type: ignore[union-attr]
    return ordered


def _conventional_pci_model(device: etree._Element) -> str | None:
    """The model of a device that has no PCI Express form (libvirt's conventional PCI)."""
    if device.tag == "interface":
        model = device.find("model")
        name = model.get("type", "rtl8139") if model is not None else "rtl8139"
        return name if name in ("rtl8139", "e1000") else None
    if device.tag == "controller" and device.get("type") == "scsi":
        return device.get("model") if device.get("model") != "virtio-scsi" else None
    return None


def _is_pci_root_port(controller: etree._Element) -> bool:
    return controller.get("type") == "pci" and controller.get("model") == "pcie-root-port"


def _pci_addresses(devices: etree._Element, family: str) -> None:
    used: set[tuple[int, int, int]] = set()
    for device in devices:
        address = PciAddress.of(device)
        if address is not None:
            used.add((address.bus, address.slot, address.function))
    # The chipset's own functions.
    for (kind, fam), (slot, function) in _CHIPSET_CONTROLLERS.items():
        if fam != family:
            continue
        for controller in _controllers(devices, kind):
            if int(controller.get("index", "0")) == 0 and PciAddress.of(controller) is None and (
                    kind != "usb" or controller.get("model") == "piix3-uhci"):
                PciAddress(0, slot, function).write(controller)
    reserved_slots = {0x1F} if family == "q35" else {0x01}
    reserved_slots.add(0)
    videos = [v for v in devices.findall("video")
              if v.find("model") is None or v.find("model").get("type") != "none"]  # type: ignore[union-attr]
    primary_slot = 0x01 if family == "q35" else 0x02
    if videos:
        if PciAddress.of(videos[0]) is None and (0, primary_slot, 0) not in used:
            PciAddress(0, primary_slot, 0).write(videos[0])
        used.add((0, primary_slot, 0))
    elif family == "pc":
        reserved_slots.add(primary_slot)  # libvirt keeps slot 2 for a video card added later

    def free_root_slot(start: int) -> int:
        slot = start
        while slot in reserved_slots or any(u[0] == 0 and u[1] == slot for u in used):
            slot += 1
            if slot > 0x1F:
                raise NotSupportedError("no free slot left on the PCI root bus")
        return slot

    endpoints = [d for d in _pci_endpoints(devices) if PciAddress.of(d) is None]
    if family == "pc":
        for device in endpoints:
            slot = free_root_slot(1)
            PciAddress(0, slot).write(device)
            used.add((0, slot, 0))
        return
    for device in endpoints:
        conventional = _conventional_pci_model(device)
        if conventional:
            raise NotSupportedError(
                f"<{device.tag}> model '{conventional}' is a conventional PCI device: on q35 "
                "libvirt puts it behind a pcie-to-pci-bridge, which qsnap does not add by "
                "itself; use a PCI Express model (virtio, e1000e, virtio-scsi) or give the "
                "device an address on a bridge the definition lists")
    ports = [c for c in devices.findall("controller") if _is_pci_root_port(c)]
    port_buses = [int(c.get("index", "0")) for c in ports]
    busy = {u[0] for u in used}
    free_buses = [bus for bus in port_buses if bus not in busy]
    next_index = max([int(c.get("index", "0")) for c in devices.findall("controller")
                      if c.get("type") == "pci"], default=0) + 1
    new_ports = max(0, len(endpoints) - len(free_buses))
    if endpoints and len(free_buses) <= len(endpoints):
        new_ports += 1  # one spare, for a device added later
    port_slot, port_function = free_root_slot(1), 0
    anchor = _controllers(devices, "pci")[-1] if _controllers(devices, "pci") else None
    for made in range(new_ports):
        if port_function == 8:
            used.update((0, port_slot, f) for f in range(8))
            port_slot, port_function = free_root_slot(port_slot + 1), 0
        port = etree.Element("controller", type="pci", index=str(next_index),
                             model="pcie-root-port")
        etree.SubElement(port, "model", name="pcie-root-port")
        etree.SubElement(port, "target", chassis=str(next_index),
                         port=f"{(port_slot << 3) + port_function:#x}")
        # Function 0 says multifunction only when more ports share its slot.
        shared = port_function == 0 and new_ports - made > 1
        PciAddress(0, port_slot, port_function, multifunction=shared).write(port)
        if anchor is not None:
            anchor.addnext(port)
        else:
            _sub(devices, "controller", before="interface").addnext(port)
        anchor = port
        free_buses.append(next_index)
        next_index += 1
        port_function += 1
    for device, bus in zip(endpoints, free_buses, strict=False):
        PciAddress(bus, 0).write(device)


def _usb_addresses(devices: etree._Element) -> None:
    port = 1
    for node in devices.findall("input"):
        if node.get("bus") != "usb":
            continue
        address = node.find("address")
        if address is None:
            etree.SubElement(node, "address", type="usb", bus="0", port=str(port))
        port += 1


def _virtio_serial_addresses(devices: etree._Element) -> None:
    port = 1
    for channel in devices.findall("channel"):
        target = channel.find("target")
        if target is None or target.get("type") != "virtio":
            continue
        if channel.find("address") is None:
            etree.SubElement(channel, "address", type="virtio-serial", controller="0", bus="0",
                             port=str(port))
        port += 1


def complete_machine(element: etree._Element) -> etree._Element:
    """A copy of a domain element completed as libvirt completes it (see the module docstring).

    The machine type must already be a versioned one or an alias; ``pc`` and ``q35`` families
    are told apart by name.
    """
    root = copy.deepcopy(element)
    family = machine_family(machine_type(root))
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    _controller_indexes(devices)
    if not _controllers(devices, "usb"):
        _ensure_controller(devices, "usb", 0, "qemu-xhci" if family == "q35" else "piix3-uhci")
    if family == "q35":
        _ensure_controller(devices, "sata", 0)
        _ensure_controller(devices, "pci", 0, "pcie-root")
    else:
        _ensure_controller(devices, "pci", 0, "pci-root")
    _drive_addresses(devices, family)
    _implicit_devices(root, devices, family)
    _pci_addresses(devices, family)
    _usb_addresses(devices)
    _virtio_serial_addresses(devices)
    return root
