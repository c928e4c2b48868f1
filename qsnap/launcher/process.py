"""Starting, finding and stopping a domain's QEMU process.

QEMU runs with ``-daemonize``: it returns once its monitor socket listens (or fails with its own
error on stderr), and the daemon is nobody's child, so no zombie outlives a ``qsnap`` command.
Each running domain has a runtime folder with its QMP socket, pid file and ``runtime.json``. The
folder lives under ``$XDG_RUNTIME_DIR/qsnap`` or ``/tmp/qsnap-UID``, named by a hash of the state
directory and domain name, because a unix socket path must stay under 108 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable
from typing import Protocol

from qsnap import children, images
from qsnap.errors import ImageToolError, LaunchError, OperationInvalidError
from qsnap.launcher.command import qemu_command
from qsnap.launcher.devices import taps
from qsnap.launcher.foreign import (
    DiskImage,
    ForeignCommand,
    RelaunchHook,
    RelaunchRequest,
    relaunch_argv,
)
from qsnap.launcher.runtime import (
    RuntimeInfo,
    RuntimePaths,
    clear_runtime,
    pid_alive,
    write_runtime,
)
from qsnap.model.domain import DomainDef
from qsnap.monitor import Monitor, forget_connection


class Launcher(Protocol):
    """Starts a domain's QEMU: qsnap's own command line (:func:`start_qemu`), an attached
    QEMU's (:func:`foreign_launcher`), or an embedder's hook."""

    def __call__(self, domain: DomainDef, paths: RuntimePaths, accel: str, *,
                 incoming: bool = False, paused: bool = False) -> Awaitable[RuntimeInfo]: ...


async def start_qemu(domain: DomainDef, paths: RuntimePaths, accel: str, *,
                     incoming: bool = False, paused: bool = False) -> RuntimeInfo:
    """Start *domain*'s QEMU; return once its monitor listens (with *incoming*: paused,
    waiting for ``migrate-incoming``)."""
    emulator = domain.element.findtext("devices/emulator") or "qemu-system-x86_64"
    # The command line first: a definition it refuses leaves no NVRAM or runtime folder behind.
    argv = qemu_command(domain, paths, accel, emulator=emulator.strip(), incoming=incoming,
                        paused=paused)
    await _prepare(paths)
    await create_nvram(domain)
    pid = await _run_daemonizing(argv, None, domain.name, paths)
    info = RuntimeInfo(pid=pid, qmp=str(paths.qmp), accel=accel)
    write_runtime(paths, info)
    try:
        await asyncio.to_thread(plug_taps, domain)
    except LaunchError:
        await kill_qemu(info)  # waits until it is gone, and its taps with it
        clear_runtime(paths)
        raise
    return info


def plug_taps(domain: DomainDef) -> None:
    """Bring each tap QEMU opened for the guest's NICs up, on its bridge where it has one
    (``ip link``, as libvirt does it with netlink)."""
    for tap in taps(domain.element):
        command = ["ip", "link", "set", "dev", tap.name, "up"]
        if tap.bridge:
            command[5:5] = ["master", tap.bridge]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) \
                else str(exc)
            raise LaunchError(f"cannot bring the guest's tap '{tap.name}' up"
                              + (f" on bridge '{tap.bridge}'" if tap.bridge else "")
                              + f": {detail}", domain=domain.name) from None


async def create_nvram(domain: DomainDef, *, reset: bool = False) -> None:
    """The domain's UEFI variable store, made from its template where it does not exist yet
    (or, with *reset*, anew), as libvirt does at start: converted beside it by ``qemu-img``
    (raw or qcow2, whatever the template's format), synced and renamed into place, so a crash
    never leaves a half-written store."""
    path = domain.nvram
    if path is None or (os.path.exists(path) and not reset):
        return
    node = domain.element.find("os/nvram")
    template = node.get("template") if node is not None else None
    if not template:
        raise LaunchError(f"the NVRAM file {path} does not exist and the definition names no "
                          "template to create it from", domain=domain.name, path=path)
    template_format = node.get("templateFormat", "raw") if node is not None else "raw"
    temp = f"{path}.tmp"
    try:
        await asyncio.to_thread(os.makedirs, os.path.dirname(path), exist_ok=True)
        await images.qemu_img("convert", "-f", template_format, "-O", domain.nvram_format,
                              template, temp)
        await asyncio.to_thread(_sync_into_place, temp, path)
    except (OSError, ImageToolError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise LaunchError(f"cannot create the NVRAM file {path} from {template}: {exc}",
                          domain=domain.name, path=path) from exc


def _sync_into_place(temp: str, path: str) -> None:
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def foreign_launcher(command: ForeignCommand, hook: RelaunchHook | None) -> Launcher:
    """How an attached domain starts again: *hook* if the embedder registered one, else the
    attached QEMU's own command line with the disks and start mode changed
    (:mod:`qsnap.launcher.foreign`)."""

    async def launch(domain: DomainDef, paths: RuntimePaths, accel: str, *,
                     incoming: bool = False, paused: bool = False) -> RuntimeInfo:
        await _prepare(paths, command.qmp)
        disks = {d.target: DiskImage(d.source, d.driver_type or "raw")
                 for d in domain.disks if d.source}
        argv = relaunch_argv(command, disks, incoming=incoming, paused=paused,
                             pidfile=str(paths.pidfile))
        if hook is None:
            pid = await _run_daemonizing(argv, command.cwd, domain.name, paths)
            info = RuntimeInfo(pid=pid, qmp=command.qmp, accel=command.accel,
                               owner="attached")
        else:
            request = RelaunchRequest(domain.name, disks, incoming, paused, argv)
            qmp = os.path.abspath(await hook(request))
            async with await Monitor.connect(qmp) as monitor:
                peer = monitor.peer_pid()
            if peer is None:
                raise LaunchError(f"the relaunch hook's QMP socket {qmp} has no process "
                                  "behind it that qsnap can see", domain=domain.name, path=qmp)
            info = RuntimeInfo(pid=peer, qmp=qmp, accel=command.accel, owner="attached")
        write_runtime(paths, info)
        return info

    return launch


async def _prepare(paths: RuntimePaths, qmp: str | None = None) -> None:
    """The runtime folder exists, holds no record of an earlier QEMU, and the operation
    holds no connection to one on the same socket path."""
    paths.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.folder.parent.chmod(0o700)
    clear_runtime(paths)
    await forget_connection(qmp or str(paths.qmp))


async def _run_daemonizing(argv: list[str], cwd: str | None, domain: str,
                           paths: RuntimePaths) -> int:
    """Run a QEMU command line that daemonizes; its pid from the pid file it writes."""
    try:
        proc = await children.spawn(argv, cwd=cwd)
    except FileNotFoundError:
        raise LaunchError(f"cannot start domain '{domain}': emulator '{argv[0]}' not found "
                          "(install Debian's qemu-system-x86)", domain=domain) from None
    try:
        _, err = await children.finish(proc, 60)
    except TimeoutError:
        raise LaunchError(f"QEMU for domain '{domain}' did not finish starting in 60 s",
                          domain=domain) from None
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise LaunchError(f"QEMU failed to start domain '{domain}': {message}", domain=domain)
    return int(paths.pidfile.read_text().strip())


async def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process *pid* ends within *timeout* seconds. QEMU runs daemonized, not as
    our child, so it cannot be waited for; a pidfd becomes readable the moment it exits.
    (Polling every 20 ms made every stop cost 20 ms; QEMU itself exits in a few.)"""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (Linux before 5.3): poll
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: None if exited.done() else exited.set_result(None))
    try:
        if pid_alive(pid):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited, timeout)
        return not pid_alive(pid)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def kill_qemu(info: RuntimeInfo) -> None:
    """SIGTERM, then SIGKILL if QEMU has not gone within 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.kill(info.pid, sig)
        except ProcessLookupError:
            return
        if await wait_gone(info.pid, wait):
            return
    raise OperationInvalidError(f"QEMU (pid {info.pid}) survived SIGKILL")
