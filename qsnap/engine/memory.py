"""Memory images in libvirt's save-image format: written from a paused guest, read, and loaded
into a QEMU that waits for them. Used by save/restore/managedsave and by external memory
snapshots.

Crash safety of the file itself: it is created exclusively (an existing file is never
overwritten) with mode 0600 (it holds guest RAM), starts with the "still being written" magic,
and gets the final magic only after the whole stream is on disk and fsynced. A torn image is
therefore always recognised as incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from qsnap.engine.stream_writer import ALIGN, StreamWriter
from qsnap.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    MemoryImageError,
    NotSupportedError,
    QsnapError,
    SaveImageError,
)
from qsnap.model import save_image
from qsnap.model.save_image import HEADER, SaveImage
from qsnap.monitor import Monitor
from qsnap.progress import ProgressCallback, ProgressMeter
from qsnap.store.atomic import fsync_dir

log = logging.getLogger("qsnap")




def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def write_image(monitor: Monitor, path: Path, domain_xml: str, was_running: bool, *,
                      background: bool = False,
                      at_start: Callable[[], Awaitable[None]] | None = None,
                      progress: ProgressCallback | None = None, ram: int = 0) -> None:
    """Save the guest behind *monitor* into a new image at *path*: paused (or live pre-copy),
    or with *background* QEMU's background snapshot. *at_start* runs once the file is ready,
    just before QEMU starts writing it (a background snapshot switches the disks there).
    *progress* hears the bytes written against *ram*, the guest's RAM size (the stream is
    about that long; a pre-copy that sends pages twice may pass it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise AlreadyExistsError(f"refusing to overwrite existing file '{path}'",
                                 path=str(path)) from None
    except OSError as exc:
        raise InvalidArgumentError(f"cannot create '{path}': {exc.strerror}",
                                   path=str(path)) from None
    try:
        header = save_image.encode(domain_xml, None, was_running, partial=True, align=ALIGN)
        _write_all(fd, header)
        meter = ProgressMeter(f"save memory to {path.name}", progress)
        heard = (lambda offset: meter(offset - len(header), max(ram, offset - len(header)))) \
            if progress is not None else None
        if background:
            await monitor.save_to_fd(fd, background=True, just_before=at_start, progress=heard)
        else:
            await _save_through_pipe(monitor, fd, len(header), at_start, heard,
                                     bound=int(PRECOPY_BOUND * ram) if ram else None)
        # Waiting for write-back takes tens of milliseconds to seconds: never on the loop.
        await asyncio.to_thread(_seal, fd)
        meter.finish(os.fstat(fd).st_size - len(header))
    except BaseException as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise MemoryImageError(f"writing memory image '{path}' failed: "
                                   f"{exc.strerror or exc}", path=str(path)) from None
        raise
    os.close(fd)
    await asyncio.to_thread(fsync_dir, path.parent)


def _seal(fd: int) -> None:
    """Make the whole stream durable, then mark the image complete, durably: the final magic
    must never reach the disk before the data it vouches for."""
    os.fsync(fd)
    os.pwrite(fd, save_image.final_magic(), 0)
    os.fsync(fd)


#: A live pre-copy that has sent this many times the guest's RAM is not converging (the guest
#: dirties memory as fast as it is sent; libvirt 9.0's ``--live`` was seen writing 33 times the
#: RAM here): the guest is paused, and the copy ends at once.
PRECOPY_BOUND = 2.0


async def _save_through_pipe(monitor: Monitor, fd: int, offset: int,
                             at_start: Callable[[], Awaitable[None]] | None,
                             progress: Callable[[int], None] | None, *,
                             bound: int | None) -> None:
    """QEMU writes the stream into a pipe and :class:`StreamWriter` moves it into the file
    with direct I/O (see there for why). A background snapshot keeps the file itself: its
    stream must go on if qsnap dies (recovery waits for it, since ending one early is the
    path on which QEMU 7.2 was seen to hang the guest), and a pipe closes with qsnap.
    A guest still running once *bound* bytes have been sent is paused."""
    loop = asyncio.get_running_loop()
    passed = asyncio.Event()
    stream = StreamWriter(fd, offset, alert_at=bound,
                          alert=lambda: _call_soon(loop, passed.set))
    stream.start()

    async def converge() -> None:
        await passed.wait()
        if bound is not None and await monitor.status() == "running":
            log.info("the live memory copy passed %d MiB without converging; pausing the "
                     "guest to finish it", bound >> 20)
            await monitor.pause()

    async def handed_over() -> None:
        stream.writer_handed_over()  # QEMU has its copy now
        if at_start is not None:
            await at_start()

    bounding = asyncio.create_task(converge())
    try:
        await monitor.save_to_fd(stream.write_end, just_before=handed_over, progress=progress,
                                 position=lambda: offset + stream.received)
        written = await asyncio.to_thread(stream.finish)
        if progress is not None:  # QEMU's "completed" can come before the pipe is drained
            progress(offset + written)
    except BaseException:
        stream.abort()
        raise
    finally:
        bounding.cancel()
        with contextlib.suppress(asyncio.CancelledError, QsnapError):  # a failed pause only
            await bounding                                             # leaves it unbounded


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    loop.call_soon_threadsafe(callback)


def image_is_complete(path: Path) -> bool:
    """Whether *path* is a memory image whose writer finished it (its final magic is set
    only after the whole stream is on disk)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(save_image.MAGIC)) == save_image.MAGIC
    except OSError:
        return False


def read_image(path: Path) -> SaveImage:
    """The header and domain XML of the image at *path*, or a clear error."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER.size)
            data_len = save_image.decode_header(header, f"'{path}'")[0]
            image = save_image.decode(header, handle.read(data_len), f"'{path}'")
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise SaveImageError(f"cannot read save image '{path}': {exc.strerror}") from None
    if image.compressed:
        raise NotSupportedError(f"save image '{path}' is compressed with "
                                f"{save_image.COMPRESSION.get(image.compressed, '?')}; qsnap "
                                "reads raw images only")
    if size <= image.stream_offset:
        raise SaveImageError(f"save image '{path}' has no migration stream after its header")
    return image


def _read_ahead(fd: int, offset: int) -> None:
    """Saves write with direct I/O, so the image is usually not in the page cache, and QEMU
    reads it in small pieces: ask the kernel to read all of it ahead, in large requests,
    while QEMU starts on the first. WILLNEED queues the whole file's reads before it returns
    (12-14 ms for 128 MiB here), so this runs off the event loop."""
    os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_SEQUENTIAL)
    os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_WILLNEED)


async def load_image(monitor: Monitor, path: Path, image: SaveImage,
                     progress: ProgressCallback | None = None) -> None:
    """Feed the stream of *image* into the QEMU behind *monitor* (started ``-incoming defer``);
    *progress* hears how much of it QEMU has read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await asyncio.to_thread(_read_ahead, fd, image.stream_offset)
        os.lseek(fd, image.stream_offset, os.SEEK_SET)
        total = os.fstat(fd).st_size - image.stream_offset
        meter = ProgressMeter(f"load memory from {path.name}", progress)
        await monitor.load_from_fd(
            fd, progress=(lambda offset: meter(offset - image.stream_offset, total))
            if progress is not None else None)
        meter.finish(total)
    finally:
        os.close(fd)
