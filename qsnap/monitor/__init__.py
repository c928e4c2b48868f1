"""The QMP layer: the only code in qsnap that talks to QEMU's monitor."""

from qsnap.errors import MonitorClosedError, MonitorError, MonitorTimeoutError
from qsnap.monitor.channel import StreamChannel
from qsnap.monitor.client import (
    BlockDevice,
    Monitor,
    OverlaySwitch,
    PauseClock,
    forget_connection,
    one_connection_per_qemu,
    share_connection,
    unshare_connection,
)

__all__ = [
    "BlockDevice",
    "Monitor",
    "MonitorClosedError",
    "MonitorError",
    "MonitorTimeoutError",
    "OverlaySwitch",
    "PauseClock",
    "StreamChannel",
    "forget_connection",
    "one_connection_per_qemu",
    "share_connection",
    "unshare_connection",
]
