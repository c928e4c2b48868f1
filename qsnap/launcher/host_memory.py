"""What the host offers guest RAM: hugetlbfs mounts by page size, the default huge page size,
and the host's NUMA nodes. Read where a definition asks for huge pages or a NUMA binding
(libvirt reads the same: /proc/mounts for hugetlbfs_mount, the host's node list for
<numatune>); tests give them, as libvirt's own tests mock them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from qsnap.model.cpuset import parse_cpuset


@dataclass(frozen=True)
class HostMemory:
    #: A hugetlbfs mount point for each page size it serves, in KiB.
    hugepage_mounts: dict[int, str] = field(default_factory=dict)
    #: The kernel's default huge page size in KiB (``Hugepagesize``), 0 if it has none.
    default_hugepage_kib: int = 0
    #: The host's NUMA node numbers.
    numa_nodes: frozenset[int] = frozenset({0})
    #: The size of an ordinary page, in KiB.
    page_kib: int = 4


def _page_size(option: str) -> int:
    """hugetlbfs's ``pagesize=2M`` (or ``1G``, ``2048k``) in KiB."""
    number, unit = option[:-1], option[-1].upper()
    scale = {"K": 1, "M": 1024, "G": 1024 * 1024}
    if unit not in scale or not number.isdigit():
        return int(option) // 1024 if option.isdigit() else 0
    return int(number) * scale[unit]


def read_host_memory() -> HostMemory:
    """Read anew each time (a mount made since counts): a few small files."""
    default = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("Hugepagesize:"):
                    default = int(line.split()[1])
    except OSError:
        pass
    mounts: dict[int, str] = {}
    try:
        with open("/proc/mounts") as table:
            for line in table:
                fields = line.split()
                if len(fields) < 4 or fields[2] != "hugetlbfs":
                    continue
                size = default
                for option in fields[3].split(","):
                    if option.startswith("pagesize="):
                        size = _page_size(option[len("pagesize="):])
                mounts.setdefault(size, fields[1].replace("\\040", " "))
    except OSError:
        pass
    nodes: set[int] = set()
    try:
        with open("/sys/devices/system/node/online") as online:
            nodes = parse_cpuset(online.read().strip())
    except (OSError, ValueError):
        nodes = {0}
    return HostMemory(mounts, default, frozenset(nodes), os.sysconf("SC_PAGE_SIZE") // 1024)
