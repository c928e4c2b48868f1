"""The reference: the same operations through libvirt 9.0's ``virsh`` and through ``qsnap``.

Run by ``scripts/bench --with-libvirt``. Both sides get the same tiny guest from the fixture
(same XML, same RAM, half of it kept dirty), and every operation is one command-line process on
each side (``virsh ...`` against ``qsnap ...``), so process start-up counts on both. Each row is a
median of repeats in this one run: wall time on both sides, their ratio, and the largest gap in
each guest's own counter during the operation (the pause the guest saw).

libvirt runs here without systemd, as the performance issue describes: when no libvirtd answers
on ``qemu:///system``, this creates the groups, user, folders and ``qemu.conf`` settings it needs
(only those missing), starts ``virtlogd -d`` and ``libvirtd -d``, and at the end stops the
daemons it started, by their PIDs. It never needs libvirt to pass: where it cannot run, it says
why and the benchmark carries on.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_qemu import GUEST, CounterWatch
from libvirt_daemon import URI, LibvirtUnavailable, libvirt_running


class Side:
    """One guest driven by one tool; ``run`` times a command and watches the guest's counter."""

    def __init__(self, tool: str, base: Path, name: str, state: Path) -> None:
        self.tool = tool
        self.name = name
        self.folder = base / tool
        self.state = state
        self.xml = GUEST.make_guest(name, 1, 256, self.folder, dirty=128)
        self.serial = self.folder / "serial.log"
        self.watch = CounterWatch(self.serial)
        self.n = 0
        self.internal_left = 0

    def command(self, *args: str) -> list[str]:
        if self.tool == "libvirt":
            return ["virsh", "-q", "-c", URI, *args]
        return [sys.executable, "-m", "qsnap.cli", "--state-dir", str(self.state), "-q", *args]

    def run(self, *args: str) -> tuple[float, float]:
        """Wall time of one command, and the guest's largest counter gap during it."""
        with self.watch.watching() as watch:
            start = time.perf_counter()
            result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                    timeout=600)
            wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{self.tool} {' '.join(args)}: {result.stderr.strip()}")
        return wall, watch.pause()

    def setup(self) -> None:
        for args in (("define", str(self.xml)), ("start", self.name)):
            subprocess.run(self.command(*args), check=True, capture_output=True, timeout=120)
        self.wait_running()
        deadline = time.monotonic() + 300  # memory compared before it is dirty is mostly zeros
        while not GUEST.dirty_ready(self.serial):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.tool}: the guest did not dirty its memory in 300 s")
            time.sleep(0.2)

    def wait_running(self) -> None:
        deadline = time.monotonic() + 60
        mark = GUEST.last_serial_counter(self.serial) or 0
        while (GUEST.last_serial_counter(self.serial) or 0) < mark + 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.tool}: the guest does not count")
            time.sleep(0.1)

    def teardown(self) -> None:
        for args in (("destroy", self.name),
                     ("undefine", self.name, "--snapshots-metadata", "--managed-save")
                     if self.tool == "libvirt" else ("undefine", self.name,
                                                     "--snapshots-metadata")):
            subprocess.run(self.command(*args), capture_output=True, timeout=120)

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


Operation = Callable[[Side], tuple[float, float]]


def operations(repeat: int) -> list[tuple[str, Operation]]:
    """The operations both tools are asked to do, in order, each taking one Side."""

    def internal_create(side: Side) -> tuple[float, float]:
        side.internal_left += 1
        return side.run("snapshot-create-as", side.name, f"i{side.internal_left}")

    def internal_revert(side: Side) -> tuple[float, float]:
        result = side.run("snapshot-revert", side.name, "i1")
        side.wait_running()
        return result

    def internal_delete(side: Side) -> tuple[float, float]:
        """The internal snapshots, newest first (after the revert, i1 is current)."""
        side.internal_left -= 1
        return side.run("snapshot-delete", side.name, f"i{side.internal_left + 1}")

    def startup(side: Side) -> tuple[float, float]:
        return side.run("list", "--all")

    def disk_only(side: Side) -> tuple[float, float]:
        return side.run("snapshot-create-as", side.name, side.next("d"), "--disk-only",
                        "--atomic")

    def external_delete(side: Side) -> tuple[float, float]:
        return side.run("snapshot-delete", side.name, "--current")

    def full(live: bool) -> Operation:
        def take(side: Side) -> tuple[float, float]:
            name = side.next("f")
            return side.run("snapshot-create-as", side.name, name, "--memspec",
                            f"file={side.folder / (name + '.mem')}",
                            *(["--live"] if live else []))
        return take

    def save_restore(side: Side) -> tuple[float, float]:
        image = side.folder / f"{side.next('s')}.save"
        wall_save, gap = side.run("save", side.name, str(image))
        wall_restore, _ = side.run("restore", str(image))
        side.wait_running()
        image.unlink()
        return wall_save + wall_restore, gap

    ops: list[tuple[str, Operation]] = []
    ops += [("a command that does nothing (list --all)", startup)] * repeat
    ops += [("internal full-system snapshot", internal_create)] * repeat
    ops += [("revert to internal snapshot", internal_revert)] * repeat
    ops += [("delete internal snapshot", internal_delete)] * repeat
    ops += [("disk-only snapshot, 1 disk", disk_only), ("delete it (active commit)",
                                                        external_delete)] * repeat
    ops += [("external full-system snapshot (paused)", full(False))] * repeat
    ops += [("external full-system snapshot --live", full(True))] * repeat
    ops += [("save, then restore", save_restore)] * repeat
    return ops


def run(base: Path, repeat: int) -> None:
    print("\nlibvirt side by side (virsh vs qsnap command lines, same guest: 256 MiB, 128 MiB "
          f"kept dirty; medians of {repeat})")
    try:
        with libvirt_running() as how:
            print(f"libvirt 9.0 on {URI}: {how}")
            _compare(base, repeat)
    except LibvirtUnavailable as exc:
        print(f"libvirt not measured: {exc}")


def _compare(base: Path, repeat: int) -> None:
    name = f"qsnap-bench-{os.getpid()}"
    sides = {tool: Side(tool, base / "side-by-side", name, base / "side-by-side" / "state")
             for tool in ("qsnap", "libvirt")}
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    order: list[str] = []
    try:
        for side in sides.values():
            side.setup()
        for label, operation in operations(repeat):
            if label not in order:
                order.append(label)
            for tool, side in sides.items():  # alternate, so drift hits both alike
                try:
                    measured = operation(side)
                except RuntimeError as exc:
                    results.setdefault(label, {}).setdefault(tool, [])
                    print(f"  {label}: {exc}")
                    continue
                results.setdefault(label, {}).setdefault(tool, []).append(measured)
    finally:
        for side in sides.values():
            side.teardown()
    width = max(len(label) for label in order) + 2
    print(f"{'operation':<{width}} {'qsnap':>10} {'libvirt':>10}  {'ratio':>6}   "
          "guest counter gap qsnap / libvirt")
    for label in order:
        q, v = results[label].get("qsnap", []), results[label].get("libvirt", [])
        if not q or not v:
            print(f"{label:<{width}} {_ms(q):>10} {_ms(v):>10}  {'-':>6}   (a side failed)")
            continue
        qw, vw = statistics.median(w for w, _ in q), statistics.median(w for w, _ in v)
        qg, vg = statistics.median(g for _, g in q), statistics.median(g for _, g in v)
        print(f"{label:<{width}} {qw * 1e3:>8.0f}ms {vw * 1e3:>8.0f}ms  {qw / vw:>5.2f}x   "
              f"{qg * 1e3:.0f} ms / {vg * 1e3:.0f} ms")
    print("ratio = qsnap wall time / libvirt wall time (lower is better for qsnap); both include "
          "starting their command-line process, which the first row shows alone (qsnap's is a "
          "Python start-up; virsh is C talking to a running daemon). 'nan': the guest printed "
          "nothing during the operation (its QEMU was restarted). libvirt 9.0 cannot revert to "
          "external snapshots, so that is measured for qsnap only, in the QEMU part above.")


def _ms(values: list[tuple[float, float]]) -> str:
    return f"{statistics.median(w for w, _ in values) * 1e3:.0f}ms" if values else "failed"
