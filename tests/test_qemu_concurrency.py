"""Many guests at once, and many qsnap processes on one guest, with real QEMU.

Operations on different domains run in parallel (one asyncio engine, or separate processes);
operations on one domain serialise on its lock, so four processes snapshotting one guest at
the same moment give a straight chain of four snapshots, never two children of one parent or
a lost metadata write.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from qemu_guest import (
    assert_one_moment,
    backing_chain,
    guest_module,
    read_counters,
    require_qemu,
    state_images,
    wait_for_counter,
)

from qsnap import CreateFlags, Engine, snapshot_xml_from_args
from qsnap.model.domain import parse_domain

GUEST = guest_module()
GUESTS = 8


def qsnap_cli(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qsnap.cli", "--state-dir", str(state),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def all_succeed(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (process.args, out, err)


async def top_image(engine: Engine, name: str) -> Path:
    disks = parse_domain(await engine.domain_xml(name)).disks
    return Path(disks[0].source or "")


async def test_eight_guests_at_once(tmp_path: Path) -> None:
    require_qemu()
    state = tmp_path / "state"
    engine = Engine(state)
    names = [f"g{i}" for i in range(GUESTS)]
    for name in names:
        xml = GUEST.make_guest(name, 1, 128, tmp_path / name)
        await engine.define(xml.read_text())
    try:
        await asyncio.gather(*(engine.start(n) for n in names))
        await asyncio.gather(*(wait_for_counter(tmp_path / n / "serial.log", 5, timeout=180)
                               for n in names))

        # One engine, eight domains, one gather: disk-only, then full-system with memory.
        await asyncio.gather(*(engine.create(n, snapshot_xml_from_args("a"),
                                             CreateFlags(disk_only=True)) for n in names))
        await asyncio.gather(*(engine.create(
            n, snapshot_xml_from_args("m", memspec=f"file={tmp_path / n / 'm.mem'}"),
            CreateFlags()) for n in names))
        # Separate processes, one per domain.
        all_succeed([qsnap_cli(state, "snapshot-create-as", n, "b", "--disk-only")
                     for n in names])
        for name in names:
            assert sorted(s.name for s in await engine.snapshots(name)) == ["a", "b", "m"]
            assert (await engine.info(name, "b")).parent == "m"
            assert (await engine.info(name, "m")).parent == "a"
            for snap in ("a", "m", "b"):
                assert_one_moment(read_counters(await state_images(engine, snap, name)))
            assert len(backing_chain(await top_image(engine, name))) == 4
            assert await engine.domstate(name) == "running"

        # Four processes on one domain at the same moment serialise into a straight chain.
        all_succeed([qsnap_cli(state, "snapshot-create-as", "g0", f"p{i}", "--disk-only")
                     for i in range(4)])
        parents = {s: (await engine.info("g0", s)).parent for s in ("p0", "p1", "p2", "p3")}
        # A chain: every parent distinct, the first on b, each other on one of the four,
        # and the current snapshot the one nobody builds on.
        assert len(set(parents.values())) == 4, parents
        assert set(parents.values()) - set(parents) == {"b"}, parents
        assert set(parents) - set(parents.values()) == {await engine.current("g0")}, parents
        assert len(backing_chain(await top_image(engine, "g0"))) == 8
    finally:
        for name in names:
            if await engine.domstate(name) != "shut off":
                await engine.destroy(name)
    for name in names:
        for image in (tmp_path / name).glob(f"{name}-vd*"):
            check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True,
                                   text=True)
            assert check.returncode == 0, (image, check.stdout)

