"""What a careless user and an unlucky machine do to a real guest (issue 15): files removed by
hand, names at the file system's limits, a QEMU that dies or freezes mid-operation, a backing
loop made by hand. Each case must end in a clear error that names what is wrong, with images,
guest and metadata as they were, and a domain that the next command can still use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import guest_module, started_guest

import qsnap
from qsnap import CreateFlags, Engine, snapshot_xml_from_args

GUEST = guest_module()
DISK_ONLY = CreateFlags(disk_only=True)


async def test_a_snapshot_whose_overlay_was_removed_by_hand_keeps_the_base(
        tmp_path: Path) -> None:
    """s1 froze the base, s2 froze o1; o1 removed by hand. Deleting s1 must not treat the base
    as unneeded: o2 (the guest's disk) still reads through the missing o1 into it."""
    engine, folder = await started_guest(tmp_path, 1)
    try:
        base = folder / "g-vda.qcow2"
        o1, o2 = folder / "o1.qcow2", folder / "o2.qcow2"
        await engine.create("g", snapshot_xml_from_args("s1", diskspecs=[f"vda,file={o1}"]),
                            DISK_ONLY)
        await engine.create("g", snapshot_xml_from_args("s2", diskspecs=[f"vda,file={o2}"]),
                            DISK_ONLY)
        o1.unlink()
        before = tree_picture(tmp_path / "state")
        for name in ("s2", "s1"):
            with pytest.raises(qsnap.OperationInvalidError, match="o1.qcow2") as caught:
                await engine.delete("g", name)
            assert "does not exist" in str(caught.value)
        assert base.exists()
        assert tree_picture(tmp_path / "state") == before
        assert [s.name for s in await engine.list("g")] == ["s1", "s2"]
    finally:
        await engine.destroy("g")
