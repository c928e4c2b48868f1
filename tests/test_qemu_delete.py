"""Deleting internal snapshots' data with real QEMU: they leave their images, on a running guest
(snapshot-delete job) and a stopped one (qemu-img). External merges: test_qemu_external_delete."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import PROFILES, disk_targets, started_guest

import qsnap
from qsnap import CreateFlags, DeleteFlags, snapshot_xml_from_args


def tags(image: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(image)], check=True,
                         capture_output=True, text=True).stdout
    return [line.split()[1] for line in out.splitlines()[2:] if line.split()]


@pytest.mark.parametrize("profile", PROFILES)
async def test_internal_snapshots_leave_their_images(tmp_path: Path, profile: str) -> None:
    """On both guest profiles: the virt-install one's qcow2 NVRAM holds the tags too."""
    engine, folder = await started_guest(tmp_path, 2, profile)
    try:
        for name in ("a", "b", "c"):
            await engine.create("g", snapshot_xml_from_args(name), CreateFlags())
        images = [folder / f"g-{t}.qcow2" for t in disk_targets(2, profile)]
        if profile == "virt-install":
            images.append(engine.state_dir / "domains" / "g" / "VARS.fd")
        assert all(tags(i) == ["a", "b", "c"] for i in images)

        # Running: the middle one goes, its child moves up, the guest keeps running.
        await engine.delete("g", "b")
        assert all(tags(i) == ["a", "c"] for i in images)
        assert (await engine.info("g", "c")).parent == "a"
        assert await engine.domstate("g") == "running"

        # Stopped: the current one goes with qemu-img; its parent becomes current.
        await engine.destroy("g")
        await engine.delete("g", None)
        assert all(tags(i) == ["a"] for i in images)
        assert await engine.current("g") == "a"

        # A tag missing from an image is found before anything is deleted.
        subprocess.run(["qemu-img", "snapshot", "-d", "a", str(images[1])], check=True)
        store = tree_picture(engine.state_dir / "domains")
        with pytest.raises(qsnap.OperationInvalidError, match="holds no internal snapshot 'a'"):
            await engine.delete("g", "a")
        assert tags(images[0]) == ["a"]
        assert tree_picture(engine.state_dir / "domains") == store
    finally:
        if await engine.domstate("g") != "shut off":
            await engine.destroy("g")


async def test_children_and_refusals(tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    try:
        for name in ("r", "k1", "k2"):
            await engine.create("g", snapshot_xml_from_args(name), CreateFlags())
        await engine.delete("g", "r", DeleteFlags(children_only=True))
        assert tags(folder / "g-vda.qcow2") == ["r"]
        assert await engine.current("g") == "r"

        await engine.create("g", snapshot_xml_from_args("ext"), CreateFlags(disk_only=True))
        store = tree_picture(engine.state_dir / "domains")
        # r's image is no longer what the guest writes to (ext's overlay is): libvirt's check.
        for flags in (DeleteFlags(), DeleteFlags(children=True)):
            with pytest.raises(qsnap.OperationInvalidError,
                               match="is not the same as disk image currently used by VM"):
                await engine.delete("g", "r", flags)
        assert tree_picture(engine.state_dir / "domains") == store
        assert tags(folder / "g-vda.qcow2") == ["r"]
        # An external snapshot whose parent is internal merges into the image holding it
        # (libvirt refuses this); the internal snapshot survives the merge, and is then
        # deletable, since the guest is back on its image.
        await engine.delete("g", "ext")
        assert not (folder / "g-vda.ext").exists()
        assert tags(folder / "g-vda.qcow2") == ["r"]
        await engine.delete("g", "r")
        assert tags(folder / "g-vda.qcow2") == []
        assert await engine.domstate("g") == "running"
    finally:
        await engine.destroy("g")
