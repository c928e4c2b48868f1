"""The QMP layer: the only code in qsnap that talks to QEMU's monitor."""


from qsnap.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:  # the exports, each named once (lazy_exports reads these lines)
    from qsnap.errors import MonitorClosedError as MonitorClosedError
    from qsnap.errors import MonitorError as MonitorError
    from qsnap.errors import MonitorTimeoutError as MonitorTimeoutError
    from qsnap.monitor.channel import StreamChannel as StreamChannel
    from qsnap.monitor.client import BlockDevice as BlockDevice
    from qsnap.monitor.client import Monitor as Monitor
    from qsnap.monitor.client import OverlaySwitch as OverlaySwitch
    from qsnap.monitor.client import PauseClock as PauseClock
    from qsnap.monitor.client import forget_connection as forget_connection
    from qsnap.monitor.client import one_connection_per_qemu as one_connection_per_qemu
    from qsnap.monitor.client import share_connection as share_connection
    from qsnap.monitor.client import unshare_connection as unshare_connection

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)
