"""Where QEMU sends or reads a migration stream, as its ``migrate`` URIs say it.

QEMU is never handed a regular file's descriptor for a stream (``fd:`` on a file is deprecated
since QEMU 9.1 and being removed): it gets a pipe end (``fd:NAME``), opens the file itself by
path at an offset (``file:PATH,offset=N``, QEMU 8.2+; with mapped-ram, 9.0+, at fixed offsets
by as many multifd channels), or writes into a command it starts (``exec:``).
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass

from qsnap.errors import InvalidArgumentError


@dataclass(frozen=True)
class StreamChannel:
    """One of: *pipe* (a pipe end qsnap passes over the monitor), *path* with *offset* (a file
    QEMU opens; with *mapped_ram_channels* > 0 its RAM goes to fixed offsets through that many
    multifd channels, with *direct_io* using O_DIRECT), or *command* (a shell command QEMU
    starts and writes the stream into)."""

    pipe: int | None = None
    path: str | None = None
    offset: int = 0
    mapped_ram_channels: int = 0
    direct_io: bool = False
    command: str | None = None

    def __post_init__(self) -> None:
        if self.pipe is not None and not stat.S_ISFIFO(os.fstat(self.pipe).st_mode):
            raise ValueError("a migration stream's descriptor must be a pipe: QEMU 9.1 "
                             "deprecated fd: on regular files (use a file: channel)")

    @classmethod
    def file(cls, path: str, offset: int, *, mapped_ram_channels: int = 0,
             direct_io: bool = False) -> StreamChannel:
        return cls(path=path, offset=offset, mapped_ram_channels=mapped_ram_channels,
                   direct_io=direct_io)

    @classmethod
    def into_file_by_dd(cls, path: str, offset: int) -> StreamChannel:
        """A child of QEMU writes the stream into *path* from *offset*, leaving what is before
        it: for a QEMU without ``file:`` URIs, when the stream must outlive qsnap (a pipe to
        qsnap would close with it)."""
        return cls(command=f"dd of={shlex.quote(path)} bs=1M seek={offset} oflag=seek_bytes "
                           "conv=notrunc status=none", path=path, offset=offset)

    def uri(self) -> str:
        if self.command is not None:
            return f"exec:{self.command}"
        if self.path is None:
            raise ValueError("a pipe channel has no URI of its own (fd:NAME after getfd)")
        if ",offset=" in self.path:  # QEMU cuts the URI at the first one
            raise InvalidArgumentError(f"a memory image's path may not contain ',offset=' "
                                       f"(QEMU's file: URI would cut it there): {self.path}",
                                       path=self.path)
        return f"file:{self.path},offset={self.offset}"

    def read_position(self, pid: int | None) -> int:
        """How far QEMU (process *pid*) has read a file channel's stream: the largest offset
        of its descriptors open on the file, from /proc (0 when it cannot be seen; mapped-ram
        reads RAM with pread, so only its main channel's progress shows)."""
        if pid is None or self.path is None:
            return 0
        best, target = 0, os.path.realpath(self.path)
        try:
            for entry in os.scandir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(entry.path) != target:
                        continue
                    with open(f"/proc/{pid}/fdinfo/{entry.name}") as info:
                        pos = next(int(line.split()[1]) for line in info
                                   if line.startswith("pos:"))
                    best = max(best, pos - self.offset)
                except (OSError, StopIteration, ValueError):
                    continue
        except OSError:
            return 0
        return best

    def position(self) -> int:
        """How far a file channel's stream has got (bytes the file holds past the offset; for
        mapped-ram, which writes at fixed offsets, the blocks allocated): progress and stall
        detection of a save. A pipe's position is the reader's to tell."""
        if self.path is None:
            return 0
        try:
            status = os.stat(self.path)
        except OSError:
            return 0
        used = status.st_blocks * 512 if self.mapped_ram_channels else status.st_size
        return max(0, used - self.offset)
