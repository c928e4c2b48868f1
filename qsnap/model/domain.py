"""Domain definitions: libvirt ``<domain>`` XML kept verbatim, plus the facts snapshots need.

qsnap never rewrites what it does not understand: the whole element is kept and written back as
it came. What snapshots and the launcher need (name, UUID, memory, vCPUs, direct kernel boot, and
each disk's target, source, format and ``snapshot`` attribute, the serial console) is read into
:class:`DomainDef`. The supported subset is documented in ``docs/domain-xml.md``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from lxml import etree

from qsnap.errors import XMLError
from qsnap.model.units import parse_scaled_integer
from qsnap.model.xmltext import format_element, parse_document, strip_blank_text

DISK_LOCATIONS = ("no", "internal", "external", "manual")
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
DISK_TYPES = ("file", "block", "network", "volume", "dir", "nvme", "vhostuser")
DISK_DEVICES = ("disk", "cdrom", "floppy", "lun")
_UUID_RE = re.compile(r"[a-fA-F0-9]{32}|[a-fA-F0-9]{8}-([a-fA-F0-9]{4}-){3}[a-fA-F0-9]{12}")


@dataclass
class DomainDisk:
    """One ``<disk>`` of a domain, as far as snapshots care."""

    target: str
    bus: str | None = None
    type: str = "file"
    device: str = "disk"
    source: str | None = None  # file path, block device, or network volume name
    driver_type: str | None = None
    snapshot: str | None = None
    readonly: bool = False

    @property
    def is_empty(self) -> bool:
        """A drive without media (an empty CD-ROM) is never snapshotted."""
        return self.source is None


@dataclass
class SerialConsole:
    type: str
    path: str | None = None


@dataclass
class DomainDef:
    """A domain definition: its verbatim element and the parsed facts."""

    element: etree._Element
    name: str
    uuid: str | None
    type: str | None = None
    memory_kib: int | None = None
    vcpus: int = 1
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: list[DomainDisk] = field(default_factory=list)
    serials: list[SerialConsole] = field(default_factory=list)
    #: The guest agent channel (``<channel type='unix'>`` to ``org.qemu.guest_agent.0``):
    #: None without one; "" when the host may choose the socket path.
    agent_socket: str | None = None
    #: ``<features><acpi/>``: without it libvirt starts the guest with ACPI off.
    acpi: bool = False
    #: The UEFI variable store (``<os><nvram>``) and its format, for a pflash firmware.
    nvram: str | None = None
    nvram_format: str = "raw"

    @property
    def nvram_takes_tags(self) -> bool:
        """Whether internal snapshots tag the UEFI NVRAM too: it must be qcow2 for that."""
        return self.nvram is not None and self.nvram_format == "qcow2"

    @property
    def emulated_tpm(self) -> bool:
        """Whether qsnap runs an swtpm for the guest (whose state snapshots then keep)."""
        return self.element.find("devices/tpm/backend[@type='emulator']") is not None

    @property
    def tpm_state_outlives_undefine(self) -> bool:
        """libvirt removes an emulated TPM's state with its domain unless
        ``persistent_state='yes'`` asks to keep it."""
        return self.element.find(
            "devices/tpm/backend[@type='emulator'][@persistent_state='yes']") is not None

    @property
    def memory_bytes(self) -> int:
        """The guest's RAM in bytes (QEMU's default of 128 MiB when the definition has none),
        rounded up to whole MiB as libvirt aligns it on x86 (219100 KiB is 214 MiB)."""
        kib = self.memory_kib or 131072
        return -(-kib // 1024) * 1024 * 1024

    def disk_by_name(self, name: str) -> DomainDisk | None:
        """libvirt's virDomainDiskByName: a target such as ``vda``, or the source path of
        exactly one disk (a path two disks share names neither)."""
        for disk in self.disks:
            if disk.target == name:
                return disk
        matches = [d for d in self.disks if d.source is not None and d.source == name]
        if len(matches) > 1:
            raise XMLError(f"disk name '{name}' is ambiguous: it is the source of disks "
                           f"{', '.join(d.target for d in matches)}; name the disk by target")
        return matches[0] if matches else None

    def to_xml(self, secure: bool = True) -> str:
        return format_element(self.element if secure else redact_secrets(self.element))


@dataclass(frozen=True)
class PciAddress:
    """``<address type='pci'>``: where a device sits on the PCI hierarchy."""

    bus: int
    slot: int
    function: int = 0
    multifunction: bool = False
    domain: int = 0

    @classmethod
    def of(cls, device: etree._Element) -> PciAddress | None:
        node = device.find("address")
        if node is None or node.get("type") != "pci":
            return None
        try:
            domain, bus, slot, function = (c_integer(node.get(k, "0") or "0")
                                           for k in ("domain", "bus", "slot", "function"))
        except ValueError:
            raise XMLError(f"invalid PCI address of <{device.tag}>: "
                           f"{etree.tostring(node).decode().strip()}") from None
        if not (domain or bus or slot or function):
            return None  # all zero: any address, which libvirt then chooses
        return cls(bus=bus, slot=slot, function=function,
                   multifunction=node.get("multifunction") == "on", domain=domain)

    def write(self, device: etree._Element) -> None:
        """Give *device* this address (replacing any ``<address>`` it has)."""
        old = device.find("address")
        if old is not None:
            device.remove(old)
        attrs = {"type": "pci", "domain": f"{self.domain:#06x}", "bus": f"{self.bus:#04x}",
                 "slot": f"{self.slot:#04x}", "function": f"{self.function:#x}"}
        if self.multifunction:
            attrs["multifunction"] = "on"
        etree.SubElement(device, "address", attrs)

    @property
    def qemu_addr(self) -> str:
        """QEMU's ``addr=`` value for this slot and function."""
        return f"{self.slot:#x}" if self.function == 0 else f"{self.slot:#x}.{self.function:#x}"


def c_integer(text: str) -> int:
    """An integer as libvirt reads an address attribute (``strtoul`` with base 0): ``0x12``
    is hexadecimal, ``022`` octal, ``18`` decimal. Reading ``18`` as hex put a device at another
    slot than libvirt's."""
    text = text.strip()
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text[1:], 8)
    return int(text, 10)


def _leaf_text(parent: etree._Element, tag: str) -> str | None:
    node = parent.find(tag)
    if node is None or node.text is None or not node.text.strip():
        return None
    return node.text.strip()


def parse_disk(node: etree._Element, index: int | None = None) -> DomainDisk:
    """One ``<disk>`` element's facts (*index* names it in errors)."""
    where = "a disk of the domain" if index is None else f"disk #{index + 1} of the domain"
    disk_type = node.get("type", "file")
    if disk_type not in DISK_TYPES:
        raise XMLError(f"unknown <disk type='{disk_type}'> of {where}")
    device = node.get("device", "disk")
    if device not in DISK_DEVICES:
        raise XMLError(f"unknown <disk device='{device}'> of {where}")
    target = node.find("target")
    if target is None or not target.get("dev"):
        raise XMLError(f"missing <target dev=...> in {where}")
    snapshot = node.get("snapshot")
    if snapshot is not None and snapshot not in DISK_LOCATIONS:
        raise XMLError(f"invalid snapshot='{snapshot}' of disk '{target.get('dev')}': "
                       f"expected one of {', '.join(DISK_LOCATIONS)}")
    source_node = node.find("source")
    source = None
    if source_node is not None:
        source = (source_node.get("file") or source_node.get("dev")
                  or source_node.get("name") or source_node.get("dir")) or None
    driver = node.find("driver")
    return DomainDisk(
        target=target.get("dev", ""), bus=target.get("bus"), type=disk_type, device=device,
        source=source, driver_type=driver.get("type") if driver is not None else None,
        snapshot=snapshot, readonly=node.find("readonly") is not None)


def parse_domain_element(element: etree._Element, what: str = "domain XML",
                         require_memory: bool = False) -> DomainDef:
    """Read the facts of a ``<domain>`` (or ``<inactiveDomain>``) element, keeping it whole."""
    name = _leaf_text(element, "name")
    if name is None:
        raise XMLError(f"missing <name> in {what}")
    uuid = _leaf_text(element, "uuid")
    if uuid is not None and not _UUID_RE.fullmatch(uuid):
        raise XMLError(f"invalid UUID '{uuid}' in {what}")
    memory_node = element.find("memory")
    memory_kib = None
    if memory_node is not None:
        memory_kib = parse_scaled_integer(memory_node.text, memory_node.get("unit"),
                                          f"<memory> of {what}", default=1024) // 1024
    elif require_memory:
        raise XMLError(f"missing <memory> in {what}")
    vcpu_text = _leaf_text(element, "vcpu") or "1"
    if not vcpu_text.isdigit() or int(vcpu_text) < 1:
        raise XMLError(f"invalid <vcpu> '{vcpu_text}' in {what}")
    os_node = element.find("os")
    kernel = initrd = cmdline = None
    if os_node is not None:
        kernel, initrd = _leaf_text(os_node, "kernel"), _leaf_text(os_node, "initrd")
        cmdline = _leaf_text(os_node, "cmdline")
    devices = element.find("devices")
    disks: list[DomainDisk] = []
    serials: list[SerialConsole] = []
    agent_socket = None
    if devices is not None:
        disks = [parse_disk(d, i) for i, d in enumerate(devices.findall("disk"))]
        seen: set[str] = set()
        for disk in disks:
            if disk.target in seen:
                raise XMLError(f"target '{disk.target}' is used by two disks in {what}")
            seen.add(disk.target)
        for channel in devices.findall("channel"):
            target = channel.find("target")
            if channel.get("type") == "unix" and target is not None and \
                    target.get("name") == GUEST_AGENT_CHANNEL:
                source = channel.find("source")
                agent_socket = (source.get("path") if source is not None else None) or ""
        for serial in devices.findall("serial"):
            source = serial.find("source")
            serials.append(SerialConsole(serial.get("type", "pty"),
                                         source.get("path") if source is not None else None))
    nvram_node = element.find("os/nvram")
    nvram = (nvram_node.text or "").strip() if nvram_node is not None else ""
    return DomainDef(element=element, name=name, uuid=uuid, type=element.get("type"),
                     memory_kib=memory_kib, vcpus=int(vcpu_text), kernel=kernel, initrd=initrd,
                     cmdline=cmdline, disks=disks, serials=serials, agent_socket=agent_socket,
                     acpi=element.find("features/acpi") is not None, nvram=nvram or None,
                     nvram_format=(nvram_node.get("format") if nvram_node is not None
                                   else None) or "raw")


def parse_domain(text: str | bytes, what: str = "domain XML") -> DomainDef:
    """Parse a domain definition document (as given to ``qsnap define``)."""
    root = parse_document(text, what)
    if root.tag != "domain":
        raise XMLError(f"expected a <domain> document in {what}, found <{root.tag}>")
    strip_blank_text(root)
    return parse_domain_element(root, what, require_memory=True)


def same_uuid(a: str, b: str) -> bool:
    """UUIDs are equal whatever their case and dashes (libvirt accepts both spellings)."""
    return a.replace("-", "").lower() == b.replace("-", "").lower()


def with_uuid(domain: DomainDef, uuid: str) -> DomainDef:
    """A copy of *domain* that carries *uuid* (inserted after ``<name>``, where libvirt puts it)."""
    element = copy.deepcopy(domain.element)
    node = element.find("uuid")
    if node is None:
        node = etree.Element("uuid")
        name = element.find("name")
        if name is None:
            element.insert(0, node)
        else:
            name.addnext(node)
    node.text = uuid
    return parse_domain_element(element)


#: The name internal snapshots give a UEFI guest's NVRAM among its disks: not a disk target
#: (those name guest devices), because the NVRAM is the firmware's.
NVRAM_TARGET = "#nvram"


def rewound(domain: DomainDef, guid: str) -> DomainDef:
    """*domain* as QEMU starts it for a revert to a memory snapshot or a restore: a guest
    with a ``<genid>`` sees a new generation ID (libvirt's rule), so it can tell it was
    rewound; without one, *domain* itself."""
    if domain.element.find("genid") is None:
        return domain
    element = copy.deepcopy(domain.element)
    node = element.find("genid")
    assert node is not None
    node.text = guid
    return parse_domain_element(element)


def with_generation_id(xml: str, guid: str) -> str:
    """*xml* (a formatted definition) showing the generation ID *guid*, where it has a
    ``<genid>``: a running guest's, as libvirt's live XML shows it after a revert."""
    root = etree.fromstring(xml.encode())
    node = root.find("genid")
    if node is None or (node.text or "").strip() == guid:
        return xml
    node.text = guid
    return format_element(root)


# Attributes that hold secrets in libvirt domain XML, by element: shown only with --security-info.
_SECRET_ATTRIBUTES = {"graphics": ("passwd",)}


def redact_secrets(element: etree._Element) -> etree._Element:
    """A copy of a domain element without secrets, as libvirt formats it without XML_SECURE."""
    clone = copy.deepcopy(element)
    for tag, attrs in _SECRET_ATTRIBUTES.items():
        for node in clone.iter(tag):
            for attr in attrs:
                if attr in node.attrib:
                    del node.attrib[attr]
    return clone


def with_disk_images(domain: DomainDef, images: dict[str, tuple[str, str]]) -> DomainDef:
    """A copy of *domain* whose disks (by target) use new images: ``{target: (path, format)}``.

    This is how a definition looks after an external snapshot: the overlay is the disk's source
    and qcow2 its format (the documentation's example shows exactly this change).
    """
    element = copy.deepcopy(domain.element)
    for disk in element.iterfind("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev is None or dev not in images:
            continue
        path, fmt = images[dev]
        source = disk.find("source")
        if source is None:
            source = etree.SubElement(disk, "source")
        source.attrib.clear()
        _set_image(disk, source, path, fmt)
    return parse_domain_element(element)


def _source_key(disk: etree._Element) -> str:
    return "dev" if disk.get("type") == "block" else "file"


def _set_image(disk: etree._Element, source: etree._Element, path: str, fmt: str) -> None:
    """Point one ``<disk>`` at *path* in format *fmt* (adding ``<driver>`` if it has none)."""
    source.set(_source_key(disk), path)
    driver = disk.find("driver")
    if driver is None:
        driver = etree.Element("driver", name="qemu")
        disk.insert(0, driver)
    driver.set("type", fmt)


def renamed_images(element: etree._Element,
                   renames: dict[str, tuple[str, str]]) -> etree._Element | None:
    """A copy of a domain element whose disks that use an image in *renames* use its
    replacement instead: ``{old path: (new path, format)}``; None when no disk uses one.

    Deleting an external snapshot merges an image into the one below it; every definition that
    named the merged image must then name the image that took its place (libvirt rewrites the
    stored ``<domain>`` of each descendant the same way).
    """
    clone = copy.deepcopy(element)
    changed = False
    for disk in clone.iterfind("devices/disk"):
        source = disk.find("source")
        if source is None:
            continue
        image = source.get(_source_key(disk))
        if image is None or image not in renames:
            continue
        _set_image(disk, source, *renames[image])
        for chain in disk.findall("backingStore"):
            disk.remove(chain)  # it described the chain below the old image
        changed = True
    return clone if changed else None


@dataclass(frozen=True)
class RunningDisk:
    """A disk as a running QEMU reports it: the name qsnap calls it by, its file and format."""

    target: str
    path: str
    format: str
    readonly: bool = False


def domain_from_qemu(name: str, uuid: str, memory_bytes: int, vcpus: int, kvm: bool,
                     disks: list[RunningDisk]) -> DomainDef:
    """A libvirt domain definition describing a QEMU that someone else launched."""
    root = etree.Element("domain", type="kvm" if kvm else "qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "uuid").text = uuid
    etree.SubElement(root, "memory", unit="KiB").text = str(memory_bytes // 1024)
    etree.SubElement(root, "vcpu").text = str(vcpus)
    os_node = etree.SubElement(root, "os")
    etree.SubElement(os_node, "type", arch="x86_64").text = "hvm"
    devices = etree.SubElement(root, "devices")
    for disk in disks:
        kind = "block" if disk.path.startswith("/dev/") else "file"
        node = etree.SubElement(devices, "disk", type=kind, device="disk")
        etree.SubElement(node, "driver", name="qemu", type=disk.format)
        etree.SubElement(node, "source", {"dev" if kind == "block" else "file": disk.path})
        etree.SubElement(node, "target", dev=disk.target)
        if disk.readonly:
            etree.SubElement(node, "readonly")
    return parse_domain_element(root)
