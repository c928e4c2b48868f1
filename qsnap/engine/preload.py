"""Every module an operation may use, imported in a worker thread before the first one runs.

qsnap imports an operation's code when it is first used, so that a command loads only what
it needs. In an embedder's long-running event loop that first use would hold the loop for
the imports: 116 ms for a first create, 36 ms for a first revert, 27 ms for a first save
(measured with tests/loop_watch.py on QEMU 7.2). :meth:`qsnap.Engine.ready` imports them all
in a worker thread instead, once per process, and every operation awaits it first; the
command line, which runs one operation per process, does not (``Engine(preload=False)``).
"""

from __future__ import annotations

import asyncio
import importlib

import qsnap

_done = False


def _import_all() -> None:
    import pkgutil  # here, in the worker thread: its own import is milliseconds too

    for module in pkgutil.walk_packages(qsnap.__path__, "qsnap."):
        if not module.name.startswith("qsnap.cli"):
            importlib.import_module(module.name)


async def preload() -> None:
    """Import every module of qsnap's but the command line's, in a worker thread."""
    global _done
    if not _done:
        await asyncio.to_thread(_import_all)
        _done = True
