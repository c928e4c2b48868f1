"""Pure data model: snapshot and domain definitions, parsed and formatted with lxml. No I/O."""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.model.domain import (
        DomainDef,
        DomainDisk,
        parse_domain,
        parse_domain_element,
    )
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

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, {
        "DomainDef": "qsnap.model.domain",
        "DomainDisk": "qsnap.model.domain",
        "parse_domain": "qsnap.model.domain",
        "parse_domain_element": "qsnap.model.domain",
        "DiskSource": "qsnap.model.snapshot",
        "Host": "qsnap.model.snapshot",
        "Seclabel": "qsnap.model.snapshot",
        "SnapshotDef": "qsnap.model.snapshot",
        "SnapshotDisk": "qsnap.model.snapshot",
        "format_snapshot": "qsnap.model.snapshot",
        "parse_snapshot": "qsnap.model.snapshot",
    })
