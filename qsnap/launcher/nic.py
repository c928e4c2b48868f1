"""A guest's NICs: the host end (QEMU's user network, or a tap, alone or on a bridge) and
the device with libvirt's driver options, and the taps qsnap brings up once QEMU runs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.devices import (
    VIRTIO_OPTIONS,
    DeviceArgs,
    acpi_index,
    device_arg,
    placement,
    virtio_keys,
)
from qsnap.launcher.refusal import refuse, refuse_unknown_parts

_NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000e": "e1000e", "e1000": "e1000",
                "rtl8139": "rtl8139"}


@dataclass(frozen=True)
class Tap:
    """A tap device a guest's NIC uses: brought up once QEMU runs, and on a bridge for
    ``<interface type='bridge'>`` (as libvirt does it, so no bridge helper is needed)."""

    name: str
    bridge: str | None = None


def tap_of(domain_key: str, index: int, node: etree._Element) -> Tap | None:
    """The tap of ``<interface>`` #*index*: ``<target dev>``, or a name made from
    *domain_key* (the domain's UUID or name) that stays the same across starts."""
    kind = node.get("type")
    if kind not in ("ethernet", "bridge"):
        return None
    target = node.find("target")
    name = target.get("dev", "") if target is not None else ""
    if not name:
        digest = hashlib.sha256(f"{domain_key}\0{index}".encode()).hexdigest()
        name = f"qs{digest[:10]}"  # within Linux's 15 bytes
    source = node.find("source")
    bridge = source.get("bridge") if kind == "bridge" and source is not None else None
    return Tap(name, bridge)


def domain_key(root: etree._Element) -> str:
    """What generated tap names are made from: the UUID, else the name."""
    return root.findtext("uuid") or root.findtext("name") or ""


def taps(root: etree._Element) -> list[Tap]:
    """Every tap the domain's NICs use, in interface order."""
    key = domain_key(root)
    found = (tap_of(key, i, n) for i, n in enumerate(root.iterfind("devices/interface")))
    return [t for t in found if t is not None]


def interface_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    kind = node.get("type")
    what = f"<interface type='{kind}'> #{index + 1}"
    netdev: dict[str, object] = {"id": f"hostnet{index}"}
    if kind == "user":
        netdev["type"] = "user"
    elif kind in ("ethernet", "bridge"):
        tap = tap_of(out.domain_key, index, node)
        assert tap is not None
        if kind == "bridge" and not tap.bridge:
            raise refuse(what, "a bridge interface needs <source bridge=...>")
        # QEMU opens the tap by name, creating it (and removing it at exit) if missing; it
        # runs <script path=> with the tap's name, as libvirt does once it made the tap.
        script = node.find("script")
        path = script.get("path", "") if script is not None and kind == "ethernet" else ""
        netdev.update(type="tap", ifname=tap.name, script=path or "no", downscript="no")
    elif kind == "network":
        raise refuse(what, "libvirt virtual networks need libvirt's network driver, which "
                     "qsnap does not use; use type='user', 'ethernet' or 'bridge'")
    else:
        raise refuse(what, "not supported")
    refuse_unknown_parts(node, what, {"mac", "source", "target", "model", "address", "boot",
                                      "driver", "acpi",
                                      *(("script",) if kind == "ethernet" else ())})
    model_node = node.find("model")
    model = model_node.get("type", "rtl8139") if model_node is not None else "rtl8139"
    driver = _NIC_DEVICES.get(model)
    if driver is None:
        raise refuse(f"{what} model '{model}'", "not supported")
    mac = node.find("mac")
    options = _nic_driver(node.find("driver"), model, what, netdev)
    out.add("-netdev", json.dumps(netdev))
    device: dict[str, object] = {"driver": driver, **options, "netdev": f"hostnet{index}",
                                 "id": f"net{index}"}
    if mac is not None and mac.get("address"):
        device["mac"] = mac.get("address", "").lower()  # as libvirt formats it
    boot = node.find("boot")
    if boot is not None:
        device["bootindex"] = int(boot.get("order", "0"))
    out.add(*device_arg({**device, **acpi_index(node), **placement(node, out.family)}))


# <driver><host ...> and <guest ...> offloads as virtio-net-pci's properties.
_HOST_OFFLOADS = {"csum": "csum", "gso": "gso", "tso4": "host_tso4", "tso6": "host_tso6",
                  "ecn": "host_ecn", "ufo": "host_ufo", "mrg_rxbuf": "mrg_rxbuf"}
_GUEST_OFFLOADS = {"csum": "guest_csum", "tso4": "guest_tso4", "tso6": "guest_tso6",
                   "ecn": "guest_ecn", "ufo": "guest_ufo"}
_TX_MODES = {"iothread": "bh", "timer": "timer"}


def _nic_driver(driver: etree._Element | None, model: str, what: str,
                netdev: dict[str, object]) -> dict[str, object]:
    """A virtio NIC's ``<driver>`` as libvirt turns it into device properties
    (qemuBuildNicDevProps): transmit mode, notification options, queue sizes, RSS, offloads,
    virtio options; ``queues`` makes a multiqueue device (and its netdev's queues). ``name``
    (vhost or qemu) is the host's business; for a tap, vhost asks QEMU for vhost-net."""
    if driver is None:
        return {}
    if model != "virtio":
        raise refuse(f"{what}: <driver>", f"driver options are for virtio NICs, not '{model}'")
    refuse_unknown_parts(driver, f"{what}: <driver>", {"host", "guest"},
                         {"name", "txmode", "ioeventfd", "event_idx", "queues",
                          "rx_queue_size", "tx_queue_size", "rss", "rss_hash_report",
                          *VIRTIO_OPTIONS})
    options: dict[str, object] = {}
    txmode = driver.get("txmode")
    if txmode is not None:
        if txmode not in _TX_MODES:
            raise refuse(f"{what}: <driver txmode='{txmode}'>", "use iothread or timer")
        options["tx"] = _TX_MODES[txmode]
    for attribute, prop in (("ioeventfd", "ioeventfd"), ("event_idx", "event_idx"),
                            ("rss", "rss"), ("rss_hash_report", "hash")):
        if driver.get(attribute) is not None:
            options[prop] = driver.get(attribute) == "on"
    queues = int(driver.get("queues", "1"))
    if queues > 1 and netdev.get("type") != "tap":
        raise NotSupportedError(f"{what}: <driver queues='{queues}'>: multiqueue needs a tap "
                                "(type 'ethernet' or 'bridge'); QEMU's user network has one "
                                "queue")
    if queues > 1:
        options.update(mq=True, vectors=2 * queues + 2)
        netdev["queues"] = queues
    for attribute in ("rx_queue_size", "tx_queue_size"):
        if driver.get(attribute) is not None:
            options[attribute] = int(driver.get(attribute, "0"))
    for tag, names in (("host", _HOST_OFFLOADS), ("guest", _GUEST_OFFLOADS)):
        offloads = driver.find(tag)
        if offloads is None:
            continue
        refuse_unknown_parts(offloads, f"{what}: <driver><{tag}>", set(), set(names))
        for attribute, prop in names.items():
            if offloads.get(attribute) is not None:
                options[prop] = offloads.get(attribute) == "on"
    if driver.get("name") == "vhost" and netdev.get("type") == "tap":
        netdev["vhost"] = True
    return {**options, **virtio_keys(driver)}
