from __future__ import annotations

import sys
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
