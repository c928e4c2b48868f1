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
takes slot 1 and devices follow the video card from slot 2 (or take slot 2 themselves when
there is none: libvirt keeps no slot free for a video card added later).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from lxml import etree

from qsnap.errors import NotSupportedError, XMLError
from qsnap.model.domain import PciAddress
from qsnap.plan.controllers import controllers, ensure_controller
from qsnap.plan.usb_addresses import usb_addresses

# Where a disk of each bus sits: how many units one controller has (virDomainDiskDefAssignAddress).
_UNITS_PER_CONTROLLER = {"scsi": 7, "sata": 6}
#: An ICH9 EHCI controller and its UHCI companions, and the function each takes in their slot.
_USB2_MODELS = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}
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


def _name_index(name: str) -> int | None:
    """The index a disk name encodes (virDiskNameToIndex), None for a name it does not read."""
    stem = next((s for s in ("xvd", "ubd", "fd", "hd", "sd", "vd") if name.startswith(s)), None)
    letters = name[len(stem):] if stem else ""
    if not letters or not letters.isalpha() or not letters.islower() or not letters.isascii():
        return None
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def disk_index(target: str) -> int:
    """The index a disk name encodes (``sda`` 0, ``sdb`` 1, ``sdaa`` 26), as virDiskNameToIndex."""
    index = _name_index(target)
    if index is None:  # digits (partitions) are not allowed either
        raise XMLError(f"disk target '{target}' is not a disk name such as sda, hdc or vda")
    return index


def _inserted_in_order(devices: etree._Element, nodes: list[etree._Element],
                       group: Callable[[etree._Element], str],
                       index: Callable[[etree._Element], int]) -> None:
    """Reorder *nodes* among *devices* as libvirt inserts them (virDomainDiskInsert,
    virDomainControllerInsert): each goes after the last node of its group, or before the
    first node of its group with a higher index."""
    ordered: list[etree._Element] = []
    for node in nodes:
        at = -1
        for position in range(len(ordered) - 1, -1, -1):
            if group(ordered[position]) != group(node):
                continue
            if index(ordered[position]) > index(node):
                at = position
            elif at == -1:
                at = position + 1
        ordered.insert(len(ordered) if at == -1 else at, node)
    if ordered == nodes:
        return
    slots = [devices.index(n) for n in nodes]
    for node in nodes:
        devices.remove(node)
    for position, node in zip(slots, ordered, strict=True):
        devices.insert(position, node)


def _disk_target_index(disk: etree._Element) -> int:
    """A disk's index by its target name; -1 (first) for a name that encodes none."""
    target = disk.find("target")
    index = _name_index((target.get("dev") if target is not None else None) or "")
    return -1 if index is None else index


def _libvirt_order(devices: etree._Element) -> None:
    """Disks, controllers and videos in the order libvirt keeps them: disks by bus and
    index (which virtio disk gets the lower PCI address, which disk ``<boot dev='hd'/>``
    boots), controllers by type and index (which takes a slot first), and the primary video
    card first."""
    def disk_bus(disk: etree._Element) -> str:
        target = disk.find("target")
        return (target.get("bus") if target is not None else None) or ""

    _inserted_in_order(devices, devices.findall("disk"), disk_bus, _disk_target_index)
    _inserted_in_order(devices, devices.findall("controller"),
                       lambda c: c.get("type", ""), lambda c: int(c.get("index", "-1")))
    videos = devices.findall("video")
    primary = [v for v in videos if v.find("model") is not None
               and v.find("model").get("primary") == "yes"]  # type: ignore[union-attr]
    if primary and primary[0] is not videos[0]:
        videos[0].addprevious(primary[0])


def _sub(parent: etree._Element, tag: str, attrs: dict[str, str] | None = None,
         before: str | None = None) -> etree._Element:
    node = etree.Element(tag, attrs or {})
    anchor = parent.find(before) if before else None
    if anchor is not None:
        anchor.addprevious(node)
    else:
        parent.append(node)
    return node


def _controller_indexes(devices: etree._Element) -> None:
    """A controller without an index gets the first one its type has free, as in libvirt;
    an ICH9 UHCI companion the index of the EHCI controller before it (they are one USB
    controller), or 0."""
    master = "0"
    for controller in devices.findall("controller"):
        model = controller.get("model", "")
        if controller.get("index") is None:
            if model.startswith("ich9-uhci"):
                controller.set("index", master)
                continue
            taken = {c.get("index") for c in controllers(devices, controller.get("type", ""))}
            controller.set("index", str(next(i for i in range(1 << 16) if str(i) not in taken)))
        if model == "ich9-ehci1":
            master = controller.get("index", "0")


def _drive_addresses(devices: etree._Element, family: str) -> None:
    """libvirt's drive addresses: sata and scsi units by the disk name's index; the
    controllers those disks need are added."""
    for disk in devices.findall("disk"):
        target = disk.find("target")
        bus = target.get("bus") if target is not None else None
        if bus not in ("scsi", "sata", "ide", "fdc") or target is None:
            continue
        address = disk.find("address")
        if address is None:
            index = disk_index(target.get("dev", ""))
            if bus == "fdc":
                attrs = {"controller": "0", "bus": "0", "target": "0", "unit": str(index % 2)}
            elif bus == "ide":
                attrs = {"controller": str(index // 4), "bus": str(index % 4 // 2),
                         "target": "0", "unit": str(index % 2)}
            else:
                per = _UNITS_PER_CONTROLLER[bus]
                attrs = {"controller": str(index // per), "bus": "0", "target": "0",
                         "unit": str(index % per)}
            address = etree.SubElement(disk, "address", {"type": "drive", **attrs})
        controller = int(address.get("controller", "0"))
        if bus == "ide" and family == "q35":
            raise NotSupportedError(f"disk '{target.get('dev')}': IDE controllers are not "
                                    "supported on a q35 machine (use sata)")
        # A SCSI controller without a model is an LSI one, as libvirt's default on x86.
        ensure_controller(devices, bus, controller, "lsilogic" if bus == "scsi" else None)


def _implicit_devices(root: etree._Element, devices: etree._Element, family: str) -> None:
    """What libvirt adds to every x86 definition (qemuDomainDefAddDefaultDevices and friends)."""
    if any((t := c.find("target")) is not None and t.get("type") == "virtio"
           for c in devices.findall("console")) and not controllers(devices, "virtio-serial"):
        ensure_controller(devices, "virtio-serial", 0)
    for channel in _virtio_channels(devices):
        address = channel.find("address")
        # A channel the XML gives no controller is on controller 0, which libvirt adds even
        # beside others (virDomainDefMaybeAddVirtioSerialController).
        controller = address.get("controller") if address is not None else None
        ensure_controller(devices, "virtio-serial", int(controller or "0"))
    consoles = devices.findall("console")
    if not devices.findall("serial") and consoles:
        target = consoles[0].find("target")
        if target is None or target.get("type", "serial") == "serial":
            # A lone serial console is the first serial port (virDomainDefAddConsoleCompat).
            serial = copy.deepcopy(consoles[0])
            serial.tag = "serial"
            for child in list(serial):
                if child.tag in ("target", "alias", "address"):
                    serial.remove(child)
            consoles[0].addprevious(serial)
            if target is None:
                etree.SubElement(consoles[0], "target", type="serial", port="0")
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
        spice = any(g.get("type") == "spice" for g in devices.findall("graphics"))
        _sub(devices, "audio", {"id": "1", "type": "spice" if spice else "none"},
             before="video")
    if family == "q35" and not any(w.get("model") == "itco"
                                   for w in devices.findall("watchdog")):
        # ICH9's own TCO watchdog, which libvirt (9.2 and later) lists and lets reboot.
        watchdogs = devices.findall("watchdog")
        action = watchdogs[0].get("action", "reset") if watchdogs else "reset"
        attrs = {"model": "itco", "action": action}
        if watchdogs:
            watchdogs[-1].addnext(etree.Element("watchdog", attrs))
        else:
            _sub(devices, "watchdog", attrs, before="memballoon")
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


def _pci_endpoints(devices: etree._Element, family: str) -> list[etree._Element]:
    """The devices that need a PCI address, in the order libvirt hands them out."""
    ordered: list[etree._Element] = list(devices.findall("filesystem"))
    ordered += devices.findall("interface")
    ordered += [s for s in devices.findall("sound")
                if s.get("model") not in ("sb16", "pcspk", "usb")]
    for controller in devices.findall("controller"):
        kind, model = controller.get("type"), controller.get("model")
        if kind in ("pci", "ide", "fdc", "ccid") or (kind == "usb" and model == "none"):
            continue  # (a CCID reader is a USB device)
        if kind == "sata" and family == "q35" and controller.get("index") == "0":
            continue  # ICH9's own
        if kind == "usb" and model in _USB2_MODELS and controller.find("address") is not None:
            continue
        if kind == "usb" and model == "piix3-uhci" and family == "pc":
            continue  # the chipset's, fixed below
        ordered.append(controller)
    ordered += [d for d in devices.findall("disk")
                if d.find("target") is not None and d.find("target").get("bus") == "virtio"]  # type: ignore[union-attr]
    ordered += [m for m in devices.findall("memballoon") if m.get("model") != "none"]
    ordered += devices.findall("rng")
    ordered += [w for w in devices.findall("watchdog") if w.get("model") == "i6300esb"]
    videos = devices.findall("video")
    # The primary card has its slot already unless a device the XML placed holds it.
    ordered += [v for v in videos if v.find("model") is None
                or v.find("model").get("type") != "none"]  # type: ignore[union-attr]
    ordered += [i for i in devices.findall("input") if i.get("bus") == "virtio"]
    return ordered


def _conventional_pci_model(device: etree._Element) -> str | None:
    """The model of a device that has no PCI Express form (libvirt's conventional PCI)."""
    if device.tag == "interface":
        model = device.find("model")
        name = model.get("type", "rtl8139") if model is not None else "rtl8139"
        return name if name in ("rtl8139", "e1000") else None
    if device.tag == "controller" and device.get("type") == "scsi":
        return device.get("model") if device.get("model") != "virtio-scsi" else None
    if device.tag == "watchdog":
        return device.get("model")
    if device.tag == "sound" and device.get("model") != "ich9":
        return device.get("model")
    if device.tag == "controller" and device.get("type") == "usb" and \
            device.get("model") in ("piix3-uhci", "piix4-uhci"):
        return device.get("model")
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
        for controller in controllers(devices, kind):
            if int(controller.get("index", "0")) == 0 and PciAddress.of(controller) is None and (
                    kind != "usb" or controller.get("model") == "piix3-uhci"):
                PciAddress(0, slot, function).write(controller)
    reserved_slots = {0x1F, _DMI_BRIDGE_SLOT} if family == "q35" and any(
        c.get("model") == "dmi-to-pci-bridge" for c in controllers(devices, "pci")) \
        else {0x1F} if family == "q35" else {0x01}
    reserved_slots.add(0)
    videos = [v for v in devices.findall("video")
              if v.find("model") is None or v.find("model").get("type") != "none"]  # type: ignore[union-attr]
    primary_slot = 0x01 if family == "q35" else 0x02
    if videos:
        if PciAddress.of(videos[0]) is None and (0, primary_slot, 0) not in used:
            PciAddress(0, primary_slot, 0).write(videos[0])
        used.add((0, primary_slot, 0))

    sounds = devices.findall("sound")
    if family == "q35" and sounds and sounds[0].get("model") == "ich9" and \
            PciAddress.of(sounds[0]) is None and (0, 0x1B, 0) not in used:
        PciAddress(0, 0x1B, 0).write(sounds[0])  # where ICH9's own HDA sits
        used.add((0, 0x1B, 0))

    def free_root_slot(start: int, device: etree._Element) -> int:
        slot = start
        while slot in reserved_slots or any(u[0] == 0 and u[1] == slot for u in used):
            slot += 1
            if slot > 0x1F:
                raise NotSupportedError(
                    f"<{device.tag}>: no free slot left on the PCI root bus for it; libvirt "
                    "would add a pci-bridge here, which qsnap does not add by itself (list "
                    "fewer devices, or give them addresses)")
        return slot

    _usb2_addresses(devices, family, used)
    endpoints = [d for d in _pci_endpoints(devices, family) if PciAddress.of(d) is None]
    if family == "pc":
        _pc_bridges_for_room(devices, endpoints, used, reserved_slots)
        bridges = sorted(int(c.get("index", "0")) for c in controllers(devices, "pci")
                         if c.get("model") == "pci-bridge")

        def free_slot(device: etree._Element) -> tuple[int, int]:
            """The first free slot of the root bus, then of each pci-bridge (slots 1-31)."""
            for bus in [0, *bridges]:
                if bus and device.get("index") is not None and device.tag == "controller" \
                        and int(device.get("index", "0")) <= bus:
                    break  # a bridge sits on a bus made before it
                for slot in range(1, 0x20):
                    if bus == 0 and slot in reserved_slots:
                        continue
                    if not any(u[0] == bus and u[1] == slot for u in used):
                        return bus, slot
            raise NotSupportedError(f"<{device.tag}>: no free PCI slot left for it")

        placed_first = sorted((c for c in controllers(devices, "pci")
                               if c.get("model") == "pci-bridge" and PciAddress.of(c) is None),
                              key=lambda c: int(c.get("index", "0")))  # by index, as libvirt
        usb2_slots: dict[str, tuple[int, int]] = {}
        for device in placed_first + endpoints:
            if device.get("model") in _USB2_MODELS and device.tag == "controller":
                group = device.get("index", "0")
                if group not in usb2_slots:
                    usb2_slots[group] = free_slot(device)
                _usb2_member_at(device, *usb2_slots[group], used)
                continue
            bus, slot = free_slot(device)
            PciAddress(bus, slot).write(device)
            used.add((bus, slot, 0))
        return
    _q35_bridges(devices, used)
    conventional = [d for d in endpoints if _conventional_pci_model(d)]
    endpoints = [d for d in endpoints if not _conventional_pci_model(d)]
    bridge_port = _conventional_devices(devices, conventional, used)
    ports = [c for c in devices.findall("controller") if _is_pci_root_port(c)]
    port_buses = [int(c.get("index", "0")) for c in ports]
    busy = {u[0] for u in used}
    free_buses = [bus for bus in port_buses if bus not in busy]
    next_index = max([int(c.get("index", "0")) for c in devices.findall("controller")
                      if c.get("type") == "pci"], default=0) + 1
    new_ports = max(0, len(endpoints) - len(free_buses))
    if (endpoints or bridge_port is not None) and len(free_buses) <= len(endpoints):
        new_ports += 1  # one spare, for a device added later
    anchor = controllers(devices, "pci")[-1] if controllers(devices, "pci") else None
    for _ in range(new_ports):
        port = etree.Element("controller", type="pci", index=str(next_index),
                             model="pcie-root-port")
        if anchor is not None:
            anchor.addnext(port)
        else:
            _sub(devices, "controller", before="interface").addnext(port)
        anchor = port
        ports.append(port)
        free_buses.append(next_index)
        next_index += 1
    _place_root_ports(ports, used, lambda d, start: free_root_slot(start, d))
    for port in ports:
        target = port.find("target")
        address = PciAddress.of(port)
        if address is not None and (target is None or target.get("port") is None):
            if target is None:
                target = etree.SubElement(port, "target")
            target.set("chassis", target.get("chassis", port.get("index", "0")))
            target.set("port", f"{(address.slot << 3) + address.function:#x}")
    for device, bus in zip(endpoints, free_buses, strict=False):
        PciAddress(bus, 0).write(device)


#: Where libvirt puts a dmi-to-pci-bridge on q35's root bus (its slot is kept for it).
_DMI_BRIDGE_SLOT = 0x1E
#: Buses conventional PCI devices plug into, and their first slot.
_CONVENTIONAL_BUSES = {"pci-bridge": 1, "pcie-to-pci-bridge": 1}


def _pc_bridges_for_room(devices: etree._Element, endpoints: list[etree._Element],
                         used: set[tuple[int, int, int]], reserved: set[int]) -> None:
    """On pc, libvirt adds pci-bridges (31 slots each, taking a root slot) until the devices
    without an address fit (pci-bridge-many-disks)."""
    def room() -> int:
        bridges = [c for c in controllers(devices, "pci") if c.get("model") == "pci-bridge"]
        root = sum(1 for slot in range(0x20) if slot not in reserved
                   and not any(u[0] == 0 and u[1] == slot for u in used))
        unplaced = sum(1 for b in bridges if PciAddress.of(b) is None)
        on_bridges = sum(31 - len({u[1] for u in used if u[0] == int(b.get("index", "0"))})
                         for b in bridges)
        return root - unplaced + on_bridges
    while room() < len(endpoints):
        index = max(int(c.get("index", "0")) for c in controllers(devices, "pci")) + 1
        _add_pci_bridge(devices, index)


def _q35_bridges(devices: etree._Element, used: set[tuple[int, int, int]]) -> None:
    """A dmi-to-pci-bridge without an address takes its slot of the root bus (0x1e); a
    pci-bridge without one plugs into the first dmi-to-pci-bridge, as libvirt places them."""
    dmi = [c for c in controllers(devices, "pci") if c.get("model") == "dmi-to-pci-bridge"]
    for bridge in dmi:
        if PciAddress.of(bridge) is None:
            if (0, _DMI_BRIDGE_SLOT, 0) in used:
                raise NotSupportedError("<controller model='dmi-to-pci-bridge'>: slot 0x1e of "
                                        "the root bus, where it goes, is taken")
            PciAddress(0, _DMI_BRIDGE_SLOT, 0).write(bridge)
            used.add((0, _DMI_BRIDGE_SLOT, 0))
    dmi_buses = [int(c.get("index", "0")) for c in dmi]
    for bridge in controllers(devices, "pci"):
        if bridge.get("model") != "pci-bridge" or PciAddress.of(bridge) is not None:
            continue
        for bus in dmi_buses:
            slot = next((s for s in range(0x20) if not any(u[0] == bus and u[1] == s
                                                           for u in used)), None)
            if slot is not None:
                PciAddress(bus, slot).write(bridge)
                used.add((bus, slot, 0))
                break
        else:
            raise NotSupportedError("<controller model='pci-bridge'> on q35 plugs into a "
                                    "dmi-to-pci-bridge (list one) or needs an address")


def _conventional_devices(devices: etree._Element, conventional: list[etree._Element],
                          used: set[tuple[int, int, int]]) -> etree._Element | None:
    """Conventional PCI devices on q35 take the free slots of its PCI buses (pci-bridges and
    pcie-to-pci-bridges, by index); where it has none, libvirt adds a pcie-to-pci-bridge on
    a new root port, and so does qsnap. Returns that new root port (placed with the others)."""
    if not conventional:
        return None
    buses = sorted(int(c.get("index", "0")) for c in controllers(devices, "pci")
                   if c.get("model") in _CONVENTIONAL_BUSES)
    added = None
    if not buses:
        index = max([int(c.get("index", "0")) for c in controllers(devices, "pci")],
                    default=0) + 1
        added = etree.Element("controller", type="pci", index=str(index),
                              model="pcie-root-port")
        bridge = etree.Element("controller", type="pci", index=str(index + 1),
                               model="pcie-to-pci-bridge")
        etree.SubElement(bridge, "model", name="pcie-pci-bridge")
        PciAddress(index, 0).write(bridge)
        used.add((index, 0, 0))
        anchor = controllers(devices, "pci")[-1]
        anchor.addnext(added)
        added.addnext(bridge)
        buses = [index + 1]
    for device in conventional:
        spot = next(((bus, slot) for bus in buses for slot in range(1, 0x20)
                     if not any(u[0] == bus and u[1] == slot for u in used)), None)
        if spot is None:
            raise NotSupportedError(f"<{device.tag}>: no free slot left on the domain's PCI "
                                    "bridges (list another pcie-to-pci-bridge)")
        PciAddress(*spot).write(device)
        used.add((spot[0], spot[1], 0))
    return added


def _place_root_ports(ports: list[etree._Element], used: set[tuple[int, int, int]],
                      free_slot: Callable[[etree._Element, int], int]) -> None:
    """Root ports without an address take the free functions of the slots of ``pcie.0`` that
    root ports already share, then functions 0-7 of the first free slots, as libvirt
    aggregates them; each gets its ``<model>`` and ``<target chassis= port=>`` (the chassis
    its index, the port its slot and function)."""
    shared = sorted({u[1] for u in used if u[0] == 0} & {
        a.slot for c in ports if (a := PciAddress.of(c)) is not None and a.bus == 0})
    for port in ports:
        if PciAddress.of(port) is not None:
            continue
        spot = _root_port_spot(port, shared, used, free_slot)
        if port.find("model") is None:
            etree.SubElement(port, "model", name="pcie-root-port")
        target = port.find("target")
        if target is None:
            target = etree.SubElement(port, "target")
        target.set("chassis", target.get("chassis", port.get("index", "0")))
        target.set("port", target.get("port", f"{(spot[0] << 3) + spot[1]:#x}"))
        PciAddress(0, spot[0], spot[1]).write(port)
        used.add((0, spot[0], spot[1]))


def _root_port_spot(port: etree._Element, shared: list[int], used: set[tuple[int, int, int]],
                    free_slot: Callable[[etree._Element, int], int]) -> tuple[int, int]:
    """The lowest slot of ``pcie.0`` that is free or shared by root ports with a function
    free, and that function."""
    for slot in range(1, 0x20):
        if slot in shared:
            function = next((f for f in range(8) if (0, slot, f) not in used), None)
            if function is not None:
                return slot, function
        elif free_slot(port, slot) == slot:
            shared.append(slot)
            return slot, 0
    raise AssertionError("free_slot raises when no slot is left")


def _multifunction(devices: etree._Element) -> None:
    """Function 0 of a slot whose other functions are in use says multifunction='on' unless
    the XML says otherwise, as libvirt sets it."""
    slots: dict[tuple[int, int], list[tuple[int, etree._Element]]] = {}
    for device in devices:
        address = PciAddress.of(device)
        if address is not None:
            slots.setdefault((address.bus, address.slot), []).append((address.function, device))
    for functions in slots.values():
        if len(functions) < 2:
            continue
        for function, device in functions:
            node = device.find("address")
            if function == 0 and node is not None and node.get("multifunction") is None:
                node.set("multifunction", "on")


def _usb2_addresses(devices: etree._Element, family: str,
                    used: set[tuple[int, int, int]]) -> None:
    """An ICH9 EHCI controller and its UHCI companions share one slot (functions 7 and 0-2):
    the slot one of them was given, or on q35 ICH9's own (0x1d for the first, 0x1a for the
    second). On pc the first of a set without one takes the next free slot when its turn
    comes among the controllers (:func:`_pci_addresses`). Companions start at ports 0, 2
    and 4 of the EHCI bus unless ``<master startport=>`` says otherwise."""
    groups: dict[str, list[etree._Element]] = {}
    for controller in controllers(devices, "usb"):
        if controller.get("model") in _USB2_MODELS:
            groups.setdefault(controller.get("index", "0"), []).append(controller)
            if controller.get("model", "").startswith("ich9-uhci") and \
                    controller.find("master") is None:
                start = 2 * _USB2_MODELS[controller.get("model", "")]
                controller.insert(0, etree.Element("master", startport=str(start)))
    for index, members in groups.items():
        placed = [a for m in members if (a := PciAddress.of(m)) is not None]
        if placed:
            slot, bus = placed[0].slot, placed[0].bus
        elif family == "q35":
            slot, bus = {"0": 0x1D, "1": 0x1A}.get(index, 0), 0
            if not slot:
                raise NotSupportedError(f"<controller type='usb' index='{index}' model="
                                        f"'{members[0].get('model')}'>: only two ICH9 USB2 "
                                        "controllers fit on a q35 machine's own slots")
        else:
            continue
        for member in members:
            _usb2_member_at(member, bus, slot, used)


def _usb2_member_at(member: etree._Element, bus: int, slot: int,
                    used: set[tuple[int, int, int]]) -> None:
    function = _USB2_MODELS[member.get("model", "")]
    if PciAddress.of(member) is None:
        PciAddress(bus, slot, function, multifunction=function == 0).write(member)
    used.add((bus, slot, function))


def _virtio_channels(devices: etree._Element) -> list[etree._Element]:
    return [c for c in devices.findall("channel")
            if (t := c.find("target")) is not None and t.get("type") == "virtio"]


def _virtio_serial_addresses(devices: etree._Element) -> None:
    """Each virtio channel without a port takes the first free one (from 1: port 0 is the
    console's) of its controller, or of the first controller with a free port
    (virDomainVirtioSerialAddrAutoAssign)."""
    channels = _virtio_channels(devices)
    taken: set[tuple[int, int]] = set()
    for channel in channels:
        address = channel.find("address")
        if address is not None and address.get("port") is not None:
            taken.add((int(address.get("controller", "0")), int(address.get("port", "0"))))
    limits = {int(c.get("index", "0")): int(c.get("ports", "31"))
              for c in controllers(devices, "virtio-serial")}
    for channel in channels:
        address = channel.find("address")
        if address is not None and address.get("port") is not None:
            address.set("bus", address.get("bus", "0"))
            continue
        wanted = address.get("controller") if address is not None else None
        for controller in sorted(limits) if wanted is None else [int(wanted)]:
            free = [p for p in range(1, limits.get(controller, 31))
                    if (controller, p) not in taken]
            if free:
                break
        else:
            raise NotSupportedError("<channel>: no free port left on the virtio-serial "
                                    "controllers")
        if address is None:
            address = etree.SubElement(channel, "address", type="virtio-serial")
        address.set("controller", str(controller))
        address.set("bus", "0")  # as libvirt, which has one bus per controller
        address.set("port", str(free[0]))
        taken.add((controller, free[0]))


def _pc_bridges_named(devices: etree._Element, family: str) -> None:
    """On pc, libvirt adds a pci-bridge for every bus index up to the highest a PCI address
    or a PCI controller names that no controller makes (pci-autoadd-addr, -idx)."""
    if family != "pc":
        return
    existing = {int(c.get("index", "0")) for c in controllers(devices, "pci")}
    named = {a.bus for d in devices if (a := PciAddress.of(d)) is not None}
    for index in range(1, max(existing | named | {0}) + 1):
        if index not in existing:
            _add_pci_bridge(devices, index)


def _add_pci_bridge(devices: etree._Element, index: int) -> etree._Element:
    bridge = etree.Element("controller", type="pci", index=str(index), model="pci-bridge")
    etree.SubElement(bridge, "model", name="pci-bridge")
    etree.SubElement(bridge, "target", chassisNr=str(index))
    pci = sorted(controllers(devices, "pci"), key=lambda c: int(c.get("index", "0")))
    before = [c for c in pci if int(c.get("index", "0")) < index]
    if before:
        before[-1].addnext(bridge)
    else:
        pci[0].addprevious(bridge)
    return bridge


def _check_pci_buses(devices: etree._Element) -> None:
    """Every device placed on a PCI bus other than the root's names a bus a PCI controller of
    the definition makes (libvirt would add pci-bridges for the missing ones)."""
    buses = {int(c.get("index", "0")) for c in controllers(devices, "pci")} | {0}
    for device in devices:
        address = PciAddress.of(device)
        if address is not None and address.bus not in buses:
            raise NotSupportedError(
                f"<{device.tag}> sits on PCI bus {address.bus}, which no <controller "
                f"type='pci' index='{address.bus}'> of the definition makes; libvirt would add "
                "pci-bridges for it, which qsnap does not add by itself: list them")


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
    _libvirt_order(devices)
    usb_default = "qemu-xhci" if family == "q35" else "piix3-uhci"
    if not controllers(devices, "usb") and machine_type(root) != "isapc":
        ensure_controller(devices, "usb", 0, usb_default)
    for controller in controllers(devices, "scsi"):
        if controller.get("model") is None:
            controller.set("model", "lsilogic")  # libvirt's default SCSI controller on x86
    for controller in controllers(devices, "usb"):
        if controller.get("model") is None:
            # A listed controller without a model is piix3-uhci on either machine
            # (qemuDomainDefaultUSBControllerModel); only one libvirt adds itself is qemu-xhci.
            controller.set("model", "piix3-uhci")
    root_model = "pcie-root" if family == "q35" else "pci-root"
    for controller in controllers(devices, "pci"):
        if controller.get("index") == "0" and controller.get("model") not in (None, root_model):
            raise XMLError(f"<controller type='pci' index='0' model="
                           f"'{controller.get('model')}'>: PCI controller 0 is the machine's "
                           f"root, model '{root_model}' (list it first, or give the others "
                           "indexes from 1)")
    if family == "q35":
        ensure_controller(devices, "sata", 0)
        ensure_controller(devices, "pci", 0, "pcie-root")
    elif machine_type(root) != "isapc":
        ensure_controller(devices, "pci", 0, "pci-root")
    _drive_addresses(devices, family)
    _implicit_devices(root, devices, family)
    _pc_bridges_named(devices, family)
    _pci_addresses(devices, family)
    usb_addresses(devices)
    _check_pci_buses(devices)
    _multifunction(devices)
    _virtio_serial_addresses(devices)
    _tpm_defaults(devices)
    return root


def _tpm_defaults(devices: etree._Element) -> None:
    """A ``<tpm>``'s model and TPM version where the XML leaves them out, as libvirt
    (qemuDomainTPMDefPostParse) fills them in on x86: a TIS interface, and TPM 2.0 only for a
    CRB interface (which has no 1.2), else 1.2."""
    for tpm in devices.findall("tpm"):
        if tpm.get("model") is None:
            tpm.set("model", "tpm-tis")
        backend = tpm.find("backend")
        if backend is not None and backend.get("type") == "emulator" and \
                backend.get("version") is None:
            backend.set("version", default_tpm_version(tpm.get("model", "tpm-tis")))


def default_tpm_version(model: str) -> str:
    return "2.0" if model == "tpm-crb" else "1.2"
