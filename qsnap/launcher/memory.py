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

from qsnap.errors import NotSupportedError
from qsnap.launcher.host_memory import HostMemory, read_host_memory
from qsnap.launcher.refusal import refuse, refuse_unknown_parts
from qsnap.model.cpuset import parse_cpuset
from qsnap.model.units import parse_scaled_integer

MIB = 1024 * 1024
_BACKENDS = {"anonymous": "memory-backend-ram", "memfd": "memory-backend-memfd",
             "file": "memory-backend-file"}



def _whole_mib(size: int) -> int:
    return -(-size // MIB) * MIB


@dataclass(frozen=True)
class Binding:
    """Where on the host a RAM block's pages must lie (``<numatune>``)."""

    nodes: tuple[int, ...]
    policy: str  # QEMU's: bind, preferred, interleave


@dataclass
class Backing:
    """What ``<memoryBacking>`` asks of every RAM backend."""

    source: str = "anonymous"
    share: bool | None = None
    prealloc: bool = False
    discard: bool = False
    given: bool = False
    #: ``<allocation threads=>``: how many threads allocate the RAM at start.
    prealloc_threads: int | None = None
    #: ``<hugepages><page size= nodeset=>``: (size in KiB, the NUMA cells it is for, or None
    #: for every cell).
    pages: list[tuple[int, set[int] | None]] = field(default_factory=list)
    host: HostMemory = field(default_factory=HostMemory)

    def huge_page(self, cell: int | None) -> int | None:
        """The huge page size (KiB) of cell *cell* (None: the guest's one RAM block), or
        None for ordinary pages (no page names it, or it names the host's ordinary size)."""
        chosen = next((size for size, cells in self.pages
                       if cells is not None and cell is not None and cell in cells), None)
        if chosen is None:
            chosen = next((size for size, cells in self.pages if cells is None), None)
        if chosen is None and cell is None and self.pages:
            chosen = self.pages[0][0]
        if chosen is None or chosen == self.host.page_kib:
            return None
        return chosen

    def backend(self, name: str, size: int, runtime_folder: str, share: bool | None,
                numa: bool, huge_kib: int | None = None,
                binding: Binding | None = None) -> dict[str, object]:
        source = self.source
        if source == "anonymous" and (share or self.discard or huge_kib):
            source = "file"  # as libvirt: shared, discardable or huge-page RAM needs a file
        backend: dict[str, object] = {"qom-type": _BACKENDS[source], "id": name}
        if source == "file":
            backend["mem-path"] = self._hugetlbfs(huge_kib) if huge_kib else \
                f"{runtime_folder}/{name}"
        elif huge_kib:  # memfd
            backend.update(hugetlb=True, hugetlbsize=huge_kib * 1024)
        if share is not None:
            backend["share"] = share
        if source != "anonymous" and not numa:
            backend["x-use-canonical-path-for-ramblock-id"] = False
        if self.prealloc or huge_kib:
            backend["prealloc"] = True  # libvirt preallocates huge pages always
            if self.prealloc_threads:
                backend["prealloc-threads"] = self.prealloc_threads
        if self.discard:
            backend["discard-data"] = True
        backend["size"] = size
        if binding is not None:
            backend.update({"host-nodes": list(binding.nodes), "policy": binding.policy})
        return backend

    def _hugetlbfs(self, size_kib: int) -> str:
        """The hugetlbfs mount serving *size_kib* pages: QEMU makes the guest's RAM file in
        it (and unlinks it at once), as libvirt's per-domain folder there holds it."""
        mount = self.host.hugepage_mounts.get(size_kib)
        if mount is None:
            have = ", ".join(f"{k} KiB at {m}" for k, m in
                             sorted(self.host.hugepage_mounts.items())) or "none"
            raise NotSupportedError(
                f"<memoryBacking><hugepages>: no hugetlbfs of {size_kib} KiB pages is mounted "
                f"on this host (mounted: {have}); mount one (mount -t hugetlbfs -o "
                f"pagesize={size_kib}k none /dev/hugepages) and reserve its pages "
                f"(/sys/kernel/mm/hugepages/hugepages-{size_kib}kB/nr_hugepages)")
        return mount


@dataclass
class GuestMemory:
    """``-m``'s value, the machine options and the other arguments guest RAM needs."""

    size: str
    machine: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)


def _pages(node: etree._Element, host: HostMemory) -> list[tuple[int, set[int] | None]]:
    """``<hugepages>``'s pages; one with no size is the host's default huge page."""
    pages: list[tuple[int, set[int] | None]] = []
    for page in node:
        if not isinstance(page.tag, str):
            continue
        if page.tag != "page":
            raise refuse(f"<hugepages><{page.tag}>", "not supported by qsnap's launcher")
        size = parse_scaled_integer(page.get("size"), page.get("unit"), "<page size=>")
        nodeset = page.get("nodeset")
        try:
            cells = parse_cpuset(nodeset) if nodeset is not None else None
        except ValueError as exc:
            raise NotSupportedError(f"<hugepages><page nodeset=>: {exc}") from None
        pages.append((size // 1024, cells))
    if not pages:
        if not host.default_hugepage_kib:
            raise NotSupportedError("<memoryBacking><hugepages>: this host's kernel has no "
                                    "huge pages (no Hugepagesize in /proc/meminfo)")
        pages.append((host.default_hugepage_kib, None))
    return pages


def _backing(root: etree._Element, out: GuestMemory, host: HostMemory) -> Backing:
    node = root.find("memoryBacking")
    backing = Backing(given=node is not None, host=host)
    for child in node if node is not None else ():
        if not isinstance(child.tag, str):
            continue
        if child.tag == "source":
            backing.source = child.get("type", "anonymous")
        elif child.tag == "access":
            backing.share = child.get("mode") == "shared"
        elif child.tag == "allocation":
            backing.prealloc = child.get("mode") == "immediate"
            if child.get("threads") is not None:
                backing.prealloc_threads = int(child.get("threads", "0"))
        elif child.tag == "locked":
            out.args += ["-overcommit", "mem-lock=on"]
        elif child.tag == "nosharepages":
            out.machine.append("mem-merge=off")
        elif child.tag == "discard":
            backing.discard = True
        elif child.tag == "hugepages":
            backing.pages = _pages(child, host)
        else:
            raise refuse(f"<memoryBacking><{child.tag}>", "not supported by qsnap's launcher")
    if backing.source not in _BACKENDS:
        raise refuse(f"<memoryBacking><source type='{backing.source}'>",
                     "use anonymous, memfd or file")
    return backing


_POLICIES = {"strict": "bind", "preferred": "preferred", "interleave": "interleave"}


@dataclass
class NumaTune:
    """``<numatune>``: the binding of all guest RAM, and of each NUMA cell that has its own."""

    memory: Binding | None = None
    cells: dict[int, Binding] = field(default_factory=dict)

    def of(self, cell: int | None) -> Binding | None:
        return self.cells.get(cell, self.memory) if cell is not None else self.memory


def _binding(node: etree._Element, what: str, host: HostMemory) -> Binding:
    mode = node.get("mode", "strict")
    if mode == "restrictive":
        raise refuse(f"{what} mode='restrictive'", "libvirt applies it through the host's "
                     "cgroups only, which qsnap does not manage")
    if mode not in _POLICIES:
        raise NotSupportedError(f"{what} mode='{mode}' is not a memory mode (use strict, "
                                "preferred or interleave)")
    nodeset = node.get("nodeset")
    if node.get("placement", "static" if nodeset else "auto") == "auto":
        raise refuse(f"{what} placement='auto'", "libvirt asks numad for the nodes, which "
                     "qsnap does not run; give nodeset=")
    try:
        nodes = parse_cpuset(nodeset or "")
    except ValueError as exc:
        raise NotSupportedError(f"{what} nodeset: {exc}") from None
    missing = sorted(nodes - host.numa_nodes)
    if not nodes or missing:
        raise NotSupportedError(f"{what} nodeset='{nodeset}' names NUMA nodes this host "
                                f"lacks ({missing}; it has {sorted(host.numa_nodes)})")
    return Binding(tuple(sorted(nodes)), _POLICIES[mode])


def _numatune(root: etree._Element, host: HostMemory) -> NumaTune:
    tune = NumaTune()
    node = root.find("numatune")
    if node is None:
        return tune
    cells = {int(c.get("id", str(i))) for i, c in enumerate(root.iterfind("cpu/numa/cell"))}
    for child in node:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "memory":
            tune.memory = _binding(child, "<numatune><memory>", host)
        elif child.tag == "memnode":
            cell = int(child.get("cellid", "-1"))
            if cell not in cells:
                raise NotSupportedError(f"<numatune><memnode cellid='{cell}'>: the guest has "
                                        "no such NUMA cell")
            tune.cells[cell] = _binding(child, f"<numatune><memnode cellid='{cell}'>", host)
        else:
            raise refuse(f"<numatune><{child.tag}>", "not supported by qsnap's launcher")
    return tune


def _cpu_ranges(text: str) -> list[str]:
    """libvirt's cpuset (``0-3,8-11``) as QEMU's ``cpus=`` ranges; ``^N`` exclusions are
    refused."""
    if "^" in text:
        raise refuse(f"<cell cpus='{text}'>", "exclusions are not supported")
    return [part.strip() for part in text.split(",") if part.strip()]


def _numa(root: etree._Element, backing: Backing, tune: NumaTune, runtime_folder: str,
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
    legacy = _legacy_numa(root, backing, cells) and not tune.cells and tune.memory is None
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
            cell_id = int(node_id)
            out.args += ["-object", json.dumps(backing.backend(
                name, size, runtime_folder, share, numa=True,
                huge_kib=backing.huge_page(cell_id), binding=tune.of(cell_id)))]
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


#: What a memory module's size is rounded up to on x86, as libvirt aligns it.
_MODULE_ALIGN = 2 * MIB


def _memory_devices(root: etree._Element, backing: Backing, tune: NumaTune,
                    runtime_folder: str, out: GuestMemory) -> None:
    """``<devices><memory model='dimm'|'nvdimm'>``: a RAM backend each (``memdimmN``, or a
    file for an NVDIMM: ``memnvdimmN``) and its ``pc-dimm``/``nvdimm`` device in a slot of
    ``<maxMemory slots=>``, as libvirt builds them (qemuBuildMemoryDeviceProps). They need
    NUMA cells (a module sits in one) and slots, as libvirt requires."""
    modules = root.findall("devices/memory")
    if not modules:
        return
    for module in modules:
        if module.get("model") not in ("dimm", "nvdimm"):
            raise refuse(f"<memory model='{module.get('model')}'>", "qsnap builds DIMM and "
                         "NVDIMM modules (virtio-mem and virtio-pmem are PCI devices it does "
                         "not place)")
        address = module.find("address")
        if address is not None and address.get("type", "dimm") != "dimm":
            raise NotSupportedError(f"<memory model='{module.get('model')}'><address "
                                    f"type='{address.get('type')}'>: a module sits in a DIMM "
                                    "slot (type='dimm')")
    cells = {int(c.get("id", str(i))) for i, c in enumerate(root.iterfind("cpu/numa/cell"))}
    maximum = root.find("maxMemory")
    slots = int(maximum.get("slots", "0")) if maximum is not None else 0
    if not cells:
        raise NotSupportedError("<devices><memory>: a memory module sits in a guest NUMA "
                                "cell, and the domain has none (<cpu><numa>)")
    if not slots:
        raise NotSupportedError("<devices><memory>: memory modules need <maxMemory slots=>")
    taken = {int(a.get("slot", "0")) for m in modules
             if (a := m.find("address")) is not None and a.get("slot") is not None}
    free = (slot for slot in range(slots) if slot not in taken)
    if any(m.get("model") == "nvdimm" for m in modules):
        out.machine.append("nvdimm=on")
    for index, module in enumerate(modules):
        model = module.get("model")
        what = f"<memory model='{model}'>"
        refuse_unknown_parts(module, what, {"source", "target", "address"},
                             {"model", "access", "discard"})
        source, target = module.find("source"), module.find("target")
        if target is None or target.find("size") is None:
            raise NotSupportedError(f"{what} needs <target><size>")
        refuse_unknown_parts(target, f"{what}<target>", {"size", "node"})
        size_node = target.find("size")
        assert size_node is not None
        size = -(-parse_scaled_integer(size_node.text, size_node.get("unit"), f"{what} size",
                                       default=1024) // _MODULE_ALIGN) * _MODULE_ALIGN
        cell = int((target.findtext("node") or "0").strip())
        if cell not in cells:
            raise NotSupportedError(f"{what}: <node>{cell}</node> is not a NUMA cell of the "
                                    "guest")
        address = module.find("address")
        slot = int(address.get("slot", "0")) if address is not None and \
            address.get("slot") is not None else next(free, None)
        if slot is None or slot >= slots:
            raise NotSupportedError(f"{what}: no free slot of the {slots} <maxMemory slots=> "
                                    "gives")
        share = {"shared": True, "private": False}.get(module.get("access", ""))
        if model == "nvdimm":
            path = (source.findtext("path") or "").strip() if source is not None else ""
            if not path:
                raise NotSupportedError(f"{what} needs <source><path>")
            if source is not None:
                refuse_unknown_parts(source, f"{what}<source>", {"path"})
            name = f"memnvdimm{index}"
            backend: dict[str, object] = {"qom-type": "memory-backend-file", "id": name,
                                          "mem-path": path}
            if share is not None:
                backend["share"] = share
            backend.update(prealloc=True, size=size)
            binding = tune.of(None)
            if binding is not None:
                backend.update({"host-nodes": list(binding.nodes), "policy": binding.policy})
            device = "nvdimm"
        else:
            huge = backing.huge_page(cell)
            binding = tune.of(None)
            if source is not None:
                refuse_unknown_parts(source, f"{what}<source>", {"nodemask", "pagesize"})
                page = source.find("pagesize")
                if page is not None:
                    kib = parse_scaled_integer(page.text, page.get("unit"), f"{what} pagesize")
                    huge = kib // 1024 if kib // 1024 != backing.host.page_kib else None
                mask = source.findtext("nodemask")
                if mask is not None:
                    binding = _binding(etree.Element("memory", mode="strict", nodeset=mask),
                                       f"{what}<source><nodemask>", backing.host)
            name = f"memdimm{index}"
            backend = backing.backend(name, size, runtime_folder,
                                      share if share is not None else backing.share,
                                      numa=True, huge_kib=huge, binding=binding)
            device = "pc-dimm"
        props: dict[str, object] = {"driver": device, "node": cell, "memdev": name,
                                    "id": f"{'nvdimm' if model == 'nvdimm' else 'dimm'}{index}",
                                    "slot": slot}
        if address is not None and address.get("base") is not None:
            props["addr"] = int(address.get("base", "0"), 0)
        out.args += ["-object", json.dumps(backend), "-device", json.dumps(props)]


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
        any(c.get("memAccess") for c in cells) or bool(backing.pages)
    return (major, minor) <= (5, 0) and not needs_backend


def guest_memory(root: etree._Element, memory_bytes: int, runtime_folder: str,
                 host: HostMemory | None = None) -> GuestMemory:
    """The RAM arguments for a completed definition of *memory_bytes* of RAM (whole MiB).
    *host* is what this host offers (hugetlbfs mounts, NUMA nodes): read from the host
    where the definition asks for either."""
    out = GuestMemory(size="")
    if host is None:
        wants_host = root.find("memoryBacking/hugepages") is not None or \
            root.find("numatune") is not None
        host = read_host_memory() if wants_host else HostMemory()
    backing = _backing(root, out, host)
    tune = _numatune(root, host)
    total = _numa(root, backing, tune, runtime_folder, out)
    _memory_devices(root, backing, tune, runtime_folder, out)
    if total is None:
        total = memory_bytes
        binding = tune.of(None)
        if backing.given or binding is not None:
            out.machine.append("memory-backend=pc.ram")
            out.args += ["-object", json.dumps(backing.backend(
                "pc.ram", total, runtime_folder, backing.share, numa=False,
                huge_kib=backing.huge_page(None), binding=binding))]
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
