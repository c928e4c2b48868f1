"""The engine: runs plans against the monitor, the images and the store, in a safe order.
:class:`Engine` is qsnap's public asyncio API."""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.engine.block_jobs import BlockJobInfo
    from qsnap.engine.engine import Engine
    from qsnap.engine.guest import Guest, GuestInfo
    from qsnap.engine.results import BlockInfo, DomainDetails, DomainInfo, SnapshotInfo

__all__ = [
    "BlockInfo",
    "BlockJobInfo",
    "DomainDetails",
    "DomainInfo",
    "Engine",
    "Guest",
    "GuestInfo",
    "SnapshotInfo",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, {
        "BlockInfo": "qsnap.engine.results",
        "BlockJobInfo": "qsnap.engine.block_jobs",
        "DomainDetails": "qsnap.engine.results",
        "DomainInfo": "qsnap.engine.results",
        "Engine": "qsnap.engine.engine",
        "SnapshotInfo": "qsnap.engine.results",
        "Guest": "qsnap.engine.guest",
        "GuestInfo": "qsnap.engine.guest",
    })
