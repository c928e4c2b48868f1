"""qsnap: snapshots of QEMU guests with libvirt's documented semantics, without libvirt.

The public API is :class:`Engine` (asyncio) with the flag types of each operation; errors are
subclasses of :class:`QsnapError`. The ``qsnap`` command is a thin virsh-style layer over it.
"""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.engine import (
        BlockInfo,
        BlockJobInfo,
        DomainDetails,
        DomainInfo,
        Engine,
        Guest,
        GuestInfo,
        SnapshotInfo,
    )
    from qsnap.errors import (
        AlreadyExistsError,
        CorruptMetadataError,
        DomainBusyError,
        DomainNotRunningError,
        DomainRunningError,
        GuestAgentError,
        GuestExitedError,
        ImageToolError,
        InvalidArgumentError,
        JobFailedError,
        LaunchError,
        MemoryImageError,
        MonitorClosedError,
        MonitorError,
        MonitorTimeoutError,
        NoDomainError,
        NoSnapshotError,
        NotFoundError,
        NotSupportedError,
        OperationAbortedError,
        OperationFailedError,
        OperationIncompleteError,
        OperationInvalidError,
        QsnapError,
        SaveImageError,
        XMLError,
    )
    from qsnap.launcher.foreign import (
        DiskImage,
        RelaunchHook,
        RelaunchRequest,
    )
    from qsnap.model.snapshot import (
        SnapshotDef,
        format_snapshot,
        parse_snapshot,
    )
    from qsnap.model.tree import (
        SnapshotSummary,
        SnapshotTree,
    )
    from qsnap.plan.create_as import (
        snapshot_xml_from_args,
    )
    from qsnap.plan.delete import (
        MetadataDeletePlan,
    )
    from qsnap.plan.flags import (
        CreateFlags,
        DeleteFlags,
        ListFilter,
        RevertFlags,
    )
    from qsnap.progress import (
        Progress,
        ProgressCallback,
    )

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "BlockInfo",
    "BlockJobInfo",
    "CorruptMetadataError",
    "CreateFlags",
    "DeleteFlags",
    "DiskImage",
    "DomainBusyError",
    "DomainDetails",
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
    "JobFailedError",
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
    "OperationAbortedError",
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

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, {
        "BlockInfo": "qsnap.engine",
        "BlockJobInfo": "qsnap.engine",
        "DomainDetails": "qsnap.engine",
        "DomainInfo": "qsnap.engine",
        "Engine": "qsnap.engine",
        "Guest": "qsnap.engine",
        "GuestInfo": "qsnap.engine",
        "SnapshotInfo": "qsnap.engine",
        "AlreadyExistsError": "qsnap.errors",
        "CorruptMetadataError": "qsnap.errors",
        "DomainBusyError": "qsnap.errors",
        "DomainNotRunningError": "qsnap.errors",
        "DomainRunningError": "qsnap.errors",
        "GuestAgentError": "qsnap.errors",
        "GuestExitedError": "qsnap.errors",
        "ImageToolError": "qsnap.errors",
        "InvalidArgumentError": "qsnap.errors",
        "JobFailedError": "qsnap.errors",
        "LaunchError": "qsnap.errors",
        "MemoryImageError": "qsnap.errors",
        "MonitorClosedError": "qsnap.errors",
        "MonitorError": "qsnap.errors",
        "MonitorTimeoutError": "qsnap.errors",
        "NoDomainError": "qsnap.errors",
        "NoSnapshotError": "qsnap.errors",
        "NotFoundError": "qsnap.errors",
        "NotSupportedError": "qsnap.errors",
        "OperationAbortedError": "qsnap.errors",
        "OperationFailedError": "qsnap.errors",
        "OperationIncompleteError": "qsnap.errors",
        "OperationInvalidError": "qsnap.errors",
        "QsnapError": "qsnap.errors",
        "SaveImageError": "qsnap.errors",
        "XMLError": "qsnap.errors",
        "DiskImage": "qsnap.launcher.foreign",
        "RelaunchHook": "qsnap.launcher.foreign",
        "RelaunchRequest": "qsnap.launcher.foreign",
        "SnapshotDef": "qsnap.model.snapshot",
        "format_snapshot": "qsnap.model.snapshot",
        "parse_snapshot": "qsnap.model.snapshot",
        "SnapshotSummary": "qsnap.model.tree",
        "SnapshotTree": "qsnap.model.tree",
        "snapshot_xml_from_args": "qsnap.plan.create_as",
        "MetadataDeletePlan": "qsnap.plan.delete",
        "CreateFlags": "qsnap.plan.flags",
        "DeleteFlags": "qsnap.plan.flags",
        "ListFilter": "qsnap.plan.flags",
        "RevertFlags": "qsnap.plan.flags",
        "Progress": "qsnap.progress",
        "ProgressCallback": "qsnap.progress",
    })
