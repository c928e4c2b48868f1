"""The decorator every public :class:`~qsnap.Engine` operation wears."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from qsnap.errors import QsnapError
from qsnap.monitor import one_connection_per_qemu
from qsnap.timeouts import bounded, operation

T = TypeVar("T")
P = ParamSpec("P")


def public_operation(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """It first awaits its engine's ``ready()`` (the imports, off the event loop). Its
    ``timeout=`` keyword bounds its waits (:mod:`qsnap.timeouts`), and it talks to
    each QEMU over one connection at most. An error it raises names the domain and snapshot
    the call was about where the code that raised it did not (an embedder branches on
    ``exc.domain`` and ``exc.snapshot``, issue 28)."""
    code = method.__code__
    names = code.co_varnames[:code.co_argcount]
    where: dict[str, int] = {key: names.index(key) for key in ("domain", "snapshot")
                             if key in names}

    def subject(key: str, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
        if key in kwargs:
            return kwargs[key]
        index = where.get(key)
        return args[index] if index is not None and index < len(args) else None

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        timeout = kwargs.get("timeout")
        ready = getattr(args[0], "ready", None) if args else None
        if ready is not None:  # the engine's modules, imported off the loop (Engine.ready)
            await ready()
        try:
            with bounded(timeout if isinstance(timeout, int | float) else None), \
                    operation(method.__name__):
                async with one_connection_per_qemu():
                    return await method(*args, **kwargs)
        except QsnapError as exc:
            for key in where:
                value = subject(key, args, kwargs)
                if getattr(exc, key) is None and isinstance(value, str):
                    setattr(exc, key, value)
            raise

    return call
