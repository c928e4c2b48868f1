"""suspend, resume, reboot, reset, dominfo, domblkinfo, domjobinfo and domjobabort on a
running tiny guest, through the ``qsnap`` command; job control from a second process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path

from qemu_guest import (
    backing_chain,
    boot,
    domain_disks,
    guest_module,
    started_guest,
    wait_for_counter,
)
from test_qemu_block_jobs import in_thread, ok

GUEST = guest_module()


async def test_suspend_and_resume(tmp_path: Path) -> None:
    engine, folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    serial = folder / "serial.log"
    assert ok(await in_thread(state, "suspend", "g")) == "Domain 'g' suspended\n\n"
    assert ok(await in_thread(state, "domstate", "g")) == "paused\n\n"
    stopped = GUEST.last_serial_counter(serial) or 0
    await asyncio.sleep(1)
    assert (GUEST.last_serial_counter(serial) or 0) <= stopped + 1
    assert ok(await in_thread(state, "suspend", "g")) == "Domain 'g' suspended\n\n"  # as virsh
    assert ok(await in_thread(state, "resume", "g")) == "Domain 'g' resumed\n\n"
    await wait_for_counter(serial, stopped + 10)
    again = await in_thread(state, "resume", "g")
    assert again.returncode == 1 and again.stdout == "\n"
    assert again.stderr == ("error: Failed to resume domain 'g'\nerror: Requested operation is "
                            "not valid: domain is already running\n")
    await engine.destroy("g")
    for command in ("suspend", "resume"):
        refused = await in_thread(state, command, "g")
        assert refused.stderr == (f"error: Failed to {command} domain 'g'\nerror: Requested "
                                  "operation is not valid: domain is not running\n")


async def test_reboot_and_reset_boot_the_guest_again(tmp_path: Path) -> None:
    """``--mode acpi``: the guest powers itself off at the power button, and QEMU, told to
    pause there rather than exit, is reset and run (libvirt's fake reboot). ``reset``: at
    once. ``--mode agent`` is refused with the agent's own reason where the guest cannot
    reboot through it (the tiny guest has no shutdown program); without a mode, ACPI takes
    over then, as in libvirt."""
    engine, folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    serial = folder / "serial.log"
    # The default tries the agent first; the tiny guest's refuses (below), so ACPI reboots.
    for command in (("reboot", "g"), ("reset", "g")):
        mark = serial.stat().st_size
        said = ok(await in_thread(state, *command))
        assert said == ("Domain 'g' is being rebooted\n\n" if command[0] == "reboot"
                        else "Domain 'g' was reset\n\n")
        deadline = time.monotonic() + 90
        while not re.search(rb"qsnap-counter 3\r?\n", serial.read_bytes()[mark:]):  # from 1

            assert time.monotonic() < deadline, serial.read_bytes()[mark:][-300:]
            await asyncio.sleep(0.2)
        assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    agent = await in_thread(state, "reboot", "g", "--mode", "agent")
    assert agent.returncode == 1
    assert agent.stderr.startswith("error: Failed to reboot domain 'g'\nerror: the guest agent "
                                   "refused guest-shutdown")
    await engine.destroy("g")


def _fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
                                               text.splitlines() if ":" in line)}


async def test_dominfo_and_domblkinfo(tmp_path: Path) -> None:
    engine, _folder = await started_guest(tmp_path, 2)
    state = tmp_path / "state"
    info = _fields(ok(await in_thread(state, "dominfo", "g")))
    assert info["State"] == "running" and info["CPU(s)"] == "1"
    assert info["Max memory"] == info["Used memory"] == "131072 KiB"
    assert float(info["CPU time"].rstrip("s")) > 0
    assert info["Managed save"] == "no" and info["Persistent"] == "yes"
    disks = await domain_disks(engine)
    sizes = _fields(ok(await in_thread(state, "domblkinfo", "g", "vdb")))
    stat = os.stat(disks[1])
    virtual = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", disks[1]],
                                        capture_output=True, text=True).stdout)["virtual-size"]
    assert sizes == {"Capacity": str(virtual), "Allocation": str(stat.st_blocks * 512),
                     "Physical": str(stat.st_size)}
    table = ok(await in_thread(state, "domblkinfo", "g", "--all", "--human")).splitlines()
    assert table[0].split() == ["Target", "Capacity", "Allocation", "Physical"]
    assert [row.split()[:3] for row in table[2:4]] == [["vda", "64.000", "MiB"],
                                                        ["vdb", "64.000", "MiB"]]
    missing = await in_thread(state, "domblkinfo", "g", "vdz")
    assert missing.stderr == "error: invalid argument: invalid path vdz not assigned to domain\n"
    await engine.destroy("g")
    stopped = _fields(ok(await in_thread(state, "dominfo", "g")))
    assert stopped["State"] == "shut off" and "CPU time" not in stopped
    assert (await in_thread(state, "dominfo", "nosuch")).stderr == \
        "error: failed to get domain 'nosuch'\n"


async def _slow_pull_guest(tmp_path: Path) -> tuple[object, Path, str, str]:
    """A guest whose disk's base holds 8 MiB of data under a fresh overlay, so that a pull
    at 1 MiB/s lasts seconds: (engine, its state folder, base, overlay)."""
    engine, folder = await started_guest(tmp_path, 1)
    base = (await domain_disks(engine))[0]
    await engine.destroy("g")  # type: ignore[attr-defined]
    subprocess.run(["qemu-io", "-c", "write -P 0xab 1M 8M", base], check=True,
                   capture_output=True)
    await boot(engine, folder / "serial.log", 5)
    state = tmp_path / "state"
    ok(await in_thread(state, "snapshot-create-as", "g", "tmp", "--disk-only",
                       "--no-metadata"))
    return engine, state, base, (await domain_disks(engine))[0]


async def test_a_job_is_watched_and_aborted_from_another_process(tmp_path: Path) -> None:
    """domjobinfo shows a running block pull's progress (the pull's process holds the
    domain's lock and QMP); domjobabort stops it, and the pull settles as a failed one:
    the chain as it was, the guest running, no record, the board empty again."""
    engine, state, base, overlay = await _slow_pull_guest(tmp_path)
    assert ok(await in_thread(state, "domjobinfo", "g")) == "Job type:         None        \n\n"
    pull = await asyncio.create_subprocess_exec(
        *qsnap_argv(state, "blockpull", "g", "vda", "--wait", "--bandwidth", "1"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        shown = ok(await in_thread(state, "domjobinfo", "g"))
        if "Data total" in shown:
            break
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.2)
    fields = _fields(shown)
    assert fields["Job type"] == "Unbounded" and fields["Operation"] == "Block pull"
    assert fields["Data total"].endswith("MiB") and int(fields["Time elapsed"].split()[0]) > 0
    assert ok(await in_thread(state, "domjobabort", "g")) == "\n"
    _out, err = await asyncio.wait_for(pull.communicate(), 30)
    assert pull.returncode == 1
    assert err.decode().startswith("error: operation aborted: job 'Block pull' canceled by "
                                   "client")
    assert backing_chain(Path(overlay)) == [overlay, base]
    assert ok(await in_thread(state, "domjobinfo", "g")) == "Job type:         None        \n\n"
    assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    nothing = await in_thread(state, "domjobabort", "g")
    assert nothing.stderr == ("error: Requested operation is not valid: no job is active on "
                              "the domain\n")
    pulled = await in_thread(state, "blockpull", "g", "vda", "--wait")
    assert ok(pulled) == "\nPull complete\n"
    assert backing_chain(Path(overlay)) == [overlay]
    completed = _fields(ok(await in_thread(state, "domjobinfo", "g", "--completed")))
    assert completed["Job type"] == "Completed" and completed["Operation"] == "Block pull"
    await engine.destroy("g")  # type: ignore[attr-defined]
    assert (await in_thread(state, "domjobinfo", "g")).stderr == \
        "error: Requested operation is not valid: domain is not running\n"


async def test_an_aborted_commit_leaves_the_guest_on_its_overlay(tmp_path: Path) -> None:
    """base <- mid (8 MiB of data) <- top: a commit of mid at 1 MiB/s, watched and aborted
    with blockjob from another process, leaves the chain and the definition as they were,
    and no record."""
    engine, folder = await started_guest(tmp_path, 1)
    state = tmp_path / "state"
    base = (await domain_disks(engine))[0]
    await engine.destroy("g")
    mid = str(tmp_path / "g" / "mid.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid],
                   check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0xcd 1M 8M", mid], check=True,
                   capture_output=True)
    await engine.define((folder / "g.xml").read_text().replace(base, mid))
    await boot(engine, folder / "serial.log", 5)
    ok(await in_thread(state, "snapshot-create-as", "g", "top", "--disk-only",
                       "--no-metadata"))
    top = (await domain_disks(engine))[0]
    commit = await asyncio.create_subprocess_exec(
        *qsnap_argv(state, "blockcommit", "g", "vda", "--top", mid, "--wait",
                    "--bandwidth", "1"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + 30
    while "Block commit" not in ok(await in_thread(state, "domjobinfo", "g")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    # blockjob reads and stops the job the waiting command runs, without waiting for it.
    info = await in_thread(state, "blockjob", "g", "vda", "--info")
    assert ok(info) == "\n\n" and info.stderr.startswith("\rBlock Commit: [")
    assert ok(await in_thread(state, "blockjob", "g", "vda", "--abort")) == "\n"
    _out, err = await asyncio.wait_for(commit.communicate(), 30)
    assert commit.returncode == 1 and b"operation aborted" in err, err
    assert backing_chain(Path(top)) == [top, mid, base]
    assert await domain_disks(engine) == [top]
    assert not (state / "domains" / "g" / "intent.json").exists()
    assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    await engine.destroy("g")


def qsnap_argv(state: Path, *args: str) -> list[str]:
    import sys
    return [sys.executable, "-m", "qsnap.cli", "--state-dir", str(state), *args]


async def test_a_save_is_aborted_from_another_process(tmp_path: Path) -> None:
    """A guest with 1.5 GiB of dirty RAM takes seconds to save: domjobinfo shows the save,
    domjobabort stops it, and the save settles as a failed one: no image left, the guest
    running on, no record."""
    from qsnap import Engine

    engine = Engine(tmp_path / "state")
    xml = GUEST.make_guest("g", 1, 2048, tmp_path / "g", dirty=1536)
    await engine.define(xml.read_text())
    serial = tmp_path / "g" / "serial.log"
    await boot(engine, serial, 5)
    deadline = time.monotonic() + 180
    while b"qsnap-dirty ready" not in serial.read_bytes():
        assert time.monotonic() < deadline, "the guest did not dirty its RAM in time"
        await asyncio.sleep(0.5)
    state = tmp_path / "state"
    image = tmp_path / "g.save"
    save = await asyncio.create_subprocess_exec(
        *qsnap_argv(state, "save", "g", str(image)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + 30
    while "Operation:        Save" not in ok(await in_thread(state, "domjobinfo", "g")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    ok(await in_thread(state, "domjobabort", "g"))
    _out, err = await asyncio.wait_for(save.communicate(), 60)
    assert save.returncode == 1, err
    assert err.decode().startswith(f"error: Failed to save domain 'g' to {image}\nerror: "
                                   "operation aborted: job 'Save' canceled by client"), err
    assert not image.exists()
    assert ok(await in_thread(state, "domstate", "g")) == "running\n\n"
    await wait_for_counter(serial, (GUEST.last_serial_counter(serial) or 0) + 10)
    assert not (state / "domains" / "g" / "intent.json").exists()
    await engine.destroy("g")
