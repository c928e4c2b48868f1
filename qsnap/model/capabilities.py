"""What a QEMU offers, as plans see it: its version and the QMP commands its schema lists."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QemuCapabilities:
    """Probed once per connection (``query-version``, ``query-qmp-schema``)."""

    version: tuple[int, int, int] = (0, 0, 0)
    commands: frozenset[str] = field(default_factory=frozenset)
    events: frozenset[str] = field(default_factory=frozenset)

    def has(self, command: str) -> bool:
        return command in self.commands

    def at_least(self, major: int, minor: int = 0) -> bool:
        return self.version[:2] >= (major, minor)


@dataclass(frozen=True)
class StreamSupport:
    """How a QEMU moves migration streams to and from files (probed, see
    :meth:`qsnap.monitor.Monitor.stream_support`)."""

    mapped_ram: bool = False  # mapped-ram + multifd over file: (9.0+): the "sparse" format
    direct_io: bool = False   # the direct-io parameter for mapped-ram (9.1+)
    background: bool = False  # the background-snapshot capability
