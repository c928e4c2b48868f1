"""Memory images in libvirt's save-image format: written from a paused guest, read, and loaded
into a QEMU that waits for them. Used by save/restore/managedsave and by external memory
snapshots.

Crash safety of the file itself: it is created exclusively (an existing file is never
overwritten) with mode 0600 (it holds guest RAM), starts with the "still being written" magic,
and gets the final magic only after the whole stream is on disk and fsynced. A torn image is
therefore always recognised as incomplete.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from qsnap.errors import AlreadyExistsError, InvalidArgumentError, NotSupportedError, QsnapError
from qsnap.model import save_image
from qsnap.model.save_image import HEADER, SaveImage, SaveImageError
from qsnap.monitor import Monitor
from qsnap.progress import ProgressCallback, ProgressMeter
from qsnap.store.atomic import fsync_dir


class MemoryImageError(QsnapError):
    """The memory image could not be written (full disk, I/O error); it was removed."""


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
        raise AlreadyExistsError(f"refusing to overwrite existing file '{path}'") from None
    except OSError as exc:
        raise InvalidArgumentError(f"cannot create '{path}': {exc.strerror}") from None
    try:
        header = save_image.encode(domain_xml, None, was_running, partial=True)
        _write_all(fd, header)
        meter = ProgressMeter(f"save memory to {path.name}", progress)
        await monitor.save_to_fd(
            fd, background=background, just_before=at_start,
            progress=(lambda offset: meter(offset - len(header), max(ram, offset - len(header))))
            if progress is not None else None)
        os.fsync(fd)
        os.pwrite(fd, save_image.final_magic(), 0)
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise MemoryImageError(f"writing memory image '{path}' failed: "
                                   f"{exc.strerror or exc}") from None
        raise
    os.close(fd)
    fsync_dir(path.parent)


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


async def load_image(monitor: Monitor, path: Path, image: SaveImage,
                     progress: ProgressCallback | None = None) -> None:
    """Feed the stream of *image* into the QEMU behind *monitor* (started ``-incoming defer``);
    *progress* hears how much of it QEMU has read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, image.stream_offset, os.SEEK_SET)
        total = os.fstat(fd).st_size - image.stream_offset
        meter = ProgressMeter(f"load memory from {path.name}", progress)
        await monitor.load_from_fd(
            fd, progress=(lambda offset: meter(offset - image.stream_offset, total))
            if progress is not None else None)
    finally:
        os.close(fd)
