"""A long random run of create/revert/delete/save/restore on several guests with random kills.

Four guests (two disks each) run under real QEMU. One worker per guest picks operations at
random and runs each as its own ``qsnap`` process. About a third of them are killed: half at a
random step boundary (``QSNAP_CRASH_AT``), half by SIGKILL at a random moment (inside a step,
as a power cut would), and some of those have the guest's QEMU SIGKILLed too. ``qsnap
recover`` then settles what the crash left. After every operation the guest's data is checked
the way the test suite does it (tests/qemu_guest.check_snapshot_data):

- every snapshot still reads the counters recorded when it was taken;
- every image passes ``qemu-img check``;
- no image or memory file is left that nothing refers to;
- no intent record is left;
- the snapshots present are the ones expected after the operation;
- the guest's disk holds at least what it had written before a create, delete or save.

At the end it prints the counts and exits 1 if any check failed. Run it through
``scripts/soak`` (which sets up the environment); ``--minutes`` sets the length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from qemu_guest import (  # noqa: E402
    WRITE_ROUND,
    assert_one_moment,
    check_snapshot_data,
    domain_disks,
    first_counter_after,
    guest_module,
    read_counters,
    state_images,
    wait_for_counter,
)

from qsnap import Engine, QsnapError  # noqa: E402
from qsnap.faults import CRASH_EXIT  # noqa: E402
from qsnap.launcher.runtime import read_runtime, runtime_paths  # noqa: E402
from qsnap.model.domain import parse_domain  # noqa: E402
from qsnap.monitor import Monitor  # noqa: E402

GUEST = guest_module()
OPERATIONS = {"create-disk": 3, "create-full": 2, "revert": 2, "delete": 2, "save": 1}
MAX_SNAPSHOTS = 8


def qemu_processes(domain: str) -> list[int]:
    """Live (not zombie) QEMU processes started for *domain*: more than one would be a QEMU
    some operation lost track of, still holding the guest's images."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and b"qemu-system" in cmdline and \
                f"guest={domain},".encode() in cmdline:
            found.append(int(entry.name))
    return found


class Worker:
    """One guest and the random operations on it."""

    def __init__(self, engine: Engine, state: Path, folder: Path, name: str, seed: int,
                 counts: Counter[str], failures: list[str]) -> None:
        self.engine = engine
        self.state = state
        self.folder = folder
        self.name = name
        self.random = random.Random(seed)
        self.counts = counts
        self.failures = failures
        self.moments: dict[str, list[int]] = {}
        self.serial = folder / "serial.log"
        self.serial_number = 0
        self.log: TextIO | None = None

    async def qsnap(self, *args: str, crash_at: int | None = None,
                    kill_after: float | None = None) -> tuple[int, str]:
        """Run one qsnap command; *crash_at* ends it at that step boundary, *kill_after*
        SIGKILLs it after that many seconds wherever it is (then its return code is
        ``-SIGKILL``; a command that finished first is not killed)."""
        env = {**os.environ, "QSNAP_CRASH_AT": str(crash_at)} if crash_at else None
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qsnap.cli", "--state-dir", str(self.state), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        talk = asyncio.ensure_future(process.communicate())
        if kill_after is not None:
            done, _ = await asyncio.wait({talk}, timeout=kill_after)
            if not done:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        out, err = await asyncio.wait_for(talk, 600)
        assert process.returncode is not None
        return process.returncode, (out + err).decode(errors="replace")

    async def ensure_running(self) -> None:
        """Start the guest if an operation (or a QEMU kill) left it stopped; a start whose
        guest prints nothing within a minute is retried once and counted."""
        if await self.engine.domstate(self.name) == "running":
            return
        for attempt in range(2):
            mark = self.serial.stat().st_size if self.serial.exists() else 0
            await self.engine.start(self.name)
            self.counts["guest starts"] += 1
            try:
                await first_counter_after(self.serial, mark, timeout=60)
                # Each boot counts from 1: until it has written every disk twice, the disks
                # mix its counters with the last boot's, and a snapshot then would not read
                # as one moment (it is one, across the reboot).
                await wait_for_counter(self.serial, 2 * WRITE_ROUND + 2)
                return
            except AssertionError:
                if attempt:
                    raise
                self.counts["guest starts retried"] += 1
                await self.engine.destroy(self.name)

    def top(self, disks: list[str]) -> int:
        return GUEST.read_disk_counter(Path(disks[0])) or 0

    async def step(self) -> None:
        await self.ensure_running()
        names = {s.name for s in await self.engine.snapshots(self.name)}
        choice = self.random.choices(list(OPERATIONS), weights=list(OPERATIONS.values()))[0]
        if len(names) >= MAX_SNAPSHOTS:
            choice = "delete"
        if not names and choice in ("revert", "delete"):
            choice = "create-disk"
        self.serial_number += 1
        snap = f"s{self.serial_number}"
        args: list[str]
        allowed_new: set[str] = set()
        allowed_gone: set[str] = set()
        keeps_data = True
        if choice == "create-disk":
            args = ["snapshot-create-as", self.name, snap, "--disk-only"]
            allowed_new = {snap}
        elif choice == "create-full":
            args = ["snapshot-create-as", self.name, snap, "--memspec",
                    f"file={self.folder / (snap + '.mem')}"]
            if self.random.random() < 0.5:
                args += ["--live"]
            allowed_new = {snap}
        elif choice == "revert":
            target = self.random.choice(sorted(names))
            args = ["snapshot-revert", self.name, target]
            keeps_data = False
        elif choice == "delete":
            target = self.random.choice(sorted(names))
            args = ["snapshot-delete", self.name, target]
            allowed_gone = {target}
        else:
            image = self.folder.parent / f"{self.name}-save-{snap}.img"
            args = ["save", self.name, str(image)]
        disks_before = await domain_disks(self.engine, self.name)
        written: int | None = self.top(disks_before)
        if written is not None and written > (GUEST.last_serial_counter(self.serial) or 0):
            # Written by an earlier boot (each boot counts from 1): this run has yet to pass
            # it, so the disk may legitimately show smaller values for a while.
            written = None
        # A third of the operations are killed: half at a step boundary (QSNAP_CRASH_AT),
        # half by SIGKILL at a random moment, inside a step as a power cut would.
        crash_at = kill_after = None
        if self.random.random() < 0.35:
            if self.random.random() < 0.5:
                crash_at = self.random.randint(1, 45)
            else:
                kill_after = self.random.uniform(0.05, 1.5)
        kill_qemu = (crash_at or kill_after) is not None and self.random.random() < 0.15
        when = f"at step {crash_at}" if crash_at else f"after {kill_after or 0:.2f} s"
        rc, output = await self.qsnap(*args, crash_at=crash_at, kill_after=kill_after)
        self.counts["operations"] += 1
        self.counts[f"op {choice}"] += 1
        if rc in (CRASH_EXIT, -signal.SIGKILL):
            self.counts["qsnap killed" if rc == CRASH_EXIT else "qsnap killed at a random time"] \
                += 1
            if kill_qemu:
                info = read_runtime(runtime_paths(self.engine.state_dir, self.name))
                if info is not None:
                    os.kill(info.pid, signal.SIGKILL)
                    self.counts["QEMU killed too"] += 1
            rc2, said = await self.qsnap("recover", self.name)
            if rc2 != 0:
                self.fail(f"recover after {args} killed {when}"
                          f"{' with QEMU' if kill_qemu else ''}: {said}")
                return
            if "settled an interrupted" in said:
                self.counts["recoveries"] += 1
        elif rc != 0:
            self.counts["refused with an error"] += 1
            if "Traceback" in output:
                self.fail(f"{args}: traceback: {output}")
        if choice == "save":
            image = Path(args[-1])
            if image.exists():  # the save went through (or was finished by recovery)
                await self.engine.restore(image)
                image.unlink()
                self.counts["restores"] += 1
        how = f"{args} (killed {when}{' with QEMU' if kill_qemu else ''}; " \
            f"rc {rc})" if (crash_at or kill_after) else f"{args} (rc {rc})"
        how += f"; disks before: {disks_before}; said: {output.strip()[-600:]}"
        if self.log is not None:
            self.log.write(json.dumps({
                "guest": self.name, "args": args, "crash_at": crash_at,
                "kill_after": kill_after, "kill_qemu": kill_qemu,
                "rc": rc, "output": output.strip()[-2000:], "snapshots_before": sorted(names),
                "disks_before": disks_before,
                "disks_after": await domain_disks(self.engine, self.name)}) + "\n")
            self.log.flush()
        await self.check(names, allowed_new, allowed_gone, written if keeps_data else None,
                         how)

    async def check(self, before: set[str], allowed_new: set[str], allowed_gone: set[str],
                    written: int | None, how: str) -> None:
        try:
            intent = self.state / "domains" / self.name / "intent.json"
            assert not intent.exists(), "an intent record is left"
            after = {s.name for s in await self.engine.snapshots(self.name)}
            assert after - before <= allowed_new, f"unexpected new snapshots {after - before}"
            assert before - after <= allowed_gone, f"snapshots lost: {before - after}"
            for name in after - before:
                counters = read_counters(await state_images(self.engine, name, self.name))
                self.moments[name] = counters  # from now on it must read these
                assert_one_moment(counters)
            for name in before - after:
                del self.moments[name]
            await check_snapshot_data(self.engine, self.folder, self.moments, domain=self.name)
            running = await self.engine.domstate(self.name) != "shut off"
            assert len(qemu_processes(self.name)) == int(running), \
                f"QEMU processes of the guest: {qemu_processes(self.name)} (running: {running})"
            if running:
                await self.check_chains()
            if written is not None and await self.engine.domstate(self.name) != "shut off":
                disks = await domain_disks(self.engine, self.name)
                now = self.top(disks)
                assert now >= written, f"disk counter went back from {written} to {now} " \
                    f"(disks now {disks})"
            self.counts["data checks passed"] += 1
        except (AssertionError, subprocess.CalledProcessError, QsnapError) as exc:
            self.fail(f"after {how}: {exc!r}\n{traceback.format_exc()}")

    async def check_chains(self) -> None:
        """The running QEMU writes to the images the definition names, and every file in its
        chains exists: a definition that drifted from QEMU would make the next snapshot
        record images it does not hold."""
        info = read_runtime(runtime_paths(self.engine.state_dir, self.name))
        assert info is not None, "the guest runs, but no runtime record says where"
        async with await Monitor.connect(info.qmp) as monitor:
            chains = await monitor.block_chains()
        definition = parse_domain(await self.engine.domain_xml(self.name))
        for disk in definition.disks:
            chain = [f for _, f in chains.get(disk.target, [])]
            assert chain and chain[0] == disk.source, \
                f"disk {disk.target}: the definition names {disk.source}, QEMU writes to {chain}"
            missing = [f for f in chain if not os.path.exists(f)]
            assert not missing, f"disk {disk.target}: QEMU's chain has deleted files {missing}"

    def fail(self, what: str) -> None:
        self.counts["FAILED checks"] += 1
        self.failures.append(f"{self.name}: {what}")
        print(f"FAILED {self.name}: {what}", file=sys.stderr, flush=True)


async def soak(minutes: float, guests: int, seed: int, folder: Path) -> int:
    state = folder / "state"
    engine = Engine(state)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    workers = []
    for i in range(guests):
        name = f"soak{i}"
        xml = GUEST.make_guest(name, 2, 128, folder / name)
        await engine.define(xml.read_text())
        workers.append(Worker(engine, state, folder / name, name, seed + i, counts, failures))
    log = open(folder / "operations.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    for worker in workers:  # one line per operation, to trace a failed check back
        worker.log = log
    deadline = time.monotonic() + minutes * 60
    started = time.monotonic()
    next_report = [started + 60]

    async def run(worker: Worker) -> None:
        while time.monotonic() < deadline:
            try:
                await worker.step()
            except Exception as exc:  # the check must go on; the failure is counted
                worker.fail(f"{exc!r}\n{traceback.format_exc()}")
            if time.monotonic() >= next_report[0]:  # a line a minute, whoever passes first
                next_report[0] += 60
                print(f"{(time.monotonic() - started) / 60:5.1f} min: {dict(counts)}",
                      flush=True)

    try:
        await asyncio.gather(*(run(w) for w in workers))
    finally:
        for worker in workers:
            try:
                if await engine.domstate(worker.name) != "shut off":
                    await engine.destroy(worker.name)
            except Exception as exc:  # the others must still be stopped
                worker.fail(f"stopping the guest at the end: {exc!r}")
            for pid in qemu_processes(worker.name):  # none should be left; if so, counted
                worker.fail(f"a QEMU of the guest outlived it: pid {pid}")
                os.kill(pid, signal.SIGKILL)
    for worker in workers:  # stopped now: the images guests wrote to are checked too
        await worker.check(set(worker.moments), set(), set(), None, "the final check")
    summary = {"minutes": round((time.monotonic() - started) / 60, 1), "guests": guests,
               "seed": seed, **dict(sorted(counts.items()))}
    print(json.dumps(summary, indent=1))
    for failure in failures:
        print("FAILED:", failure[:2000], file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    options = parser.parse_args()
    folder = options.dir or Path(tempfile.mkdtemp(prefix="qsnap-soak."))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"soak: {options.guests} guests, {options.minutes:g} min, seed {options.seed}, "
          f"in {folder}", flush=True)
    return asyncio.run(soak(options.minutes, options.guests, options.seed, folder))


if __name__ == "__main__":
    sys.exit(main())
