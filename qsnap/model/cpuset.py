"""libvirt's sets of numbers (CPUs, NUMA nodes): ``0-3,8,^2``."""

from __future__ import annotations


def parse_cpuset(text: str) -> set[int]:
    """The numbers ``0-3,8-11,^9`` names (ranges and single numbers, then exclusions, as
    virBitmapParse reads them); ValueError on anything else."""
    wanted: set[int] = set()
    excluded: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        into = wanted
        if part.startswith("^"):
            into, part = excluded, part[1:]
        low, dash, high = part.partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ValueError(f"'{text}' is not a set of numbers (like 0-3,8,^2)")
        first = int(low)
        last = int(high) if dash else first
        if last < first:
            raise ValueError(f"'{text}': the range {part} runs backwards")
        into.update(range(first, last + 1))
    return wanted - excluded
