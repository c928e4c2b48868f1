"""The QMP layer: the only code in qsnap that talks to QEMU's monitor."""

from qsnap.monitor.client import (
    Monitor,
    MonitorClosedError,
    MonitorError,
    MonitorTimeoutError,
    PauseClock,
)

__all__ = ["Monitor", "MonitorClosedError", "MonitorError", "MonitorTimeoutError", "PauseClock"]
