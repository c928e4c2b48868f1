"""Guest RAM as libvirt gives it to QEMU: its size (whole MiB), hotplug slots, backing
(``<memoryBacking>``) and NUMA cells (``<cpu><numa>``).

A memory image names each RAM block by its backend's id, so this is where save images and
memory snapshots meet the command line: plain ``-m`` and an explicit ``pc.ram`` backend give
the same block (``pc.ram``); NUMA cells give ``ram-node0``, ``ram-node1``..., as libvirt's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lxml import etree

from qsnap.launcher.refusal import refuse
from qsnap.model.units import parse_scaled_integer

MIB = 1024 * 1024
_BACKENDS = {"anonymous": "memory-backend-ram", "memfd": "memory-backend-memfd",
             "file": "memory-backend-file"}



def _whole_mib(size: int) -> int:
    return -(-size // MIB) * MIB


@dataclass
class Backing:
    """What ``<memoryBacking>`` asks of every RAM backend."""

    source: str = "anonymous"
    share: bool | None = None
    prealloc: bool = False
    discard: bool = False
    given: bool = False

    def backend(self, name: str, size: int, runtime_folder: str, share: bool | None,
                numa: bool) -> dict[str, object]:
        source = self.source
        if source == "anonymous" and (share or self.discard):
            source = "file"  # as libvirt: shared or discardable RAM needs a file
        backend: dict[str, object] = {"qom-type": _BACKENDS[source], "id": name}
        if source == "file":
            backend["mem-path"] = f"{runtime_folder}/{name}"
        if share is not None:
            backend["share"] = share
        if source != "anonymous" and not numa:
            backend["x-use-canonical-path-for-ramblock-id"] = False
        if self.prealloc:
            backend["prealloc"] = True
        if self.discard:
            backend["discard-data"] = True
        backend["size"] = size
        return backend


@dataclass
class GuestMemory:
    """``-m``'s value, the machine options and the other arguments guest RAM needs."""

    size: str
    machine: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)


def _backing(root: etree._Element, out: GuestMemory) -> Backing:
    node = root.find("memoryBacking")
    backing = Backing(given=node is not None)
    for child in node if node is not None else ():
        if not isinstance(child.tag, str):
            continue
        if child.tag == "source":
            backing.source = child.get("type", "anonymous")
        elif child.tag == "access":
            backing.share = child.get("mode") == "shared"
        elif child.tag == "allocation":
            if child.get("threads") is not None:
                raise refuse("<memoryBacking><allocation threads=>", "not supported")
            backing.prealloc = child.get("mode") == "immediate"
        elif child.tag == "locked":
            out.args += ["-overcommit", "mem-lock=on"]
        elif child.tag == "nosharepages":
            out.machine.append("mem-merge=off")
        elif child.tag == "discard":
            backing.discard = True
        else:
            raise refuse(f"<memoryBacking><{child.tag}>", "not supported by qsnap's launcher "
                         "(huge pages need hugetlbfs, which this host does not set up)")
    if backing.source not in _BACKENDS:
        raise refuse(f"<memoryBacking><source type='{backing.source}'>",
                     "use anonymous, memfd or file")
    return backing


def _cpu_ranges(text: str) -> list[str]:
    """libvirt's cpuset (``0-3,8-11``) as QEMU's ``cpus=`` ranges; ``^N`` exclusions are
    refused."""
    if "^" in text:
        raise refuse(f"<cell cpus='{text}'>", "exclusions are not supported")
    return [part.strip() for part in text.split(",") if part.strip()]


def _numa(root: etree._Element, backing: Backing, runtime_folder: str,
          out: GuestMemory) -> int | None:
    """NUMA cells as one RAM backend each and ``-numa node``/``dist``; the RAM they add up
    to, or None without cells."""
    numa = root.find("cpu/numa")
    if numa is None:
        return None
    total = 0
    cells = numa.findall("cell")
    for child in numa:
        if isinstance(child.tag, str) and child.tag != "cell":
            raise refuse(f"<cpu><numa><{child.tag}>", "not supported by qsnap's launcher")
    distances: dict[tuple[str, str], str] = {}
    ids: list[str] = []
    legacy = _legacy_numa(root, backing, cells)
    if legacy and backing.prealloc:
        out.args.append("-mem-prealloc")
    for position, cell in enumerate(cells):
        node_id = cell.get("id", str(position))
        ids.append(node_id)
        for key in cell.attrib:
            if str(key) not in ("id", "cpus", "memory", "unit", "memAccess", "discard"):
                raise refuse(f"<cpu><numa><cell {key!s}=>", "not supported by qsnap's "
                             "launcher")
        size = _whole_mib(parse_scaled_integer(cell.get("memory"), cell.get("unit"),
                                               f"<cell id='{node_id}'> memory", default=1024))
        total += size
        share = backing.share if cell.get("memAccess") is None else \
            cell.get("memAccess") == "shared"
        name = f"ram-node{node_id}"
        node = [f"node,nodeid={node_id}"]
        if cell.get("cpus"):
            node += [f"cpus={r}" for r in _cpu_ranges(cell.get("cpus", ""))]
        if legacy:
            out.args += ["-numa", ",".join([*node, f"mem={size // MIB}"])]
        else:
            out.args += ["-object", json.dumps(backing.backend(name, size, runtime_folder,
                                                               share, numa=True))]
            out.args += ["-numa", ",".join([*node, f"memdev={name}"])]
        for child in cell:
            if not isinstance(child.tag, str):
                continue
            if child.tag != "distances":
                raise refuse(f"<cpu><numa><cell><{child.tag}>", "not supported")
            for sibling in child.findall("sibling"):
                distances[(node_id, sibling.get("id", ""))] = sibling.get("value", "")
    if distances:
        # libvirt completes the table: 10 to itself, and each distance both ways.
        for src in ids:
            for dst in ids:
                value = distances.get((src, dst)) or distances.get((dst, src)) or (
                    "10" if src == dst else None)
                if value:
                    out.args += ["-numa", f"dist,src={src},dst={dst},val={value}"]
    return total


def _legacy_numa(root: etree._Element, backing: Backing, cells: list[etree._Element]) -> bool:
    """Whether cells get QEMU's old ``mem=`` instead of a backend each, as libvirt gives them
    on machine types up to 5.0 (the last that take it) when nothing asks for a backend."""
    os_type = root.find("os/type")
    machine = (os_type.get("machine") if os_type is not None else None) or ""
    version = machine.rsplit("-", 1)[-1]
    try:
        major, minor = (int(n) for n in version.split(".")[:2])
    except ValueError:
        return False
    # A discard alone asks for no backend: it matters to file-backed RAM only.
    needs_backend = backing.source != "anonymous" or backing.share is not None or \
        any(c.get("memAccess") for c in cells)
    return (major, minor) <= (5, 0) and not needs_backend


def guest_memory(root: etree._Element, memory_bytes: int, runtime_folder: str) -> GuestMemory:
    """The RAM arguments for a completed definition of *memory_bytes* of RAM (whole MiB)."""
    out = GuestMemory(size="")
    backing = _backing(root, out)
    total = _numa(root, backing, runtime_folder, out)
    if total is None:
        total = memory_bytes
        if backing.given:
            out.machine.append("memory-backend=pc.ram")
            out.args += ["-object", json.dumps(backing.backend(
                "pc.ram", total, runtime_folder, backing.share, numa=False))]
    size = [f"size={total // 1024}k"]
    maximum = root.find("maxMemory")
    if maximum is not None:
        if maximum.get("slots") is not None:
            size.append(f"slots={int(maximum.get('slots', '0'))}")
        limit = parse_scaled_integer(maximum.text, maximum.get("unit"), "<maxMemory>",
                                     default=1024)
        size.append(f"maxmem={limit // 1024}k")
    out.size = ",".join(size)
    return out
