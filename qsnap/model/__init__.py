"""Pure data model: snapshot and domain definitions, parsed and formatted with lxml. No I/O."""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:  # the exports, each named once (lazy_exports reads these lines)
    from qsnap.model.domain import DomainDef as DomainDef
    from qsnap.model.domain import DomainDisk as DomainDisk
    from qsnap.model.domain import parse_domain as parse_domain
    from qsnap.model.domain import parse_domain_element as parse_domain_element
    from qsnap.model.snapshot import DiskSource as DiskSource
    from qsnap.model.snapshot import Host as Host
    from qsnap.model.snapshot import Seclabel as Seclabel
    from qsnap.model.snapshot import SnapshotDef as SnapshotDef
    from qsnap.model.snapshot import SnapshotDisk as SnapshotDisk
    from qsnap.model.snapshot import format_snapshot as format_snapshot
    from qsnap.model.snapshot import parse_snapshot as parse_snapshot

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)
