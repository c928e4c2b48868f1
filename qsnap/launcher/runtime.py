"""A running domain's runtime record: where its QEMU's QMP socket, pid file and
``runtime.json`` live, and whether that QEMU still runs.

The runtime folders may live in ``/tmp``, where any local user can make a folder first under
the name qsnap would use, and then swap its socket, pid file or record, or plant a symlink
where qsnap writes (root's ``qsnap start`` once truncated a root-owned file that way). So
every folder of the runtime path qsnap makes must be a real folder, owned by the caller and
writable by no one else, or it is refused by name (:func:`checked_folder`), before anything
in it is read or written; and files are written under new names (``O_EXCL|O_NOFOLLOW``).

Kept apart from :mod:`qsnap.launcher.process` (which starts and stops QEMU, and pulls in
asyncio, the monitor and lxml) so that commands that only look at a guest (``list``,
``domstate``) start in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from qsnap.errors import OperationInvalidError
from qsnap.procfs import pid_alive

try:  # CPython's built-in SHA-256: hashlib would load OpenSSL first (4 ms of every command)
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]  # Python 3.11
except ImportError:  # pragma: no cover - Python 3.12 renamed it; hashlib is the fallback
    from hashlib import sha256 as _sha256


__all__ = [
    "RuntimeInfo",
    "RuntimePaths",
    "clear_runtime",
    "make_runtime_folder",
    "pid_alive",
    "read_runtime",
    "runtime_paths",
    "write_runtime",
]


class RuntimePaths:
    """Where a running domain's QEMU keeps its monitor socket and pid file.

    This module's two classes are plain rather than dataclasses: ``list`` and ``domstate``
    import them, and the dataclasses module alone costs several milliseconds of start-up."""

    __slots__ = ("folder",)

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"RuntimePaths({self.folder!r})"

    @property
    def qmp(self) -> Path:
        return self.folder / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.folder / "qemu.pid"

    @property
    def info(self) -> Path:
        return self.folder / "runtime.json"

    @property
    def agent(self) -> Path:
        return self.folder / "agent.sock"

    @property
    def swtpm(self) -> Path:
        """The TPM emulator's control socket (qsnap.launcher.tpm)."""
        return self.folder / "swtpm.sock"

    @property
    def swtpm_pid(self) -> Path:
        return self.folder / "swtpm.pid"


class RuntimeInfo:
    """How to reach a running domain: its QEMU's pid, QMP socket and accelerator; *owner* is
    "qsnap", or "attached" for a QEMU someone else launched."""

    __slots__ = ("accel", "owner", "pid", "qmp")

    def __init__(self, pid: int, qmp: str, accel: str, owner: str = "qsnap") -> None:
        self.pid = pid
        self.qmp = qmp
        self.accel = accel
        self.owner = owner

    def as_dict(self) -> dict[str, int | str]:
        return {"pid": self.pid, "qmp": self.qmp, "accel": self.accel, "owner": self.owner}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuntimeInfo) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.pid, self.qmp))

    def __repr__(self) -> str:
        return f"RuntimeInfo({self.as_dict()!r})"


def runtime_paths(state_dir: Path, domain: str) -> RuntimePaths:
    """The domain's runtime folder: named by a hash of the state directory and domain name,
    because a unix socket path must stay under 108 bytes."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(xdg) / "qsnap" if xdg else Path(f"/tmp/qsnap-{os.getuid()}")
    digest = _sha256(f"{state_dir}\0{domain}".encode()).hexdigest()[:16]
    return RuntimePaths(base / digest)


def checked_folder(path: Path) -> bool:
    """Whether *path* exists; if it does, it must be a folder (not a symlink to one) owned
    by this process's user and writable by no one else, or it is refused with an error that
    names it and its owner: another user could swap what qsnap keeps in it."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    why = None
    if not stat.S_ISDIR(status.st_mode):
        why = "is not a folder" + (" (a symbolic link)" if stat.S_ISLNK(status.st_mode) else "")
    elif status.st_uid != os.geteuid():
        why = f"belongs to uid {status.st_uid}, not to you (uid {os.geteuid()})"
    elif status.st_mode & 0o022:
        why = f"can be written by others (mode {stat.S_IMODE(status.st_mode):04o})"
    if why is not None:
        raise OperationInvalidError(
            f"qsnap's runtime folder '{path}' {why}: another user could replace the QMP "
            "sockets and pid files qsnap keeps there, so qsnap will not use it. Remove it, "
            "or set XDG_RUNTIME_DIR to a private folder", path=str(path))
    return True


def make_runtime_folder(paths: RuntimePaths) -> None:
    """Create the domain's runtime folder and its parent (private, 0700), and check both
    (:func:`checked_folder`): a folder someone else made first is refused, never used."""
    for folder in (paths.folder.parent, paths.folder):
        if checked_folder(folder):
            continue
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            checked_folder(folder)  # made meanwhile: checked like any other
            continue
        checked_folder(folder)  # a umask cannot widen 0700, but the check costs nothing


def read_runtime(paths: RuntimePaths) -> RuntimeInfo | None:
    """The runtime record, if the domain's QEMU is still alive; a stale record is removed.
    With no record, a QEMU qsnap launched but was killed before recording is found by the
    pid file QEMU writes itself (the soak's random-time kills left such a QEMU running,
    unseen, beside the one the next command started). Nothing is read from a runtime folder
    that another user could have written (:func:`checked_folder`)."""
    if not (checked_folder(paths.folder.parent) and checked_folder(paths.folder)):
        return None
    try:
        info = RuntimeInfo(**json.loads(paths.info.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return _unrecorded(paths)
    # A QEMU qsnap launched has its socket path on its command line: that guards against a
    # recycled pid. One that was attached may have been given its socket some other way.
    if pid_alive(info.pid, _on_command_line(info.qmp) if info.owner == "qsnap" else None):
        return info
    _note_if_crashed(paths, info.pid)
    clear_runtime(paths)
    return None


#: In the runtime folder: the QEMU recorded there died without a clean exit.
CRASH_NOTE = "crashed.json"


def _note_if_crashed(paths: RuntimePaths, pid: int) -> None:
    """QEMU removes its pid file when it exits cleanly (``quit``, SIGTERM, the guest powering
    off); one killed or crashed (SIGKILL, SIGSEGV, abort) leaves it. So a recorded QEMU that
    is gone with its pid file still naming it crashed: noted, for ``domstate --reason`` and
    so that its disks are not taken for a cleanly stopped guest's."""
    try:
        if int(paths.pidfile.read_text().strip()) != pid:
            return
    except (OSError, ValueError):
        return
    import time

    with contextlib.suppress(OSError):
        _write_new(paths.folder / CRASH_NOTE, json.dumps({"pid": pid, "noticed": time.time()}))


def read_crash(paths: RuntimePaths) -> tuple[int, float] | None:
    """The crash noted for the domain's last QEMU: its pid, and when it was noticed (epoch
    seconds); None if there was none. A QEMU that died unnoticed since is noted first."""
    read_runtime(paths)
    if not checked_folder(paths.folder):
        return None
    try:
        note = json.loads((paths.folder / CRASH_NOTE).read_text())
        return int(note["pid"]), float(note["noticed"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def crash_words(note: tuple[int, float] | None) -> str | None:
    """A crash note in words (None for none)."""
    if note is None:
        return None
    import time

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(note[1]))
    return (f"its QEMU, pid {note[0]}, ended without a clean exit, killed or crashed; "
            f"noticed {when}")


def forget_crash(paths: RuntimePaths) -> None:
    """A new QEMU starts (or a revert replaces the present): the old crash is history."""
    with contextlib.suppress(OSError):
        (paths.folder / CRASH_NOTE).unlink(missing_ok=True)


def _on_command_line(qmp: str) -> str:
    """How qsnap's command line spells the QMP socket path (``-qmp unix:PATH,...``, commas
    doubled: :func:`qsnap.model.options.escape_commas`)."""
    return f"unix:{qmp.replace(',', ',,')},"


def _unrecorded(paths: RuntimePaths) -> RuntimeInfo | None:
    """The QEMU named by the domain's pid file, if it runs with the domain's QMP socket on
    its command line; recorded now, so that everything else finds it as usual."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if not pid_alive(pid, _on_command_line(str(paths.qmp))):
        _note_if_crashed(paths, pid)
        paths.pidfile.unlink(missing_ok=True)
        return None
    machine = next((a.decode() for a in cmdline if b"accel=" in a), "")
    accel = machine.split("accel=", 1)[1].split(",", 1)[0] if machine else "tcg"
    info = RuntimeInfo(pid=pid, qmp=str(paths.qmp), accel=accel)
    write_runtime(paths, info)
    return info


def write_runtime(paths: RuntimePaths, info: RuntimeInfo) -> None:
    """Record *info* (write a new file, rename it into place)."""
    make_runtime_folder(paths)
    _write_new(paths.info, json.dumps(info.as_dict()))


def _write_new(path: Path, text: str) -> None:
    """Write *path* through a new file renamed into place (in a folder checked private)."""
    temp = path.with_suffix(".tmp")
    temp.unlink(missing_ok=True)  # one a killed qsnap left
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def clear_runtime(paths: RuntimePaths) -> None:
    for path in (paths.info, paths.pidfile, paths.qmp):
        path.unlink(missing_ok=True)
