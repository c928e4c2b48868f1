"""A running domain's runtime record: where its QEMU's QMP socket, pid file and
``runtime.json`` live, and whether that QEMU still runs.

Kept apart from :mod:`qsnap.launcher.process` (which starts and stops QEMU, and pulls in
asyncio, the monitor and lxml) so that commands that only look at a guest (``list``,
``domstate``) start in a few milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

try:  # CPython's built-in SHA-256: hashlib would load OpenSSL first (4 ms of every command)
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]  # Python 3.11
except ImportError:  # pragma: no cover - Python 3.12 renamed it; hashlib is the fallback
    from hashlib import sha256 as _sha256


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


def read_runtime(paths: RuntimePaths) -> RuntimeInfo | None:
    """The runtime record, if the domain's QEMU is still alive; a stale record is removed.
    With no record, a QEMU qsnap launched but was killed before recording is found by the
    pid file QEMU writes itself (the soak's random-time kills left such a QEMU running,
    unseen, beside the one the next command started)."""
    try:
        info = RuntimeInfo(**json.loads(paths.info.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return _unrecorded(paths)
    # A QEMU qsnap launched has its socket path on its command line: that guards against a
    # recycled pid. One that was attached may have been given its socket some other way.
    if pid_alive(info.pid, info.qmp if info.owner == "qsnap" else None):
        return info
    clear_runtime(paths)
    return None


def _unrecorded(paths: RuntimePaths) -> RuntimeInfo | None:
    """The QEMU named by the domain's pid file, if it runs with the domain's QMP socket on
    its command line; recorded now, so that everything else finds it as usual."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if not pid_alive(pid, str(paths.qmp)):
        return None
    machine = next((a.decode() for a in cmdline if b"accel=" in a), "")
    accel = machine.split("accel=", 1)[1].split(",", 1)[0] if machine else "tcg"
    info = RuntimeInfo(pid=pid, qmp=str(paths.qmp), accel=accel)
    write_runtime(paths, info)
    return info


def write_runtime(paths: RuntimePaths, info: RuntimeInfo) -> None:
    paths.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = paths.info.with_suffix(".tmp")
    temp.write_text(json.dumps(info.as_dict()))
    os.replace(temp, paths.info)


def clear_runtime(paths: RuntimePaths) -> None:
    for path in (paths.info, paths.pidfile, paths.qmp):
        path.unlink(missing_ok=True)


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """True while *pid* runs and is not a zombie; with *marker*, its command line must contain
    it (so a recycled pid is not mistaken for our QEMU)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if marker is not None:
            return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        return True
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
