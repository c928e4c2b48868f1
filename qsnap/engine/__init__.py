"""The engine: runs plans against the monitor, the images and the store, in a safe order.
:class:`Engine` is qsnap's public asyncio API."""

from qsnap.engine.engine import DomainInfo, Engine, SnapshotInfo
from qsnap.engine.guest import Guest, GuestInfo

__all__ = ["DomainInfo", "Engine", "Guest", "GuestInfo", "SnapshotInfo"]
