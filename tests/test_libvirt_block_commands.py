"""The same steps typed to virsh (libvirt 9.0's QEMU driver, started by the ``libvirtd``
fixture) and to qsnap, on twin tiny guests: the live-backup recipe's commands, block jobs,
job control, suspend/resume, domblklist, dominfo and domblkinfo print the same bytes and
exit the same way, paths aside.

Progress lines on stderr are compared by their last state (virsh prints one whenever its
once-a-half-second poll sees the job move, qsnap whenever QEMU reports it; both end on the
same line). dominfo's Id, UUID, CPU time and Messages lines differ by nature (qsnap has no
numeric ids; libvirt taints root-run guests), and domblkinfo's allocation depends on what
each guest wrote: those are left out.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu_guest import guest_module, require_qemu, wait_for_counter

GUEST = guest_module()


def _run(argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(argv, capture_output=True, timeout=300)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _comparable(result: tuple[int, str, str], root: Path, name: str
                ) -> tuple[int, str, str]:
    code, out, err = result
    err = "\n".join(line.rsplit("\r", 1)[-1] for line in err.split("\n"))
    return code, out.replace(str(root), "ROOT").replace(name, "DOM"), \
        err.replace(str(root), "ROOT").replace(name, "DOM")


STEPS: list[tuple[str, ...]] = [
    ("domblklist", "DOM"), ("domblklist", "DOM", "--details"),
    ("domblklist", "DOM", "--inactive"), ("domjobinfo", "DOM"),
    ("suspend", "DOM"), ("suspend", "DOM"), ("resume", "DOM"), ("resume", "DOM"),
    ("blockjob", "DOM", "vda", "--info"), ("blockjob", "DOM", "vda"),
    ("blockcommit", "DOM", "vda", "--wait"), ("blockcommit", "DOM", "vda", "--active", "--pivot"),
    ("snapshot-create-as", "DOM", "tmp", "--disk-only", "--atomic", "--no-metadata"),
    ("domblklist", "DOM"), ("blockcommit", "DOM", "vda", "--wait"),
    ("blockcommit", "DOM", "vda", "--active"), ("WAIT-READY",),
    ("blockjob", "DOM", "vda", "--info"), ("blockjob", "DOM", "vda", "--pivot"),
    ("domblklist", "DOM"),
    ("snapshot-create-as", "DOM", "tmp2", "--disk-only", "--atomic", "--no-metadata"),
    ("blockcommit", "DOM", "vda", "--active", "--pivot", "--verbose", "--wait"),
    ("snapshot-create-as", "DOM", "tmp3", "--disk-only", "--atomic", "--no-metadata"),
    ("blockcommit", "DOM", "vda", "--active", "--keep-overlay", "--verbose"),
    ("domblklist", "DOM"), ("blockpull", "DOM", "vda", "--wait", "--verbose"),
    ("blockpull", "DOM", "vda", "--verbose"), ("blockjob", "DOM", "vda", "--abort"),
    ("domjobabort", "DOM"), ("blockcommit", "DOM", "vdz", "--active", "--pivot"),
    ("domblkinfo", "DOM", "vdz"), ("dominfo", "nosuch"), ("domblklist", "nosuch"),
    ("destroy", "DOM"), ("suspend", "DOM"), ("blockjob", "DOM", "vda", "--info"),
    ("domjobinfo", "DOM"), ("blockcommit", "DOM", "vda", "--active", "--pivot"),
]


async def test_block_and_domain_commands_print_what_virsh_prints(tmp_path: Path,
                                                                  libvirtd: str) -> None:
    require_qemu()
    name = f"qsnap-blk-{tmp_path.name[-8:]}"
    roots = {"virsh": tmp_path / "lv", "qsnap": tmp_path / "qs"}
    xmls = {side: GUEST.make_guest(name, 1, 128, root) for side, root in roots.items()}
    prefixes = {"virsh": ["virsh", "-c", "qemu:///system"],
                "qsnap": [sys.executable, "-m", "qsnap.cli", "--state-dir",
                          str(tmp_path / "state")]}

    def run(side: str, *args: str) -> tuple[int, str, str]:
        return _run([*prefixes[side], *(name if a == "DOM" else a for a in args)])

    for side in roots:
        defined = run(side, "define", str(xmls[side]))
        assert defined[0] == 0, (side, defined)
    try:
        for side in roots:
            assert run(side, "start", "DOM")[0] == 0, side
        for root in roots.values():
            await wait_for_counter(root / "serial.log", 5)
        mismatches = []
        for step in STEPS:
            if step == ("WAIT-READY",):
                for side in roots:
                    deadline = time.monotonic() + 60
                    while not run(side, "blockjob", "DOM", "vda", "--info")[2].endswith(
                            "[100 %]"):
                        assert time.monotonic() < deadline, side
                        await asyncio.sleep(0.2)
                continue
            theirs, ours = (_comparable(run(side, *step), roots[side], name) for side in roots)
            if step[0] == "dominfo" and theirs[0] == 0:
                skip = ("Id:", "UUID:", "CPU time:", "Messages:")
                theirs, ours = ((c, "".join(line for line in o.splitlines(True)
                                            if not line.startswith(skip)), e)
                                for c, o, e in (theirs, ours))
            if theirs != ours:
                mismatches.append((step, theirs, ours))
        assert mismatches == []
        for side in roots:
            info = dict(line.split(":", 1) for line in run(side, "dominfo", "DOM")[1]
                        .splitlines() if ":" in line)
            assert info["State"].strip() == "shut off"
        sizes = [run(side, "domblkinfo", "DOM", "vda")[1].splitlines()[0] for side in roots]
        assert sizes[0] == sizes[1]  # Capacity
    finally:
        for side in roots:
            run(side, "destroy", "DOM")
        run("virsh", "undefine", "DOM")


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
