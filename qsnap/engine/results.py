"""What the engine's read calls return about domains and snapshots (public dataclasses).

Kept apart from :mod:`qsnap.engine.reader` so that commands which return neither (``domstate``,
``snapshot-current``) do not pay for the dataclasses module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str | None
    state: str


@dataclass(frozen=True)
class SnapshotInfo:
    """What ``snapshot-info`` shows."""

    name: str
    domain: str
    current: bool
    state: str
    location: str
    parent: str | None
    children: int
    descendants: int
    metadata: bool = True
    #: For full-system snapshots qsnap took: how the memory was captured and the guest's pause.
    memory_capture: str | None = None


@dataclass(frozen=True)
class DomainDetails:
    """What ``dominfo`` shows. *cpu_time* (seconds of host CPU) only while QEMU runs."""

    name: str
    uuid: str | None
    os_type: str
    state: str
    vcpus: int
    cpu_time: float | None
    max_memory_kib: int
    used_memory_kib: int
    persistent: bool
    managed_save: bool


@dataclass(frozen=True)
class BlockInfo:
    """What ``domblkinfo`` shows of one disk, in bytes."""

    target: str
    capacity: int
    allocation: int
    physical: int
