"""Writing QEMU's outgoing migration stream into a file at the disk's direct-I/O speed.

Given the file itself, QEMU 7.2 writes it through the page cache in small pieces, and the
``fsync`` at the end then waits for write-back: on the reference machine that reaches 0.4-1.2
GB/s where the disk takes 2.1-2.3 GB/s with direct I/O. So for a paused or pre-copy save QEMU
gets the write end of a pipe instead, and two threads here move the stream into the file: one
reads the pipe into a few fixed, page-aligned buffers, the other writes full buffers with
``O_DIRECT`` (where the file system refuses direct I/O, with ordinary writes). At most
``BUFFERS * BUFFER_SIZE`` bytes of the guest's RAM are ever held in this process.

What a failure does: a write error (a full disk) is kept and the rest of the stream is read and
dropped, so QEMU finishes instead of blocking on a full pipe; the caller raises the kept error.
:meth:`StreamWriter.abort` stops both threads and closes the pipe, and QEMU's next write then
fails, which ends its migration (as a ``kill -9`` of qsnap does, the pipe closing with it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import select
import threading
from collections.abc import Callable

#: Direct I/O needs file offsets, lengths and memory aligned to the device's logical block;
#: 4 KiB covers every common device.
ALIGN = 4096
#: The first buffer must fill before the disk gets anything, and the last one is written after
#: QEMU is done: both ends of the save wait for one buffer. 2 MiB writes reach the disk's
#: direct-I/O speed here as 8 MiB ones do (2.7 against 2.6 GB/s, one write at a time; two or
#: four at once were no faster), and a paused 256 MiB save took 149-158 ms against 158-171 ms
#: with three 8 MiB buffers (medians of three alternating runs of 8-24 saves each).
BUFFER_SIZE = 2 << 20
BUFFERS = 8
_PIPE_SIZE = 1 << 20
_POLL_MS = 200


def aligned(size: int) -> int:
    """*size* rounded up to a multiple of :data:`ALIGN`."""
    return -(-size // ALIGN) * ALIGN


class StreamWriter:
    """Copies everything written into :attr:`write_end` to *fd* from *offset* (a multiple of
    :data:`ALIGN`). Start it, hand :attr:`write_end` to QEMU, close it here once QEMU holds
    it (:meth:`writer_handed_over`), and :meth:`finish` after QEMU's migration ends."""

    def __init__(self, fd: int, offset: int, *, alert_at: int | None = None,
                 alert: Callable[[], None] | None = None) -> None:
        """*alert* is called once (from a thread here) when more than *alert_at* bytes have
        come through."""
        if offset % ALIGN:
            raise ValueError(f"the stream must start at a multiple of {ALIGN} bytes")
        self.fd = fd
        self.offset = offset
        self.received = 0  # bytes read from the pipe so far (progress)
        self.error: OSError | None = None
        self.direct = _set_direct(fd, True)
        self.read_end, self.write_end = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a larger pipe: fewer wake-ups for both sides
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        os.set_blocking(self.read_end, False)
        self._stop = threading.Event()
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        self._full: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(mmap.mmap(-1, BUFFER_SIZE))
        self._written = 0
        self._alert_at = alert_at if alert is not None else None
        self._alert = alert
        self._threads = [threading.Thread(target=self._read, name="qsnap-stream-read",
                                          daemon=True),
                         threading.Thread(target=self._write, name="qsnap-stream-write",
                                          daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def writer_handed_over(self) -> None:
        """QEMU holds its own copy of the write end: drop ours, so that the stream ends
        (end of file here) when QEMU closes it."""
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1

    def finish(self, timeout: float = 600.0) -> int:
        """Wait until the whole stream is in the file (QEMU has closed its end); returns its
        length. Raises the write error that made the rest be dropped, if any."""
        self.writer_handed_over()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                self.abort()
                raise TimeoutError("the memory stream did not end although QEMU's migration "
                                   "had")
        self._close()
        if self.error is not None:
            raise self.error
        _set_direct(self.fd, False)
        os.ftruncate(self.fd, self.offset + self._written)  # the last block may be padded
        return self._written

    def abort(self) -> None:
        """Stop both threads and close the pipe (QEMU's next write then fails)."""
        self._stop.set()
        self._full.put(None)
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(5)
        self.writer_handed_over()
        self._close()
        if self.direct:
            with contextlib.suppress(OSError):
                _set_direct(self.fd, False)

    def _close(self) -> None:
        if self.read_end >= 0:
            os.close(self.read_end)
            self.read_end = -1

    # -- the threads ------------------------------------------------------------------------

    def _read(self) -> None:
        """Fill free buffers from the pipe, hand full ones on; None after the end."""
        poller = select.poll()
        poller.register(self.read_end, select.POLLIN)
        try:
            while (buffer := self._take_free()) is not None:
                filled, ended = self._fill(memoryview(buffer), poller)
                if filled:
                    self._full.put((buffer, filled))
                if ended:
                    return
        finally:
            self._full.put(None)

    def _take_free(self) -> mmap.mmap | None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Empty):
                return self._free.get(timeout=_POLL_MS / 1000)
        return None

    def _fill(self, view: memoryview, poller: select.poll) -> tuple[int, bool]:
        """Read into *view* until it is full or the stream ends: (bytes read, ended)."""
        filled = 0
        while filled < len(view):
            if self._stop.is_set():
                return filled, True
            if not poller.poll(_POLL_MS):
                continue
            try:
                count = os.readv(self.read_end, [view[filled:]])
            except BlockingIOError:
                continue
            if count == 0:
                return filled, True
            filled += count
            self.received += count
            if self._alert_at is not None and self.received > self._alert_at:
                self._alert_at = None
                assert self._alert is not None
                self._alert()
        return filled, False

    def _write(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buffer, length = item
            if self.error is None:
                try:
                    self._write_buffer(buffer, length)
                except OSError as exc:  # drop the rest, so QEMU is never left blocked
                    self.error = exc
            self._free.put(buffer)

    def _write_buffer(self, buffer: mmap.mmap, length: int) -> None:
        position = self.offset + self._written
        if self.direct:
            size = aligned(length)  # only the last buffer is short: padded, truncated later
            buffer[length:size] = bytes(size - length)
            try:
                _pwrite_all(self.fd, memoryview(buffer)[:size], position)
                self._written += length
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this file refuses direct I/O after all
                    raise
                self.direct = _set_direct(self.fd, False)
        _pwrite_all(self.fd, memoryview(buffer)[:length], position)
        self._written += length


def _pwrite_all(fd: int, view: memoryview, position: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], position + done)


def _set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on the open file *fd*; returns whether it is on (a file system that
    does not do direct I/O refuses it)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError:
        return False
    return on and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def takes_direct_io(fd: int) -> bool:
    """Whether the file system under *fd* (opened without O_DIRECT, and left so) does
    O_DIRECT."""
    direct = _set_direct(fd, True)
    if direct:
        _set_direct(fd, False)
    return direct


class PipeFeeder:
    """Copies a file from *offset* into a pipe whose :attr:`read_end` QEMU reads (a raw
    restore: QEMU must not be handed the file's own descriptor, and reading the file itself
    through ``file:`` is slower, see :func:`qsnap.engine.memory.load_image`). A thread
    splices it, so the data never passes through Python, and reads ahead of QEMU; QEMU
    closing its end (it failed, or was killed) ends the thread with EPIPE."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.sent = 0
        self.error: OSError | None = None
        self.read_end, self._write_end = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._thread = threading.Thread(target=self._feed, name="qsnap-stream-feed",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _feed(self) -> None:
        try:
            while True:
                count = os.splice(self.fd, self._write_end, BUFFER_SIZE,
                                  offset_src=self.offset + self.sent)
                if count == 0:
                    return
                self.sent += count
        except BrokenPipeError:
            return  # QEMU stopped reading: its own error says why
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self._write_end)

    def stop(self) -> None:
        """Wait for the thread (QEMU has read everything, or has closed its end), then close
        the pipe."""
        if self.read_end >= 0:
            os.close(self.read_end)  # a thread still blocked on a full pipe gets EPIPE
            self.read_end = -1
        self._thread.join(30)
