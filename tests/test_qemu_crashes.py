"""Killing qsnap at every step of create, revert, save and restore, with real QEMU.

Each operation runs as its own ``qsnap`` process with ``QSNAP_CRASH_AT=K``, which ends it with
``os._exit`` at its K-th step boundary, for K = 1, 2, ... until it gets through. Then ``qsnap
recover`` (or, on even K, a plain listing) settles what the crash left. The checks are the
issue's: no intent record is left; the guest runs (or is cleanly stopped where the operation
or a QEMU kill stops it); every snapshot still reads its own moment, and one taken by the
crashed create reads one moment; every image passes ``qemu-img check``; no file is left that
nothing refers to; and the guest's disk still holds everything it wrote before the crash.
The delete has its own file (``test_qemu_delete_crashes.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import crash_step_wanted, walks_every_step
from qemu_guest import (
    WRITE_ROUND,
    assert_one_moment,
    check_snapshot_data,
    domain_disks,
    first_counter_after,
    guest_module,
    read_counters,
    resumed_counter,
    started_guest,
    state_images,
    wait_for_counter,
)

from qsnap import CreateFlags, Engine, OperationIncompleteError, snapshot_xml_from_args
from qsnap.faults import CRASH_EXIT
from qsnap.launcher.runtime import read_runtime, runtime_paths
from qsnap.monitor import Monitor

GUEST = guest_module()


class CrashLab:
    def __init__(self, engine: Engine, folder: Path, state: Path) -> None:
        self.engine = engine
        self.folder = folder
        self.state = state
        self.serial = folder / "serial.log"
        self.moments: dict[str, list[int]] = {}
        self.internal: set[str] = set()
        self.outcomes: Counter[str] = Counter()

    def cli(self, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "QSNAP_CRASH_AT": str(crash_at)} if crash_at else None
        return subprocess.run([sys.executable, "-m", "qsnap.cli", "--state-dir",
                               str(self.state), *args],
                              capture_output=True, text=True, env=env, timeout=180)

    @property
    def intent(self) -> Path:
        return self.state / "domains" / "g" / "intent.json"

    def last(self) -> int:
        return GUEST.last_serial_counter(self.serial) or 0

    async def ticking(self) -> None:
        """Wait until the guest has written a couple of rounds to its disks since now."""
        await wait_for_counter(self.serial, self.last() + 2 * WRITE_ROUND + 2)

    async def disk_counter(self) -> int:
        """The first disk's counter as the domain's definition names it (ask only when no
        crash is waiting to be settled: reading the definition settles it)."""
        return GUEST.read_disk_counter(Path((await domain_disks(self.engine))[0])) or 0

    @staticmethod
    def counter_in(image: str) -> int:
        return GUEST.read_disk_counter(Path(image)) or 0

    async def crash(self, k: int, *args: str) -> str | None:
        """Run ``qsnap ARGS`` to crash at step *k*, then settle it. Returns None when the
        command got through (K is past its last step), else what recovery said ("" when the
        crash came before the intent record, so there was nothing to settle)."""
        result = self.cli(*args, crash_at=k)
        if result.returncode == 0:
            return None
        assert result.returncode == CRASH_EXIT, (k, args, result.stderr)
        had_intent = self.intent.exists()
        return await self.settle(k, had_intent)

    async def settle(self, k: int, had_intent: bool) -> str:
        command = ("recover", "g") if k % 2 else ("snapshot-list", "g", "--name")
        recovered = self.cli(*command)
        assert recovered.returncode == 0, (k, recovered.stderr)
        said = recovered.stdout + recovered.stderr
        assert ("settled an interrupted" in said) == had_intent, (k, said)
        assert not self.intent.exists(), k
        self.outcomes["settled" if had_intent else "killed before the intent"] += 1
        return said if had_intent else ""

    def kill_qemu(self) -> None:
        info = read_runtime(runtime_paths(self.engine.state_dir, "g"))
        assert info is not None
        os.kill(info.pid, signal.SIGKILL)

    async def boot(self) -> None:
        """Start the guest after QEMU was killed; one boot that prints nothing is retried and
        counted (see test_qemu_delete_crashes.boot)."""
        for attempt in range(2):
            mark = self.serial.stat().st_size
            await self.engine.start("g")
            try:
                await first_counter_after(self.serial, mark)
                return
            except AssertionError:
                if attempt:
                    raise
                self.outcomes["boots retried"] += 1
                await self.engine.destroy("g")

    def note(self, name: str, internal: bool, images: list[Path]) -> None:
        """Remember what snapshot *name* must read from now on: its tag (internal), or the
        counters of its state images, which were switched at one moment (external)."""
        if internal:
            self.internal.add(name)
        else:
            counters = read_counters(images)
            assert_one_moment(counters)
            self.moments[name] = counters

    async def check(self) -> None:
        await check_snapshot_data(self.engine, self.folder, self.moments,
                                  frozenset(self.internal))

    async def finish(self) -> None:
        """Stop the guest, so that the images it wrote to are checked too."""
        if await self.engine.domstate("g") != "shut off":
            await self.engine.destroy("g")
        await self.check()
        assert self.outcomes["boots retried"] <= 2, self.outcomes


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[CrashLab]:
    engine, folder = await started_guest(tmp_path, 2)
    lab = CrashLab(engine, folder, tmp_path / "state")
    yield lab
    if await engine.domstate("g") != "shut off":
        await engine.destroy("g")


def assert_one_moment_with(disks: list[int], resumed: int) -> None:
    """Memory and disks of a full-system snapshot hold one moment: the disks have the last
    round the guest wrote before the counter it resumed from."""
    assert all(resumed - 2 * WRITE_ROUND <= d <= resumed for d in disks), (resumed, disks)


CREATES = {
    # name: (extra snapshot-create-as arguments, with a memory file, kill QEMU after qsnap)
    "disk-only": (["--disk-only"], False, False),
    "disk-only-qemu-dies": (["--disk-only"], False, True),
    "full-paused": ([], True, False),
    "full-background": (["--live", "--live-strategy", "background"], True, False),
    "full-internal": ([], False, False),
}


@pytest.mark.parametrize("case", list(CREATES))
async def test_kill_at_every_step_of_a_create(lab: CrashLab, case: str) -> None:
    extra, with_memory, kill_qemu = CREATES[case]
    internal = case == "full-internal"
    forward: tuple[str, int, int] | None = None
    for k in range(1, 200):
        if not crash_step_wanted(k):
            continue
        if await lab.engine.domstate("g") != "running":
            await lab.boot()
        await lab.ticking()
        name = f"c{k}"
        top = (await domain_disks(lab.engine))[0]
        memspec = ["--memspec", f"file={lab.folder / (name + '.mem')}"] if with_memory \
            else []
        before = lab.last()
        result = lab.cli("snapshot-create-as", "g", name, *extra, *memspec, crash_at=k)
        if result.returncode == 0:
            lab.note(name, internal, await state_images(lab.engine, name))
            break
        assert result.returncode == CRASH_EXIT, (k, result.stderr)
        had_intent = lab.intent.exists()
        written = lab.counter_in(top)  # at least what the guest wrote before the crash
        if kill_qemu:
            lab.kill_qemu()
        await lab.settle(k, had_intent)
        names = [s.name for s in await lab.engine.snapshots("g")]
        if name in names:
            lab.outcomes["rolled forward"] += 1
            forward = (name, before, lab.last())
            lab.note(name, internal, await state_images(lab.engine, name))
        elif had_intent:
            lab.outcomes["rolled back"] += 1
        expected = "shut off" if kill_qemu else "running"
        assert await lab.engine.domstate("g") == expected, k
        await lab.check()
        assert await lab.disk_counter() >= written, k  # nothing the guest wrote is lost
    else:
        raise AssertionError("the create never got through")
    print(f"create {case}: {k - 1} step boundaries killed, {dict(lab.outcomes)}")
    assert k > 5, "suspiciously few step boundaries"
    if walks_every_step():
        assert lab.outcomes["rolled forward"] and lab.outcomes["rolled back"], lab.outcomes
    if (with_memory or internal) and forward:
        # A full-system snapshot that recovery stored reverts to its moment: within the
        # counters printed around the create, and (external) one moment with its disks.
        name, before, after = forward
        mark = lab.serial.stat().st_size
        await lab.engine.revert("g", name)
        resumed = await resumed_counter(lab.serial, mark)
        assert before <= resumed <= after + 1, (name, before, resumed, after)
        if not internal:
            assert_one_moment_with(lab.moments[name], resumed)
    await lab.finish()


async def test_kill_at_every_step_of_a_revert(lab: CrashLab) -> None:
    await lab.ticking()
    memory = lab.folder / "base.mem"
    assert lab.cli("snapshot-create-as", "g", "base", "--memspec",
                   f"file={memory}").returncode == 0
    lab.moments["base"] = disks = read_counters(await state_images(lab.engine, "base"))
    for k in range(1, 200):
        if not crash_step_wanted(k):
            continue
        await lab.ticking()
        mark = lab.serial.stat().st_size
        said = await lab.crash(k, "snapshot-revert", "g", "base")
        if said is None:
            break
        if "had not begun" in said or not said:
            lab.outcomes["not begun"] += 1
        else:
            lab.outcomes["finished"] += 1
            resumed = await resumed_counter(lab.serial, mark)
            assert_one_moment_with(disks, resumed)
            assert await lab.engine.current("g") == "base"
        assert await lab.engine.domstate("g") == "running", k
        await lab.check()
    else:
        raise AssertionError("the revert never got through")
    print(f"revert: {k - 1} step boundaries killed, {dict(lab.outcomes)}")
    assert k > 5 and lab.outcomes["finished"], lab.outcomes
    await lab.finish()


async def test_kill_at_every_step_of_save_and_restore(lab: CrashLab, tmp_path: Path) -> None:
    saves = tmp_path / "saves"
    saves.mkdir()
    for k in range(1, 200):  # save
        if not crash_step_wanted(k):
            continue
        await lab.ticking()
        image = saves / f"s{k}.img"
        top = (await domain_disks(lab.engine))[0]
        said = await lab.crash(k, "save", "g", str(image))
        written = lab.counter_in(top)
        if said is None:
            break
        assert await lab.disk_counter() >= written, k
        await lab.check()
        if image.exists():  # finished: a complete image, the guest stopped
            lab.outcomes["save finished"] += 1
            assert await lab.engine.domstate("g") == "shut off", k
            await lab.engine.restore(image)  # which proves the image complete
        else:
            lab.outcomes["save undone"] += 1
            assert await lab.engine.domstate("g") == "running", k
    else:
        raise AssertionError("the save never got through")
    saved, saved_at = saves / f"s{k}.img", lab.last()
    assert await lab.engine.domstate("g") == "shut off"
    for j in range(1, 200):  # restore
        if not crash_step_wanted(j):
            continue
        if await lab.engine.domstate("g") != "shut off":
            await lab.engine.destroy("g")
        mark = lab.serial.stat().st_size
        said = await lab.crash(j, "restore", str(saved))
        if said is None:
            break
        assert saved.exists(), j
        state = await lab.engine.domstate("g")
        if state == "running":
            lab.outcomes["restore finished"] += 1
            resumed = await first_counter_after(lab.serial, mark)
            assert saved_at - WRITE_ROUND <= resumed <= saved_at + 1, (j, resumed, saved_at)
        else:
            assert state == "shut off", (j, state)
            lab.outcomes["restore undone"] += 1
        await lab.check()
    else:
        raise AssertionError("the restore never got through")
    print(f"save: {k - 1}, restore: {j - 1} step boundaries killed, "
          f"{dict(lab.outcomes)}")
    if walks_every_step():
        assert lab.outcomes["save finished"] and lab.outcomes["save undone"], lab.outcomes
        assert lab.outcomes["restore finished"] and lab.outcomes["restore undone"], \
            lab.outcomes
    await lab.finish()


@pytest.mark.parametrize("frozen_at", ["transaction", "save"])
async def test_qemu_that_stops_answering_mid_create(lab: CrashLab, frozen_at: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU stops answering (SIGSTOP) just as the disks switch or the memory is written: the
    create gives up after the QMP timeout with an error that says it stays recorded, and
    touches nothing it cannot see. Once QEMU runs again, the next command settles it either
    way (QEMU may still carry out the command it had been sent), with the usual checks."""
    info = None
    try:
        await lab.ticking()
        info = read_runtime(runtime_paths(lab.engine.state_dir, "g"))
        assert info is not None
        original = getattr(Monitor, frozen_at)

        async def freeze_first(self: Monitor, *args: object, **kw: object) -> object:
            os.kill(info.pid, signal.SIGSTOP)
            return await original(self, *args, **kw)

        monkeypatch.setenv("QSNAP_QMP_TIMEOUT", "2")
        monkeypatch.setattr(Monitor, frozen_at, freeze_first)
        memspec = f"file={lab.folder / 'f1.mem'}" if frozen_at == "save" else None
        flags = CreateFlags(disk_only=memspec is None)
        with pytest.raises(OperationIncompleteError, match="stays recorded") as caught:
            await lab.engine.create("g", snapshot_xml_from_args("f1", memspec=memspec), flags)
        assert "did not answer" in str(caught.value)
        assert lab.intent.exists()
        monkeypatch.undo()
        os.kill(info.pid, signal.SIGCONT)

        names = [s.name for s in await lab.engine.snapshots("g")]  # settles the create
        assert not lab.intent.exists()
        if "f1" in names:
            lab.note("f1", False, await state_images(lab.engine, "f1"))
        print(f"frozen at {frozen_at}: rolled {'forward' if 'f1' in names else 'back'}")
        assert await lab.engine.domstate("g") == "running"
        await lab.ticking()
        await lab.check()
        await lab.finish()
    finally:
        if info is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGCONT)
