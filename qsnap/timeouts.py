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
#: When the running call's waits must be over (time.monotonic()), with a ``timeout=``: a call
#: that waits twice (a lock taken to settle a crash's leftovers, then for its work) waits
#: *timeout* in all, not twice over (issue 28: timeout=0.2 waited 0.53 s).
_CALL_DEADLINE: ContextVar[float | None] = ContextVar("qsnap_call_deadline", default=None)
#: The public operation running (its method's name), for a busy domain's holder to name.
_OPERATION: ContextVar[str | None] = ContextVar("qsnap_operation", default=None)


def call_timeout() -> float | None:
    """The running call's ``timeout=``, or None (use the default)."""
    return _CALL_TIMEOUT.get()


def call_deadline() -> float | None:
    """When the running call's ``timeout=`` runs out (``time.monotonic()``), or None."""
    return _CALL_DEADLINE.get()


def current_operation() -> str | None:
    return _OPERATION.get()


@contextlib.contextmanager
def operation(name: str) -> Iterator[None]:
    """Inside the block, the running public operation is *name* (the outermost one wins)."""
    if _OPERATION.get() is not None:
        yield
        return
    token = _OPERATION.set(name)
    try:
        yield
    finally:
        _OPERATION.reset(token)


@contextlib.contextmanager
def bounded(timeout: float | None) -> Iterator[None]:
    """Inside the block, waits are bounded by *timeout* seconds (None: the defaults)."""
    if timeout is None:
        yield
        return
    if timeout <= 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, not "
                                   f"{timeout}")
    import time

    token = _CALL_TIMEOUT.set(timeout)
    deadline = _CALL_DEADLINE.set(time.monotonic() + timeout)
    try:
        yield
    finally:
        _CALL_DEADLINE.reset(deadline)
        _CALL_TIMEOUT.reset(token)
