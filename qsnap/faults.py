"""Crash points: a test hook that kills the process between two steps of a multi-step write.

Crash-safety claims are only worth what their tests show, and a test can only show them if it can
stop qsnap at every step boundary. Code calls :func:`crash_point` at each boundary. Normally that
costs one dictionary lookup. With ``QSNAP_CRASH_AT=K`` in the environment, the K-th crash point the
process passes ends it at once with ``os._exit(CRASH_EXIT)`` (no cleanup, no flush), as a power cut
or ``kill -9`` would. ``QSNAP_CRASH_TRACE=FILE`` appends each point's label to FILE, so a test can
count the points of an operation and then crash at each one in turn.
"""

from __future__ import annotations

import os

CRASH_EXIT = 86
_passed = 0


def crash_point(label: str) -> None:
    """Mark a step boundary named *label* (see the module docstring)."""
    global _passed
    target = os.environ.get("QSNAP_CRASH_AT")
    trace = os.environ.get("QSNAP_CRASH_TRACE")
    if target is None and trace is None:
        return
    _passed += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as out:
            out.write(label + "\n")
    if target is not None and target.isdigit() and int(target) == _passed:
        os._exit(CRASH_EXIT)
