"""qsnap: snapshots of QEMU guests with libvirt's documented semantics, without libvirt.

The public API is :class:`Engine` (asyncio) with the flag types of each operation; errors are
subclasses of :class:`QsnapError`. The ``qsnap`` command is a thin virsh-style layer over it.
"""

from qsnap.engine import DomainInfo, Engine, SnapshotInfo
from qsnap.errors import (
    AlreadyExistsError,
    CorruptMetadataError,
    DomainNotRunningError,
    DomainRunningError,
    InvalidArgumentError,
    NoDomainError,
    NoSnapshotError,
    NotFoundError,
    NotSupportedError,
    OperationIncompleteError,
    OperationInvalidError,
    QsnapError,
    XMLError,
)
from qsnap.model.snapshot import SnapshotDef, format_snapshot, parse_snapshot
from qsnap.model.tree import SnapshotSummary, SnapshotTree
from qsnap.plan.create_as import snapshot_xml_from_args
from qsnap.plan.delete import MetadataDeletePlan
from qsnap.plan.flags import CreateFlags, DeleteFlags, ListFilter, RevertFlags
from qsnap.progress import Progress, ProgressCallback

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "CorruptMetadataError",
    "CreateFlags",
    "DeleteFlags",
    "DomainInfo",
    "DomainNotRunningError",
    "DomainRunningError",
    "Engine",
    "InvalidArgumentError",
    "ListFilter",
    "MetadataDeletePlan",
    "NoDomainError",
    "NoSnapshotError",
    "NotFoundError",
    "NotSupportedError",
    "OperationIncompleteError",
    "OperationInvalidError",
    "Progress",
    "ProgressCallback",
    "QsnapError",
    "RevertFlags",
    "SnapshotDef",
    "SnapshotInfo",
    "SnapshotSummary",
    "SnapshotTree",
    "XMLError",
    "format_snapshot",
    "parse_snapshot",
    "snapshot_xml_from_args",
]
