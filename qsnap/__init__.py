"""qsnap: snapshots of QEMU guests with libvirt's documented semantics, without libvirt.

The public API is :class:`Engine` (asyncio) with the flag types of each operation; errors are
subclasses of :class:`QsnapError`. The ``qsnap`` command is a thin virsh-style layer over it.
"""

import logging

from qsnap.engine import DomainInfo, Engine, Guest, GuestInfo, SnapshotInfo
from qsnap.errors import (
    AlreadyExistsError,
    CorruptMetadataError,
    DomainNotRunningError,
    DomainRunningError,
    GuestAgentError,
    GuestExitedError,
    ImageToolError,
    InvalidArgumentError,
    LaunchError,
    MemoryImageError,
    MonitorClosedError,
    MonitorError,
    MonitorTimeoutError,
    NoDomainError,
    NoSnapshotError,
    NotFoundError,
    NotSupportedError,
    OperationFailedError,
    OperationIncompleteError,
    OperationInvalidError,
    QsnapError,
    SaveImageError,
    XMLError,
)
from qsnap.launcher.foreign import DiskImage, RelaunchHook, RelaunchRequest
from qsnap.model.snapshot import SnapshotDef, format_snapshot, parse_snapshot
from qsnap.model.tree import SnapshotSummary, SnapshotTree
from qsnap.plan.create_as import snapshot_xml_from_args
from qsnap.plan.delete import MetadataDeletePlan
from qsnap.plan.flags import CreateFlags, DeleteFlags, ListFilter, RevertFlags
from qsnap.progress import Progress, ProgressCallback

__version__ = "0.1.0"

# A library logs, the application decides where to: without this, Python's last-resort handler
# would print qsnap's warnings on an embedder's stderr.
logging.getLogger("qsnap").addHandler(logging.NullHandler())

__all__ = [
    "AlreadyExistsError",
    "CorruptMetadataError",
    "CreateFlags",
    "DeleteFlags",
    "DiskImage",
    "DomainInfo",
    "DomainNotRunningError",
    "DomainRunningError",
    "Engine",
    "Guest",
    "GuestAgentError",
    "GuestExitedError",
    "GuestInfo",
    "ImageToolError",
    "InvalidArgumentError",
    "LaunchError",
    "ListFilter",
    "MemoryImageError",
    "MetadataDeletePlan",
    "MonitorClosedError",
    "MonitorError",
    "MonitorTimeoutError",
    "NoDomainError",
    "NoSnapshotError",
    "NotFoundError",
    "NotSupportedError",
    "OperationFailedError",
    "OperationIncompleteError",
    "OperationInvalidError",
    "Progress",
    "ProgressCallback",
    "QsnapError",
    "RelaunchHook",
    "RelaunchRequest",
    "RevertFlags",
    "SaveImageError",
    "SnapshotDef",
    "SnapshotInfo",
    "SnapshotSummary",
    "SnapshotTree",
    "XMLError",
    "format_snapshot",
    "parse_snapshot",
    "snapshot_xml_from_args",
]
