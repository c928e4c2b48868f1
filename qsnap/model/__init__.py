"""Pure data model: snapshot and domain definitions, parsed and formatted with lxml. No I/O."""

from qsnap.model.domain import DomainDef, DomainDisk, parse_domain, parse_domain_element
from qsnap.model.snapshot import (
    DiskSource,
    Host,
    Seclabel,
    SnapshotDef,
    SnapshotDisk,
    format_snapshot,
    parse_snapshot,
)

__all__ = [
    "DiskSource",
    "DomainDef",
    "DomainDisk",
    "Host",
    "Seclabel",
    "SnapshotDef",
    "SnapshotDisk",
    "format_snapshot",
    "parse_domain",
    "parse_domain_element",
    "parse_snapshot",
]
