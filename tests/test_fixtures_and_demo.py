"""The bundled fixtures are valid libvirt XML, and the README's demo command runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from lxml import etree

FIXTURES = REPO / "fixtures" / "demo"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("snapshots/*.xml")), ids=lambda p: p.name)
def test_demo_snapshots_are_valid_for_libvirt(conformance: Path, path: Path) -> None:
    rng = etree.RelaxNG(etree.parse(str(conformance / "schemas" / "domainsnapshot.rng")))
    assert rng.validate(etree.parse(str(path))), rng.error_log


def test_demo_guest_is_valid_for_libvirt(conformance: Path) -> None:
    rng = etree.RelaxNG(etree.parse(str(conformance / "schemas" / "domain.rng")))
    assert rng.validate(etree.parse(str(FIXTURES / "guest.xml"))), rng.error_log


def test_demo_runs(tmp_path: Path) -> None:
    env = {**os.environ, "QSNAP_SKIP_SETUP": "1", "TMPDIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo")], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Snapshot experiment-a set as current" in result.stdout
    assert "every metadata file is byte-for-byte unchanged" in result.stdout
    assert "error: parent experiment-b would create cycle to installed" in result.stderr
