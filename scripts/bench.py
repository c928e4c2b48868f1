"""Benchmark: metadata operations from 1 to 10,000 snapshots, then the QEMU part (bench_qemu).

Run through ``scripts/bench``. Every figure is a median of repeated runs in this one process, and
every row is printed as a ratio against its baseline measured in the same run, so the numbers
compare across machines. Snapshot files carry a full embedded domain definition, as snapshots
taken by qsnap will.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from qsnap import Engine, ListFilter
from qsnap.model.snapshot import format_snapshot, parse_snapshot

UUID = "9d37b878-a7cc-9f9a-b78f-49b3abad25a8"
DOMAIN = (f"<domain type='qemu'><name>bench</name><uuid>{UUID}</uuid>"
          "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm"
          "</type><kernel>/boot/vmlinuz</kernel></os><devices>"
          "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
          "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
          "<source file='/img/bench.qcow2'/><target dev='vda' bus='virtio'/></disk>"
          "<serial type='file'><source path='/tmp/bench.log'/><target port='0'/></serial>"
          "</devices></domain>")


def snapshot(name: str, parent: str | None, when: int) -> str:
    parent_xml = f"<parent><name>{parent}</name></parent>" if parent else ""
    return (f"<domainsnapshot><name>{name}</name><state>running</state>{parent_xml}"
            f"<creationTime>{when}</creationTime><memory snapshot='internal'/>{DOMAIN}"
            "</domainsnapshot>")


async def populate(engine: Engine, count: int) -> None:
    """A random tree of *count* snapshots, written straight in the store's format (fast), with
    the last one current; the store is then used exactly as qsnap leaves it."""
    await engine.define(DOMAIN)
    folder = engine.state_dir / "domains" / "bench"
    rng = random.Random(count)
    for i in range(count):
        parent = f"s{rng.randrange(i)}" if i else None
        snap = parse_snapshot(snapshot(f"s{i}", parent, 1_700_000_000 + i), redefine=True)
        (folder / "snapshots" / f"s{i}.xml").write_text(
            format_snapshot(snap, active=i == count - 1))
    (folder / "current").write_text(f"s{count - 1}\n")


async def median(work: Callable[[], Awaitable[object]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(count: int, repeat: int, base: Path) -> dict[str, float]:
    engine = Engine(base / f"n{count}")
    await populate(engine, count)
    counter = iter(range(10**9))

    async def create() -> None:  # redefine --current: the metadata half of taking a snapshot
        n = next(counter)
        await engine.redefine("bench", snapshot(f"new{n}", f"s{count - 1}", 1_800_000_000 + n),
                              current=True)

    return {
        "list (table rows)": await median(lambda: engine.snapshots("bench"), repeat),
        "tree": await median(lambda: engine.tree("bench"), repeat),
        "list --leaves": await median(lambda: engine.snapshots("bench", ListFilter(leaves=True)),
                                      repeat),
        "current": await median(lambda: engine.current("bench"), repeat * 5),
        "snapshot-info": await median(lambda: engine.info("bench", None), repeat),
        "create (redefine --current)": await median(create, repeat * 5),
        "set current": await median(lambda: engine.set_current("bench", "s0"), repeat * 5),
        "CLI snapshot-list (process)": await median(
            lambda: cli(engine, "snapshot-list", "bench"), repeat),
        "CLI snapshot-list --tree": await median(
            lambda: cli(engine, "snapshot-list", "bench", "--tree"), repeat),
        "CLI snapshot-current --name": await median(
            lambda: cli(engine, "snapshot-current", "bench", "--name"), repeat),
    }


async def cli(engine: Engine, *args: str) -> None:
    """One ``qsnap`` command as a user runs it: a new Python process, start-up included (the
    issue's target is per CLI command)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qsnap.cli", "--state-dir", str(engine.state_dir), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"qsnap {' '.join(args)}: {err.decode().strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ram", default="256,1024",
                        help="guest RAM sizes in MiB for the QEMU part (comma-separated)")
    parser.add_argument("--skip-qemu", action="store_true",
                        help="no QEMU part (with --with-libvirt: only the side-by-side part)")
    parser.add_argument("--with-libvirt", action="store_true",
                        help="also run the same operations through libvirt's virsh, side by "
                             "side (starts libvirtd if none runs; root)")
    parser.add_argument("--memory", action="store_true",
                        help="only the memory-image part: full-system snapshots, revert and "
                             "save/restore in each format on every QEMU here, 1 GiB dirty "
                             "(with --with-libvirt: libvirt 11's virsh too)")
    parser.add_argument("--skip-memory", action="store_true",
                        help="leave out the memory-image part (8 minutes; --memory runs it "
                             "alone)")
    args = parser.parse_args()
    if args.memory:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_qemu
        bench_qemu.main([], args.repeat, libvirt=args.with_libvirt, memory_only=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="qsnap-bench-") as tmp:
        small = asyncio.run(measure(1, args.repeat, Path(tmp)))
        large = asyncio.run(measure(args.snapshots, args.repeat, Path(tmp)))
    n = args.snapshots
    print(f"qsnap metadata benchmark: 1 vs {n} snapshots (medians; full domain XML embedded)")
    print(f"{'operation':<30} {'median @1':>10} {f'median @{n}':>13} {'ratio':>8}  "
          "per snapshot")
    for op in small:
        ratio = large[op] / small[op]
        per = (large[op] - small[op]) / (n - 1) * 1e6
        print(f"{op:<30} {small[op] * 1e3:>8.2f}ms {large[op] * 1e3:>11.2f}ms {ratio:>7.1f}x  "
              f"{per:>7.1f} us")
    print("\nratio ~1x: cost independent of the tree's size (current, create, set current);")
    print("CLI rows: a whole qsnap process, Python start-up included (target: < 0.3 s at "
          "10,000 snapshots); list/tree/info use the summary cache once it is built.")
    print("list/tree/info stat every snapshot file and take unchanged ones from the summary "
          "cache (they grow with N; 'per snapshot' is the marginal cost).")
    if not args.skip_qemu or args.with_libvirt:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_qemu
        bench_qemu.main([int(r) for r in args.ram.split(",")], args.repeat,
                        qemu=not args.skip_qemu, libvirt=args.with_libvirt,
                        memory=not args.skip_memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
