"""USB addresses as libvirt gives them (qemuDomainAssignUSBAddresses, virDomainUSBAddress*):
each controller's bus a tree of hubs; the ports a definition names are taken, the hubs the
devices need are added, and every other USB device takes the first free port; smartcard
readers are added for their cards."""

from __future__ import annotations

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.plan.controllers import controllers, ensure_controller

_USB_PORTS = {"piix3-uhci": 2, "piix4-uhci": 2, "ich9-ehci1": 6, "qemu-xhci": 4,
              "nec-xhci": 4}
#: Ports of a USB hub, as libvirt counts them (VIR_DOMAIN_USB_HUB_PORTS).
USB_HUB_PORTS = 8


class _UsbHub:
    """A USB bus or hub: which of its ports are taken, and the hubs on them."""

    def __init__(self, ports: int) -> None:
        self.ports = ports
        self.taken: set[int] = set()
        self.hubs: dict[int, _UsbHub] = {}

    def free_port(self) -> list[int] | None:
        """The path to the first free port: this hub's own first, then (in port order)
        each hub below it, as libvirt's virDomainUSBAddressFindFreePort searches."""
        for port in range(1, self.ports + 1):
            if port not in self.taken:
                return [port]
        for port in sorted(self.hubs):
            below = self.hubs[port].free_port()
            if below is not None:
                return [port, *below]
        return None

    def count(self) -> int:
        return self.ports + sum(h.count() for h in self.hubs.values())


def _usb_users(devices: etree._Element) -> list[etree._Element]:
    """The devices that take a USB port, in libvirt's order (virDomainUSBDeviceDefForeach):
    hubs, USB disks, smartcard readers, input, sound, redirected ports."""
    found = list(devices.findall("hub"))
    found += [d for d in devices.findall("disk")
              if (t := d.find("target")) is not None and t.get("bus") == "usb"]
    found += [c for c in controllers(devices, "ccid")]
    found += [n for n in devices.findall("input") if n.get("bus") == "usb"]
    found += [n for n in devices.findall("sound") if n.get("model") == "usb"]
    found += [n for n in devices.findall("redirdev") if n.get("bus", "usb") == "usb"]
    return found


def _usb_buses(devices: etree._Element) -> dict[int, _UsbHub]:
    """Each USB controller's bus (an ICH9 UHCI companion shares its EHCI's) by index."""
    buses: dict[int, _UsbHub] = {}
    for controller in controllers(devices, "usb"):
        model = controller.get("model", "")
        if model in _USB_PORTS and int(controller.get("index", "0")) not in buses:
            ports = int(controller.get("ports", str(_USB_PORTS[model])))
            buses[int(controller.get("index", "0"))] = _UsbHub(ports)
    return buses


def _smartcard_readers(devices: etree._Element) -> None:
    """Each smartcard sits in a slot of a CCID reader (``<controller type='ccid'>``, a USB
    device): libvirt adds the reader it names, and gives a card without an address reader 0's
    slot 0 (a reader has one slot)."""
    for card in devices.findall("smartcard"):
        address = card.find("address")
        if address is None:
            address = etree.SubElement(card, "address", type="ccid", controller="0", slot="0")
        if address.get("type") != "ccid":
            raise NotSupportedError(f"<smartcard><address type='{address.get('type')}'>: a "
                                    "smartcard sits in a CCID reader (type='ccid')")
        address.set("controller", address.get("controller", "0"))
        address.set("slot", address.get("slot", "0"))
        ensure_controller(devices, "ccid", int(address.get("controller", "0")))


def _usb_port_of(node: etree._Element) -> str:
    address = node.find("address")
    return address.get("port", "") if address is not None else ""


def usb_addresses(devices: etree._Element) -> None:
    """USB addresses as libvirt gives them (qemuDomainAssignUSBAddresses): the ports the
    definition names are taken (a hub there makes its 8 ports); hubs are added where the
    devices outnumber the ports; then hubs without an address, then the other devices, take
    the first free port, the first bus's first, a hub's own ports before those of hubs
    below it. A port the definition names that no bus or hub has is refused. Smartcards get
    their readers first (:func:`_smartcard_readers`): a reader is a USB device."""
    _smartcard_readers(devices)
    users = _usb_users(devices)
    if not users:
        return
    for node in users:
        address = node.find("address")
        if address is not None and address.get("type", "usb") == "usb" and \
                not address.get("port"):
            # libvirt keeps such an address as written and picks the port only at start.
            raise NotSupportedError(f"<{node.tag}><address type='usb'> without a port: "
                                    "give the port, or leave the address out")
    buses = _usb_buses(devices)
    if not buses:
        model = next((c.get("model") for c in controllers(devices, "usb")), None)
        raise NotSupportedError(f"<{users[0].tag}> needs a USB controller, and the domain has "
                                + (f"model '{model}'" if model else "none"))
    placed = [(n, a) for n in users if (a := n.find("address")) is not None
              and a.get("type", "usb") == "usb" and _usb_port_of(n)]
    # Hubs first, shallowest first, so the hub a port path goes through exists.
    placed.sort(key=lambda item: (item[0].tag != "hub", item[1].get("port", "").count(".")))
    for node, address in placed:
        bus = int(address.get("bus", "0"))
        path = address.get("port", "")
        hub = buses.get(bus)
        steps = path.split(".")
        for step in steps[:-1]:
            hub = hub.hubs.get(int(step)) if hub is not None and step.isdigit() else None
        last = steps[-1]
        if hub is None or not last.isdigit() or not 1 <= int(last) <= hub.ports:
            raise NotSupportedError(f"<{node.tag}> on USB bus {bus} port {path}: no USB "
                                    "controller or hub of the domain has that port")
        if int(last) in hub.taken:
            raise NotSupportedError(f"<{node.tag}> on USB bus {bus} port {path}: the port is "
                                    "taken by another device")
        hub.taken.add(int(last))
        if node.tag == "hub":
            hub.hubs[int(last)] = _UsbHub(USB_HUB_PORTS)
    unplaced_hubs = [n for n in users if n.tag == "hub" and not _usb_port_of(n)]
    available = sum(b.count() for b in buses.values()) + USB_HUB_PORTS * len(unplaced_hubs)
    if len(users) > available:
        # libvirt adds the hubs the devices need (qemuDomainUSBAddressAddHubs).
        needed = -(-(len(users) - available + 1) // (USB_HUB_PORTS - 1))
        hubs = devices.findall("hub")
        anchor = hubs[-1] if hubs else None
        for _ in range(needed):
            added = etree.Element("hub", type="usb")
            if anchor is not None:
                anchor.addnext(added)
            else:
                devices.append(added)
            anchor = added
        users = _usb_users(devices)
    for node in users:
        if _usb_port_of(node):
            continue
        slot = node.find("address")
        choice = next(((number, bus_hub, found) for number, bus_hub in sorted(buses.items())
                       if (found := bus_hub.free_port()) is not None), None)
        if choice is None:
            raise NotSupportedError(f"<{node.tag}>: no free USB port left on the domain's "
                                    "controllers and hubs")
        bus, root, free = choice
        hub = root
        for number in free[:-1]:
            hub = hub.hubs[number]
        hub.taken.add(free[-1])
        if node.tag == "hub":
            hub.hubs[free[-1]] = _UsbHub(USB_HUB_PORTS)
        if slot is None:
            slot = etree.SubElement(node, "address")
        slot.set("type", "usb")
        slot.set("bus", str(bus))
        slot.set("port", ".".join(str(p) for p in free))
