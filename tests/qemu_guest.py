"""Booting the tiny guest (fixtures/guest.py) under real QEMU for integration tests."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import time
from pathlib import Path
from types import ModuleType

import pytest
from helpers import REPO


def guest_module() -> ModuleType:
    """fixtures/guest.py, imported by path (it is a standalone script, not a package)."""
    spec = importlib.util.spec_from_file_location("qsnap_fixture_guest",
                                                  REPO / "fixtures" / "guest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_qemu() -> None:
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "qemu-io") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: scripts/test installs Debian's "
                    "qemu-system-x86 and qemu-utils when it can (as root)")


async def wait_for_counter(serial: Path, above: int, timeout: float = 60.0) -> int:
    """Wait until the guest's serial counter passes *above*; return it."""
    guest = guest_module()
    deadline = time.monotonic() + timeout
    while True:
        value = guest.last_serial_counter(serial) or 0
        if value > above:
            return value
        if time.monotonic() > deadline:
            tail = serial.read_bytes()[-300:] if serial.exists() else b"(no serial output)"
            raise AssertionError(f"guest counter stuck at {value} (wanted > {above}): {tail!r}")
        await asyncio.sleep(0.1)


#: The guest writes its counter to each disk in turn every 5 ticks.
WRITE_ROUND = 5


def assert_one_moment(counters: list[int | None]) -> int:
    """Counters read from images switched at one instant: the guest writes vda, vdb, ... in turn,
    so a single cut may fall between two of those writes. A consistent cut is therefore
    non-increasing in disk order and at most one write round apart; switching disks at
    different moments would break one or the other. Returns the first disk's counter."""
    assert all(c is not None for c in counters), counters
    values = [c for c in counters if c is not None]
    assert values == sorted(values, reverse=True), f"not one moment: {values}"
    assert values[0] - values[-1] <= WRITE_ROUND, f"not one moment: {values}"
    return values[0]


async def started_guest(tmp_path: Path, disks: int) -> tuple[object, Path]:
    """A defined and started tiny guest "g" under tmp_path/state; returns (engine, its folder)
    once it counts."""
    from qsnap import Engine
    require_qemu()
    engine = Engine(tmp_path / "state")
    xml = guest_module().make_guest("g", disks, 128, tmp_path / "g")
    await engine.define(xml.read_text())
    await engine.start("g")
    try:
        await wait_for_counter(tmp_path / "g" / "serial.log", 10)
    except BaseException:
        await engine.destroy("g")
        raise
    return engine, tmp_path / "g"
