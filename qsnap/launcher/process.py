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
import json
import os
import signal
import subprocess
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

from qsnap import children, images
from qsnap.errors import ImageToolError, LaunchError, OperationInvalidError, QsnapError
from qsnap.launcher.command import qemu_command, qemu_environment
from qsnap.launcher.desktop import check_spice_certificates
from qsnap.launcher.foreign import (
    DiskImage,
    ForeignCommand,
    RelaunchHook,
    RelaunchRequest,
    relaunch_argv,
)
from qsnap.launcher.nic import taps
from qsnap.launcher.runtime import (
    RuntimeInfo,
    RuntimePaths,
    clear_runtime,
    forget_crash,
    make_runtime_folder,
    pid_alive,
    write_runtime,
)
from qsnap.launcher.tpm import manufacture, read_tpm, run_swtpm, running_swtpm
from qsnap.launcher.virtiofs import read_shares, start_daemons, stop_daemons
from qsnap.model.domain import DomainDef
from qsnap.monitor import Monitor, forget_connection


class Launcher(Protocol):
    """Starts a domain's QEMU: qsnap's own command line (:class:`OwnCommandLine`), an
    attached QEMU's (:class:`ForeignLauncher`, through the embedder's hook if it has one),
    or a refusal."""

    def check(self, domain: DomainDef) -> None:
        """Raise the error starting *domain* would meet on the command line, without
        starting anything: operations that stop the running guest first (a revert) ask
        before they stop it."""

    def __call__(self, domain: DomainDef, paths: RuntimePaths, accel: str, *,
                 incoming: bool = False, paused: bool = False) -> Awaitable[RuntimeInfo]: ...


class OwnCommandLine:
    """qsnap's own command line, built from the definition (:func:`start_qemu`); an emulated
    TPM keeps its state in *tpm_state* (StateDir.tpm_state: by the domain's UUID)."""

    def __init__(self, tpm_state: Path | None = None) -> None:
        self.tpm_state = tpm_state

    def check(self, domain: DomainDef) -> None:
        qemu_command(domain, RuntimePaths(Path("/run/qsnap-check")), "tcg")
        check_spice_certificates(domain.element)

    def __call__(self, domain: DomainDef, paths: RuntimePaths, accel: str, *,
                 incoming: bool = False, paused: bool = False) -> Awaitable[RuntimeInfo]:
        return start_qemu(domain, paths, accel, incoming=incoming, paused=paused,
                          tpm_state=self.tpm_state)


async def start_qemu(domain: DomainDef, paths: RuntimePaths, accel: str, *,
                     incoming: bool = False, paused: bool = False,
                     tpm_state: Path | None = None) -> RuntimeInfo:
    """Start *domain*'s QEMU; return once its monitor listens (with *incoming*: paused,
    waiting for ``migrate-incoming``). An emulated TPM's swtpm starts first, on its state in
    *tpm_state* (made on the first start)."""
    emulator = domain.element.findtext("devices/emulator") or "qemu-system-x86_64"
    # The command line first: a definition it refuses leaves no NVRAM or runtime folder behind.
    argv = qemu_command(domain, paths, accel, emulator=emulator.strip(), incoming=incoming,
                        paused=paused, compat=os.environ.get("QSNAP_QEMU_COMPAT"))
    check_spice_certificates(domain.element)
    await _prepare(paths)
    await create_nvram(domain)
    shares = await start_daemons(read_shares(domain.element, str(paths.folder)), domain.name)
    swtpm = None
    try:
        swtpm = await _start_swtpm(domain, paths, tpm_state)
        if swtpm is not None or shares:
            # Made again after the daemons' start (a TPM's first one takes a second): a
            # port chosen for SPICE's autoport is then still free when QEMU binds it.
            argv = qemu_command(domain, paths, accel, emulator=emulator.strip(),
                                incoming=incoming, paused=paused,
                                compat=os.environ.get("QSNAP_QEMU_COMPAT"))
        pid = await _run_daemonizing(argv, None, domain.name, paths,
                                     qemu_environment(domain.element))
    except BaseException:
        # QEMU never connected to them, so they would not end by themselves.
        stop_daemons(shares)
        if swtpm is not None:
            await _end(swtpm)
        raise
    info = RuntimeInfo(pid=pid, qmp=str(paths.qmp), accel=accel)
    write_runtime(paths, info)
    try:
        await asyncio.to_thread(plug_taps, domain)
    except LaunchError:
        await kill_qemu(info)  # waits until it is gone, and its taps with it
        clear_runtime(paths)
        raise
    return info


async def _start_swtpm(domain: DomainDef, paths: RuntimePaths,
                       tpm_state: Path | None) -> int | None:
    """The emulator of *domain*'s TPM, if it has one qsnap runs; its pid. An emulator of the
    QEMU this start replaces (a revert's, a restore's) ends when that QEMU's socket closes;
    it is waited for, since it holds the state folder's lock."""
    tpm = read_tpm(domain.element)
    if tpm is None or tpm.backend != "emulator":
        return None
    if tpm_state is None:
        raise LaunchError(f"domain '{domain.name}' has an emulated TPM, and this launcher was "
                          "given no folder for its state", domain=domain.name)
    await end_swtpm(paths)
    vmid = f"{domain.name}:{domain.uuid or ''}"
    await manufacture(tpm, tpm_state, paths, domain.name, vmid)
    return await run_swtpm(tpm, tpm_state, paths, domain.name)


async def end_swtpm(paths: RuntimePaths) -> None:
    """Wait for the emulator of the QEMU that ran here (it ends when QEMU's socket closes), so
    its state folder is free."""
    old = running_swtpm(paths)
    if old is not None:
        await _end(old)


async def _end(pid: int) -> None:
    """Wait a moment for a process to end by itself, then SIGKILL it."""
    if await wait_gone(pid, 2.0):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    await wait_gone(pid, 5.0)


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
    """How an attached domain starts again (:class:`ForeignLauncher`)."""
    return ForeignLauncher(command, hook)


def _disk_images(domain: DomainDef) -> dict[str, DiskImage]:
    return {d.target: DiskImage(d.source, d.driver_type or "raw")
            for d in domain.disks if d.source}


class ForeignLauncher:
    """An attached domain starts again as its QEMU was started: *hook* if the embedder
    registered one, else the attached QEMU's own command line with the disks and start mode
    changed (:mod:`qsnap.launcher.foreign`).

    Either way the new QEMU starts paused, and before its guest runs a single instruction
    every disk must have opened the image and format the definition names, or that QEMU is
    stopped and the start fails (:class:`LaunchError`): a command line rewritten wrong, or
    a hook that starts something else, must not let the guest write a qcow2 overlay as raw.

    What a failed relaunch leaves: the old QEMU had already stopped (a revert or restore
    stops it, or it was not running), so the guest stays shut off; the QEMU the relaunch
    started is stopped, also when the operation is cancelled while the hook runs; the
    operation's own undo leaves images and metadata as they were before it."""

    def __init__(self, command: ForeignCommand, hook: RelaunchHook | None) -> None:
        self.command = command
        self.hook = hook

    def check(self, domain: DomainDef) -> None:
        """The rewrite of the attached command line for *domain*'s disks is provable (the
        hook gets it as ``request.argv`` too)."""
        relaunch_argv(self.command, _disk_images(domain), incoming=False, paused=True,
                      pidfile="/run/qsnap-check.pid")

    async def __call__(self, domain: DomainDef, paths: RuntimePaths, accel: str, *,
                       incoming: bool = False, paused: bool = False) -> RuntimeInfo:
        await _prepare(paths, self.command.qmp)
        disks = _disk_images(domain)
        argv = relaunch_argv(self.command, disks, incoming=incoming, paused=True,
                             pidfile=str(paths.pidfile))
        if self.hook is None:
            pid = await _run_daemonizing(argv, self.command.cwd, domain.name, paths)
            info = RuntimeInfo(pid=pid, qmp=self.command.qmp, accel=self.command.accel,
                               owner="attached")
        else:
            info = await self._through_hook(RelaunchRequest(domain.name, disks, incoming, True,
                                                            argv))
        write_runtime(paths, info)
        try:
            async with await Monitor.connect(info.qmp) as monitor:
                await _check_disks(monitor, domain.name, disks)
                if not (paused or incoming):
                    await monitor.resume()
        except BaseException:
            with contextlib.suppress(QsnapError, OSError):
                await kill_qemu(info)
            clear_runtime(paths)
            raise
        return info

    async def _through_hook(self, request: RelaunchRequest) -> RuntimeInfo:
        """Ask the hook; whatever goes wrong in it is a :class:`LaunchError` with the cause
        attached. A cancel while it runs lets it finish, then stops the QEMU it started."""
        assert self.hook is not None
        domain = request.domain
        task = asyncio.ensure_future(self.hook(request))
        try:
            qmp = os.path.abspath(await asyncio.shield(task))
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                orphan = os.path.abspath(await task)
                pid = await _serving_pid(orphan, domain)
                if pid is not None:
                    await kill_qemu(RuntimeInfo(pid, orphan, self.command.accel))
            raise
        except Exception as exc:
            raise LaunchError(f"the relaunch hook of domain '{domain}' failed: "
                              f"{type(exc).__name__}: {exc}", domain=domain) from exc
        pid = await _serving_pid(qmp, domain)
        if pid is None:
            raise LaunchError(f"the relaunch hook's QMP socket {qmp} has no process "
                              "behind it that qsnap can see", domain=domain, path=qmp)
        return RuntimeInfo(pid=pid, qmp=qmp, accel=self.command.accel, owner="attached")


async def _serving_pid(qmp: str, domain: str) -> int | None:
    """The pid of the QEMU serving the QMP socket a hook returned; None when the socket has
    no peer qsnap can see; an error naming the socket when nothing answers there."""
    try:
        async with await Monitor.connect(qmp, timeout=10) as monitor:
            return monitor.peer_pid()
    except (QsnapError, OSError) as exc:
        raise LaunchError(f"the relaunch hook returned QMP socket {qmp}, but no QEMU "
                          f"answers there: {exc}", domain=domain, path=qmp) from exc


def _named_files(*names: str) -> set[str]:
    """The files QEMU's names of an image give: a plain name, or the ``filename`` inside a
    ``json:{...}`` name (QEMU's name for a node with options of its own)."""
    found = set(names)
    for name in names:
        if name.startswith("json:"):
            with contextlib.suppress(ValueError):
                stack = [json.loads(name[len("json:"):])]
                while stack:
                    item = stack.pop()
                    if isinstance(item, dict):
                        found.update(v for k, v in item.items()
                                     if k == "filename" and isinstance(v, str))
                        stack.extend(v for v in item.values() if isinstance(v, dict))
    return found


async def _check_disks(monitor: Monitor, domain: str, disks: dict[str, DiskImage]) -> None:
    """Every disk of the relaunched QEMU opened the image and the format it must."""
    opened = await monitor.disks()
    for target, image in sorted(disks.items()):
        disk = opened.get(target)
        if disk is None:
            raise LaunchError(f"the relaunched QEMU of domain '{domain}' has no disk "
                              f"'{target}'; it was stopped before its guest ran",
                              domain=domain, path=image.path)
        if image.path not in _named_files(disk.file, disk.writes_to) or \
                disk.format != image.format:
            raise LaunchError(
                f"the relaunched QEMU of domain '{domain}' opened disk '{target}' as "
                f"{disk.format} image '{disk.writes_to or disk.file}', not as {image.format} "
                f"image '{image.path}'; it was stopped before its guest ran, and nothing "
                "was written", domain=domain, path=image.path)


async def _prepare(paths: RuntimePaths, qmp: str | None = None) -> None:
    """The runtime folder exists, holds no record of an earlier QEMU, and the operation
    holds no connection to one on the same socket path."""
    make_runtime_folder(paths)
    clear_runtime(paths)
    forget_crash(paths)
    await forget_connection(qmp or str(paths.qmp))


async def _run_daemonizing(argv: list[str], cwd: str | None, domain: str,
                           paths: RuntimePaths, env: dict[str, str] | None = None) -> int:
    """Run a QEMU command line that daemonizes (with *env* added to its environment); its
    pid from the pid file it writes."""
    try:
        proc = await children.spawn(argv, cwd=cwd, env=env)
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
