"""The QEMU command line for a domain definition: pure, so it is tested without QEMU.

Disks become two ``-blockdev`` nodes each (protocol ``qs-<target>-file``, format ``qs-<target>``)
and a ``-device`` whose id is the target (``vda``), so the monitor finds every disk by its target
name however many overlays have been stacked on it since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qsnap.errors import NotSupportedError
from qsnap.model.domain import DomainDef, DomainDisk

_DEVICE_FOR_BUS = {"virtio": "virtio-blk-pci", "ide": "ide-hd", None: "virtio-blk-pci"}


@dataclass(frozen=True)
class RuntimePaths:
    """Where a running domain's QEMU keeps its monitor socket and pid file."""

    folder: Path

    @property
    def qmp(self) -> Path:
        return self.folder / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.folder / "qemu.pid"

    @property
    def info(self) -> Path:
        return self.folder / "runtime.json"

    @property
    def agent(self) -> Path:
        return self.folder / "agent.sock"


def agent_socket(domain: DomainDef, runtime: RuntimePaths) -> str | None:
    """The guest agent's host socket: the definition's path, else one in the runtime folder."""
    if domain.agent_socket is None:
        return None
    return domain.agent_socket or str(runtime.agent)


def file_node(target: str) -> str:
    return f"qs-{target}-file"


def format_node(target: str) -> str:
    return f"qs-{target}"


def _disk_args(disk: DomainDisk) -> list[str]:
    if disk.device != "disk":
        raise NotSupportedError(f"disk '{disk.target}': device '{disk.device}' is not supported "
                                "by qsnap's launcher yet")
    if disk.type not in ("file", "block"):
        raise NotSupportedError(f"disk '{disk.target}': type '{disk.type}' is not supported by "
                                "qsnap's launcher yet")
    if disk.bus not in _DEVICE_FOR_BUS:
        raise NotSupportedError(f"disk '{disk.target}': bus '{disk.bus}' is not supported by "
                                "qsnap's launcher yet (use virtio or ide)")
    if disk.source is None:
        raise NotSupportedError(f"disk '{disk.target}' has no source")
    protocol = {"driver": "file" if disk.type == "file" else "host_device",
                "filename": disk.source, "node-name": file_node(disk.target),
                "read-only": disk.readonly}
    fmt = {"driver": disk.driver_type or "raw", "file": file_node(disk.target),
           "node-name": format_node(disk.target), "read-only": disk.readonly}
    device = f"{_DEVICE_FOR_BUS[disk.bus]},drive={format_node(disk.target)},id={disk.target}"
    if disk.pci_address and disk.bus in (None, "virtio"):
        device += f",addr={disk.pci_address}"
    return ["-blockdev", json.dumps(protocol), "-blockdev", json.dumps(fmt), "-device", device]


def qemu_command(domain: DomainDef, runtime: RuntimePaths, accel: str,
                 emulator: str = "qemu-system-x86_64", incoming: bool = False,
                 paused: bool = False) -> list[str]:
    """argv that starts *domain* daemonized, with its QMP socket in *runtime*; with *incoming*,
    paused and waiting for a saved state (``-incoming defer``)."""
    os_type = domain.element.find("os/type")
    machine = (os_type.get("machine") if os_type is not None else None) or "pc"
    # Only the devices the definition lists, at the PCI slots it gives, with ACPI only when it
    # asks (as libvirt does): the same definition then makes the same machine under both, which
    # is what lets memory images move between qsnap and libvirt.
    acpi = "on" if domain.acpi else "off"
    argv = [emulator, "-name", f"guest={domain.name},debug-threads=on",
            "-machine", f"{machine},accel={accel},acpi={acpi}",
            "-m", f"{domain.memory_bytes // 1024}k",
            "-smp", str(domain.vcpus), "-nodefaults", "-no-user-config", "-display", "none",
            "-qmp", f"unix:{runtime.qmp},server=on,wait=off",
            "-pidfile", str(runtime.pidfile), "-daemonize"]
    if incoming:
        argv += ["-S", "-incoming", "defer"]
    elif paused:
        argv += ["-S"]
    if domain.uuid:
        argv += ["-uuid", domain.uuid]
    if domain.kernel:
        argv += ["-kernel", domain.kernel]
        if domain.initrd:
            argv += ["-initrd", domain.initrd]
        if domain.cmdline:
            argv += ["-append", domain.cmdline]
    for disk in domain.disks:
        argv += _disk_args(disk)
    agent = agent_socket(domain, runtime)
    if agent is not None:
        serial_bus = "virtio-serial-pci,id=qs-serial"
        if domain.virtio_serial_address:
            serial_bus += f",addr={domain.virtio_serial_address}"
        argv += ["-device", serial_bus,
                 "-chardev", f"socket,id=qs-agent,path={agent},server=on,wait=off",
                 "-device", "virtserialport,bus=qs-serial.0,chardev=qs-agent,"
                            "name=org.qemu.guest_agent.0"]
    for index, serial in enumerate(domain.serials):
        if serial.type == "file" and serial.path:
            argv += ["-chardev", f"file,id=serial{index},path={serial.path},append=on",
                     "-serial", f"chardev:serial{index}"]
        elif serial.type == "null":
            argv += ["-serial", "null"]
        else:
            raise NotSupportedError(f"serial console type '{serial.type}' is not supported by "
                                    "qsnap's launcher yet (use type='file')")
    return argv
