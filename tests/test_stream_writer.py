"""The pipe-to-file copier for memory streams, without QEMU: a thread here plays QEMU's part,
writing into the pipe in uneven pieces, as a migration does."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from qsnap.engine import compression
from qsnap.engine.stream_writer import ALIGN, BUFFER_SIZE, BUFFERS, StreamWriter
from qsnap.errors import InvalidArgumentError
from qsnap.monitor import StreamChannel

HEADER = b"H" * (2 * ALIGN)


def _feed(writer: StreamWriter, data: bytes, errors: list[BaseException]) -> threading.Thread:
    """Write *data* into the pipe from another thread (QEMU's side), then close that end."""
    end = os.dup(writer.write_end)

    def run() -> None:
        try:
            view, step = memoryview(data), 1
            while view:
                step = step * 7 % 300_007 + 1  # uneven pieces, up to ~300 KB
                view = view[os.write(end, view[:step]):]
        except BaseException as exc:  # handed to the test
            errors.append(exc)
        finally:
            os.close(end)

    thread = threading.Thread(target=run)
    thread.start()
    writer.writer_handed_over()
    return thread


def _direct_io_works(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
        return True
    except OSError:
        return False
    finally:
        (folder / "probe").unlink(missing_ok=True)


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, BUFFER_SIZE + 123,
                                  3 * BUFFER_SIZE + ALIGN + 7])
@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_the_stream_lands_in_the_file_exactly(tmp_path: Path, size: int, where: str) -> None:
    folder = tmp_path if where == "disk" else Path("/dev/shm")
    path = folder / f"qsnap-stream-test-{os.getpid()}-{size}"
    data = os.urandom(size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, HEADER)
        writer = StreamWriter(fd, len(HEADER))
        assert writer.direct == _direct_io_works(folder)
        writer.start()
        errors: list[BaseException] = []
        feeder = _feed(writer, data, errors)
        assert writer.finish(timeout=60) == size
        feeder.join()
        assert errors == []
        assert writer.received == size
        os.pwrite(fd, b"M", 0)  # the caller's final magic: O_DIRECT is off again
    finally:
        os.close(fd)
    content = path.read_bytes()
    path.unlink()
    assert content == b"M" + HEADER[1:] + data


def test_a_write_error_is_kept_and_the_stream_still_drains(tmp_path: Path) -> None:
    """A file the copier cannot write (here: opened read-only, as a full disk would refuse):
    QEMU's side is never left blocked on a full pipe, and finish raises the error."""
    path = tmp_path / "image"
    path.write_bytes(HEADER)
    fd = os.open(path, os.O_RDONLY)
    try:
        writer = StreamWriter(fd, len(HEADER))
        writer.start()
        errors: list[BaseException] = []
        # More than every buffer and the pipe hold: a copier that stopped reading would
        # leave the feeder blocked.
        feeder = _feed(writer, os.urandom((BUFFERS + 2) * BUFFER_SIZE + (1 << 20)), errors)
        feeder.join(30)
        assert not feeder.is_alive() and errors == []
        with pytest.raises(OSError) as raised:
            writer.finish(timeout=30)
        assert raised.value.errno == 9  # EBADF
    finally:
        os.close(fd)
    assert path.read_bytes() == HEADER


def test_abort_ends_the_threads_and_breaks_the_pipe(tmp_path: Path) -> None:
    """After abort (qsnap giving up), QEMU's next write into the pipe fails, which is what
    ends its migration; nothing more reaches the file."""
    path = tmp_path / "image"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, HEADER)
        writer = StreamWriter(fd, len(HEADER))
        writer.start()
        end = os.dup(writer.write_end)
        writer.writer_handed_over()
        os.write(end, b"x" * 1000)
        writer.abort()
        assert not any(t.is_alive() for t in writer._threads)
        with pytest.raises(BrokenPipeError):
            os.write(end, b"y")
        os.close(end)
    finally:
        os.close(fd)
    assert path.read_bytes() == HEADER


def test_the_stream_must_start_aligned(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ValueError, match="multiple of 4096"):
            StreamWriter(fd, 100)
    finally:
        os.close(fd)


def test_the_alert_comes_once_when_the_bound_is_passed(tmp_path: Path) -> None:
    calls: list[int] = []
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, HEADER)
        writer = StreamWriter(fd, len(HEADER), alert_at=1 << 20,
                              alert=lambda: calls.append(writer.received))
        writer.start()
        errors: list[BaseException] = []
        feeder = _feed(writer, os.urandom(3 << 20), errors)
        writer.finish(timeout=60)
        feeder.join()
    finally:
        os.close(fd)
    assert len(calls) == 1 and calls[0] > 1 << 20


@pytest.mark.parametrize("image_format", ["gzip", "bzip2", "xz", "lzop", "zstd"])
def test_each_compressed_format_round_trips_through_its_programs(image_format: str) -> None:
    """What libvirt's compressor for a format writes, qsnap's decompressor for it reads back
    (and qsnap's own zstd compressor, what libvirt's zstd reads)."""
    data = os.urandom(1 << 16) * 8
    packed = subprocess.run([image_format, "-c"], input=data, capture_output=True,
                            check=True).stdout
    assert subprocess.run(compression.decompressor(image_format), input=packed,
                          capture_output=True, check=True).stdout == data
    ours = subprocess.run(compression.compressor(image_format), input=data,
                          capture_output=True, check=True).stdout
    assert subprocess.run([image_format, "-dc"], input=ours, capture_output=True,
                          check=True).stdout == data


def test_qemu_is_never_handed_a_regular_file_for_a_stream(tmp_path: Path) -> None:
    """A stream channel on a descriptor must be a pipe: a regular file's descriptor cannot
    even be described (files go as file: URIs QEMU opens itself)."""
    with open(tmp_path / "image", "wb") as handle, \
            pytest.raises(ValueError, match="must be a pipe"):
        StreamChannel(pipe=handle.fileno())
    read_end, write_end = os.pipe()
    assert StreamChannel(pipe=write_end).pipe == write_end
    os.close(read_end)
    os.close(write_end)
    assert StreamChannel.file("/a b/c,d", 8192).uri() == "file:/a b/c,d,offset=8192"
    with pytest.raises(InvalidArgumentError, match="may not contain ',offset='"):
        StreamChannel.file("/x,offset=1", 0).uri()
