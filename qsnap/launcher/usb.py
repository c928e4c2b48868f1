"""USB devices of the guest: input devices (and PS/2's, the chipset's own), hubs, smartcard
readers and cards, each at the bus and port :func:`qsnap.plan.machine.complete_machine` gave
it."""

from __future__ import annotations

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.chardev import chardev
from qsnap.launcher.devices import DeviceArgs, device_arg
from qsnap.launcher.refusal import refuse, refuse_unknown_parts


def input_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    kind, bus = node.get("type"), node.get("bus", "ps2")
    if bus == "ps2" and kind in ("mouse", "keyboard"):
        return  # the chipset's own
    drivers = {"tablet": "usb-tablet", "mouse": "usb-mouse", "keyboard": "usb-kbd"}
    if bus != "usb" or kind not in drivers:
        raise refuse(f"<input type='{kind}' bus='{bus}'>", "not supported")
    out.add(*device_arg({"driver": drivers[kind or ""], "id": f"input{index}",
                         **usb_port(node)}))


def usb_port(node: etree._Element) -> dict[str, object]:
    """A USB device's bus and port (``1.2``: port 2 of the hub on port 1), which
    :func:`qsnap.plan.machine.complete_machine` gave it; controller N's bus is ``usbN.0``
    (controller 0's, ``usb.0``)."""
    address = node.find("address")
    bus = address.get("bus", "0") if address is not None else "0"
    placed: dict[str, object] = {"bus": "usb.0" if bus == "0" else f"usb{bus}.0"}
    if address is not None and address.get("port"):
        placed["port"] = address.get("port", "")
    return placed


def ccid_args(controller: etree._Element, out: DeviceArgs) -> None:
    """``<controller type='ccid'>``: a USB smartcard reader, its cards' bus."""
    refuse_unknown_parts(controller, "<controller type='ccid'>", {"address"}, {"index"})
    out.add(*device_arg({"driver": "usb-ccid", "id": f"ccid{controller.get('index', '0')}",
                         **usb_port(controller)}))


def smartcard_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<smartcard>`` as libvirt builds it (qemuBuildSmartcardCommandLine): an emulated card
    on the host's NSS database (``host``: its own certificates; ``host-certificates``: the
    three named, from ``<database>`` or /etc/pki/nssdb), or a card a client passes through
    a character device (``passthrough``: a socket, or SPICE's smartcard channel)."""
    mode = node.get("mode")
    address = node.find("address")
    reader = address.get("controller", "0") if address is not None else "0"
    card: dict[str, object] = {}
    if mode == "host":
        refuse_unknown_parts(node, "<smartcard mode='host'>", {"address"}, {"mode"})
        card = {"driver": "ccid-card-emulated", "backend": "nss-emulated"}
    elif mode == "host-certificates":
        refuse_unknown_parts(node, "<smartcard mode='host-certificates'>",
                             {"address", "certificate", "database"}, {"mode"})
        certificates = [(c.text or "").strip() for c in node.findall("certificate")]
        if len(certificates) != 3:
            raise NotSupportedError("<smartcard mode='host-certificates'> names exactly three "
                                    f"<certificate>s, not {len(certificates)}")
        card = {"driver": "ccid-card-emulated", "backend": "certificates",
                **{f"cert{i}": name for i, name in enumerate(certificates, start=1)},
                "db": (node.findtext("database") or "").strip() or "/etc/pki/nssdb"}
    elif mode == "passthrough":
        chardev_id = f"charsmartcard{index}"
        if node.get("type") == "spicevmc":
            out.add("-chardev", f"spicevmc,id={chardev_id},name=smartcard")
        else:
            out.add("-chardev", chardev(node, chardev_id))
        card = {"driver": "ccid-card-passthru", "chardev": chardev_id}
    else:
        raise refuse(f"<smartcard mode='{mode}'>", "use host, host-certificates or "
                     "passthrough")
    out.add(*device_arg({**card, "id": f"smartcard{index}", "bus": f"ccid{reader}.0"}))


def hub_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<hub type='usb'>``: a USB hub of 8 ports."""
    if node.get("type") != "usb":
        raise refuse(f"<hub type='{node.get('type')}'>", "only USB hubs exist")
    refuse_unknown_parts(node, "<hub>", {"address"})
    out.add(*device_arg({"driver": "usb-hub", "id": f"hub{index}", **usb_port(node)}))
