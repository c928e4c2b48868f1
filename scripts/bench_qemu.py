"""QEMU benchmark: how long snapshots pause the tiny guest, and how close to the disk they run.

Run through ``scripts/bench`` (it runs this after the metadata benchmark). Every row is a median
of repeated runs in this one process, printed beside a baseline measured in the same run:

- disk-only snapshots (1 and 8 disks) against a bare, hand-written QMP ``transaction`` of the
  same overlays (qsnap's overhead);
- full-system external snapshots with each strategy, and internal ones: the guest's pause and
  the memory throughput as a share of the disk's sequential direct-I/O write speed (``dd``);
- revert from a memory file against RAM size / the disk's direct-I/O read speed.

Pauses come from QEMU's own STOP/RESUME event timestamps (recorded by qsnap) and, as a check,
from the guest's counter: a thread stamps each serial line as it appears, from a quarter second
before the operation, and the largest gap beyond the usual gap of its kind is the pause the guest
saw (see ``CounterWatch.pause``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import secrets
import statistics
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from libvirt_daemon import Libvirt
from qemu.qmp import QMPClient

from qsnap import CreateFlags, Engine, snapshot_xml_from_args
from qsnap.launcher.runtime import read_runtime, runtime_paths
from qsnap.model.capture import capture_of
from qsnap.model.domain import parse_domain, with_disk_images

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("qsnap_guest", REPO / "fixtures" / "guest.py")
assert _spec and _spec.loader
GUEST = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GUEST)

COUNTER = re.compile(rb"qsnap-counter (\d+)\s")
# After every fifth counter the guest also writes it to each of its disks (a busybox dd per
# disk, see fixtures/guest.py): the gap after such a tick is longer by nature, 20-50 ms under
# TCG, and is only compared with gaps of its own kind.
DISK_TICK = 5


class CounterWatch:
    """Stamps each counter line of a serial log as it appears (polling every millisecond)."""

    def __init__(self, serial: Path) -> None:
        self.serial = serial
        self.stamps: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        """The log's size; 0 while it does not exist (a restarted QEMU's log, or libvirt's,
        is created anew)."""
        try:
            return self.serial.stat().st_size
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        offset = self._size()
        while not self._stop.is_set():
            size = self._size()
            if size < offset:  # a new log: read it from the start
                offset = 0
            if size > offset:
                with open(self.serial, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(size - offset)
                now = time.perf_counter()
                # Up to the last whole line: a line caught half written is read next time.
                data = data[:data.rfind(b"\n") + 1]
                self.stamps += [(now, int(n)) for n in COUNTER.findall(data)]
                offset += len(data)
            time.sleep(0.001)

    @contextlib.contextmanager
    def watching(self) -> Iterator[CounterWatch]:
        self.stamps = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.25)  # the guest's usual gaps, of both kinds, before the operation
        try:
            yield self
        finally:
            time.sleep(0.3)  # let the guest print past the end of the operation
            self._stop.set()
            self._thread.join()

    def pause(self) -> float:
        """The largest gap between two successive counters beyond the usual gap of its kind
        (after a disk-writing tick or not) in this window. Without an operation this reads
        1-10 ms here (1 or 8 disks, TCG); comparing every gap with the overall median read
        22 ms at 1 disk and 34 ms at 8, the guest's own disk writes."""
        kinds: dict[bool, list[float]] = {True: [], False: []}
        for (t0, c0), (t1, c1) in zip(self.stamps, self.stamps[1:], strict=False):
            if c1 == c0 + 1:
                kinds[c0 % DISK_TICK == 0].append(t1 - t0)
        if len(kinds[True]) < 3 or len(kinds[False]) < 3:
            return float("nan")
        return max(0.0, *(max(gaps) - statistics.median(gaps) for gaps in kinds.values()))


def dd_speed(folder: Path, mib: int = 512, runs: int = 3) -> tuple[float, float]:
    """Sequential direct-I/O write and read speed (bytes/s) of the disk under *folder*: the
    median of *runs* (this virtual disk's speed varies by a third from one run to the next)."""
    path = folder / "dd.bin"

    def run(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run(["dd", *args, "bs=4M", f"count={mib // 4}", "status=none"],
                       capture_output=True, check=True)
        return mib * (1 << 20) / (time.perf_counter() - start)

    writes, reads = [], []
    for _ in range(runs):
        writes.append(run("if=/dev/zero", f"of={path}", "oflag=direct", "conv=fsync"))
        reads.append(run(f"if={path}", "of=/dev/null", "iflag=direct"))
    path.unlink()
    return statistics.median(writes), statistics.median(reads)


async def bare_transaction(qmp: str, folder: Path, tag: str) -> tuple[float, dict[str, str]]:
    """A hand-written QMP transaction putting a new overlay on every disk; its wall time
    (connect, query-block, transaction), the baseline for qsnap's disk-only snapshot, and
    the file each disk (by its device id) writes to now."""
    start = time.perf_counter()
    client = QMPClient("bench")
    await client.connect(qmp)
    files = {}
    try:
        actions = []
        for entry in await client.execute("query-block"):
            inserted = entry.get("inserted")
            if not inserted:
                continue
            node = inserted["node-name"]
            overlay = str(folder / f"bare-{node}-{tag}")
            files[entry["qdev"].split("/peripheral/")[1].split("/")[0]] = overlay
            actions.append({"type": "blockdev-snapshot-sync", "data": {
                "node-name": node, "snapshot-file": overlay,
                "snapshot-node-name": f"bare-{secrets.token_hex(4)}", "format": "qcow2"}})
        await client.execute("transaction", {"actions": actions})
    finally:
        await client.disconnect()
    return time.perf_counter() - start, files


async def follow_bare_transaction(engine: Engine, files: dict[str, str],
                                  domain: str = "g") -> None:
    """The bare transaction switched the disks behind qsnap's back: define the domain with
    the files QEMU now writes to (qsnap refuses to snapshot from a stale definition)."""
    definition = parse_domain(await engine.domain_xml(domain))
    await engine.define(with_disk_images(
        definition, {t: (path, "qcow2") for t, path in files.items()}).to_xml())


def qmp_socket(engine: Engine, domain: str) -> str:
    """The QMP socket of *domain*'s running QEMU (the bare transactions connect to it)."""
    info = read_runtime(runtime_paths(engine.state_dir, domain))
    assert info is not None, f"{domain} is not running"
    return info.qmp


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


class Guest:
    def __init__(self, base: Path, name: str, disks: int, ram: int, dirty: int) -> None:
        self.folder = base / name
        self.engine = Engine(base / f"{name}-state")
        self.name = "g"
        self.dirty = dirty
        self.xml = GUEST.make_guest("g", disks, ram, self.folder, dirty=dirty)
        self.serial = self.folder / "serial.log"
        self.watch = CounterWatch(self.serial)
        self.n = 0

    async def start(self) -> None:
        await self.engine.define(self.xml.read_text())
        await self.engine.start("g")
        while (GUEST.last_serial_counter(self.serial) or 0) < 40:
            await asyncio.sleep(0.1)
        # Memory measured before the dirtier has filled its share would be mostly zero pages,
        # which QEMU sends as flags: the stream would be a fraction of the RAM.
        deadline = time.monotonic() + 300
        while self.dirty and not GUEST.dirty_ready(self.serial):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the guest did not dirty {self.dirty} MiB within 300 s")
            await asyncio.sleep(0.2)

    def qmp(self) -> str:
        return qmp_socket(self.engine, "g")

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.engine.destroy("g")


async def disk_only_rows(base: Path, disks: int, repeat: int) -> list[tuple[str, str, str, str]]:
    guest = Guest(base, f"d{disks}", disks, 128, 0)
    await guest.start()
    try:
        qsnap_times, bare_times, pauses, bare_pauses = [], [], [], []
        for _ in range(repeat):
            name = guest.next("d")
            with guest.watch.watching() as watch:
                qsnap_times.append(await timed(lambda n=name: guest.engine.create(
                    "g", snapshot_xml_from_args(n), CreateFlags(disk_only=True))))
            pauses.append(watch.pause())
            with guest.watch.watching() as watch:
                bare, files = await bare_transaction(guest.qmp(), guest.folder, name)
            bare_pauses.append(watch.pause())
            bare_times.append(bare)
            await follow_bare_transaction(guest.engine, files)
            await asyncio.sleep(0.2)
        q, b = statistics.median(qsnap_times), statistics.median(bare_times)
        disk_s = f"{disks} disk{'s' if disks > 1 else ''}"
        return [(f"disk-only snapshot, {disk_s}",
                 f"{q * 1e3:.1f} ms", f"bare QMP {b * 1e3:.1f} ms", f"{q / b:.2f}x"),
                (f"  guest pause (counter gap), {disk_s}",
                 f"{statistics.median(pauses) * 1e3:.0f} ms",
                 f"bare QMP {statistics.median(bare_pauses) * 1e3:.0f} ms; target < 10 ms",
                 "")]
    finally:
        await guest.stop()


async def memory_rows(base: Path, ram: int, repeat: int, write_speed: float,
                      read_speed: float, *, dirty: int | None = None,
                      version: str = "") -> list[tuple[str, str, str, str]]:
    guest = Guest(base, f"m{ram}-{secrets.token_hex(2)}", 1, ram,
                  ram // 2 if dirty is None else dirty)
    on = f", {version}" if version else ""
    await guest.start()
    rows = []
    try:
        for strategy, live in (("background", True), ("precopy", True), ("paused", False),
                               ("internal", False)):
            walls, pauses, gaps, sizes = [], [], [], []
            for _ in range(repeat):
                name = guest.next(strategy[:2])
                memory = guest.folder / f"{name}.mem"
                memspec = None if strategy == "internal" else f"file={memory}"
                request = snapshot_xml_from_args(name, memspec=memspec)
                chosen = None if strategy == "internal" else strategy
                with guest.watch.watching() as watch:
                    start = time.perf_counter()
                    await guest.engine.create("g", request, CreateFlags(live=live),
                                              live_strategy=chosen)
                    walls.append(time.perf_counter() - start)
                gaps.append(watch.pause())
                capture = capture_of((await guest.engine.get("g", name)).cookie)
                pauses.append(capture.pause if capture else float("nan"))
                sizes.append(memory.stat().st_size if memory.exists() else 0)
                await guest.engine.delete("g", name)
            wall = statistics.median(walls)
            rate = statistics.median(sizes) / wall
            share = "(in the qcow2)" if strategy == "internal" else \
                f"{rate / write_speed:.2f}x disk write"
            rows.append((f"{strategy} full-system snapshot, {ram} MiB{on}",
                         f"{wall:.2f} s", f"pause {statistics.median(pauses) * 1e3:.1f} ms "
                         f"(gap {statistics.median(gaps) * 1e3:.0f} ms)", share))
        name = guest.next("rv")
        memory = guest.folder / f"{name}.mem"
        await guest.engine.create("g", snapshot_xml_from_args(name, memspec=f"file={memory}"),
                                  CreateFlags())
        # Seven: on this machine kind QEMU's own load of a page-cached image took 36 ms in
        # most runs and up to 410 ms in some (fresh memory the VM had handed back to its host).
        reverts = [await timed(lambda: guest.engine.revert("g", name))
                   for _ in range(max(7, repeat))]
        await guest.engine.destroy("g")
        starts = []
        for _ in range(repeat):
            starts.append(await timed(lambda: guest.engine.start("g")))
            await guest.engine.destroy("g")
        revert, start = statistics.median(reverts), statistics.median(starts)
        floor = memory.stat().st_size / read_speed
        rows.append((f"revert from memory file, {ram} MiB{on}", f"{revert:.2f} s",
                     f"start {start:.2f} s + read {floor:.2f} s",
                     f"{(revert - start) / floor:.2f}x read"))
    finally:
        await guest.stop()
    return rows


async def concurrent_rows(base: Path, count: int, repeat: int) -> list[tuple[str, str, str, str]]:
    """*count* guests (one disk each), each with its own engine-managed domain in one state
    directory, snapshotted at once from one asyncio engine, against snapshotting one; and
    the same for the bare hand-written transaction, which shows what the machine allows
    (on 2 cores the idle TCG guests alone take most of the CPU)."""
    engine = Engine(base / "many-state")
    names = [f"c{i}" for i in range(count)]
    for name in names:
        xml = GUEST.make_guest(name, 1, 128, base / name)
        await engine.define(xml.read_text())
        await engine.start(name)
    try:
        for name in names:
            while (GUEST.last_serial_counter(base / name / "serial.log") or 0) < 20:
                await asyncio.sleep(0.2)
        qmps = {name: qmp_socket(engine, name) for name in names}

        async def bare(guests: list[str], tag: str) -> float:
            """The wall time of the hand-written transaction on each of *guests* at once;
            the definitions follow afterwards, untimed."""
            start = time.perf_counter()
            done = await asyncio.gather(*(bare_transaction(
                qmps[name], base / name, tag) for name in guests))
            wall = time.perf_counter() - start
            for name, (_, files) in zip(guests, done, strict=True):
                await follow_bare_transaction(engine, files, name)
            return wall

        one, many, bare_one, bare_many = [], [], [], []
        for n in range(repeat):
            one.append(await timed(lambda n=n: engine.create(
                names[0], snapshot_xml_from_args(f"one{n}"), CreateFlags(disk_only=True))))
            many.append(await timed(lambda n=n: asyncio.gather(*(engine.create(
                name, snapshot_xml_from_args(f"all{n}"), CreateFlags(disk_only=True))
                for name in names))))
            bare_one.append(await bare(names[:1], f"bone{n}"))
            bare_many.append(await bare(names, f"ball{n}"))
        a, b = statistics.median(one), statistics.median(many)
        return [(f"disk-only snapshot of {count} guests at once", f"{b * 1e3:.1f} ms",
                 f"one guest {a * 1e3:.1f} ms", f"{b / a:.2f}x"),
                (f"  bare QMP transaction, {count} guests at once",
                 f"{statistics.median(bare_many) * 1e3:.1f} ms",
                 f"one guest {statistics.median(bare_one) * 1e3:.1f} ms",
                 f"{statistics.median(bare_many) / statistics.median(bare_one):.2f}x")]
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                await engine.destroy(name)


def qemus() -> list[tuple[str, str | None]]:
    """(version line, folder of its binaries or None for the system's) of each QEMU here: the
    system's, and the QEMU 10 scripts/setup.sh unpacks beside an older one."""
    found = []
    for folder in (None, SECOND_QEMU):
        binary = "qemu-system-x86_64" if folder is None else f"{folder}/qemu-system-x86_64"
        if folder is not None and not os.access(binary, os.X_OK):
            continue
        line = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        found.append((re.sub(r"^QEMU emulator version (\S+).*", r"QEMU \1", line.split("\n")[0]),
                      folder))
    return found


SECOND_QEMU = os.environ.get("QSNAP_QEMU10_DIR",
                             os.path.expanduser("~/.cache/qsnap/qemu-10")) + "/bin"


@contextlib.contextmanager
def using_qemu(folder: str | None) -> Iterator[None]:
    """Run guests (and qemu-img) from *folder* inside the block, as QSNAP_QEMU_BIN does for
    the tests: the guest fixture names the QEMU it finds first on PATH."""
    before = os.environ["PATH"]
    if folder is not None:
        os.environ["PATH"] = f"{folder}{os.pathsep}{before}"
    try:
        yield
    finally:
        os.environ["PATH"] = before


#: (image format, parallel channels) of each save/restore row.
SAVE_VARIANTS = [("raw", None), ("sparse", 1), ("sparse", 2), ("sparse", 4), ("zstd", None)]


def _variant_label(image_format: str, channels: int | None) -> str:
    return image_format + (f" x{channels}" if channels else "")


def _drop_caches() -> None:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False,
                   capture_output=True)


def _save_row(label: str, saves: list[float], restores: list[float], sizes: list[int],
              write_speed: float, read_speed: float, stream: float | None
              ) -> tuple[str, str, str, str]:
    """A row; the ratios are *stream* bytes (the raw image's size: a compressed image's
    ratio then says how fast its RAM got saved, not its few bytes) per second against dd."""
    save, restore = statistics.median(saves), statistics.median(restores)
    size = statistics.median(sizes)
    basis = stream or size
    return (label, f"{save:.2f} s / {restore:.2f} s",
            f"{size / 2**20:.0f} MiB; range {min(saves):.2f}-{max(saves):.2f} / "
            f"{min(restores):.2f}-{max(restores):.2f} s",
            f"{basis / save / write_speed:.2f}x / {basis / restore / read_speed:.2f}x dd")


async def save_format_rows(base: Path, ram: int, dirty: int, repeat: int, write_speed: float,
                           read_speed: float, version: str) -> list[tuple[str, str, str, str]]:
    """Whole paused saves and restores of a guest with *dirty* MiB of its RAM dirty, in each
    format qsnap writes, on the QEMU first on PATH, with the page cache dropped before each
    restore: as a share of the disk's direct-I/O speed (stream size / time against dd's)."""
    rows: list[tuple[str, str, str, str]] = []
    stream: float | None = None
    guest = Guest(base, f"f{ram}-{secrets.token_hex(2)}", 1, ram, dirty)
    await guest.start()
    try:
        for image_format, channels in SAVE_VARIANTS:
            saves: list[float] = []
            restores: list[float] = []
            sizes: list[int] = []
            label = f"qsnap save/restore {_variant_label(image_format, channels)}, {version}"
            try:
                for _ in range(repeat):
                    path = guest.folder / f"{guest.next('f')}.save"
                    saves.append(await timed(lambda p=path, f=image_format, c=channels:
                                             guest.engine.save("g", p, image_format=f,
                                                               parallel_channels=c)))
                    sizes.append(path.stat().st_blocks * 512)
                    _drop_caches()
                    restores.append(await timed(lambda p=path, c=channels:
                                                guest.engine.restore(p, parallel_channels=c)))
                    path.unlink()
            except Exception as exc:  # e.g. sparse on a QEMU without mapped-ram
                rows.append((label, "-", str(exc).split(";")[0], ""))
                continue
            stream = stream or statistics.median(sizes)  # the raw variant comes first
            rows.append(_save_row(label, saves, restores, sizes, write_speed, read_speed,
                                  stream))
    finally:
        await guest.stop()
    return rows


def libvirt_save_rows(base: Path, ram: int, dirty: int, repeat: int, write_speed: float,
                      read_speed: float, version: str, libvirt: Libvirt
                      ) -> list[tuple[str, str, str, str]]:
    """The same saves and restores as whole ``virsh save --image-format F
    [--parallel-channels N]`` and ``virsh restore`` commands, on the same guest definition and
    the same QEMU (its ``<emulator>`` is the one first on PATH)."""
    rows: list[tuple[str, str, str, str]] = []
    stream: float | None = None
    name = f"qsnap-bench-{secrets.token_hex(3)}"
    folder = base / name
    xml = GUEST.make_guest(name, 1, ram, folder, dirty=dirty)
    serial = folder / "serial.log"
    started = libvirt.virsh("create", str(xml))
    if started.returncode != 0:
        return [(f"libvirt {libvirt.version} save/restore, {version}", "-",
                 started.stderr.strip()[:60], "")]
    try:
        deadline = time.monotonic() + 300
        while not GUEST.dirty_ready(serial):
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirt's guest did not dirty {dirty} MiB within 300 s")
            time.sleep(0.2)
        for image_format, channels in SAVE_VARIANTS:
            label = (f"libvirt {libvirt.version} save/restore "
                     f"{_variant_label(image_format, channels)}, {version}")
            extra = ("--parallel-channels", str(channels)) if channels else ()
            saves: list[float] = []
            restores: list[float] = []
            sizes: list[int] = []
            failed = None
            for n in range(repeat):
                path = folder / f"lv{n}.save"
                start = time.perf_counter()
                saved = libvirt.virsh("save", name, str(path), "--image-format", image_format,
                                      *extra)
                saves.append(time.perf_counter() - start)
                if saved.returncode != 0:
                    failed = saved
                    break
                sizes.append(path.stat().st_blocks * 512)
                _drop_caches()
                start = time.perf_counter()
                restored = libvirt.virsh("restore", str(path), *extra)
                restores.append(time.perf_counter() - start)
                path.unlink()
                if restored.returncode != 0:
                    failed = restored
                    break
            if failed is not None:
                rows.append((label, "-", failed.stderr.strip().split("\n")[-1][:60], ""))
                if libvirt.virsh("domstate", name).stdout.strip() != "running":
                    break
                continue
            stream = stream or statistics.median(sizes)
            rows.append(_save_row(label, saves, restores, sizes, write_speed, read_speed,
                                  stream))
    finally:
        libvirt.virsh("destroy", name)
    return rows


#: The memory part's guest: 1 GiB of its RAM dirty, as the QEMU-10 issue's targets say.
MEMORY_GUEST_RAM, MEMORY_GUEST_DIRTY = 1536, 1024


def print_rows(rows: list[tuple[str, str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows) + 2
    for label, value, baseline, ratio in rows:
        print(f"{label:<{width}} {value:>10}  {baseline:<36} {ratio}")


async def memory_part(base: Path, repeat: int, write_speed: float, read_speed: float,
                      libvirt: bool) -> None:
    """Memory images on every QEMU here, side by side in this one run: full-system snapshots
    of each strategy and revert, and paused save/restore in each format, by qsnap and (with
    *libvirt*) by libvirt >= 11.2's virsh on the same QEMU."""
    ram, dirty = MEMORY_GUEST_RAM, MEMORY_GUEST_DIRTY
    print(f"\nmemory images: {ram} MiB guest with {dirty} MiB dirty, on each QEMU here "
          f"(medians of {repeat}; save/restore rows of {repeat + 2}, with their ranges)")
    with contextlib.ExitStack() as stack:
        reference = None
        if libvirt:
            from libvirt_daemon import LibvirtUnavailable, libvirt_11_running
            try:
                reference = stack.enter_context(libvirt_11_running())
                print(f"libvirt: {reference.how}")
            except LibvirtUnavailable as exc:
                print(f"libvirt 11 not measured: {exc}")
        rows: list[tuple[str, str, str, str]] = []
        for version, folder in qemus():
            with using_qemu(folder):
                rows += await memory_rows(base, ram, repeat, write_speed, read_speed,
                                          dirty=dirty, version=version)
                # Five: a restore's time moves by 2x from run to run on this VM (fresh
                # host memory for the new QEMU's RAM), more than any format's difference.
                rows += await save_format_rows(base, ram, dirty, repeat + 2, write_speed,
                                               read_speed, version)
                if reference is not None:
                    rows += await asyncio.to_thread(
                        libvirt_save_rows, base, ram, dirty, repeat + 2, write_speed,
                        read_speed, version, reference)
    print_rows(rows)
    print("save/restore rows: whole commands (API calls for qsnap, virsh processes for "
          "libvirt), paused save then restore with caches dropped; the ratios are the raw "
          "image's size (the RAM stream) per second against dd's direct-I/O write and read "
          "speed (a restore includes starting QEMU).")


async def run(base: Path, rams: list[int], repeat: int, libvirt: bool,
              memory_only: bool, memory: bool = True) -> None:
    write_speed, read_speed = dd_speed(base)
    print(f"\nqsnap QEMU benchmark (tiny guest, TCG or KVM as probed; medians of {repeat})")
    print(f"disk under {base}: direct-I/O write {write_speed / 1e6:.0f} MB/s, "
          f"read {read_speed / 1e6:.0f} MB/s (dd, 512 MiB, median of 3, this run)")
    if not memory_only:
        rows = []
        for disks in (1, 8):
            rows += await disk_only_rows(base, disks, repeat)
        rows += await concurrent_rows(base, 8, repeat)
        for ram in rams:
            rows += await memory_rows(base, ram, max(3, repeat // 2), write_speed, read_speed)
        print_rows(rows)
        print("full-system rows: the guest keeps half its RAM dirty; 'pause' is QEMU's "
              "STOP->RESUME time qsnap recorded; throughput = memory file size / wall time.")
        print("'gap' and 'guest pause': the largest gap between two of the guest's counters "
              "beyond the usual gap of its kind (after every fifth one the guest also writes "
              "its disks), as a thread here saw the serial log grow; it also shows stalls "
              "without a STOP (a disk transaction holds QEMU's big lock). Without any "
              "operation it reads 1-10 ms.")
    if memory:
        await memory_part(base, 3, write_speed, read_speed, libvirt)
    if not libvirt:
        print("libvirt side by side: add --with-libvirt.")


def main(rams: list[int], repeat: int, *, qemu: bool = True, libvirt: bool = False,
         memory_only: bool = False, memory: bool = True) -> None:
    base = Path(os.environ.get("QSNAP_BENCH_DIR") or "/var/tmp") / f"qsnap-bench-{os.getpid()}"
    base.mkdir(parents=True)
    try:
        if qemu:
            asyncio.run(run(base, rams, repeat, libvirt, memory_only, memory))
        if libvirt and not memory_only:
            import bench_libvirt
            bench_libvirt.run(base, max(3, repeat // 2))
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
