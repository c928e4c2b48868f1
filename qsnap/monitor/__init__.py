"""The QMP layer: the only code in qsnap that talks to QEMU's monitor."""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.errors import (
        MonitorClosedError,
        MonitorError,
        MonitorTimeoutError,
    )
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

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, {
        "MonitorClosedError": "qsnap.errors",
        "MonitorError": "qsnap.errors",
        "MonitorTimeoutError": "qsnap.errors",
        "StreamChannel": "qsnap.monitor.channel",
        "BlockDevice": "qsnap.monitor.client",
        "Monitor": "qsnap.monitor.client",
        "OverlaySwitch": "qsnap.monitor.client",
        "PauseClock": "qsnap.monitor.client",
        "forget_connection": "qsnap.monitor.client",
        "one_connection_per_qemu": "qsnap.monitor.client",
        "share_connection": "qsnap.monitor.client",
        "unshare_connection": "qsnap.monitor.client",
    })
