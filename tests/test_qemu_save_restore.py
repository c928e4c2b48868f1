"""save / restore / managedsave with real QEMU and the tiny guest, in libvirt's image format.

The guest prints an ever-increasing counter on its serial console (appended across QEMU runs),
so a restored guest that resumes from the saved moment shows no gap and no restart in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import tree_picture
from qemu_guest import guest_module, started_guest, wait_for_counter

import qsnap
from qsnap import Engine
from qsnap.engine.memory import read_image
from qsnap.model import save_image
from qsnap.monitor import Monitor, MonitorClosedError

GUEST = guest_module()


def counters(serial: Path) -> list[int]:
    return [int(c) for c in re.findall(rb"qsnap-counter (\d+)", serial.read_bytes())]


def assert_continuous(serial: Path) -> None:
    """Every counter follows the one before: the guest never restarted nor lost a moment."""
    values = counters(serial)
    gaps = [(a, b) for a, b in itertools.pairwise(values) if b != a + 1]
    assert not gaps, f"the guest did not resume where it was saved: {gaps}"


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[tuple[Engine, Path]]:
    engine, _ = await started_guest(tmp_path, 1)
    yield engine, tmp_path / "g"
    with contextlib.suppress(qsnap.QsnapError):
        await engine.destroy("g")


async def test_save_and_restore_resume_the_same_moment(guest: tuple[Engine, Path]) -> None:
    engine, folder = guest
    image = folder / "g.save"
    await engine.save("g", image)
    assert await engine.domstate("g") == "shut off"
    saved = counters(folder / "serial.log")[-1]
    assert image.stat().st_mode & 0o777 == 0o600
    assert image.read_bytes()[:16] == save_image.MAGIC
    assert "<name>g</name>" in await engine.save_image_xml(image)

    assert (await engine.restore(image)).name == "g"
    assert await engine.domstate("g") == "running"
    await wait_for_counter(folder / "serial.log", saved + 20)
    assert_continuous(folder / "serial.log")

    # --paused wins over the recorded state; a paused save restores paused.
    await engine.destroy("g")
    await engine.restore(image, running=False)
    assert await engine.domstate("g") == "paused"
    again = folder / "paused.save"
    await engine.save("g", again)
    await engine.restore(again)
    assert await engine.domstate("g") == "paused"


async def test_progress_events_of_save_and_restore(guest: tuple[Engine, Path]) -> None:
    """``--progress-json``: a save reports the bytes QEMU has written and a restore those it
    has read, rising to the whole stream, each with a rate; the image is what both count."""
    engine, folder = guest
    image = folder / "progress.save"
    reports: dict[str, list[dict[str, object]]] = {}
    for command in (("save", "g", str(image)), ("restore", str(image))):
        result = subprocess.run(
            [sys.executable, "-m", "qsnap.cli", "--state-dir", str(engine.state_dir),
             "--progress-json", *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        reports[command[0]] = [json.loads(line) for line in result.stderr.splitlines()]
    stream = image.stat().st_size - read_image(image).stream_offset
    for name, events in reports.items():
        assert len(events) >= 2, (name, events)
        done = [int(str(e["done"])) for e in events]
        assert done == sorted(done) and done[-1] == stream, (name, done, stream)
        assert events[-1]["total"] == stream, (name, events[-1])  # ends at 100 %
        assert all(e["event"] == "progress" and e["total"] for e in events)
        assert int(str(events[-1]["rate"])) > 0
    assert str(reports["save"][0]["operation"]) == "save memory to progress.save"
    assert str(reports["restore"][0]["operation"]) == "load memory from progress.save"
    assert await engine.domstate("g") == "running"


async def test_managedsave_then_start_resumes_and_removes_the_image(
        guest: tuple[Engine, Path]) -> None:
    engine, folder = guest
    await engine.managedsave("g")
    managed = engine.state.folder("g").managed_save
    assert managed.is_file() and await engine.domstate("g") == "shut off"
    saved = counters(folder / "serial.log")[-1]
    await engine.start("g")
    assert not managed.exists()
    await wait_for_counter(folder / "serial.log", saved + 20)
    assert_continuous(folder / "serial.log")


async def test_bad_saves_change_nothing(guest: tuple[Engine, Path], tmp_path: Path) -> None:
    engine, folder = guest
    existing = folder / "taken.save"
    existing.write_bytes(b"precious")
    with pytest.raises(qsnap.AlreadyExistsError, match="refusing to overwrite existing file"):
        await engine.save("g", existing)
    assert existing.read_bytes() == b"precious"
    with pytest.raises(qsnap.InvalidArgumentError, match="No such file or directory"):
        await engine.save("g", tmp_path / "missing" / "g.save")
    other = (await engine.domain_xml("g")).replace("<name>g</name>", "<name>h</name>")
    with pytest.raises(qsnap.InvalidArgumentError, match="--xml must describe domain 'g'"):
        await engine.save("g", folder / "x.save", xml=other)
    assert await engine.domstate("g") == "running"
    assert not (folder / "x.save").exists()
    await engine.destroy("g")
    with pytest.raises(qsnap.OperationInvalidError, match="domain 'g' is not running"):
        await engine.save("g", folder / "x.save")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); the disk-full "
                    "case needs root and mount permission")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


async def test_full_disk_while_saving(guest: tuple[Engine, Path], tmp_path: Path) -> None:
    engine, folder = guest
    with small_tmpfs(tmp_path / "full", "8m") as full:
        with pytest.raises(qsnap.QsnapError, match=f"writing memory image '{full}/g.save' "
                           "failed: No space left on device"):
            await engine.save("g", full / "g.save")
        assert os.listdir(full) == []
    assert await engine.domstate("g") == "running"
    seen = counters(folder / "serial.log")[-1]
    await wait_for_counter(folder / "serial.log", seen + 10)


async def test_qemu_dying_during_save(guest: tuple[Engine, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    engine, folder = guest
    info = engine._runtime("g")[1]
    assert info is not None

    async def die(self: Monitor, channel: object, *args: object, **kwargs: object) -> None:
        os.kill(info.pid, signal.SIGKILL)
        await self.execute("query-status")

    monkeypatch.setattr(Monitor, "save", die)
    with pytest.raises(MonitorClosedError):
        await engine.save("g", folder / "g.save")
    assert not (folder / "g.save").exists()
    assert await engine.domstate("g") == "shut off"


async def test_bad_images_are_refused_and_leave_the_guest_stopped(
        guest: tuple[Engine, Path]) -> None:
    engine, folder = guest
    good = folder / "good.save"
    await engine.save("g", good)
    data = good.read_bytes()
    offset = save_image.HEADER.size + save_image.decode_header(data[:92], "x")[0]

    cases = {
        "torn.save": (save_image.PARTIAL_MAGIC + data[16:], "save image is incomplete"),
        "magic.save": (b"NotALibvirtImage" + data[16:], "image magic is incorrect"),
        "empty.save": (b"", "the file is too short"),
        "header-only.save": (data[:offset], "has no migration stream"),
        "truncated.save": (data[:offset + (len(data) - offset) // 2],
                           r"is not whole: its migration stream \(\d+ bytes\) stops before "
                           "its end"),
    }
    store = tree_picture(engine.state_dir / "domains")
    for name, (content, message) in cases.items():
        (folder / name).write_bytes(content)
        with pytest.raises(qsnap.QsnapError, match=message):
            await engine.restore(folder / name)
        assert await engine.domstate("g") == "shut off", name
        assert (folder / name).read_bytes() == content
    assert tree_picture(engine.state_dir / "domains") == store
    with pytest.raises(qsnap.QsnapError, match="save image is incomplete"):
        await engine.save_image_xml(folder / "torn.save")
    # The good image still restores after all that.
    await engine.restore(good)
    assert await engine.domstate("g") == "running"


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=120)


async def test_images_move_between_libvirt_and_qsnap(guest: tuple[Engine, Path],
                                                    libvirtd: str) -> None:
    engine, folder = guest
    serial = folder / "serial.log"
    ours, theirs = folder / "qsnap.save", folder / "libvirt.save"
    await engine.save("g", ours)
    saved_by_qsnap = counters(serial)[-1]
    dumped = virsh("save-image-dumpxml", str(ours))
    assert dumped.returncode == 0 and "<name>g</name>" in dumped.stdout, dumped.stderr
    restored = virsh("restore", str(ours))
    assert restored.returncode == 0, restored.stderr
    try:
        await wait_for_counter(serial, saved_by_qsnap + 20)
        # libvirt truncates the serial file when it starts the guest: its first line must be
        # the moment after qsnap's save, not a fresh boot.
        assert counters(serial)[0] == saved_by_qsnap + 1
        saved = virsh("save", "g", str(theirs))
        assert saved.returncode == 0, saved.stderr
    finally:
        virsh("destroy", "g")
        virsh("undefine", "g")
    saved_by_libvirt = counters(serial)[-1]
    assert "<name>g</name>" in await engine.save_image_xml(theirs)
    await engine.restore(theirs)
    await wait_for_counter(serial, saved_by_libvirt + 20)
    assert_continuous(serial)


@contextlib.contextmanager
def descriptors_passed_to_qemu(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The file type (``stat.S_IFMT``) of every descriptor qsnap hands QEMU for a stream."""
    modes: list[int] = []
    original = Monitor.send_fd

    async def spy(self: Monitor, fd: int, name: str) -> None:
        modes.append(stat.S_IFMT(os.fstat(fd).st_mode))
        await original(self, fd, name)

    monkeypatch.setattr(Monitor, "send_fd", spy)
    yield modes
    monkeypatch.undo()


def recompressed(raw: Path, target: Path, image_format: str) -> Path:
    """A copy of the raw image *raw* in a compressed format, as libvirt writes one: the same
    header and XML with the format field set, and the stream through the compressor."""
    image = read_image(raw)
    head = bytearray(raw.read_bytes()[:image.stream_offset])
    head[28:32] = save_image.FORMATS[image_format].to_bytes(4, sys.byteorder)
    with open(raw, "rb") as source, open(target, "wb") as out:
        out.write(head)
        out.flush()
        source.seek(image.stream_offset)
        # Their fastest levels: any level decompresses the same way.
        subprocess.run([image_format, "-1", "-c"], stdin=source, stdout=out, check=True)
    return target


async def test_every_image_format_restores_and_qemu_gets_no_file(
        guest: tuple[Engine, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """qsnap writes raw, zstd and (where QEMU has mapped-ram) sparse images and reads those
    and libvirt's gzip, bzip2 and lzop ones; each restores at the saved moment. QEMU is
    never handed a regular file's descriptor for a stream (deprecated since QEMU 9.1): only
    pipes, or a file QEMU opens itself by path."""
    engine, folder = guest
    async with await Monitor.connect(engine._runtime("g")[1].qmp) as monitor:  # type: ignore[union-attr]
        sparse = (await monitor.stream_support()).mapped_ram
    written = ["raw", "zstd", *(["sparse"] if sparse else [])]
    with descriptors_passed_to_qemu(monkeypatch) as modes:
        for image_format in written:
            image = folder / f"g.{image_format}"
            channels = 2 if image_format == "sparse" else None
            await engine.save("g", image, image_format=image_format,
                              parallel_channels=channels)
            assert read_image(image).format == image_format
            saved = counters(folder / "serial.log")[-1]
            await engine.restore(image, parallel_channels=channels)
            await wait_for_counter(folder / "serial.log", saved + 5)
        raw = folder / "g.raw"
        # xz is left to test_stream_writer's round trip of every decompressor: its fastest
        # level takes 25 s for this stream here, and its path is gzip's.
        libvirts = ("gzip", "bzip2", "lzop")
        made = await asyncio.gather(*(asyncio.to_thread(
            recompressed, raw, folder / f"g.{f}", f) for f in libvirts))
        for image_format, image in zip(libvirts, made, strict=True):
            await engine.destroy("g")
            await engine.restore(image)
            assert await engine.domstate("g") == "running", image_format
    assert_continuous_per_boot(folder / "serial.log")
    assert modes and all(mode == stat.S_IFIFO for mode in modes), modes

    # Refusals leave the guest running and no file behind.
    if not sparse:
        with pytest.raises(qsnap.NotSupportedError, match="mapped-ram"):
            await engine.save("g", folder / "no.sparse", image_format="sparse")
    else:  # a file QEMU opens by path: its URI cannot carry ',offset=' in the path
        with pytest.raises(qsnap.InvalidArgumentError, match="may not contain ',offset='"):
            await engine.save("g", folder / "a,offset=1.sparse", image_format="sparse")
        assert await engine.domstate("g") == "running"
        assert not (folder / "a,offset=1.sparse").exists()
    for image_format, channels, error in (
            ("lz4", None, "unknown save image format 'lz4'"),
            ("gzip", None, "writes only raw, sparse, zstd"),
            ("raw", 2, "--parallel-channels needs the sparse save image format"),
            (None, 0, "--parallel-channels must be at least 1")):
        with pytest.raises(qsnap.QsnapError, match=error):
            await engine.save("g", folder / "no.save", image_format=image_format,
                              parallel_channels=channels)
        assert await engine.domstate("g") == "running"
        assert not (folder / "no.save").exists()
    with pytest.raises(qsnap.InvalidArgumentError, match="--parallel-channels must be at least 1"):
        await engine.restore(folder / "g.raw", parallel_channels=0)
    assert await engine.domstate("g") == "running"


def assert_continuous_per_boot(serial: Path) -> None:
    """Restores of older images go back in time; within each, the guest counts on from the
    saved moment: every counter follows the one before it or goes back (a restore), and
    never restarts at 1 (a reboot)."""
    values = counters(serial)
    assert values.count(1) == 1, "the guest booted more than once"


async def test_mapped_ram_left_on_by_a_killed_save_does_not_break_the_next(
        guest: tuple[Engine, Path]) -> None:
    """A qsnap killed during a sparse save leaves mapped-ram and multifd switched on in QEMU
    (qsnap switches them off after its own save); QEMU then refuses a stream into a pipe. The
    next raw save switches them off first, and saves."""
    engine, folder = guest
    async with await Monitor.connect(engine._runtime("g")[1].qmp) as monitor:  # type: ignore[union-attr]
        if not (await monitor.stream_support()).mapped_ram:
            pytest.skip("this QEMU has no mapped-ram to leave on (scripts/test runs this on "
                        "QEMU 10)")
        await monitor.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "mapped-ram", "state": True},
            {"capability": "multifd", "state": True}]})
    await engine.save("g", folder / "g.raw", image_format="raw")
    assert read_image(folder / "g.raw").format == "raw"
    saved = counters(folder / "serial.log")[-1]
    await engine.restore(folder / "g.raw")
    await wait_for_counter(folder / "serial.log", saved + 5)
    assert_continuous(folder / "serial.log")


def _image_digest(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_save_does_not_resume_onto_images_a_snapshot_froze_since(
        guest: tuple[Engine, Path]) -> None:
    """save, then a disk-only snapshot of the shut-off domain: its images became the
    snapshot's frozen data (the backing files of its overlays). Restoring would run the
    guest on them and write into the snapshot (issue 28). Refused, naming the disk, the image
    and the snapshot, with nothing started and nothing written; the same for a managed save,
    which managedsave-remove then discards."""
    engine, folder = guest
    image = folder / "g.save"
    await engine.save("g", image)
    (disk,) = await engine.disks("g")
    assert disk.source is not None
    frozen = Path(disk.source)
    await engine.create("g", qsnap.snapshot_xml_from_args("s1"),
                        qsnap.CreateFlags(disk_only=True))
    before = _image_digest(frozen)
    with pytest.raises(qsnap.OperationInvalidError,
                       match=rf"save image '{image}' would resume domain 'g' with disk 'vda' on "
                             rf"'{frozen}', which snapshot 's1' has frozen since the save") \
            as refused:
        await engine.restore(image)
    assert (refused.value.domain, refused.value.snapshot, refused.value.path) == \
        ("g", "s1", str(frozen))
    assert await engine.domstate("g") == "shut off"
    assert _image_digest(frozen) == before and image.exists()

    # A managed save the same way: start refuses, managedsave-remove is the way out.
    await engine.delete("g", "s1", qsnap.DeleteFlags())  # merges the overlay back: no data
    await engine.restore(image)                          # then the save resumes as usual
    await engine.managedsave("g")
    await engine.create("g", qsnap.snapshot_xml_from_args("s2"),
                        qsnap.CreateFlags(disk_only=True))
    with pytest.raises(qsnap.OperationInvalidError,
                       match=r"managed save image .* snapshot 's2' has frozen since the save.*"
                             r"'managedsave-remove g' discards it"):
        await engine.start("g")
    assert await engine.domstate("g") == "shut off"
    assert await engine.managedsave_remove("g") is True
    assert await engine.managedsave_remove("g") is False
    await engine.start("g")  # boots afresh, on s2's overlay
    assert await engine.domstate("g") == "running"
