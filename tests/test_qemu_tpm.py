"""An emulated TPM (``<tpm><backend type='emulator'>``) under real QEMU and swtpm: made once
as libvirt makes it, its emulator ending with its QEMU, and its state following every kind
of snapshot and save: in the migration stream for memory snapshots and saves, in a kept copy
for disk-only ones. Each check replaces the TPM's state with a newly made one (another
endorsement key, so other bytes) and proves the revert or restore brings the old one back."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from qemu_guest import guest_module, require_qemu, wait_for_counter

from qsnap import CreateFlags, Engine, snapshot_xml_from_args
from qsnap.errors import NotSupportedError

GUEST = guest_module()
TPM = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"


def _require_swtpm() -> None:
    if shutil.which("swtpm") is None or shutil.which("swtpm_setup") is None:
        pytest.fail("swtpm is not installed: scripts/test installs Debian's swtpm and "
                    "swtpm-tools")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _emulators(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "swtpm socket"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if marker in line]


async def _gone(marker: str) -> bool:
    for _ in range(100):
        if not _emulators(marker):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_tpm_state_follows_snapshots_and_saves(tmp_path: Path) -> None:
    require_qemu()
    _require_swtpm()
    folder = tmp_path / "g"
    xml = GUEST.make_guest("t", 1, 128, folder).read_text().replace(
        "<devices>", f"<devices>{TPM}", 1)
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    state = tmp_path / "state" / "swtpm"
    await engine.start("t")
    serial = folder / "serial.log"
    try:
        # One folder per TPM, by the domain's UUID (as libvirt's), beside qsnap's own
        # certificate authority (never the system's: libvirt's swtpm user owns that).
        (uuid_folder,) = (p for p in state.iterdir() if not p.name.startswith("."))
        assert (state / ".localca" / "issuercert.pem").is_file()
        permall = uuid_folder / "tpm2" / "tpm2-00.permall"
        marker = str(uuid_folder)
        assert len(_emulators(marker)) == 1  # one swtpm, on this guest's state
        pid = (await engine.guest_info("t")).pid
        assert '"tpm-crb"' in Path(f"/proc/{pid}/cmdline").read_text()
        await wait_for_counter(serial, 5)
        made = _digest(permall)

        await engine.create("t", snapshot_xml_from_args("d1"), CreateFlags(disk_only=True))
        await engine.create("t", snapshot_xml_from_args(
            "m1", memspec=f"file={folder / 'm1.mem'}"), CreateFlags())
        await engine.create("t", snapshot_xml_from_args("i1"), CreateFlags())

        async def new_tpm() -> str:
            """Stop the guest and give it a newly made TPM."""
            if await engine.domstate("t") != "shut off":
                await engine.destroy("t")
            assert await _gone(marker)  # the emulator ends with its QEMU
            shutil.rmtree(permall.parent)
            await engine.start("t")
            other = _digest(permall)
            assert other != made
            return other

        for snapshot in ("d1", "m1", "i1"):
            await new_tpm()
            await engine.revert("t", snapshot)
            # A disk-only snapshot's revert leaves the guest shut off, as libvirt's does.
            assert await engine.domstate("t") == ("shut off" if snapshot == "d1"
                                                  else "running")
            assert _digest(permall) == made, snapshot
            if snapshot == "d1":
                # A boot changes the permanent state itself (TPM2_Startup counts resets),
                # so after this start only the emulator is checked.
                await engine.start("t")
            else:
                assert _digest(permall) == made, snapshot
            assert len(_emulators(marker)) == 1

        await engine.save("t", folder / "t.save")
        assert await _gone(marker)
        shutil.rmtree(permall.parent)  # a restore needs none: the image has the TPM's state
        await engine.restore(folder / "t.save")
        assert _digest(permall) == made
    finally:
        if await engine.domstate("t") != "shut off":
            await engine.destroy("t")
    # An undefine takes the TPM's state with the domain, as libvirt's does...
    await engine.undefine("t", snapshots_metadata=True)
    assert not (state / uuid_folder.name).exists()


async def test_tpm_refusals_leave_nothing(tmp_path: Path) -> None:
    """What qsnap cannot emulate is refused at start by element, before any file or process
    is made."""
    require_qemu()
    engine = Engine(tmp_path / "state")
    folder = tmp_path / "g"
    base = GUEST.make_guest("r", 1, 128, folder).read_text()
    for tpm, words in (
            ("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/>"
             "</backend></tpm>", "passthrough TPM"),
            ("<tpm><backend type='emulator' version='2.0'><encryption secret="
             "'32ee7e76-2178-47a1-ab7b-269e6e348015'/></backend></tpm>", "secret driver"),
            ("<tpm model='tpm-crb'><backend type='emulator' version='1.2'/></tpm>",
             "needs TPM version 2.0")):
        await engine.define(base.replace("<devices>", f"<devices>{tpm}", 1))
        with pytest.raises(NotSupportedError, match=words):
            await engine.start("r")
        assert await engine.domstate("r") == "shut off"
        assert not (tmp_path / "state" / "swtpm").exists()
