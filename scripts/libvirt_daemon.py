"""libvirt's daemons for the side-by-side checks, started by hand (there is no systemd here).

libvirt is a reference for qsnap, never a dependency: the benchmark (``scripts/bench
--with-libvirt``) and the tests that compare with libvirt use this to have a ``libvirtd`` with
the QEMU driver answering on ``qemu:///system``. When none answers, it creates the groups,
user, folders and ``qemu.conf`` settings libvirt needs (only those missing; the notes in
``shared/notes/libvirt-behaviour.md`` say why each), starts ``virtlogd -d`` and ``libvirtd
-d``, and at the end stops exactly the daemons it started, by their PIDs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_SETTINGS = {"security_driver": '"none"', "user": '"root"', "group": '"root"',
                 "cgroup_controllers": "[ ]", "namespaces": "[ ]", "remember_owner": "0"}
PIDFILES = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}


class LibvirtUnavailable(Exception):
    """libvirt cannot run here; the message says why."""


def virsh(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          timeout=timeout)


def _answering() -> bool:
    try:
        return virsh("version", timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _prepare_accounts() -> None:
    """The groups and user libvirt's QEMU driver looks up at start, even when told to run
    QEMU as root."""
    for group in ("kvm", "libvirt-qemu"):
        subprocess.run(["groupadd", "-f", "-r", group], check=True, capture_output=True)
    if subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-r", "-g", "libvirt-qemu", "-M", "-s", "/usr/sbin/nologin",
                        "libvirt-qemu"], check=True, capture_output=True)


def _prepare_host() -> None:
    """What libvirt 9.0 needs on this machine kind without systemd (only what is missing)."""
    _prepare_accounts()
    for folder in ("/var/log/libvirt", "/var/lib/libvirt/qemu", "/var/cache/libvirt",
                   "/run/libvirt"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    text = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    present = {line.split("=", 1)[0].strip() for line in text.splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    missing = [f"{key} = {value}" for key, value in QEMU_SETTINGS.items() if key not in present]
    if missing:
        QEMU_CONF.write_text(text + "".join(f"\n{line}" for line in missing) + "\n")


@contextlib.contextmanager
def libvirt_running() -> Iterator[str]:
    """A libvirtd answering on qemu:///system for the block; yields how it was obtained."""
    if not shutil.which("virsh") or not shutil.which("libvirtd"):
        raise LibvirtUnavailable("virsh or libvirtd is not installed (Debian: libvirt-clients, "
                                 "libvirt-daemon, libvirt-daemon-driver-qemu)")
    if _answering():
        yield "a libvirtd that was already running"
        return
    if os.geteuid() != 0:
        raise LibvirtUnavailable("no libvirtd is running, and starting one needs root")
    _prepare_host()
    started: list[int] = []
    try:
        for daemon in ("virtlogd", "libvirtd"):
            subprocess.run([daemon, "-d"], check=True, capture_output=True, timeout=30)
            for _ in range(50):
                if PIDFILES[daemon].exists() and PIDFILES[daemon].read_text().strip():
                    break
                time.sleep(0.1)
            started.append(int(PIDFILES[daemon].read_text().strip()))
        for _ in range(100):
            if _answering():
                break
            time.sleep(0.2)
        else:
            raise LibvirtUnavailable("libvirtd started but does not answer on qemu:///system")
        yield "virtlogd and libvirtd started for this run"
    finally:
        for pid in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


# -- a second libvirt, unpacked beside the system's ---------------------------------------------

SECOND_LIBVIRT = Path(os.environ.get("QSNAP_LIBVIRT11_DIR",
                                     Path.home() / ".cache/qsnap/libvirt-11"))
_LIBDIR = "usr/lib/x86_64-linux-gnu"
# Where libvirt looks for its configuration, state, drivers, helpers and data: compiled-in
# paths, so the unpacked libvirt sees its own folders there, in a mount namespace of its own.
_STATE_FOLDERS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                  "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}
_PACKAGE_FOLDERS = (f"{_LIBDIR}/libvirt", "usr/lib/libvirt", "usr/share/libvirt")


@dataclass(frozen=True)
class Libvirt:
    """A running libvirtd and the virsh that talks to it (*env*: what that virsh needs in
    its environment, e.g. the unpacked libvirt's library folder)."""
    uri: str
    virsh_argv: tuple[str, ...]
    version: str
    how: str
    env: tuple[tuple[str, str], ...] = ()

    def environment(self) -> dict[str, str]:
        return {**os.environ, **dict(self.env)}

    def virsh(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.virsh_argv, "-q", "-c", self.uri, *args],
                              capture_output=True, text=True, timeout=timeout,
                              env=self.environment())


@contextlib.contextmanager
def system_libvirt() -> Iterator[Libvirt]:
    """The system's libvirt (libvirt_running), as a :class:`Libvirt`."""
    with libvirt_running() as how:
        yield Libvirt(URI, ("virsh",), ".".join(map(str, system_libvirt_version())), how)


def system_libvirt_version() -> tuple[int, ...]:
    """The system's virsh version, () where there is none."""
    try:
        shown = subprocess.run(["virsh", "--version"], capture_output=True, text=True,
                               timeout=30)
    except OSError:
        return ()
    return tuple(int(n) for n in re.findall(r"\d+", shown.stdout)[:3])


def _library_version(virsh_argv: list[str], uri: str, env: dict[str, str]) -> str:
    shown = subprocess.run([*virsh_argv, "-c", uri, "version"], capture_output=True, text=True,
                           timeout=30, env={**os.environ, **env})
    found = re.search(r"Using library: libvirt (\S+)", shown.stdout)
    return found.group(1) if found else ""


def _namespace_script(root: Path, state: Path) -> str:
    """The shell that runs in the new mount namespace: libvirt 11.3's folders and libraries
    over the system's (its helpers, e.g. libvirt_iohelper, are started with a cleared
    environment and find libvirt.so.0 only at the system's path), then its virtlogd and, in
    this process, its libvirtd."""
    binds = [(state / name, Path(target)) for name, target in _STATE_FOLDERS.items()]
    binds += [(root / folder, Path("/") / folder) for folder in _PACKAGE_FOLDERS]
    for library in sorted((root / _LIBDIR).glob("libvirt*.so.0")):
        system = Path("/", _LIBDIR, library.name)
        if system.exists():
            binds.append((library.resolve(), system.resolve()))
    lines = ["set -e"]
    lines += [f"mount --bind '{source}' '{target}'" for source, target in binds]
    lines += [f"export LD_LIBRARY_PATH='{root / _LIBDIR}'",
              f"'{root}/usr/sbin/virtlogd' -p '{state}/run/virtlogd.pid' &",
              f"exec '{root}/usr/sbin/libvirtd' -p '{state}/run/libvirtd.pid'"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def second_libvirt_running(root: Path = SECOND_LIBVIRT) -> Iterator[Libvirt]:
    """The libvirt that scripts/setup.sh unpacked from Debian's backports (11.3 beside Debian
    12's 9.0), running for the block in a mount namespace of its own, with a private state
    folder: it sees its own configuration, drivers and libraries at libvirt's compiled-in
    paths, and the system's libvirt (and one a parallel test run starts) is not touched. Its
    socket lives in the state folder, so any virsh reaches it through the URI's ``socket=``."""
    package = root / "root"
    if not (package / "usr/sbin/libvirtd").exists():
        raise LibvirtUnavailable(f"no unpacked libvirt in {root} (scripts/setup.sh "
                                 "install_second_libvirt)")
    if os.geteuid() != 0:
        raise LibvirtUnavailable("running libvirtd in its own mount namespace needs root")
    _prepare_accounts()
    for target in [*_STATE_FOLDERS.values(), *(f"/{f}" for f in _PACKAGE_FOLDERS)]:
        Path(target).mkdir(parents=True, exist_ok=True)  # a bind mount needs its mount point
    with tempfile.TemporaryDirectory(prefix="qsnap-libvirt-") as folder:
        state = Path(folder)
        for name in _STATE_FOLDERS:
            (state / name).mkdir()
        (state / "lib/qemu").mkdir()
        shutil.copytree(package / "etc/libvirt", state / "etc", dirs_exist_ok=True)
        with open(state / "etc/qemu.conf", "a") as conf:
            conf.write("".join(f"\n{key} = {value}" for key, value in QEMU_SETTINGS.items())
                       + "\n")
        uri = f"{URI}?socket={state}/run/libvirt-sock"
        # The virsh binary itself, not setup's wrapper script: a shell in front of every
        # command would count against libvirt in the benchmark.
        virsh_argv = [str(package / "usr/bin/virsh")]
        env = (("LD_LIBRARY_PATH", str(package / _LIBDIR)),)
        with open(state / "daemons.log", "wb") as log:
            daemon = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                       "-c", _namespace_script(package, state)],
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            for _ in range(150):
                if daemon.poll() is not None:
                    break
                if (state / "run/libvirt-sock").exists():
                    version = _library_version(virsh_argv, uri, dict(env))
                    if version:
                        yield Libvirt(uri, tuple(virsh_argv), version,
                                      f"libvirt {version} from {root}, in its own mount "
                                      "namespace, started for this run", env)
                        return
                time.sleep(0.2)
            raise LibvirtUnavailable("the unpacked libvirtd did not answer: "
                                     + (state / "daemons.log").read_text(errors="replace")[-600:])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)  # libvirtd and its virtlogd
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()


@contextlib.contextmanager
def libvirt_11_running() -> Iterator[Libvirt]:
    """A libvirt >= 11.2, the first with the sparse save format and ``--parallel-channels``:
    the system's where it is that new (Debian 13), else the one scripts/setup.sh unpacked
    (11.3 from Debian's backports), in its own mount namespace."""
    if system_libvirt_version() >= (11, 2):
        with system_libvirt() as libvirt:
            yield libvirt
    else:
        with second_libvirt_running() as libvirt:
            yield libvirt
