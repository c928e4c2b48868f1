"""qsnap: snapshots of QEMU guests with libvirt's documented semantics, without libvirt.

The public API is :class:`Engine` (asyncio) with the flag types of each operation; errors are
subclasses of :class:`QsnapError`. The ``qsnap`` command is a thin virsh-style layer over it.
"""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:  # the exports, each named once (lazy_exports reads these lines)
    from qsnap.engine import BlockInfo as BlockInfo
    from qsnap.engine import BlockJobInfo as BlockJobInfo
    from qsnap.engine import DomainDetails as DomainDetails
    from qsnap.engine import DomainInfo as DomainInfo
    from qsnap.engine import Engine as Engine
    from qsnap.engine import Guest as Guest
    from qsnap.engine import GuestInfo as GuestInfo
    from qsnap.engine import SnapshotInfo as SnapshotInfo
    from qsnap.errors import AlreadyExistsError as AlreadyExistsError
    from qsnap.errors import CorruptMetadataError as CorruptMetadataError
    from qsnap.errors import DomainBusyError as DomainBusyError
    from qsnap.errors import DomainNotRunningError as DomainNotRunningError
    from qsnap.errors import DomainRunningError as DomainRunningError
    from qsnap.errors import GuestAgentError as GuestAgentError
    from qsnap.errors import GuestExitedError as GuestExitedError
    from qsnap.errors import ImageToolError as ImageToolError
    from qsnap.errors import InvalidArgumentError as InvalidArgumentError
    from qsnap.errors import JobFailedError as JobFailedError
    from qsnap.errors import LaunchError as LaunchError
    from qsnap.errors import MemoryImageError as MemoryImageError
    from qsnap.errors import MonitorClosedError as MonitorClosedError
    from qsnap.errors import MonitorError as MonitorError
    from qsnap.errors import MonitorTimeoutError as MonitorTimeoutError
    from qsnap.errors import NoDomainError as NoDomainError
    from qsnap.errors import NoSnapshotError as NoSnapshotError
    from qsnap.errors import NotFoundError as NotFoundError
    from qsnap.errors import NotSupportedError as NotSupportedError
    from qsnap.errors import OperationAbortedError as OperationAbortedError
    from qsnap.errors import OperationFailedError as OperationFailedError
    from qsnap.errors import OperationIncompleteError as OperationIncompleteError
    from qsnap.errors import OperationInvalidError as OperationInvalidError
    from qsnap.errors import QsnapError as QsnapError
    from qsnap.errors import SaveImageError as SaveImageError
    from qsnap.errors import UsageError as UsageError
    from qsnap.errors import XMLError as XMLError
    from qsnap.launcher.foreign import DiskImage as DiskImage
    from qsnap.launcher.foreign import RelaunchHook as RelaunchHook
    from qsnap.launcher.foreign import RelaunchRequest as RelaunchRequest
    from qsnap.model.snapshot import SnapshotDef as SnapshotDef
    from qsnap.model.snapshot import format_snapshot as format_snapshot
    from qsnap.model.snapshot import parse_snapshot as parse_snapshot
    from qsnap.model.tree import SnapshotSummary as SnapshotSummary
    from qsnap.model.tree import SnapshotTree as SnapshotTree
    from qsnap.plan.create_as import snapshot_xml_from_args as snapshot_xml_from_args
    from qsnap.plan.delete import MetadataDeletePlan as MetadataDeletePlan
    from qsnap.plan.flags import CreateFlags as CreateFlags
    from qsnap.plan.flags import DeleteFlags as DeleteFlags
    from qsnap.plan.flags import ListFilter as ListFilter
    from qsnap.plan.flags import RevertFlags as RevertFlags
    from qsnap.progress import Progress as Progress
    from qsnap.progress import ProgressCallback as ProgressCallback

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)
