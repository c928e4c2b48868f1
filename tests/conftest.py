from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import conformance_dir


@pytest.fixture
def conformance() -> Path:
    return conformance_dir()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("QSNAP_STATE_DIR", str(path))
    return path


def _qsnap_guests() -> set[int]:
    """QEMU processes launched by qsnap (their QMP socket is in a qsnap runtime folder)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and (b"/qsnap-" in cmdline or b"/qsnap/" in cmdline):
            pids.add(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def no_leaked_guests() -> Iterator[None]:
    """A test must stop every guest it starts; any it leaves is killed here, and reported."""
    before = _qsnap_guests()
    yield
    leaked = _qsnap_guests() - before
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    if leaked:
        warnings.warn(f"test left {len(leaked)} QEMU guest(s) running; killed", stacklevel=1)
