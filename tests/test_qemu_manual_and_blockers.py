"""``<disk snapshot='manual'>`` (libvirt 8.2+: the snapshot pauses the guest, images flushed,
and leaves it paused for the user's own storage snapshot) and QEMU's migration blockers (a
memory snapshot or save of a guest QEMU cannot migrate is refused with QEMU's reasons before
anything is touched), on the real QEMU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import guest_module, started_guest, wait_for_counter

from qsnap import (
    CreateFlags,
    Engine,
    InvalidArgumentError,
    OperationInvalidError,
    snapshot_xml_from_args,
)
from qsnap.model.domain import parse_domain
from qsnap.monitor import Monitor

GUEST = guest_module()


async def _guest(tmp_path: Path) -> Engine:
    engine, _ = await started_guest(tmp_path, 2)
    assert isinstance(engine, Engine)
    return engine


async def _qemu_status(engine: Engine) -> str:
    async with await Monitor.connect((await engine.guest_info("g")).qmp or "") as monitor:
        return await monitor.status()


async def _resume(engine: Engine) -> None:
    async with await Monitor.connect((await engine.guest_info("g")).qmp or "") as monitor:
        await monitor.resume()


@pytest.mark.parametrize("kind", ["disk-only", "full"])
async def test_manual_disk_leaves_the_guest_paused(tmp_path: Path, kind: str) -> None:
    engine = await _guest(tmp_path)
    folder = tmp_path / "g"
    try:
        vdb = folder / "g-vdb.qcow2"
        memspec = None if kind == "disk-only" else f"file={folder / 's.mem'}"
        xml = snapshot_xml_from_args("s", memspec=memspec, diskspecs=["vdb,snapshot=manual"],
                                     disk_only=kind == "disk-only")
        await engine.create("g", xml, CreateFlags(disk_only=kind == "disk-only"))
        snap = await engine.get("g", "s")
        assert [(d.name, d.snapshot) for d in snap.disks] == [("vda", "external"),
                                                              ("vdb", "manual")]
        # Stopped for the user's storage snapshot ("postmigrate" once QEMU wrote the memory:
        # its images are flushed and released until the guest runs again).
        assert await _qemu_status(engine) in ("paused", "postmigrate")
        assert await engine.domstate("g") == "paused"
        disks = {d.target: d.source for d in parse_domain(await engine.domain_xml("g")).disks}
        assert disks["vdb"] == str(vdb)  # left to the user: not switched
        assert disks["vda"] != str(folder / "g-vda.qcow2")
        paused_at = GUEST.read_disk_counter(vdb)
        await _resume(engine)  # "the caller is responsible for resuming"
        await wait_for_counter(folder / "serial.log", (paused_at or 0) + 10)
    finally:
        await engine.destroy("g")


async def test_live_with_a_manual_disk_is_refused(tmp_path: Path) -> None:
    engine = await _guest(tmp_path)
    folder = tmp_path / "g"
    try:
        before = tree_picture(tmp_path / "state")
        with pytest.raises(InvalidArgumentError, match="--live cannot be used with 'manual' "
                                                       "disks"):
            await engine.create("g", snapshot_xml_from_args(
                "s", memspec=f"file={folder / 's.mem'}", diskspecs=["vdb,snapshot=manual"]),
                CreateFlags(live=True))
        assert tree_picture(tmp_path / "state") == before
        assert await _qemu_status(engine) == "running"
    finally:
        await engine.destroy("g")


async def test_a_guest_qemu_cannot_migrate_is_not_saved(tmp_path: Path) -> None:
    """An NVMe controller is not migratable in QEMU 7.2: QEMU's own reason is given, no file
    or metadata appears, and the guest keeps running; a disk-only snapshot still works."""
    engine = await _guest(tmp_path)
    folder = tmp_path / "g"
    try:
        async with await Monitor.connect((await engine.guest_info("g")).qmp or "") as monitor:
            await monitor.execute("device_add", {"driver": "nvme", "serial": "qsnap",
                                                 "id": "nvme0"})
            blockers = await monitor.migration_blockers()
        if not blockers:
            pytest.fail("this QEMU migrates NVMe: pick another non-migratable device")
        before = tree_picture(tmp_path / "state"), sorted(p.name for p in folder.iterdir())
        for attempt in (
                lambda: engine.create("g", snapshot_xml_from_args(
                    "m", memspec=f"file={folder / 'm.mem'}"), CreateFlags()),
                lambda: engine.create("g", snapshot_xml_from_args("i"), CreateFlags()),
                lambda: engine.save("g", folder / "g.save")):
            with pytest.raises(OperationInvalidError, match=r"QEMU cannot save its state: "
                                                            r"non-migratable device"):
                await attempt()
            assert (tree_picture(tmp_path / "state"),
                    sorted(p.name for p in folder.iterdir())) == before
            assert await _qemu_status(engine) == "running"
        await engine.create("g", snapshot_xml_from_args("d"), CreateFlags(disk_only=True))
    finally:
        await engine.destroy("g")
