"""The QEMU command line for a domain definition: pure, so it is tested without QEMU.

The definition is first completed into the machine libvirt would build
(:mod:`qsnap.plan.machine`); the machine, firmware, CPU and disks are built here, every other
device in :mod:`qsnap.launcher.devices`. Disks become two ``-blockdev`` nodes each (protocol
``qs-<target>-file``, format ``qs-<target>``) and a ``-device`` whose id is the target (``vda``),
so the monitor finds every disk by its target name however many overlays have been stacked on
it since.
"""

from __future__ import annotations

import json

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.device_list import device_args
from qsnap.launcher.devices import (
    VIRTIO_OPTIONS,
    DeviceArgs,
    acpi_index,
    apply_boot_order,
    device_arg,
    placement,
    refuse_unknown,
)
from qsnap.launcher.host_memory import HostMemory
from qsnap.launcher.memory import guest_memory
from qsnap.launcher.platform import platform, timezone_of
from qsnap.launcher.refusal import refuse, refuse_unknown_parts
from qsnap.launcher.runtime import RuntimePaths
from qsnap.launcher.tpm import read_tpm, tpm_args
from qsnap.launcher.usb import usb_port
from qsnap.model.domain import DomainDef, parse_disk
from qsnap.model.options import escape_commas
from qsnap.plan.machine import complete_machine, machine_family, machine_type


def agent_socket(domain: DomainDef, runtime: RuntimePaths) -> str | None:
    """The guest agent's host socket: the definition's path, else one in the runtime folder."""
    if domain.agent_socket is None:
        return None
    return domain.agent_socket or str(runtime.agent)


def file_node(target: str) -> str:
    return f"qs-{target}-file"


def format_node(target: str) -> str:
    return f"qs-{target}"


def _disk_args(node: etree._Element, out: DeviceArgs) -> None:
    """A disk's two ``-blockdev`` nodes (none for an empty drive) and its ``-device``."""
    disk = parse_disk(node)
    what = f"disk '{disk.target}'"
    if disk.device not in ("disk", "cdrom", "floppy"):
        raise NotSupportedError(f"{what}: device '{disk.device}' is not supported by qsnap's "
                                "launcher (use disk, cdrom or floppy)")
    if (disk.device == "floppy") != (disk.bus == "fdc"):
        raise NotSupportedError(f"{what}: a floppy is on bus 'fdc', and only a floppy is")
    if disk.type not in ("file", "block"):
        raise NotSupportedError(f"{what}: type '{disk.type}' is not supported by qsnap's "
                                "launcher (use file or block)")
    if disk.source is None and disk.device == "disk":
        raise NotSupportedError(f"{what} has no source")
    refuse_unknown_parts(node, what, {"driver", "source", "target", "readonly", "address",
                                      "boot", "backingStore", "serial", "wwn", "vendor",
                                      "product", "geometry", "blockio", "acpi", "shareable"},
                         {"device", "snapshot"})
    bus = disk.bus or "virtio"
    cdrom = disk.device == "cdrom"
    device: dict[str, object] = {"id": disk.target}
    serial = node.findtext("serial")
    if serial:
        device["serial"] = serial.strip()
    if disk.source is not None:
        readonly = disk.readonly or cdrom
        protocol: dict[str, object] = {
            "driver": "file" if disk.type == "file" else "host_device",
            "filename": disk.source, "node-name": file_node(disk.target), "read-only": readonly,
            **_driver_options(node.find("driver"), what)}
        fmt = {"driver": disk.driver_type or "raw", "file": file_node(disk.target),
               "node-name": format_node(disk.target), "read-only": readonly}
        out.add("-blockdev", json.dumps(protocol), "-blockdev", json.dumps(fmt))
        device["drive"] = format_node(disk.target)
    address = node.find("address")
    unit = int(address.get("unit", "0")) if address is not None else 0
    driver_node = node.find("driver")
    iothread = driver_node.get("iothread") if driver_node is not None else None
    if iothread is not None and bus != "virtio":
        raise NotSupportedError(f"{what}: <driver iothread=> needs bus 'virtio'")
    if bus == "virtio":
        if cdrom:
            raise NotSupportedError(f"{what}: a cdrom cannot be on bus 'virtio'")
        device = {"driver": "virtio-blk-pci", **placement(node, out.family), **device}
        if iothread is not None:
            device["iothread"] = out.iothread(iothread, what)
    elif bus == "sata":
        controller = address.get("controller", "0") if address is not None else "0"
        sata_bus = f"sata{controller}.{unit}" if out.family == "pc" else f"ide.{unit}"
        device = {"driver": "ide-cd" if cdrom else "ide-hd", "bus": sata_bus, **device}
    elif bus == "fdc":
        if unit not in (0, 1):
            raise NotSupportedError(f"{what}: a floppy controller has units 0 and 1")
        device = {"driver": "floppy", "unit": unit, **device}
    elif bus == "ide":
        ide_bus = int(address.get("bus", "0")) if address is not None else 0
        device = {"driver": "ide-cd" if cdrom else "ide-hd", "bus": f"ide.{ide_bus}",
                  "unit": unit, **device}
    elif bus == "scsi":
        controller = address.get("controller", "0") if address is not None else "0"
        target = int(address.get("target", "0")) if address is not None else 0
        if out.scsi_models.get(int(controller)) == "lsilogic":
            # LSI has one LUN per target: libvirt addresses its disks by unit alone.
            device = {"driver": "scsi-cd" if cdrom else "scsi-hd", "bus": f"scsi{controller}.0",
                      "scsi-id": unit,
                      "device_id": serial or f"drive-scsi{controller}-0-{unit}",
                      **device}
        else:
            device = {"driver": "scsi-cd" if cdrom else "scsi-hd",
                      "bus": f"scsi{controller}.0", "channel": 0, "scsi-id": target,
                      "lun": unit,
                      "device_id": serial or f"drive-scsi{controller}-0-{target}-{unit}",
                      **device}
    elif bus == "usb":
        device = {"driver": "usb-storage", **usb_port(node), **device, "removable": False}
    else:
        raise NotSupportedError(f"{what}: bus '{bus}' is not supported by qsnap's launcher "
                                "(use virtio, sata, scsi, ide, usb or fdc)")
    device.update(_device_options(driver_node, bus, what))
    device.update(_disk_identity(node, bus, what))
    target_node = node.find("target")
    if target_node is not None:
        refuse_unknown_parts(target_node, f"{what} <target>", set(),
                             {"dev", "bus", "rotation_rate", "removable", "tray"})
        if target_node.get("tray", "closed") != "closed":
            raise refuse(f"{what} <target tray='{target_node.get('tray')}'>", "qsnap starts "
                         "a removable drive with its tray closed")
        if target_node.get("removable") is not None:
            if bus not in ("usb", "scsi"):
                raise NotSupportedError(f"{what}: removable= is for USB and SCSI disks")
            device["removable"] = target_node.get("removable") == "on"
        if target_node.get("rotation_rate") is not None:
            if bus == "virtio":
                raise NotSupportedError(f"{what}: rotation_rate needs bus ide, sata or scsi")
            device["rotation_rate"] = int(target_node.get("rotation_rate", "0"))
    boot = node.find("boot")
    if boot is not None and bus == "fdc":
        # A floppy's boot index belongs to its controller's drive A or B: the PIIX3's own
        # takes it as a global; q35's ISA controller has it (DeviceArgs.floppy_boot).
        if out.family == "pc":
            out.add("-global", f"isa-fdc.bootindex{'AB'[unit]}={int(boot.get('order', '0'))}")
    elif boot is not None:
        device["bootindex"] = int(boot.get("order", "0"))
    out.add(*device_arg(device))


def _disk_identity(node: etree._Element, bus: str, what: str) -> dict[str, object]:
    """What the guest reads about a disk besides its data, as libvirt gives it
    (qemuBuildDiskDeviceProps): WWN, SCSI vendor and product, CHS geometry, block sizes,
    ACPI index, and whether another guest may share it (``<shareable/>``)."""
    props: dict[str, object] = {}
    wwn = (node.findtext("wwn") or "").strip()
    if wwn:
        if bus not in ("ide", "sata", "scsi"):
            raise NotSupportedError(f"{what}: <wwn> is for IDE, SATA and SCSI disks")
        props["wwn"] = int(wwn, 16)
    for tag in ("vendor", "product"):
        text = node.findtext(tag)
        if text is not None:
            if bus != "scsi":
                raise NotSupportedError(f"{what}: <{tag}> is for SCSI disks")
            props[tag] = text
    geometry = node.find("geometry")
    if geometry is not None:
        refuse_unknown_parts(geometry, f"{what} <geometry>", set(),
                             {"cyls", "heads", "secs", "trans"})
        for attribute in ("cyls", "heads", "secs"):
            props[attribute] = int(geometry.get(attribute, "0"))
        if geometry.get("trans") is not None:
            props["bios-chs-trans"] = geometry.get("trans")
    blockio = node.find("blockio")
    if blockio is not None:
        refuse_unknown_parts(blockio, f"{what} <blockio>", set(),
                             {"logical_block_size", "physical_block_size",
                              "discard_granularity"})
        for attribute in ("logical_block_size", "physical_block_size", "discard_granularity"):
            if blockio.get(attribute) is not None:
                props[attribute] = int(blockio.get(attribute, "0"))
    index = acpi_index(node)
    if index and bus != "virtio":
        raise NotSupportedError(f"{what}: <acpi index=> is for PCI devices (bus 'virtio')")
    props.update(index)
    if node.find("shareable") is not None:
        props["share-rw"] = True
    return props


# <driver> attributes of a virtio disk that are properties of its device, as libvirt names
# them in QEMU (qemuBuildDiskDeviceProps); "on"/"off" ones are booleans.
_DEVICE_DRIVER_OPTIONS = {"event_idx": "event_idx", "ioeventfd": "ioeventfd",
                          "queues": "num-queues", "queue_size": "queue-size"}
_ERROR_POLICIES = {"stop": "stop", "report": "report", "ignore": "ignore",
                   "enospace": "enospc"}


def _device_options(driver: etree._Element | None, bus: str, what: str) -> dict[str, object]:
    """The disk device's properties from ``<driver>``: virtio's queues and notification
    options, and what the guest sees on an I/O error (``error_policy`` for writes, and for
    reads too unless ``rerror_policy`` says otherwise, as libvirt)."""
    if driver is None:
        return {}
    options: dict[str, object] = {}
    for attribute, prop in (*_DEVICE_DRIVER_OPTIONS.items(), *VIRTIO_OPTIONS.items()):
        value = driver.get(attribute)
        if value is None:
            continue
        if bus != "virtio":
            raise NotSupportedError(f"{what}: <driver {attribute}=> needs bus 'virtio'")
        options[prop] = int(value) if attribute in ("queues", "queue_size") else value == "on"
    write, read = driver.get("error_policy"), driver.get("rerror_policy")
    for attribute, value in (("error_policy", write), ("rerror_policy", read)):
        if value is not None and (value not in _ERROR_POLICIES or
                                  (attribute == "rerror_policy" and value == "enospace")):
            raise NotSupportedError(f"{what}: <driver {attribute}='{value}'> is not a policy")
    if write is not None:
        options["werror"] = _ERROR_POLICIES[write]
    if read is None and write not in (None, "enospace"):
        read = write
    if read is not None:
        options["rerror"] = _ERROR_POLICIES[read]
    return options


# <driver cache=>: (cache.direct, cache.no-flush), as libvirt maps them.
_CACHE_MODES = {"none": (True, False), "writeback": (False, False),
                "writethrough": (False, False), "directsync": (True, False),
                "unsafe": (False, True), "default": (False, False)}


def _driver_options(driver: etree._Element | None, what: str) -> dict[str, object]:
    """The protocol node's options for ``<driver cache= io= discard= detect_zeroes=>``; any
    other attribute is refused by name."""
    if driver is None:
        return {}
    refuse_unknown_parts(driver, f"{what} <driver>", set(),
                         {"name", "cache", "io", "discard", "detect_zeroes", "iothread",
                          *_DEVICE_DRIVER_OPTIONS, *VIRTIO_OPTIONS, "error_policy",
                          "rerror_policy"})
    options: dict[str, object] = {}
    cache = driver.get("cache")
    if cache is not None:
        if cache not in _CACHE_MODES:
            raise NotSupportedError(f"{what}: <driver cache='{cache}'> is not a cache mode")
        direct, no_flush = _CACHE_MODES[cache]
        options["cache"] = {"direct": direct, "no-flush": no_flush}
    io = driver.get("io")
    if io is not None:
        if io not in ("native", "threads", "io_uring"):
            raise NotSupportedError(f"{what}: <driver io='{io}'> is not an I/O mode")
        options["aio"] = io
    if driver.get("discard") in ("unmap", "ignore"):
        options["discard"] = driver.get("discard")
    detect = driver.get("detect_zeroes")
    if detect in ("on", "off", "unmap"):
        # QEMU unmaps zeroes only where discards reach the file; libvirt asks for "on" else.
        options["detect-zeroes"] = "on" if detect == "unmap" and \
            driver.get("discard") != "unmap" else detect
    return options


QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"


def passthrough(root: etree._Element) -> tuple[list[str], dict[str, str]]:
    """``<qemu:commandline>``: arguments added at the end of QEMU's command line, and
    variables set in its environment (an ``<qemu:env>`` without a value is set empty), as
    libvirt adds them, unchecked: what QEMU makes of them is the definition's business."""
    args: list[str] = []
    env: dict[str, str] = {}
    for node in root.iterfind(f"{{{QEMU_NAMESPACE}}}commandline"):
        for item in node:
            if item.tag == f"{{{QEMU_NAMESPACE}}}arg":
                args.append(item.get("value", ""))
            elif item.tag == f"{{{QEMU_NAMESPACE}}}env":
                name = item.get("name", "")
                if not name or "=" in name:
                    raise NotSupportedError(f"<qemu:env name='{name}'>: not a variable name")
                env[name] = item.get("value", "")
    return args, env


def qemu_environment(root: etree._Element) -> dict[str, str]:
    """What QEMU's environment gets from the definition, as libvirt sets it: ``TZ`` for a
    clock in a named time zone, and ``<qemu:commandline>``'s variables."""
    env: dict[str, str] = {}
    zone = timezone_of(root.find("clock"))
    if zone is not None:
        env["TZ"] = zone
    env.update(passthrough(root)[1])
    return env


def _iothread_args(root: etree._Element) -> tuple[list[str], set[str]]:
    """``<iothreads>N</iothreads>`` (and ``<iothreadids>``) as iothread objects, and their
    ids: libvirt's ``iothread1``..``iothreadN`` unless the ids are listed."""
    count_text = root.findtext("iothreads")
    if count_text is None:
        return [], set()
    listed = [node.get("id", "") for node in root.iterfind("iothreadids/iothread")]
    for node in root.iterfind("iothreadids/iothread"):
        if len(node) or set(node.attrib) - {"id"}:
            raise NotSupportedError("<iothreadids><iothread>: only id= is supported by qsnap's "
                                    "launcher")
    count = int(count_text.strip() or "0")
    ids = listed + [str(i) for i in range(1, count + 1) if str(i) not in listed]
    ids = ids[:max(count, len(listed))]
    argv: list[str] = []
    for number in ids:
        argv += ["-object", json.dumps({"qom-type": "iothread", "id": f"iothread{number}"})]
    return argv, set(ids)


def _smp_args(root: etree._Element, vcpus: int) -> list[str]:
    """``-smp``: ``<vcpu current=>`` starts fewer than the maximum, as libvirt does."""
    vcpu = root.find("vcpu")
    current = vcpus
    if vcpu is not None and vcpu.get("current") is not None:
        current = int(vcpu.get("current", "0"))
        if not 1 <= current <= vcpus:
            raise NotSupportedError(f"<vcpu current='{current}'> must be between 1 and {vcpus}")
    head = f"{current},maxcpus={vcpus}" if current != vcpus else str(vcpus)
    cpu = root.find("cpu")
    topology = cpu.find("topology") if cpu is not None else None
    if topology is not None:
        sockets, cores, threads = (int(topology.get(k, "1")) for k in ("sockets", "cores",
                                                                        "threads"))
        dies = int(topology.get("dies", "1"))
        if topology.get("clusters", "1") != "1":
            raise NotSupportedError("<cpu><topology clusters=> other than 1 is not supported "
                                    "by qsnap's launcher")
        if sockets * dies * cores * threads != vcpus:
            raise NotSupportedError(f"<cpu><topology> gives {sockets * dies * cores * threads} "
                                    f"vCPUs but <vcpu> is {vcpus}")
        return ["-smp", f"{head},sockets={sockets},dies={dies},cores={cores},"
                        f"threads={threads}"]
    return ["-smp", f"{head},sockets={vcpus},cores=1,threads=1"]


def _acpi_tables(root: etree._Element) -> list[str]:
    """``<os><acpi><table type='slic'>FILE</table>``: an ACPI table the guest's firmware
    hands on (a SLIC licence table), as libvirt passes it."""
    argv: list[str] = []
    for table in root.iterfind("os/acpi/table"):
        if table.get("type") != "slic":
            raise refuse(f"<os><acpi><table type='{table.get('type')}'>", "only type='slic' "
                         "is supported")
        argv += ["-acpitable", f"sig=SLIC,file={escape_commas((table.text or '').strip())}"]
    return argv


def _firmware_args(root: etree._Element) -> tuple[list[str], list[str]]:
    """(``-blockdev`` arguments, ``-machine`` properties) for a pflash firmware and its NVRAM."""
    loader = root.find("os/loader")
    if loader is None or not (loader.text or "").strip():
        if root.find("os[@firmware='efi']") is not None:
            raise NotSupportedError("<os firmware='efi'> was not resolved to a firmware file; "
                                    "define the domain again so qsnap chooses one")
        return [], []
    if loader.get("type", "pflash") != "pflash":
        raise NotSupportedError(f"<loader type='{loader.get('type')}'> is not supported "
                                "(use type='pflash')")
    args: list[str] = []
    props: list[str] = []
    flashes = [((loader.text or "").strip(), loader.get("format", "raw"), True)]
    nvram = root.find("os/nvram")
    if nvram is not None and (nvram.text or "").strip():
        flashes.append(((nvram.text or "").strip(), nvram.get("format", "raw"), False))
    for index, (path, fmt, readonly) in enumerate(flashes):
        node = f"qs-pflash{index}"
        args += ["-blockdev", json.dumps({"driver": "file", "filename": path,
                                          "node-name": f"{node}-file", "read-only": readonly}),
                 "-blockdev", json.dumps({"driver": fmt, "file": f"{node}-file",
                                          "node-name": node, "read-only": readonly})]
        props.append(f"pflash{index}={node}")
    if loader.get("secure") == "yes":
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return args, props


def qemu_command(domain: DomainDef, runtime: RuntimePaths, accel: str,
                 emulator: str = "qemu-system-x86_64", incoming: bool = False,
                 paused: bool = False, compat: str | None = None,
                 now: float | None = None, host_memory: HostMemory | None = None) -> list[str]:
    """argv that starts *domain* daemonized, with its QMP socket in *runtime*; with *incoming*,
    paused and waiting for a saved state (``-incoming defer``).

    The machine is the one libvirt builds for the same XML (:mod:`qsnap.plan.machine` and
    :mod:`qsnap.launcher.devices`): the same devices at the same addresses, with ACPI only
    when asked for, which is what lets memory images move between qsnap and libvirt.
    *compat* is QEMU's ``-compat`` policy (``$QSNAP_QEMU_COMPAT``: the test suites run every
    QEMU with ``deprecated-input=reject,deprecated-output=hide``, so that a deprecated command
    or field qsnap still used would fail them). *now* is the moment a ``<clock
    offset='variable'>`` counts from (the current time by default; tests fix it).
    *host_memory* is what the host offers guest RAM (read from it by default; tests give it).
    """
    root = complete_machine(domain.element)
    refuse_unknown(root)
    apply_boot_order(root)
    machine = machine_type(root)
    acpi = "on" if domain.acpi else "off"
    firmware, pflash = _firmware_args(root)
    around = platform(root, machine_family(machine), accel, now)
    ram = guest_memory(root, domain.memory_bytes, str(runtime.folder), host_memory)
    machine_props = [machine, f"accel={accel}", f"acpi={acpi}", "usb=off", *pflash,
                     *around.machine, *ram.machine]
    argv = [emulator, "-name", f"guest={escape_commas(domain.name)},debug-threads=on",
            "-machine", ",".join(machine_props), *firmware, *around.args,
            *_smp_args(root, domain.vcpus),
            "-m", ram.size, *ram.args, "-nodefaults", "-no-user-config",
            "-display", "none",
            "-qmp", f"unix:{escape_commas(str(runtime.qmp))},server=on,wait=off",
            "-pidfile", str(runtime.pidfile), "-daemonize"]
    if incoming:
        argv += ["-S", "-incoming", "defer"]
    elif paused:
        argv += ["-S"]
    if compat:
        argv += ["-compat", compat]
    if domain.uuid:
        argv += ["-uuid", domain.uuid]
    genid = root.findtext("genid")
    if genid and genid.strip():
        argv += device_arg({"driver": "vmgenid", "guid": genid.strip(), "id": "vmgenid0"})
    argv += _acpi_tables(root)
    if domain.kernel:
        argv += ["-kernel", domain.kernel]
        if domain.initrd:
            argv += ["-initrd", domain.initrd]
        if domain.cmdline:
            argv += ["-append", domain.cmdline]
    iothreads, iothread_ids = _iothread_args(root)
    argv += iothreads
    tpm = read_tpm(root)
    argv += device_args(root, agent_socket(domain, runtime), _disk_args, iothreads=iothread_ids,
                        tpm=tpm_args(tpm, runtime) if tpm is not None else None,
                        runtime_folder=str(runtime.folder))
    argv += passthrough(root)[0]
    return argv
