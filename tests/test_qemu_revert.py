"""Revert to every kind of snapshot, with real QEMU and the tiny guest.

The serial log is appended across QEMU runs, so after a revert the counter jumps back: the value
it resumes from must be the snapshot's moment, bracketed by the counters read just before and
just after the snapshot was taken (not 1, not "now").
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qemu_guest import guest_module, require_qemu, started_guest, wait_for_counter

import qsnap
from qsnap import CreateFlags, Engine, RevertFlags, snapshot_xml_from_args

GUEST = guest_module()


class Lab:
    def __init__(self, engine: Engine, folder: Path) -> None:
        self.engine = engine
        self.folder = folder
        self.serial = folder / "serial.log"

    def counters(self, since: int = 0) -> list[int]:
        data = self.serial.read_bytes()[since:]
        return [int(c) for c in re.findall(rb"qsnap-counter (\d+)", data)]

    def last(self) -> int:
        return self.counters()[-1]

    async def snapshot(self, name: str, **kw: object) -> tuple[int, int]:
        """Take a snapshot; return the counters just before and just after."""
        flags = kw.pop("flags", CreateFlags())
        before = self.last()
        await self.engine.create("g", snapshot_xml_from_args(name, **kw), flags)
        return before, self.last()

    async def revert(self, name: str, flags: RevertFlags | None = None) -> int | None:
        """Revert; return the counter the guest resumed from (None if it did not run)."""
        flags = flags or RevertFlags()
        mark = self.serial.stat().st_size
        previous = self.last()
        await self.engine.revert("g", name, flags)
        if not flags.running and await self.engine.domstate("g") != "running":
            return None
        await wait_for_counter(self.serial, 0)
        for _ in range(100):
            values = [previous, *self.counters(mark)]
            jumps = [b for a, b in itertools.pairwise(values) if b != a + 1]
            if jumps:
                return jumps[0]
            await wait_for_counter(self.serial, (values or [0])[-1])
        raise AssertionError("the counter never jumped back after the revert")

    def disk(self, image: Path) -> int | None:
        return GUEST.read_disk_counter(image)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    engine, _ = await started_guest(tmp_path, 2)
    yield Lab(engine, tmp_path / "g")
    if await engine.domstate("g") != "shut off":
        await engine.destroy("g")


async def test_internal_full_system_revert(lab: Lab) -> None:
    before, after = await lab.snapshot("int1")
    await wait_for_counter(lab.serial, after + 40)
    resumed = await lab.revert("int1")
    assert resumed is not None and before < resumed <= after + 1
    assert await lab.engine.current("g") == "int1"
    # A new snapshot now branches off int1; reverting --paused leaves the guest paused.
    await lab.snapshot("int2")
    assert (await lab.engine.info("g", "int2")).parent == "int1"
    assert await lab.revert("int1", RevertFlags(paused=True)) is None
    assert await lab.engine.domstate("g") == "paused"


async def test_external_full_system_revert_keeps_the_snapshot_reusable(lab: Lab) -> None:
    memory = lab.folder / "ext1.mem"
    before, after = await lab.snapshot("ext1", memspec=f"file={memory},snapshot=external")
    base = lab.folder / "g-vda.qcow2"
    kept = (digest(base), digest(memory))
    # The snapshot's image holds the guest's disk at the same moment as its memory.
    assert before - 5 <= (lab.disk(base) or 0) <= after
    await wait_for_counter(lab.serial, after + 40)
    for _ in range(2):  # the snapshot's files are untouched, so it can be reverted to again
        resumed = await lab.revert("ext1")
        assert resumed is not None and before < resumed <= after + 1
        await wait_for_counter(lab.serial, resumed + 20)
    await lab.engine.destroy("g")
    assert (digest(base), digest(memory)) == kept
    live = qsnap.model.domain.parse_domain(await lab.engine.domain_xml("g")).disks[0].source
    assert live != str(base) and live.startswith(str(lab.folder / "g-vda."))


async def test_branch_and_back(lab: Lab) -> None:
    m1, m2 = lab.folder / "s1.mem", lab.folder / "s2.mem"
    b1, a1 = await lab.snapshot("s1", memspec=f"file={m1}")
    await wait_for_counter(lab.serial, a1 + 30)
    b2, a2 = await lab.snapshot("s2", memspec=f"file={m2}")
    resumed = await lab.revert("s1")
    assert resumed is not None and b1 < resumed <= a1 + 1
    await wait_for_counter(lab.serial, resumed + 10)
    await lab.snapshot("s3", memspec=f"file={lab.folder / 's3.mem'}")
    assert (await lab.engine.info("g", "s3")).parent == "s1"
    assert sorted((await lab.engine.tree("g")).children("s1")) == ["s2", "s3"]
    resumed = await lab.revert("s2")
    assert resumed is not None and b2 < resumed <= a2 + 1


async def test_disk_only_revert_gives_a_stopped_guest_on_that_moment(lab: Lab) -> None:
    await lab.engine.create("g", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))
    moment = lab.disk(lab.folder / "g-vda.qcow2")
    await wait_for_counter(lab.serial, (moment or 0) + 40)
    assert await lab.revert("d1") is None
    assert await lab.engine.domstate("g") == "shut off"
    live = qsnap.model.domain.parse_domain(await lab.engine.domain_xml("g")).disks[0].source
    assert lab.disk(Path(live)) == moment
    # --running boots it fresh on those disks: the counter starts again from 1.
    resumed = await lab.revert("d1", RevertFlags(running=True))
    assert resumed == 1


async def test_offline_internal_revert(lab: Lab) -> None:
    await lab.engine.destroy("g")
    moment = lab.disk(lab.folder / "g-vda.qcow2")
    await lab.engine.create("g", snapshot_xml_from_args("off"), CreateFlags())
    await lab.engine.start("g")
    await wait_for_counter(lab.serial, lab.last() + 30)
    await lab.engine.destroy("g")
    assert lab.disk(lab.folder / "g-vda.qcow2") != moment
    await lab.engine.revert("g", "off")
    assert lab.disk(lab.folder / "g-vda.qcow2") == moment
    assert await lab.engine.domstate("g") == "shut off"


async def test_bad_reverts_leave_the_guest_alone(lab: Lab) -> None:
    await lab.snapshot("pre")  # internal: its memory and disk state live inside g-vda.qcow2
    memory = lab.folder / "m.mem"
    await lab.snapshot("ext", memspec=f"file={memory}")  # g-vda.qcow2 is now ext's base
    await lab.engine.redefine("g", "<domainsnapshot><name>bare</name><state>running</state>"
                                   "<creationTime>1</creationTime></domainsnapshot>")
    running_on = await lab.engine.domain_xml("g")
    saved = memory.read_bytes()

    cases = [
        ("pre", "would rewrite '" + str(lab.folder / "g-vda.qcow2") + "', which external "
                "snapshot 'ext' keeps as its read-only base"),
        ("bare", "snapshot 'bare' lacks domain 'g' rollback info"),
    ]
    for name, message in cases:
        with pytest.raises(qsnap.QsnapError) as info:
            await lab.engine.revert("g", name)
        assert message in str(info.value)
    memory.write_bytes(b"LibvirtQemudPart" + saved[16:4096])
    with pytest.raises(qsnap.QsnapError, match="save image is incomplete"):
        await lab.engine.revert("g", "ext")
    memory.unlink()
    with pytest.raises(qsnap.QsnapError, match="No such file"):
        await lab.engine.revert("g", "ext")
    memory.write_bytes(saved)
    base = lab.folder / "g-vda.qcow2"
    base.rename(base.with_suffix(".moved"))
    with pytest.raises(qsnap.OperationInvalidError, match="no longer exists"):
        await lab.engine.revert("g", "ext")
    base.with_suffix(".moved").rename(base)

    assert await lab.engine.domstate("g") == "running"
    assert await lab.engine.domain_xml("g") == running_on
    assert await lab.engine.current("g") == "ext"
    # --force reverts a snapshot without a recorded definition with today's definition; this
    # one was only redefined, so its state is in no image: that is found before the guest is
    # stopped (it used to be found by QEMU's snapshot-load, with the guest already stopped).
    with pytest.raises(qsnap.OperationInvalidError,
                       match="holds no internal snapshot of that name"):
        await lab.engine.revert("g", "bare", RevertFlags(force=True))
    assert await lab.engine.domstate("g") == "running"
    assert await lab.engine.current("g") == "ext"


async def test_live_external_snapshot_captures_the_end_point(lab: Lab) -> None:
    """--live copies memory while the guest runs; QEMU pauses it only for the rest, so the
    saved moment is the END of the copy (libvirt's --live), still between our two readings."""
    memory = lab.folder / "live.mem"
    before, after = await lab.snapshot("live", memspec=f"file={memory}",
                                       flags=CreateFlags(live=True))
    assert await lab.engine.domstate("g") == "running"
    await wait_for_counter(lab.serial, after + 30)
    resumed = await lab.revert("live")
    assert resumed is not None and before < resumed <= after + 1


async def test_failed_full_snapshots_leave_nothing_behind(tmp_path: Path) -> None:
    """vda lives on an 8 MiB tmpfs: the 128 MiB guest's memory cannot fit. The snapshot-save job
    fails and leaves no internal snapshot on any disk; an external snapshot whose memory file
    is on that tmpfs fails and leaves no memory file and no overlay. The guest runs on."""
    require_qemu()
    from test_qemu_save_restore import small_tmpfs
    engine = Engine(tmp_path / "state")
    xml_path = GUEST.make_guest("g", 2, 128, tmp_path / "g")
    with small_tmpfs(tmp_path / "small", "8m") as small:
        vda = tmp_path / "g" / "g-vda.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(small / "vda.qcow2"),
                        "64M"], check=True)
        await engine.define(xml_path.read_text().replace(str(vda), str(small / "vda.qcow2")))
        await engine.start("g")
        lab = Lab(engine, tmp_path / "g")
        try:
            await wait_for_counter(lab.serial, 10)
            with pytest.raises(qsnap.QsnapError, match="QEMU refused snapshot-save"):
                await engine.create("g", snapshot_xml_from_args("big"), CreateFlags())
            for image in (small / "vda.qcow2", tmp_path / "g" / "g-vdb.qcow2"):
                listing = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(image)],
                                         capture_output=True, text=True, check=True).stdout
                assert "big" not in listing, f"a partial snapshot stayed in {image}"
            files = sorted(os.listdir(tmp_path / "g")), sorted(os.listdir(small))
            with pytest.raises(qsnap.QsnapError,
                               match=r"QEMU refused migrate|No space left on device"):
                await engine.create("g", snapshot_xml_from_args(
                    "ext", memspec=f"file={small / 'ext.mem'}"), CreateFlags())
            assert (sorted(os.listdir(tmp_path / "g")), sorted(os.listdir(small))) == files
            assert await engine.snapshots("g") == []
            assert await engine.domstate("g") == "running"
            await wait_for_counter(lab.serial, lab.last() + 10)
        finally:
            await engine.destroy("g")
