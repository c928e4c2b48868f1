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
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from qsnap import children
from qsnap.engine import compression
from qsnap.engine.stream_writer import ALIGN, PipeFeeder, StreamWriter, takes_direct_io
from qsnap.errors import (
    AlreadyExistsError,
    GuestExitedError,
    InvalidArgumentError,
    MemoryImageError,
    NotSupportedError,
    OperationAbortedError,
    QsnapError,
    SaveImageError,
)
from qsnap.logs import logger
from qsnap.model import save_image
from qsnap.model.save_image import HEADER, SaveImage
from qsnap.monitor import Monitor, StreamChannel
from qsnap.progress import ProgressCallback, ProgressMeter
from qsnap.store.atomic import fsync_dir

log = logger("qsnap")




def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


#: multifd channels for a sparse (mapped-ram) save or restore when the caller names none: one
#: per CPU, at most 8 (each is a thread of QEMU's that copies RAM to or from the disk).
def default_channels() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _create_new(path: Path) -> int:
    """Open *path* for writing, made now: an existing file is never overwritten."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise AlreadyExistsError(f"refusing to overwrite existing file '{path}'",
                                 path=str(path)) from None
    except OSError as exc:
        raise InvalidArgumentError(f"cannot create '{path}': {exc.strerror}",
                                   path=str(path)) from None


async def write_image(monitor: Monitor, path: Path, domain_xml: str, was_running: bool, *,
                      background: bool = False,
                      at_start: Callable[[], Awaitable[None]] | None = None,
                      progress: ProgressCallback | None = None, ram: int = 0,
                      image_format: str = "raw", channels: int | None = None,
                      before_seal: Callable[[], None] | None = None) -> None:
    """Save the guest behind *monitor* into a new image at *path*: paused (or live pre-copy),
    or with *background* QEMU's background snapshot. *at_start* runs once the file is ready,
    just before QEMU starts writing it (a background snapshot switches the disks there).
    *progress* hears the bytes written against *ram*, the guest's RAM size (the stream is
    about that long; a pre-copy that sends pages twice may pass it). *image_format* is one of
    :data:`save_image.WRITTEN_FORMATS`, which this QEMU can write (plan.save checks);
    *channels* the multifd channels of a sparse one. *before_seal* may raise to stop the
    image from being completed (an abort asked for while QEMU wrote it): the last moment at
    which a save can still be undone."""
    if background and image_format != "raw":
        raise ValueError("a background snapshot writes a raw stream (QEMU's background "
                         "snapshot refuses multifd)")
    fd = _create_new(path)
    try:
        header = save_image.encode(domain_xml, None, was_running, partial=True, align=ALIGN,
                                   image_format=image_format)
        offset = len(header)
        _write_all(fd, header)
        meter = ProgressMeter(f"save memory to {path.name}", progress)
        heard = (lambda where: meter(where - offset, max(ram, where - offset))) \
            if progress is not None else None
        if background:
            # QEMU writes this stream itself, so it goes on if qsnap dies (recovery waits for
            # it: ending one early is the path on which QEMU 7.2 was seen to hang the guest).
            channel = (StreamChannel.file(str(path.absolute()), offset)
                       if await monitor.takes_file_uri()
                       else StreamChannel.into_file_by_dd(str(path.absolute()), offset))
            await monitor.save(channel, background=True, just_before=at_start, progress=heard)
        elif image_format == "sparse":
            await monitor.save(await _mapped_ram_channel(monitor, path, fd, offset, channels),
                               just_before=at_start, progress=heard)
        elif image_format == "raw":
            await _save_through_pipe(monitor, fd, offset, at_start, heard,
                                     bound=int(PRECOPY_BOUND * ram) if ram else None)
        else:
            await _save_compressed(monitor, fd, offset, image_format, at_start, heard)
        if before_seal is not None:
            before_seal()
        # Waiting for write-back takes tens of milliseconds to seconds: never on the loop.
        await asyncio.to_thread(_seal, fd, header)
        meter.finish(os.fstat(fd).st_size - offset)
    except BaseException as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise MemoryImageError(f"writing memory image '{path}' failed: "
                                   f"{exc.strerror or exc}", path=str(path)) from None
        raise
    os.close(fd)
    await asyncio.to_thread(fsync_dir, path.parent)


async def _mapped_ram_channel(monitor: Monitor, path: Path, fd: int, offset: int,
                              channels: int | None) -> StreamChannel:
    """The file channel of a sparse image: *channels* multifd channels (by default one per
    CPU), with direct I/O where QEMU has it and the file system under *fd* does it (tmpfs
    does not, and QEMU's direct-io would then fail)."""
    direct_io = (await monitor.stream_support()).direct_io and takes_direct_io(fd)
    return StreamChannel.file(str(path.absolute()), offset,
                              mapped_ram_channels=channels or default_channels(),
                              direct_io=direct_io)


async def _save_compressed(monitor: Monitor, fd: int, offset: int, image_format: str,
                           at_start: Callable[[], Awaitable[None]] | None,
                           progress: Callable[[int], None] | None) -> None:
    """QEMU writes into a pipe, the compressor reads it and writes the file from *offset*."""
    async with _filter(compression.compressor(image_format), fd, offset,
                       into_file=True) as pipe:
        await monitor.save(StreamChannel(pipe=pipe), just_before=at_start,
                           progress=progress, position=lambda: os.fstat(fd).st_size)


@contextlib.asynccontextmanager
async def _filter(argv: list[str], fd: int, offset: int, *,
                  into_file: bool) -> AsyncIterator[int]:
    """A compressor (*into_file*: QEMU, pipe, program, file) or a decompressor (file,
    program, pipe, QEMU) between the file *fd* from *offset* and the pipe end it yields for
    QEMU. Leaving the block waits for the program and raises if it failed."""
    os.lseek(fd, offset, os.SEEK_SET)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    ours, its = (write_end, read_end) if into_file else (read_end, write_end)
    try:
        child = await children.spawn_filter(argv, stdin=its if into_file else fd,
                                            stdout=fd if into_file else its)
    except BaseException:
        os.close(ours)
        raise
    finally:
        os.close(its)
    try:
        yield ours
        if into_file:  # QEMU is done: the compressor sees the end of the stream
            os.close(ours)
            ours = -1
        _, err = await children.finish(child, 600.0)
        if child.returncode != 0:
            raise MemoryImageError(f"{Path(argv[0]).name} failed on the memory stream: "
                                   f"{err.decode(errors='replace').strip() or child.returncode}")
    finally:
        if ours >= 0:
            os.close(ours)
        if child.returncode is None:
            await children.kill(child)


def _seal(fd: int, header: bytes) -> None:
    """Write the header (QEMU's ``file:`` truncated the file when it opened it), make it and
    the whole stream durable, then mark the image complete, durably: the final magic must
    never reach the disk before the data it vouches for."""
    os.pwrite(fd, header, 0)
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
    with direct I/O (see there for why). A guest still running once *bound* bytes have been
    sent is paused."""
    loop = asyncio.get_running_loop()
    passed = asyncio.Event()
    stream = StreamWriter(fd, offset, alert_at=bound,
                          alert=lambda: _call_soon(loop, passed.set))
    # Starting a thread waits until the OS has run it: tens of milliseconds on a loaded
    # machine, which the event loop must not spend (tests/test_qemu_event_loop.py).
    await asyncio.to_thread(stream.start)

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
        await monitor.save(StreamChannel(pipe=stream.write_end), just_before=handed_over,
                           progress=progress, position=lambda: offset + stream.received)
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


def check_whole(path: Path, image: SaveImage, recorded_size: int | None = None) -> None:
    """The memory image at *path* is complete, or a :class:`SaveImageError` says how it is
    not, before anything depends on it (a revert stops the running guest, a restore starts a
    QEMU): its writer finished it (final magic), it still has the size recorded when it was
    written (a snapshot's note), and a raw stream ends as QEMU ends one
    (:func:`save_image.stream_end_problem`). A truncated file once stopped the running guest
    and then failed with "QEMU closed its monitor". Compressed and sparse streams are checked
    by their readers (the decompressor, QEMU's mapped-ram)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if handle.read(len(save_image.MAGIC)) != save_image.MAGIC:
                raise SaveImageError(f"memory image '{path}' was never completed (its writer "
                                     "stopped part-way)", path=str(path))
            if recorded_size is not None and size != recorded_size:
                raise SaveImageError(
                    f"memory image '{path}' is {size} bytes, but was {recorded_size} when the "
                    "snapshot was taken: it was truncated or replaced", path=str(path))
            if image.format != "raw":
                return
            length = size - image.stream_offset
            handle.seek(image.stream_offset)
            head = handle.read(16)
            handle.seek(max(image.stream_offset, size - save_image.STREAM_TAIL))
            tail = handle.read()
    except OSError as exc:
        raise SaveImageError(f"cannot read memory image '{path}': {exc.strerror}",
                             path=str(path)) from None
    problem = save_image.stream_end_problem(head, tail, length)
    if problem is not None:
        raise SaveImageError(f"memory image '{path}' is not whole: {problem} (the file was "
                             "truncated?)", path=str(path))


def load_failure(what: str, path: Path, image: SaveImage, *, aborted: bool,
                 domain: str) -> QsnapError:
    """The error for a QEMU that exited while it loaded *image* (*what* failed): the image is
    blamed only when it really is not whole. An abort (domjobabort stops a loading QEMU) or
    a QEMU killed from outside is no fault of the image's."""
    if aborted:
        return OperationAbortedError(f"{what} was aborted: its QEMU was stopped while it "
                                     f"loaded '{path}', which is untouched", domain=domain,
                                     path=str(path))
    try:
        check_whole(path, image)
    except SaveImageError as bad:
        return GuestExitedError(f"{what} failed: QEMU exited while loading the saved state, "
                                f"and {bad}", domain=domain, path=str(path))
    return GuestExitedError(
        f"{what} failed: QEMU exited while loading '{path}', which reads whole: QEMU was "
        "stopped from outside, or refused the state (devices that do not match the image's?)",
        domain=domain, path=str(path))


def read_image(path: Path) -> SaveImage:
    """The header and domain XML of the image at *path*, or a clear error."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER.size)
            data_len = save_image.decode_header(header, f"'{path}'")[0]
            image = save_image.decode(header, handle.read(data_len), f"'{path}'")
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise SaveImageError(f"cannot read save image '{path}': {exc.strerror}",
                             path=str(path)) from None
    except SaveImageError as exc:
        exc.path = exc.path or str(path)
        raise
    if image.compressed not in save_image.FORMAT_NAMES:
        raise NotSupportedError(f"save image '{path}' is in an {image.format} (a newer "
                                "libvirt's?); qsnap reads raw, sparse, gzip, bzip2, xz, lzop "
                                "and zstd images", path=str(path))
    if size <= image.stream_offset:
        raise SaveImageError(f"save image '{path}' has no migration stream after its header",
                             path=str(path))
    return image


def _read_ahead(fd: int, offset: int) -> None:
    """Saves write with direct I/O, so the image is usually not in the page cache, and QEMU
    reads it in small pieces: ask the kernel to read all of it ahead, in large requests,
    while QEMU starts on the first. WILLNEED queues the whole file's reads before it returns
    (12-14 ms for 128 MiB here), so this runs off the event loop."""
    os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_SEQUENTIAL)
    os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_WILLNEED)


async def load_image(monitor: Monitor, path: Path, image: SaveImage,
                     progress: ProgressCallback | None = None,
                     channels: int | None = None) -> None:
    """Feed the stream of *image* into the QEMU behind *monitor* (started ``-incoming defer``);
    *progress* hears how much of it QEMU has read. A raw stream from a pipe qsnap fills (QEMU
    10 reading the file itself through ``file:`` took 1.52 s for 1.1 GiB against 0.84 s
    through the pipe, medians of 8 interleaved restores with the page cache dropped); a
    sparse one through *channels* multifd channels (mapped-ram); a compressed one from its
    decompressor."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = image.stream_offset
        total = os.fstat(fd).st_size - offset
        meter = ProgressMeter(f"load memory from {path.name}", progress)
        heard = (lambda where: meter(min(where, total), total)) if progress is not None \
            else None
        if image.format == "sparse":
            if not (await monitor.stream_support()).mapped_ram:
                raise NotSupportedError(f"save image '{path}' is sparse (QEMU's mapped-ram "
                                        "format), which needs QEMU 9.0 or later to restore")
            await monitor.load(await _mapped_ram_channel(monitor, path, fd, offset, channels),
                               progress=heard)
        elif image.format == "raw":
            await asyncio.to_thread(_read_ahead, fd, offset)
            await _load_through_pipe(monitor, fd, offset, heard)
        else:
            await _load_decompressed(monitor, fd, offset, image.format, heard)
        meter.finish(total)
    finally:
        os.close(fd)


async def _load_through_pipe(monitor: Monitor, fd: int, offset: int,
                             progress: Callable[[int], None] | None) -> None:
    """A thread here splices the file into a pipe QEMU reads."""
    feeder = PipeFeeder(fd, offset)
    await asyncio.to_thread(feeder.start)  # off the loop, as the writer's start above
    try:
        await monitor.load(StreamChannel(pipe=feeder.read_end), progress=progress,
                           position=lambda: feeder.sent)
    finally:
        await asyncio.to_thread(feeder.stop)
    if feeder.error is not None:
        raise MemoryImageError(f"reading the memory image failed: {feeder.error.strerror}")


async def _load_decompressed(monitor: Monitor, fd: int, offset: int, image_format: str,
                             progress: Callable[[int], None] | None) -> None:
    """The decompressor reads the file from *offset*, QEMU reads its output from a pipe."""
    async with _filter(compression.decompressor(image_format), fd, offset,
                       into_file=False) as pipe:
        await monitor.load(StreamChannel(pipe=pipe), progress=progress,
                           position=lambda: os.lseek(fd, 0, os.SEEK_CUR) - offset)
