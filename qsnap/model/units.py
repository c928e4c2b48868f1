"""libvirt's scaled integers: a number with an optional ``unit`` attribute (``KiB``, ``MB``...)."""

from __future__ import annotations

from qsnap.errors import XMLError

_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def unit_factor(unit: str | None, where: str, default: int = 1) -> int:
    """Bytes per *unit*: ``b``/``bytes``; ``KB`` is 1000, ``k``/``KiB`` 1024, as in libvirt."""
    if unit is None or unit == "":
        return default
    lowered = unit.lower()
    if lowered in ("b", "byte", "bytes"):
        return 1
    power = _POWERS.get(lowered[0])
    rest = unit[1:]
    if power is None or rest not in ("", "iB", "B"):
        raise XMLError(f"unknown unit '{unit}' in {where}")
    base = 1000 if rest == "B" else 1024
    return int(base**power)


def parse_scaled_integer(text: str | None, unit: str | None, where: str, default: int = 1) -> int:
    """The value of a scaled-integer element in bytes (or in *default*-sized units)."""
    value = (text or "").strip()
    if not value.isdigit():
        raise XMLError(f"invalid number '{value}' in {where}")
    return int(value) * unit_factor(unit, where, default)
