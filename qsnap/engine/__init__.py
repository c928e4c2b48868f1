"""The engine: runs plans against the monitor, the images and the store, in a safe order.
:class:`Engine` is qsnap's public asyncio API."""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:  # the exports, each named once (lazy_exports reads these lines)
    from qsnap.engine.block_jobs import BlockJobInfo as BlockJobInfo
    from qsnap.engine.engine import Engine as Engine
    from qsnap.engine.guest import Guest as Guest
    from qsnap.engine.guest import GuestInfo as GuestInfo
    from qsnap.engine.results import BlockInfo as BlockInfo
    from qsnap.engine.results import DomainDetails as DomainDetails
    from qsnap.engine.results import DomainInfo as DomainInfo
    from qsnap.engine.results import SnapshotInfo as SnapshotInfo

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)
