"""qsnap's loggers: everything logs under ``qsnap``, which has a ``NullHandler``.

A library logs and the application decides where to: without the NullHandler, Python's
last-resort handler would print qsnap's warnings on an embedder's stderr. It is added here,
by the modules that log, rather than by ``import qsnap``, so commands that never log do not
import :mod:`logging` (8 ms here).
"""

from __future__ import annotations

import logging

ROOT = "qsnap"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def logger(name: str = ROOT) -> logging.Logger:
    """The logger *name* (``qsnap`` or below it)."""
    return logging.getLogger(name)
