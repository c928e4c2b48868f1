"""examples/: the embedding launcher runs as the README shows it, against the real QEMU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from qemu_guest import guest_module, require_qemu

from qsnap.model.domain import parse_domain

GUEST = guest_module()


def test_the_launcher_example_snapshots_reverts_and_restores_through_its_hook(
        tmp_path: Path) -> None:
    require_qemu()
    domain = parse_domain(GUEST.make_guest("lab", 1, 128, tmp_path / "guest").read_text())
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "launcher.py"), "--workdir",
         str(tmp_path / "work"), "--kernel", domain.kernel or "", "--initrd",
         domain.initrd or "", "--disk", domain.disks[0].source or ""],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    first_pid = int(re.fullmatch(r"attached: QEMU pid (\d+)", lines[0]).group(1))
    taken = re.fullmatch(r"snapshot 'before' between counters (\d+) and (\d+)", lines[1])
    assert taken, lines
    reverted = re.fullmatch(r"reverted to 'before': QEMU pid (\d+), running, counter (\d+)",
                            lines[2])
    assert reverted, lines
    # The hook's QEMU is the guest now, and it went on from the snapshot's moment.
    assert int(reverted.group(1)) != first_pid
    assert int(taken.group(1)) <= int(reverted.group(2)) <= int(taken.group(2)) + 1
    assert lines[3] == "saved: shut off"
    assert re.fullmatch(r"restored: QEMU pid \d+, running", lines[4])
    assert lines[5:] == ["snapshots left: 0"]
    assert run.stderr == ""
