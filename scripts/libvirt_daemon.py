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
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
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


def _prepare_host() -> None:
    """What libvirt 9.0 needs on this machine kind without systemd (only what is missing)."""
    for group in ("kvm", "libvirt-qemu"):
        subprocess.run(["groupadd", "-f", "-r", group], check=True, capture_output=True)
    if subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-r", "-g", "libvirt-qemu", "-M", "-s", "/usr/sbin/nologin",
                        "libvirt-qemu"], check=True, capture_output=True)
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
