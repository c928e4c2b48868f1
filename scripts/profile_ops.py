"""Where one ``qsnap`` command spends its time: a disk-only snapshot and its delete (an active
commit) on the running tiny guest, each profiled end to end in a process of its own.

For each command this prints its wall and CPU time, the QMP commands it sent (in order, with
counts), the fsyncs it made, and pyinstrument's call tree. It is the tool behind issue 19's
per-operation pass; run it after a change to see what a command still does that it need not.

    .venv/bin/python scripts/profile_ops.py [--tree] [--disks N]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))
sys.path.insert(0, str(REPO))


def profile_one(argv: list[str], tree: bool) -> None:
    """Run ``qsnap argv`` in this process under the profiler, counting QMP commands and
    fsyncs, and print what was seen."""
    from pyinstrument import Profiler

    from qsnap.cli import main
    from qsnap.monitor.client import Monitor

    commands: list[str] = []
    fsyncs = collections.Counter[str]()
    execute = Monitor.execute

    async def counting(self: Monitor, command: str, *args: object, **kwargs: object) -> object:
        commands.append(command)
        return await execute(self, command, *args, **kwargs)  # type: ignore[arg-type]

    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        try:
            fsyncs[os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]] += 1
        except OSError:
            fsyncs["?"] += 1
        real_fsync(fd)

    Monitor.execute = counting  # type: ignore[method-assign]
    os.fsync = counting_fsync
    profiler = Profiler(interval=0.0005, async_mode="enabled")
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.start()
    status = main(argv)
    profiler.stop()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"== qsnap {' '.join(argv[2:])}: status {status}, wall {wall * 1000:.1f} ms, "
          f"CPU {cpu * 1000:.1f} ms (in-process: no interpreter start)")
    print(f"   QMP commands ({len(commands)}): "
          + ", ".join(f"{c} x{n}" if n > 1 else c
                      for c, n in collections.Counter(commands).items()))
    print(f"   fsyncs ({sum(fsyncs.values())}): "
          + ", ".join(f"{f} x{n}" for f, n in fsyncs.items()))
    if tree:
        print(profiler.output_text(unicode=True, color=False, show_all=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="store_true", help="print pyinstrument's call trees")
    parser.add_argument("--disks", type=int, default=1)
    parser.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        profile_one(args.one, args.tree)
        return 0
    import guest as fixture  # fixtures/guest.py

    with tempfile.TemporaryDirectory(prefix="qsnap-profile-") as tmp:
        folder, state = Path(tmp) / "g", Path(tmp) / "state"
        xml = fixture.make_guest("prof", args.disks, 256, folder)
        qsnap = [sys.executable, "-m", "qsnap.cli", "--state-dir", str(state), "-q"]
        subprocess.run([*qsnap, "define", str(xml)], check=True, capture_output=True)
        subprocess.run([*qsnap, "start", "prof"], check=True, capture_output=True)
        try:
            serial = folder / "serial.log"
            deadline = time.monotonic() + 60
            while (fixture.last_serial_counter(serial) or 0) < 40:
                if time.monotonic() > deadline:
                    raise SystemExit("the guest does not count")
                time.sleep(0.1)
            for command in (["snapshot-create-as", "prof", "d1", "--disk-only", "--atomic"],
                            ["snapshot-delete", "prof", "--current"],
                            ["snapshot-create-as", "prof", "d2", "--disk-only", "--atomic"],
                            ["snapshot-delete", "prof", "--current"]):
                subprocess.run([sys.executable, __file__, *(["--tree"] if args.tree else []),
                                "--one", "--state-dir", str(state), "-q", *command],
                               check=True)
        finally:
            subprocess.run([*qsnap, "destroy", "prof"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
