"""Booting the tiny guest (fixtures/guest.py) under real QEMU for integration tests."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import REPO


def guest_module() -> ModuleType:
    """fixtures/guest.py, imported by path (it is a standalone script, not a package)."""
    spec = importlib.util.spec_from_file_location("qsnap_fixture_guest",
                                                  REPO / "fixtures" / "guest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_qemu() -> None:
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "qemu-io") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: scripts/test installs Debian's "
                    "qemu-system-x86 and qemu-utils when it can (as root)")


async def wait_for_counter(serial: Path, above: int, timeout: float = 60.0) -> int:
    """Wait until the guest's serial counter passes *above*; return it."""
    guest = guest_module()
    deadline = time.monotonic() + timeout
    while True:
        value = guest.last_serial_counter(serial) or 0
        if value > above:
            return value
        if time.monotonic() > deadline:
            tail = serial.read_bytes()[-300:] if serial.exists() else b"(no serial output)"
            raise AssertionError(f"guest counter stuck at {value} (wanted > {above}): {tail!r}")
        await asyncio.sleep(0.1)


#: The guest writes its counter to each disk in turn every 5 ticks.
WRITE_ROUND = 5


def assert_one_moment(counters: list[int | None]) -> int:
    """Counters read from images switched at one instant: the guest writes vda, vdb, ... in turn,
    so a single cut may fall between two of those writes. A consistent cut is therefore
    non-increasing in disk order and at most one write round apart; switching disks at
    different moments would break one or the other. Returns the first disk's counter."""
    assert all(c is not None for c in counters), counters
    values = [c for c in counters if c is not None]
    assert values == sorted(values, reverse=True), f"not one moment: {values}"
    assert values[0] - values[-1] <= WRITE_ROUND, f"not one moment: {values}"
    return values[0]


#: fixtures/guest.py's profiles, for suites that run on both.
PROFILES = ["minimal", "virt-install"]


def disk_targets(disks: int, profile: str = "minimal") -> list[str]:
    return guest_module().disk_targets(disks, profile)


async def started_guest(tmp_path: Path, disks: int,
                        profile: str = "minimal") -> tuple[object, Path]:
    """A defined and started tiny guest "g" under tmp_path/state; returns (engine, its folder)
    once it counts. The virt-install profile's NVRAM is qcow2, so that internal snapshots can
    take it too."""
    from qsnap import Engine
    require_qemu()
    engine = Engine(tmp_path / "state")
    xml = guest_module().make_guest("g", disks, 256 if profile != "minimal" else 128,
                                    tmp_path / "g", profile=profile).read_text()
    await engine.define(xml.replace("<cmdline>", "<nvram format='qcow2'/><cmdline>")
                        if profile == "virt-install" else xml)
    await boot(engine, tmp_path / "g" / "serial.log", 10)
    return engine, tmp_path / "g"


async def boot(engine: Any, serial: Path, above: int, domain: str = "g") -> None:
    """Start *domain* and wait until its counter passes *above*. A tiny guest that prints
    nothing at all within 45 s is started once more, with a note on stderr: under TCG on a
    loaded 2-CPU machine (two suites side by side) one boot in several hundred was seen to
    print nothing for a minute, which the crash walks count as "boots retried"; the guest's
    boot is not what these tests are about. A second silent boot fails the test."""
    for attempt in range(2):
        mark = serial.stat().st_size if serial.exists() else 0
        await engine.start(domain)
        try:
            deadline = time.monotonic() + 45
            while b"qsnap-counter" not in (serial.read_bytes()[mark:] if serial.exists()
                                           else b""):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the guest printed nothing within 45 s (attempt "
                                         f"{attempt + 1})")
                await asyncio.sleep(0.1)
            await wait_for_counter(serial, above, timeout=90)
            return
        except AssertionError:
            await engine.destroy(domain)
            if attempt or b"qsnap-counter" in (serial.read_bytes()[mark:]
                                               if serial.exists() else b""):
                raise
            print("qemu_guest.boot: the guest printed nothing within 45 s; starting it again",
                  file=sys.stderr)
        except BaseException:
            await engine.destroy(domain)
            raise


# -- images and snapshot data ------------------------------------------------------------------

def backing_chain(image: Path) -> list[str]:
    """``qemu-img info --backing-chain``: the image and its backing files, top first."""
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json",
                          str(image)], check=True, capture_output=True, text=True).stdout
    return [entry["filename"] for entry in json.loads(out)]


def write_disk_counter(image: Path, value: int) -> None:
    """Write a counter where the guest writes its own, for images of a stopped guest."""
    with tempfile.NamedTemporaryFile("wb") as source:
        data = f"qsnap-counter {value}\n".encode()
        source.write(data)
        source.flush()
        subprocess.run(["qemu-io", "-c", f"write -s {source.name} 0 {len(data)}", str(image)],
                       check=True, capture_output=True)


async def state_images(engine: object, name: str, domain: str = "g") -> list[Path]:
    """The images snapshot *name*'s ``<domain>`` names, in disk order."""
    from qsnap.model.domain import parse_domain_element
    snap = await engine.get(domain, name)  # type: ignore[attr-defined]
    return [Path(d.source or "") for d in parse_domain_element(snap.domain).disks]


def read_counters(images: list[Path]) -> list[int]:
    return [guest_module().read_disk_counter(i) or 0 for i in images]


async def domain_disks(engine: object, domain: str = "g") -> list[str]:
    from qsnap.model.domain import parse_domain
    return [d.source or "" for d in
            parse_domain(await engine.domain_xml(domain)).disks]  # type: ignore[attr-defined]


async def check_snapshot_data(engine: object, folder: Path, moments: dict[str, list[int]],
                              internal: frozenset[str] = frozenset(), domain: str = "g"
                              ) -> None:
    """Every snapshot of guest *domain* still reads the counters recorded in *moments* when it was
    taken; every image in *folder* passes ``qemu-img check`` (those a running guest writes to
    only once it is stopped); and every image or memory file there is named by a snapshot or
    the domain, or is in the backing chain of one that is. Snapshots in *internal* are
    internal ones: every disk image holds exactly their tags."""
    referenced: set[str] = set(await domain_disks(engine, domain))
    memory: set[str] = set()
    for summary in await engine.snapshots(domain):
        images = await state_images(engine, summary.name, domain)
        if summary.name in internal:  # its state is inside the images, under its tag
            continue
        assert read_counters(images) == moments[summary.name], summary.name
        referenced.update(str(i) for i in images)
        snap = await engine.get(domain, summary.name)  # type: ignore[attr-defined]
        if snap.memory_file:
            memory.add(snap.memory_file)
    needed = set(memory)
    for image in referenced:
        needed.update(backing_chain(Path(image)))
    on_disk = {str(p) for p in folder.iterdir() if p.name.startswith(f"{domain}-vd") or
               p.suffix == ".mem"}
    assert on_disk == needed, f"orphans: {on_disk - needed}, missing: {needed - on_disk}"
    # The images a running QEMU writes to are checked once it stops: `qemu-img check -U` on a
    # live qcow2 can see metadata QEMU has not flushed yet (seen here: a refcount "beyond the
    # end of the file"). Every image below them is read-only while the guest runs.
    running = await engine.domstate(domain) == "running"  # type: ignore[attr-defined]
    active = set(await domain_disks(engine, domain)) if running else set()
    if internal:
        for image in await domain_disks(engine, domain):
            assert internal_tags(image) == internal, image
    for image in on_disk - memory - active:
        check = subprocess.run(["qemu-img", "check", "-U", image], capture_output=True,
                               text=True)
        # Exit 3 is leaked clusters only ("waste of disk space, but no harm to data"), which
        # a QEMU SIGKILLed while the guest writes leaves (seen once in a 30-minute soak);
        # 1 (check failed) and 2 (corruption) are errors.
        assert check.returncode in (0, 3), (image, check.stdout, check.stderr)


def internal_tags(image: str) -> frozenset[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", image], check=True,
                         capture_output=True, text=True).stdout
    return frozenset(s["name"] for s in json.loads(out).get("snapshots", []))


async def first_counter_after(serial: Path, mark: int, timeout: float = 30.0) -> int:
    """The first counter the guest printed after byte *mark* of its serial log."""
    for _ in range(int(timeout * 10)):
        found = re.search(rb"qsnap-counter (\d+)\s", serial.read_bytes()[mark:])
        if found:
            return int(found.group(1))
        await asyncio.sleep(0.1)
    raise AssertionError("the guest printed nothing after the revert")


async def resumed_counter(serial: Path, mark: int, timeout: float = 30.0) -> int:
    """After a revert of a running guest begun when its serial log was *mark* bytes long: the
    counter the reverted guest resumed from, i.e. the first that does not continue the old
    run's count (the old QEMU may print a few more before it is stopped). *mark* is moved
    back to the start of its line: a line cut in two there matched on neither side, and the
    counter it held read as a jump (CI once saw 42 then 44, and took 44 for the reverted
    guest's)."""
    data = serial.read_bytes()
    mark = data.rfind(b"\n", 0, mark) + 1
    for _ in range(int(timeout * 10)):
        data = serial.read_bytes()
        values = [int(c) for c in re.findall(rb"qsnap-counter (\d+)\s", data[:mark])[-1:]]
        values += [int(c) for c in re.findall(rb"qsnap-counter (\d+)\s", data[mark:])]
        jumps = [b for a, b in itertools.pairwise(values) if b != a + 1]
        if jumps:
            return jumps[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the counter never jumped back after the revert")
