"""Every device of a completed definition, in libvirt's order (controllers first, so the buses
they make exist when devices name them)."""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.desktop import (
    audio_backend,
    free_tcp_port,
    redirdev_args,
    redirect_filter,
    sound_args,
    spice_args,
    spice_channel_args,
    virtio_input_args,
    watchdog_args,
)
from qsnap.launcher.devices import (
    DeviceArgs,
    balloon_args,
    channel_args,
    console_args,
    controller_args,
    filesystem_args,
    graphics_args,
    iommu_args,
    panic_args,
    parallel_args,
    placement,
    rng_args,
    serial_args,
    video_args,
)
from qsnap.launcher.nic import domain_key, interface_args
from qsnap.launcher.usb import ccid_args, hub_args, input_args, smartcard_args
from qsnap.launcher.virtiofs import read_shares, share_args
from qsnap.plan.machine import machine_family, machine_type

DiskArgs = Callable[[etree._Element, DeviceArgs], None]


def _channel(index: int, node: etree._Element, agent: str | None, out: DeviceArgs) -> None:
    kind = node.get("type")
    if kind == "spicevmc":
        spice_channel_args(index, node, out)
    else:
        channel_args(index, node, agent, out)


def device_args(root: etree._Element, agent: str | None, disk_args: DiskArgs,
                free_port: Callable[[str], int] = free_tcp_port,
                iothreads: set[str] | None = None, tpm: list[str] | None = None,
                runtime_folder: str = "/run/qsnap") -> list[str]:
    """Every device's arguments; *free_port* picks SPICE's port where the XML leaves it to
    the host; *iothreads* are the iothreads the domain makes (by number); *tpm* is the TPM's
    arguments (:mod:`qsnap.launcher.tpm`), placed where libvirt places them; host ends the
    definition leaves to the host go in *runtime_folder*."""
    out = DeviceArgs(machine_family(machine_type(root)), domain_key(root), free_port=free_port,
                     iothreads=iothreads or set(), runtime_folder=runtime_folder)
    devices = root.find("devices")
    if devices is None:
        return []
    for node in devices.findall("iommu"):  # before the PCI devices it translates for
        iommu_args(node, out)
    for disk in devices.iterfind("disk[@device='floppy']"):
        boot, address = disk.find("boot"), disk.find("address")
        if boot is not None:
            unit = int(address.get("unit", "0")) if address is not None else 0
            out.floppy_boot[f"bootindex{'AB'[unit]}"] = int(boot.get("order", "0"))
    pci = [c for c in devices.findall("controller") if c.get("type") == "pci"]
    pci.sort(key=lambda c: int(c.get("index", "0")))
    for controller in pci:
        controller_args(controller, out)
    others = [c for c in devices.findall("controller") if c.get("type") not in ("pci", "ccid")]
    # An ICH9 UHCI companion names its EHCI controller's bus, which must exist first.
    others.sort(key=lambda c: c.get("model", "").startswith("ich9-uhci"))
    for controller in others:
        controller_args(controller, out)
    for index, node in enumerate(devices.findall("hub")):  # before the devices on them
        hub_args(index, node, out)
    for controller in devices.findall("controller[@type='ccid']"):
        ccid_args(controller, out)
    for index, node in enumerate(devices.findall("smartcard")):
        smartcard_args(index, node, out)
    for disk in devices.findall("disk"):
        disk_args(disk, out)
    shares = {share.index: share for share in read_shares(root, out.runtime_folder)}
    for index, node in enumerate(devices.findall("filesystem")):
        if index in shares:
            out.add(*share_args(shares[index], node, placement(node, out.family)))
        else:
            filesystem_args(index, node, out)
    for index, node in enumerate(devices.findall("interface")):
        interface_args(index, node, out)
    for index, node in enumerate(devices.findall("serial")):
        serial_args(index, node, out)
    for index, node in enumerate(devices.findall("parallel")):
        parallel_args(index, node, out)
    for index, node in enumerate(devices.findall("console")):
        console_args(index, node, out)
    for index, node in enumerate(devices.findall("channel")):
        _channel(index, node, agent, out)
    out.add(*(tpm or []))
    for index, node in enumerate(devices.findall("input")):
        if node.get("bus") == "virtio":
            virtio_input_args(index, node, out)
        else:
            input_args(index, node, out)
    backends = [audio_backend(node, out) for node in devices.findall("audio")]
    audio = backends[0] if backends else None
    for node in devices.findall("graphics"):
        if node.get("type") == "spice":
            spice_args(node, out)
        else:
            graphics_args(node, audio, out)
    for index, node in enumerate(devices.findall("sound")):
        sound_args(index, node, audio, out)
    for index, node in enumerate(devices.findall("video")):
        video_args(index, node, out)
    actions = {watchdog_args(i, n, out) for i, n in enumerate(devices.findall("watchdog"))}
    if len(actions) > 1:
        raise NotSupportedError(f"<watchdog>: the watchdogs' actions differ ({sorted(actions)}); "
                                "QEMU has one action for all")
    if actions:
        out.add("-watchdog-action", actions.pop())
    usb_filter = redirect_filter(root)
    for index, node in enumerate(devices.findall("redirdev")):
        redirdev_args(index, node, usb_filter, out)
    for node in devices.findall("panic"):
        panic_args(node, out)
    for node in devices.findall("memballoon"):
        balloon_args(node, out)
    for index, node in enumerate(devices.findall("rng")):
        rng_args(index, node, out)
    return out.argv
