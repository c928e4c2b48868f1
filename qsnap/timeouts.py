"""The per-call ``timeout=`` of the API, seen by the layers that wait.

Every :class:`qsnap.Engine` operation takes ``timeout=``: how long it waits for what is not
its own work, namely the domain's lock (held by another call or process) and each answer from
QEMU's monitor. The environment variables (``QSNAP_LOCK_TIMEOUT``, ``QSNAP_QMP_TIMEOUT``)
stay the defaults. A context variable carries it, so it reaches the monitor and the lock
through every layer, and tasks an operation starts, without a parameter on each function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from qsnap.errors import InvalidArgumentError

_CALL_TIMEOUT: ContextVar[float | None] = ContextVar("qsnap_call_timeout", default=None)


def call_timeout() -> float | None:
    """The running call's ``timeout=``, or None (use the default)."""
    return _CALL_TIMEOUT.get()


@contextlib.contextmanager
def bounded(timeout: float | None) -> Iterator[None]:
    """Inside the block, waits are bounded by *timeout* seconds (None: the defaults)."""
    if timeout is None:
        yield
        return
    if timeout <= 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, not "
                                   f"{timeout}")
    token = _CALL_TIMEOUT.set(timeout)
    try:
        yield
    finally:
        _CALL_TIMEOUT.reset(token)
