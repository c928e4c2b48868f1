"""What /proc says of a process: whether it runs, and when it started (which tells a reused
pid apart from the process that once had it).

A module of its own at the bottom of the package, with nothing but the standard library, so
that every layer (the job board's readers, the launcher, the monitor's per-QEMU caches) asks
the same question the same way.
"""

from __future__ import annotations

import re


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and
    parentheses, so the line is split at its last ')'); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """True while *pid* runs and is not a zombie; with *marker*, its command line must contain
    it (so a recycled pid is not mistaken for our QEMU)."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    if marker is None:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return marker.encode() in cmdline.read()
    except OSError:
        return False


def start_time(pid: int) -> str | None:
    """When *pid* started, in clock ticks since boot (field 22 of /proc/PID/stat), as text;
    None when there is no such process. A pid and its start time name one process for good."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def same_process(pid: int, started: str | None) -> bool:
    """Whether *pid* is still the live process that had start time *started*."""
    return started is not None and start_time(pid) == started and pid_alive(pid)


def generation_id(pid: int) -> str | None:
    """The VM generation ID on *pid*'s command line (``vmgenid``'s ``guid``, in qsnap's JSON
    ``-device`` or a launcher's ``vmgenid,guid=...``); None without one. A revert or restore
    starts QEMU with a new one, which the definition on disk does not hold."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    for word in words:
        if "vmgenid" in word:
            found = re.search(r'guid["=:\s]+"?([0-9a-fA-F-]{36})', word)
            if found:
                return found.group(1)
    return None
