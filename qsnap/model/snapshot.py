"""The ``<domainsnapshot>`` format: dataclasses, a strict parser and a libvirt-exact formatter.

Pure: no file or process I/O. The parser accepts exactly the documented format
(``spec/formatsnapshot.rst`` and libvirt's ``domainsnapshot.rng``); anything else is an
:class:`~qsnap.errors.XMLError` naming the element or attribute. The embedded ``<domain>``,
``<inactiveDomain>`` and ``<cookie>`` are libvirt's to define, so they are kept verbatim.

Three parse modes mirror libvirt's parse flags:

* *redefine* reads the fields that are otherwise read-only (state, parent, creationTime, domain,
  inactiveDomain, cookie, revertDisks) and requires name, state and creationTime;
* *internal* reads ``<active>`` (the current-snapshot marker of metadata files);
* *validate* adds the value rules that libvirt only checks with its RelaxNG schema
  (``--validate``): disk-name and path patterns, backing formats, UUID syntax, and so on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from lxml import etree

from qsnap.errors import XMLError
from qsnap.model.domain import parse_domain_element, redact_secrets
from qsnap.model.units import parse_scaled_integer
from qsnap.model.xmltext import escape_attr, escape_text, format_element, parse_document

#: Domain states a snapshot can record (libvirt's virDomainSnapshotState without "nostate").
STATES = ("running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended",
          "disk-snapshot")
#: The subset libvirt's schema allows in ``<state>``.
SCHEMA_STATES = tuple(s for s in STATES if s != "pmsuspended")
#: Where a disk's or the memory's snapshot lives.
LOCATIONS = ("no", "internal", "external", "manual")
#: Storage types of an external overlay.
SOURCE_TYPES = ("file", "block", "network")
NETWORK_PROTOCOLS = ("nbd", "rbd", "sheepdog", "gluster", "iscsi", "http", "https", "ftp", "ftps",
                     "tftp", "ssh", "vxhs", "nfs")
HOST_TRANSPORTS = ("tcp", "unix", "rdma")
#: Every image format libvirt knows (virStorageFileFormat).
DRIVER_FORMATS = ("raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop",
                  "cow", "qcow", "qcow2", "qed", "vmdk", "luks")
#: Formats that can carry a backing file: the only ones the schema allows for an overlay.
BACKING_FORMATS = ("cow", "qcow", "qcow2", "qed", "vmdk")

_DISK_TARGET_RE = re.compile(r"(ioemu:)?(fd|hd|sd|vd|xvd|ubd)[a-zA-Z0-9_]+")
#: DOTALL: a file name may hold any byte but NUL and '/', a newline included, and default
#: overlay names carry the snapshot's name (a name with a newline was stored, then unreadable).
_ABS_PATH_RE = re.compile(r"(/|[a-zA-Z]:\\).+", re.DOTALL)
UUID_RE = re.compile(r"[a-fA-F0-9]{32}|[a-fA-F0-9]{8}-([a-fA-F0-9]{4}-){3}[a-fA-F0-9]{12}")


@dataclass
class Seclabel:
    """A per-source security label override (``<seclabel>`` inside ``<source>``)."""

    model: str | None = None
    relabel: bool = True
    labelskip: bool = False
    label: str | None = None


@dataclass
class Host:
    """One ``<host>`` of a network disk source."""

    name: str | None = None
    port: str | None = None
    transport: str | None = None
    socket: str | None = None


@dataclass
class DiskSource:
    """Where an external overlay lives: a file, a block device, or network storage."""

    file: str | None = None
    dev: str | None = None
    protocol: str | None = None
    name: str | None = None
    hosts: list[Host] = field(default_factory=list)
    seclabels: list[Seclabel] = field(default_factory=list)

    @property
    def path(self) -> str | None:
        """The one string that names the storage, whatever its type (libvirt's ``src->path``)."""
        return self.file or self.dev or self.name


@dataclass
class SnapshotDisk:
    """One ``<disk>`` of ``<disks>`` or ``<revertDisks>``."""

    name: str
    snapshot: str | None = None  # None: not given, the domain's default applies
    type: str = "file"
    source: DiskSource = field(default_factory=DiskSource)
    driver_type: str | None = None
    metadata_cache_max_size: int | None = None  # bytes
    delete_in_progress: bool = False


@dataclass
class SnapshotDef:
    """A parsed ``<domainsnapshot>``.

    ``domain`` holds a full embedded domain definition verbatim; ``domain_uuid`` is set instead
    when the XML carried only ``<domain><uuid>`` (the form libvirt writes when it has no full
    definition). ``active`` is the current-snapshot marker of internal metadata files.
    """

    name: str | None = None
    description: str | None = None
    state: str | None = None
    creation_time: int | None = None
    parent: str | None = None
    memory: str | None = None
    memory_file: str | None = None
    disks: list[SnapshotDisk] = field(default_factory=list)
    revert_disks: list[SnapshotDisk] = field(default_factory=list)
    domain: etree._Element | None = None
    domain_uuid: str | None = None
    inactive_domain: etree._Element | None = None
    cookie: etree._Element | None = None
    active: bool | None = None

    @property
    def is_external(self) -> bool:
        """libvirt's rule: external memory or any external disk makes the snapshot external."""
        return self.memory == "external" or any(d.snapshot == "external" for d in self.disks)

    @property
    def location(self) -> str:
        return "external" if self.is_external else "internal"

    @property
    def uuid(self) -> str | None:
        """The UUID of the domain this snapshot belongs to, if the XML says."""
        if self.domain is not None:
            node = self.domain.find("uuid")
            if node is not None and node.text:
                return node.text.strip()
        return self.domain_uuid

    def copy(self, **changes: object) -> SnapshotDef:
        """A shallow copy with *changes*; lists are copied so edits do not leak back."""
        clone = replace(self, **changes)  # type: ignore[arg-type]
        if "disks" not in changes:
            clone.disks = list(self.disks)
        if "revert_disks" not in changes:
            clone.revert_disks = list(self.revert_disks)
        return clone


# ----------------------------------------------------------------------------------------------
# Parsing


class _Reader:
    """Walks one element, refusing attributes and children it was not told about."""

    def __init__(self, element: etree._Element, where: str) -> None:
        self.element = element
        self.where = where

    def attrs(self, *allowed: str) -> dict[str, str]:
        for key in self.element.attrib:
            if key not in allowed:
                raise XMLError(f"unsupported attribute '{key!s}' on {self.where}")
        return {str(k): str(v) for k, v in self.element.attrib.items()}

    def children(self, allowed: tuple[str, ...],
                 repeatable: tuple[str, ...] = ()) -> list[etree._Element]:
        seen: set[str] = set()
        result = []
        for child in self.element:
            if not isinstance(child.tag, str):
                continue
            tag = child.tag
            if tag not in allowed:
                raise XMLError(f"unsupported element <{_plain(tag)}> in {self.where}")
            if tag in seen and tag not in repeatable:
                raise XMLError(f"element <{tag}> appears more than once in {self.where}")
            seen.add(tag)
            result.append(child)
        if self.element.text and self.element.text.strip():
            raise XMLError(f"unexpected text {self.element.text.strip()!r} in {self.where}")
        for child in self.element:
            if child.tail and child.tail.strip():
                raise XMLError(f"unexpected text {child.tail.strip()!r} in {self.where}")
        return result

    def empty(self) -> None:
        """No child elements and no text."""
        self.children(())

    def leaf(self) -> None:
        """No child elements; text is the caller's to read."""
        for child in self.element:
            if isinstance(child.tag, str):
                raise XMLError(f"unsupported element <{_plain(child.tag)}> in {self.where}")


def _plain(tag: str) -> str:
    return etree.QName(tag).localname if tag.startswith("{") else tag


def _text(element: etree._Element, where: str) -> str | None:
    """Text of a leaf element; None when empty (libvirt treats an empty string as absent)."""
    reader = _Reader(element, where)
    reader.attrs()
    reader.leaf()
    text = element.text or ""
    return text if text.strip() else None


def _enum(value: str, allowed: tuple[str, ...], attr: str, where: str) -> str:
    if value not in allowed:
        raise XMLError(f"invalid value '{value}' for attribute '{attr}' of {where}: "
                       f"expected one of {', '.join(allowed)}")
    return value


def _absolute(path: str) -> bool:
    return bool(_ABS_PATH_RE.fullmatch(path))


def _parse_seclabel(element: etree._Element, where: str, validate: bool) -> Seclabel:
    where = f"<seclabel> in {where}"
    reader = _Reader(element, where)
    attrs = reader.attrs("model", "relabel", "labelskip")
    labels = reader.children(("label",))
    label = _text(labels[0], f"<label> in {where}") if labels else None
    relabel = attrs.get("relabel")
    labelskip = attrs.get("labelskip")
    if relabel is not None:
        _enum(relabel, ("yes", "no"), "relabel", where)
    if labelskip is not None:
        _enum(labelskip, ("yes", "no"), "labelskip", where)
    if validate:
        # The schema's choice: relabel='no', or labelskip='yes', or a label (and relabel='yes').
        ok = ((relabel == "no" and labelskip is None and label is None)
              or (labelskip == "yes" and relabel is None and label is None)
              or (label is not None and relabel in (None, "yes") and labelskip is None))
        if not ok:
            raise XMLError(f"{where} must have relabel='no', labelskip='yes', or a <label>")
    return Seclabel(model=attrs.get("model"), relabel=relabel != "no",
                    labelskip=labelskip == "yes", label=label)


def _parse_host(element: etree._Element, where: str) -> Host:
    where = f"<host> in {where}"
    reader = _Reader(element, where)
    attrs = reader.attrs("name", "port", "transport", "socket")
    reader.empty()
    transport = attrs.get("transport")
    if transport is not None:
        _enum(transport, HOST_TRANSPORTS, "transport", where)
    port = attrs.get("port")
    if port is not None and not port.isdigit():
        raise XMLError(f"invalid port '{port}' in {where}")
    if transport == "unix":
        if not attrs.get("socket"):
            raise XMLError(f"{where} with transport='unix' needs a socket")
    elif not attrs.get("name"):
        raise XMLError(f"{where} needs a name")
    return Host(name=attrs.get("name"), port=port, transport=transport, socket=attrs.get("socket"))


def _parse_source(element: etree._Element, disk_type: str, where: str,
                  validate: bool) -> DiskSource:
    where = f"<source> of {where}"
    reader = _Reader(element, where)
    if disk_type == "network":
        attrs = reader.attrs("protocol", "name")
        children = reader.children(("host",), repeatable=("host",))
        protocol = attrs.get("protocol")
        if protocol is None:
            raise XMLError(f"{where} needs a protocol attribute")
        _enum(protocol, NETWORK_PROTOCOLS, "protocol", where)
        return DiskSource(protocol=protocol, name=attrs.get("name"),
                          hosts=[_parse_host(h, where) for h in children])
    key = "file" if disk_type == "file" else "dev"
    attrs = reader.attrs(key)
    children = reader.children(("seclabel",), repeatable=("seclabel",))
    if validate and disk_type == "block" and key not in attrs:
        raise XMLError(f"{where} of type 'block' needs a dev attribute")
    path = attrs.get(key) or None
    seclabels = [_parse_seclabel(c, where, validate) for c in children]
    if key == "file":
        return DiskSource(file=path, seclabels=seclabels)
    return DiskSource(dev=path, seclabels=seclabels)


def parse_disk(element: etree._Element, container: str, validate: bool = False) -> SnapshotDisk:
    """Parse one ``<disk>`` of ``<disks>``/``<revertDisks>`` (libvirt's per-disk rules)."""
    reader = _Reader(element, f"<disk> in <{container}>")
    attrs = reader.attrs("name", "snapshot", "type")
    name = attrs.get("name")
    if not name:
        raise XMLError("missing name from disk snapshot element")
    where = f"<disk name='{name}'>"
    reader.where = where
    snapshot = attrs.get("snapshot")
    if snapshot is not None:
        _enum(snapshot, LOCATIONS, "snapshot", where)
    disk_type = attrs.get("type", "file")
    if disk_type in ("volume", "dir"):
        raise XMLError(f"unsupported disk snapshot type '{disk_type}'")
    _enum(disk_type, SOURCE_TYPES, "type", where)
    disk = SnapshotDisk(name=name, snapshot=snapshot, type=disk_type)

    for child in reader.children(("source", "driver", "snapshotDeleteInProgress")):
        if child.tag == "source":
            disk.source = _parse_source(child, disk_type, where, validate)
        elif child.tag == "driver":
            _parse_driver(child, disk, where)
        else:
            _Reader(child, f"<snapshotDeleteInProgress> in {where}").attrs()
            _Reader(child, f"<snapshotDeleteInProgress> in {where}").empty()
            disk.delete_in_progress = True

    path = disk.source.path
    if disk_type != "network" and path is not None and not _absolute(path):
        raise XMLError(f"disk snapshot image path '{path}' must be absolute")
    if disk.snapshot is None and (path or disk.driver_type):
        disk.snapshot = "external"

    if validate:
        if not (_DISK_TARGET_RE.fullmatch(name) or _absolute(name)):
            raise XMLError(f"disk name '{name}' is neither a target device (such as vda) "
                           "nor an absolute path")
        if disk.snapshot in ("no", "internal", "manual") and (
                "type" in attrs or len(element) or disk.delete_in_progress):
            raise XMLError(f"{where} has snapshot='{disk.snapshot}', which takes no type, "
                           "<source>, <driver> or <snapshotDeleteInProgress>")
        if disk.driver_type is not None and disk.driver_type not in BACKING_FORMATS:
            raise XMLError(f"driver type '{disk.driver_type}' of {where} cannot hold an "
                           f"overlay; use one of {', '.join(BACKING_FORMATS)}")
        if disk_type == "network" and (disk.driver_type or disk.delete_in_progress):
            raise XMLError(f"{where} of type 'network' takes no <driver> or "
                           "<snapshotDeleteInProgress>")
    return disk


def _parse_driver(element: etree._Element, disk: SnapshotDisk, where: str) -> None:
    where = f"<driver> of {where}"
    reader = _Reader(element, where)
    attrs = reader.attrs("type")
    driver_type = attrs.get("type")
    if driver_type is not None:
        if driver_type not in DRIVER_FORMATS:
            raise XMLError(f"unknown disk snapshot driver '{driver_type}'")
        disk.driver_type = driver_type
    for cache in reader.children(("metadata_cache",)):
        cache_reader = _Reader(cache, f"<metadata_cache> in {where}")
        cache_reader.attrs()
        for size in cache_reader.children(("max_size",)):
            size_where = f"<max_size> in {where}"
            size_reader = _Reader(size, size_where)
            unit = size_reader.attrs("unit").get("unit")
            size_reader.leaf()
            disk.metadata_cache_max_size = parse_scaled_integer(size.text, unit, size_where)


def _parse_disks(element: etree._Element, validate: bool) -> list[SnapshotDisk]:
    container = element.tag
    reader = _Reader(element, f"<{container}>")
    reader.attrs()
    return [parse_disk(d, container, validate)
            for d in reader.children(("disk",), repeatable=("disk",))]


def _parse_domain(element: etree._Element, snap: SnapshotDef, validate: bool) -> None:
    """Keep a full ``<domain>`` verbatim; reduce a bare ``<domain><uuid>`` to its UUID."""
    if "type" in element.attrib:
        if validate:
            parse_domain_element(element, "the snapshot's <domain>")
        snap.domain = element
        return
    reader = _Reader(element, "<domain> (a snapshot's <domain> without a type attribute)")
    reader.attrs()
    children = reader.children(("uuid",))
    if not children:
        raise XMLError("<domain> in a snapshot needs a type attribute (a full domain "
                       "definition) or a <uuid>")
    uuid = _text(children[0], "<uuid> in <domain>")
    if uuid is None or (validate and not UUID_RE.fullmatch(uuid.strip())):
        raise XMLError(f"invalid domain UUID '{uuid or ''}' in snapshot <domain>")
    snap.domain_uuid = uuid.strip()


_TOP_LEVEL = ("name", "description", "state", "creationTime", "parent", "memory", "disks",
              "revertDisks", "domain", "inactiveDomain", "cookie", "active")
_READ_ONLY = ("state", "creationTime", "parent", "domain", "inactiveDomain", "cookie",
              "revertDisks")


def parse_snapshot(text: str | bytes, *, redefine: bool = False, internal: bool = False,
                   validate: bool = False, offline: bool = False,
                   what: str = "snapshot XML") -> SnapshotDef:
    """Parse a ``<domainsnapshot>`` document (see the module docstring for the modes).

    *offline* says the snapshot is for a stopped guest or is disk-only, so memory state is refused,
    as libvirt's ``PARSE_OFFLINE`` does at create time.
    """
    return snapshot_from_element(parse_document(text, what), redefine=redefine,
                                 internal=internal, validate=validate, offline=offline)


def snapshot_from_element(root: etree._Element, *, redefine: bool = False,
                          internal: bool = False, validate: bool = False,
                          offline: bool = False) -> SnapshotDef:
    if root.tag != "domainsnapshot":
        raise XMLError(f"expected a <domainsnapshot> document, found <{_plain(str(root.tag))}>")
    reader = _Reader(root, "<domainsnapshot>")
    reader.attrs()
    nodes = {child.tag: child for child in reader.children(_TOP_LEVEL)}
    snap = SnapshotDef()

    if "name" in nodes:
        snap.name = _text(nodes["name"], "<name>")
    if "description" in nodes:
        snap.description = _text(nodes["description"], "<description>")
    if validate and "state" in nodes:
        state = _text(nodes["state"], "<state>")
        if (state or "").strip() not in SCHEMA_STATES:
            raise XMLError(f"Invalid state '{state or ''}' in domain snapshot XML")
    if validate and "active" in nodes and (nodes["active"].text or "").strip() not in ("0", "1"):
        raise XMLError("<active> must be 0 or 1")

    if redefine:
        _parse_read_only(nodes, snap, validate)
        offline = snap.state in ("shutoff", "disk-snapshot")
    elif validate:
        _check_ignored_read_only(nodes)

    if "memory" in nodes:
        _parse_memory(nodes["memory"], snap, validate)
    if snap.memory is None:
        if snap.memory_file:
            snap.memory = "external"
        elif redefine:
            snap.memory = "no" if offline else "internal"
    if snap.memory_file and snap.memory != "external":
        raise XMLError(f"memory filename '{snap.memory_file}' requires external snapshot")
    if not snap.memory_file and snap.memory == "external":
        raise XMLError("external memory snapshots require a filename")
    if offline and snap.memory not in (None, "no"):
        raise XMLError("memory state cannot be saved with offline or disk-only snapshot")
    if snap.memory_file and not snap.memory_file.startswith("/"):
        raise XMLError(f"memory snapshot file path ({snap.memory_file}) must be absolute")

    if "disks" in nodes:
        snap.disks = _parse_disks(nodes["disks"], validate)

    if internal:
        active = (nodes["active"].text or "").strip() if "active" in nodes else ""
        if active not in ("0", "1"):
            raise XMLError("Could not find 'active' element" if not active
                           else f"<active> must be 0 or 1, not '{active}'")
        snap.active = active == "1"
    return snap


def _parse_read_only(nodes: dict[str, etree._Element], snap: SnapshotDef, validate: bool) -> None:
    if snap.name is None:
        raise XMLError("a redefined snapshot must have a name")
    ctime = _text(nodes["creationTime"], "<creationTime>") if "creationTime" in nodes else None
    try:
        snap.creation_time = int((ctime or "").strip())
    except ValueError:
        raise XMLError("missing creationTime from existing snapshot" if ctime is None
                       else f"invalid creationTime '{ctime.strip()}': expected seconds since "
                            "the Epoch") from None
    state = _text(nodes["state"], "<state>") if "state" in nodes else None
    if state is None:
        raise XMLError("missing state from existing snapshot")
    state = state.strip()
    if state not in STATES:
        raise XMLError(f"Invalid state '{state}' in domain snapshot XML")
    snap.state = state
    if "parent" in nodes:
        reader = _Reader(nodes["parent"], "<parent>")
        reader.attrs()
        names = reader.children(("name",))
        if not names:
            raise XMLError("<parent> needs a <name>")
        snap.parent = _text(names[0], "<name> in <parent>")
    if "domain" in nodes:
        _parse_domain(nodes["domain"], snap, validate)
    if "inactiveDomain" in nodes:
        if validate:
            parse_domain_element(nodes["inactiveDomain"], "<inactiveDomain>")
        snap.inactive_domain = nodes["inactiveDomain"]
    if "cookie" in nodes and snap.state not in ("shutoff", "disk-snapshot"):
        _Reader(nodes["cookie"], "<cookie>").attrs()
        snap.cookie = nodes["cookie"]
    if "revertDisks" in nodes:
        snap.revert_disks = _parse_disks(nodes["revertDisks"], validate)


def _check_ignored_read_only(nodes: dict[str, etree._Element]) -> None:
    """Outside redefine the read-only fields are ignored, but --validate still checks their form."""
    scratch = SnapshotDef()
    if "domain" in nodes:
        _parse_domain(nodes["domain"], scratch, validate=True)
    if "revertDisks" in nodes:
        _parse_disks(nodes["revertDisks"], validate=True)
    if "parent" in nodes:
        reader = _Reader(nodes["parent"], "<parent>")
        reader.attrs()
        if not reader.children(("name",)):
            raise XMLError("<parent> needs a <name>")


def _parse_memory(element: etree._Element, snap: SnapshotDef, validate: bool) -> None:
    reader = _Reader(element, "<memory>")
    attrs = reader.attrs("snapshot", "file")
    reader.empty()
    location = attrs.get("snapshot")
    if location == "manual":
        raise XMLError("'manual' memory snapshot mode not supported")
    if location is not None:
        _enum(location, ("no", "internal", "external"), "snapshot", "<memory>")
    if validate and location is None and "file" not in attrs:
        raise XMLError("<memory> needs a snapshot or a file attribute")
    snap.memory = location
    snap.memory_file = attrs.get("file") or None


# ----------------------------------------------------------------------------------------------
# Formatting


def _attr(name: str, value: str | None) -> str:
    return "" if value is None else f" {name}='{escape_attr(value)}'"


def _format_seclabel(label: Seclabel, pad: str) -> str:
    head = f"{pad}<seclabel{_attr('model', label.model)}"
    relabel = "yes" if label.relabel else "no"
    head += " labelskip='yes'" if label.labelskip else f" relabel='{relabel}'"
    if label.label is None:
        return head + "/>\n"
    return f"{head}>\n{pad}  <label>{escape_text(label.label)}</label>\n{pad}</seclabel>\n"


def _format_source(disk: SnapshotDisk, pad: str) -> str:
    src = disk.source
    if disk.type == "network":
        attrs = _attr("protocol", src.protocol) + _attr("name", src.name)
        inner = "".join(
            f"{pad}  <host{_attr('name', h.name)}{_attr('port', h.port)}"
            f"{_attr('transport', h.transport if h.transport != 'tcp' else None)}"
            f"{_attr('socket', h.socket)}/>\n" for h in src.hosts)
    else:
        key = "file" if disk.type == "file" else "dev"
        attrs = _attr(key, src.path)
        inner = "".join(_format_seclabel(s, pad + "  ") for s in src.seclabels)
    if not attrs and not inner:
        return ""
    if not inner:
        return f"{pad}<source{attrs}/>\n"
    return f"{pad}<source{attrs}>\n{inner}{pad}</source>\n"


def format_disk(disk: SnapshotDisk, level: int) -> str:
    """One ``<disk>`` as libvirt's virDomainSnapshotDiskDefFormat writes it."""
    pad = "  " * level
    attrs = _attr("name", disk.name) + _attr("snapshot", disk.snapshot)
    inner = ""
    if disk.source.path or disk.driver_type:
        attrs += _attr("type", disk.type)
        driver_inner = ""
        if disk.metadata_cache_max_size:
            driver_inner = (f"{pad}    <metadata_cache>\n"
                            f"{pad}      <max_size unit='bytes'>{disk.metadata_cache_max_size}"
                            f"</max_size>\n{pad}    </metadata_cache>\n")
        driver_attrs = _attr("type", disk.driver_type)
        if driver_inner:
            inner += f"{pad}  <driver{driver_attrs}>\n{driver_inner}{pad}  </driver>\n"
        elif driver_attrs:
            inner += f"{pad}  <driver{driver_attrs}/>\n"
        inner += _format_source(disk, pad + "  ")
    if disk.delete_in_progress:
        inner += f"{pad}  <snapshotDeleteInProgress/>\n"
    if not inner:
        return f"{pad}<disk{attrs}/>\n"
    return f"{pad}<disk{attrs}>\n{inner}{pad}</disk>\n"


def format_snapshot(snap: SnapshotDef, *, uuid: str | None = None, active: bool | None = None,
                    secure: bool = True) -> str:
    """Format *snap* exactly as libvirt's virDomainSnapshotDefFormat does.

    *uuid* is written as ``<domain><uuid>`` when there is no full domain (libvirt passes the
    domain's UUID); *active* writes the ``<active>`` marker of internal metadata files;
    *secure* False leaves out passwords in the embedded domain definitions.
    """
    out = ["<domainsnapshot>\n"]
    if snap.name is not None:
        out.append(f"  <name>{escape_text(snap.name)}</name>\n")
    if snap.description is not None:
        out.append(f"  <description>{escape_text(snap.description)}</description>\n")
    if snap.state:
        out.append(f"  <state>{snap.state}</state>\n")
    if snap.parent is not None:
        out.append(f"  <parent>\n    <name>{escape_text(snap.parent)}</name>\n  </parent>\n")
    if snap.creation_time:
        out.append(f"  <creationTime>{snap.creation_time}</creationTime>\n")
    if snap.memory:
        out.append(f"  <memory snapshot='{snap.memory}'{_attr('file', snap.memory_file)}/>\n")
    for tag, disks in (("disks", snap.disks), ("revertDisks", snap.revert_disks)):
        if disks:
            out.append(f"  <{tag}>\n")
            out.extend(format_disk(d, 2) for d in disks)
            out.append(f"  </{tag}>\n")
    if snap.domain is not None:
        out.append(format_element(snap.domain if secure else redact_secrets(snap.domain), 1))
    elif uuid or snap.domain_uuid:
        out.append(f"  <domain>\n    <uuid>{escape_text(uuid or snap.domain_uuid or '')}"
                   "</uuid>\n  </domain>\n")
    if snap.inactive_domain is not None:
        inactive = snap.inactive_domain if secure else redact_secrets(snap.inactive_domain)
        out.append(format_element(inactive, 1))
    if snap.cookie is not None:
        out.append(format_element(snap.cookie, 1))
    if active is not None:
        out.append(f"  <active>{int(active)}</active>\n")
    out.append("</domainsnapshot>\n")
    return "".join(out)
