"""The bundled fixtures are valid libvirt XML, and the README's demo command runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from lxml import etree
from qemu_guest import assert_one_moment, require_qemu

FIXTURES = REPO / "fixtures" / "demo"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("snapshots/*.xml")), ids=lambda p: p.name)
def test_demo_snapshots_are_valid_for_libvirt(conformance: Path, path: Path) -> None:
    rng = etree.RelaxNG(etree.parse(str(conformance / "schemas" / "domainsnapshot.rng")))
    assert rng.validate(etree.parse(str(path))), rng.error_log


def test_demo_guest_is_valid_for_libvirt(conformance: Path) -> None:
    rng = etree.RelaxNG(etree.parse(str(conformance / "schemas" / "domain.rng")))
    assert rng.validate(etree.parse(str(FIXTURES / "guest.xml"))), rng.error_log


def test_demo_runs(tmp_path: Path) -> None:
    require_qemu()
    env = {**os.environ, "QSNAP_SKIP_SETUP": "1", "TMPDIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo")], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Domain snapshot before-upgrade created" in result.stdout
    old = re.findall(r"counter in the old image of vd[ab] \(.*?\): +(\d+)", result.stdout)
    new = re.search(r"counter in the new overlay of vda \(.*?\): +(\d+)", result.stdout)
    assert len(old) == 2 and new
    moment = assert_one_moment([int(c) for c in old])
    assert int(new.group(1)) > moment
    assert "Snapshot experiment-a set as current" in result.stdout
    taken = int(re.search(r"the snapshot was taken at about (\d+)", result.stdout).group(1))
    resumed = int(re.search(r"after the revert the guest resumed at (\d+)",
                            result.stdout).group(1))
    assert 1 < resumed <= taken + 1
    assert "Domain restored from" in result.stdout
    assert "\nSuccessfully pivoted\n" in result.stdout  # the live-backup recipe
    frozen = re.search(r"counter in the backup \(the moment of tmp\): (\d+)", result.stdout)
    assert frozen and int(frozen.group(1)) > 0
    assert "every metadata file is byte-for-byte unchanged" in result.stdout
    assert "error: invalid argument: parent experiment-b would create cycle to installed" \
        in result.stderr
