"""The one error the launcher gives for what it cannot start: the element, why, and that the
definition keeps it (nothing is dropped from a guest silently)."""

from __future__ import annotations

from qsnap.errors import NotSupportedError


def refuse(what: str, why: str) -> NotSupportedError:
    return NotSupportedError(f"{what}: {why}; qsnap keeps it in the definition but cannot start "
                             "it (docs/domain-xml.md lists what starts)")
