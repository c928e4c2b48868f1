"""A guest's TPM: QEMU's ``tpm-tis``/``tpm-crb`` front end on an ``swtpm`` emulator, started
as libvirt starts it (src/qemu/qemu_tpm.c).

The emulator's state lives in the domain's state folder (``swtpm/tpm2`` or ``swtpm/tpm1.2``,
as libvirt keeps ``/var/lib/libvirt/swtpm/UUID/tpm2``); it is made once by ``swtpm_setup``
with libvirt's options (an endorsement key and its certificate, a platform certificate,
NVRAM locked), then each start runs ``swtpm socket --terminate`` on a control socket in the
runtime folder, so the emulator ends when its QEMU closes the socket, however QEMU ends.

QEMU carries the TPM's whole state in its migration stream (the ``tpm-emulator`` vmstate):
memory snapshots, internal or external, and saves take it with the guest's RAM, and a revert
or restore puts it back into the new emulator before the guest runs, as with libvirt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from qsnap import children
from qsnap.errors import LaunchError, NotSupportedError
from qsnap.launcher.refusal import refuse
from qsnap.launcher.runtime import RuntimePaths
from qsnap.model.options import escape_commas
from qsnap.plan.machine import default_tpm_version
from qsnap.procfs import pid_alive

_PCR_BANKS = ("sha1", "sha256", "sha384", "sha512")


@dataclass(frozen=True)
class Tpm:
    """A ``<tpm>``, with libvirt's defaults for what it leaves out."""

    model: str
    #: "emulator" (qsnap runs swtpm) or "external" (an swtpm someone else runs).
    backend: str
    version: str
    #: An external emulator's control socket.
    socket: str = ""
    pcr_banks: tuple[str, ...] = ()
    debug: int | None = None

    @property
    def state_name(self) -> str:
        """The state folder's name, libvirt's."""
        return "tpm2" if self.version == "2.0" else "tpm1.2"

    def permanent_state(self, state: Path) -> Path:
        """swtpm's file of the TPM's permanent state (keys, NVRAM, PCR banks) under *state*:
        all a powered-off TPM has, so all a disk-only snapshot needs to keep."""
        prefix = "tpm2" if self.version == "2.0" else "tpm"
        return state / self.state_name / f"{prefix}-00.permall"


def read_tpm(root: etree._Element) -> Tpm | None:
    """The domain's TPM, or None; what qsnap cannot start is refused by name."""
    nodes = root.findall("devices/tpm")
    if not nodes:
        return None
    if len(nodes) > 1:
        raise refuse("<tpm> #2", "an x86 guest has one TPM")
    node = nodes[0]
    model = node.get("model", "tpm-tis")
    if model not in ("tpm-tis", "tpm-crb"):
        raise refuse(f"<tpm model='{model}'>", "not an x86 TPM interface (use tpm-tis or "
                     "tpm-crb)")
    for child in node:
        if isinstance(child.tag, str) and child.tag not in ("backend", "alias"):
            raise refuse(f"<tpm>: <{child.tag}>", "not supported by qsnap's launcher")
    backend = node.find("backend")
    kind = backend.get("type") if backend is not None else None
    if backend is None or kind not in ("emulator", "external"):
        raise refuse(f"<tpm><backend type='{kind}'>",
                     "a passthrough TPM gives one guest the host's own TPM device, which "
                     "qsnap does not do; use type='emulator' (swtpm)" if kind == "passthrough"
                     else "use type='emulator' (swtpm) or type='external'")
    what = f"<tpm><backend type='{kind}'>"
    if kind == "external":
        source = backend.find("source")
        if source is None or source.get("type") != "unix" or not source.get("path"):
            raise refuse(f"{what}: <source>", "an external TPM needs <source type='unix' "
                         "mode='connect' path=...>")
        return Tpm(model, "external", backend.get("version", "2.0"), socket=source.get(
            "path", ""))
    for child in backend:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "encryption":
            raise refuse(f"{what}: <encryption>", "the key would come from libvirt's secret "
                         "driver, which qsnap does not use")
        if child.tag != "active_pcr_banks":
            raise refuse(f"{what}: <{child.tag}>", "not supported by qsnap's launcher")
    version = backend.get("version", default_tpm_version(model))
    if version not in ("1.2", "2.0"):
        raise NotSupportedError(f"{what}: version '{version}' is not a TPM version (use 1.2 "
                                "or 2.0)")
    if model == "tpm-crb" and version != "2.0":
        raise NotSupportedError(f"<tpm model='tpm-crb'>: a CRB interface needs TPM version "
                                f"2.0, not {version}")
    banks = tuple(bank.tag for bank in backend.iterfind("active_pcr_banks/*")
                  if isinstance(bank.tag, str))
    for bank in banks:
        if bank not in _PCR_BANKS:
            raise refuse(f"{what}: <active_pcr_banks><{bank}>", "not a PCR bank swtpm has")
    if banks and version != "2.0":
        raise NotSupportedError(f"{what}: <active_pcr_banks> needs TPM version 2.0")
    debug = backend.get("debug")
    return Tpm(model, "emulator", version, pcr_banks=banks,
               debug=int(debug) if debug is not None else None)


def permanent_state(element: etree._Element, state: Path | None) -> Path | None:
    """The permanent-state file of the emulated TPM of the domain *element* under *state*,
    or None if it has none (or no state folder was given: an attached QEMU's)."""
    tpm = read_tpm(element)
    if tpm is None or tpm.backend != "emulator" or state is None:
        return None
    return tpm.permanent_state(state)


def control_socket(tpm: Tpm, runtime: RuntimePaths) -> str:
    return tpm.socket if tpm.backend == "external" else str(runtime.swtpm)


def tpm_args(tpm: Tpm, runtime: RuntimePaths) -> list[str]:
    """libvirt's three arguments: the control socket, the backend, the front end."""
    return ["-chardev",
            f"socket,id=chrtpm,path={escape_commas(control_socket(tpm, runtime))}",
            "-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm",
            "-device", json.dumps({"driver": tpm.model, "tpmdev": "tpm-tpm0", "id": "tpm0"})]


def _tool(name: str, domain: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LaunchError(f"domain '{domain}' has an emulated TPM, and '{name}' is not "
                          "installed (Debian's swtpm and swtpm-tools)", domain=domain)
    return path


async def _run(argv: list[str], what: str, domain: str, log: Path) -> None:
    proc = await children.spawn(argv)
    try:
        out, err = await children.finish(proc, 60)
    except TimeoutError:
        raise LaunchError(f"{what} for domain '{domain}' did not finish in 60 s",
                          domain=domain) from None
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip()
        with contextlib.suppress(OSError, IndexError):
            detail = detail or log.read_text(errors="replace").strip().splitlines()[-1]
        raise LaunchError(f"{what} for domain '{domain}' failed: "
                          f"{detail or f'exit status {proc.returncode}'}", domain=domain)


async def manufacture(tpm: Tpm, state: Path, runtime: RuntimePaths, domain: str,
                      vmid: str) -> None:
    """Make the TPM's state, where there is none yet, as libvirt does
    (qemuTPMEmulatorRunSetup): in a folder beside it, renamed into place when whole, so a
    crash never leaves half a TPM for the next start to take as made."""
    folder = state / tpm.state_name
    if folder.is_dir():
        return
    setup = _tool("swtpm_setup", domain)
    _tool("swtpm", domain)
    temp = state / f".{tpm.state_name}.new"
    await asyncio.to_thread(_fresh_folder, temp)
    log = runtime.folder / "swtpm-setup.log"
    argv = [setup, *(["--tpm2"] if tpm.version == "2.0" else []),
            "--tpm-state", str(temp), "--vmid", vmid, "--logfile", str(log),
            "--createek", "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
            "--not-overwrite"]
    if tpm.pcr_banks:
        argv += ["--pcr-banks", ",".join(tpm.pcr_banks)]
    config = await asyncio.to_thread(_local_ca, state.parent / ".localca")
    argv += ["--config", str(config)]
    await _run(argv, "swtpm_setup", domain, log)
    await asyncio.to_thread(_seal, temp, folder)


def _local_ca(folder: Path) -> Path:
    """swtpm_setup's configuration, naming a certificate authority of qsnap's own in
    *folder* (``swtpm_localca`` makes its keys on first use). The system's, in
    /var/lib/swtpm-localca, belongs to the user libvirt runs swtpm as (tss): a root-owned
    lock file qsnap left there would make every later ``virsh start`` of a TPM guest fail."""
    config = folder / "swtpm_setup.conf"
    if config.is_file():
        return config
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = folder / "swtpm-localca.conf"
    ca.write_text(f"statedir = {folder}\nsigningkey = {folder}/signkey.pem\n"
                  f"issuercert = {folder}/issuercert.pem\ncertserial = {folder}/certserial\n")
    options = folder / "swtpm-localca.options"
    options.write_text("--platform-manufacturer qsnap\n--platform-version 2.1\n"
                       "--platform-model QEMU\n")
    temp = folder / "swtpm_setup.conf.new"
    temp.write_text(f"create_certs_tool = {shutil.which('swtpm_localca') or 'swtpm_localca'}\n"
                    f"create_certs_tool_config = {ca}\n"
                    f"create_certs_tool_options = {options}\n")
    os.replace(temp, config)
    return config


def _fresh_folder(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)


def _seal(temp: Path, folder: Path) -> None:
    """Sync *temp*'s files, rename it to *folder*, sync the rename."""
    for name in os.listdir(temp):
        with open(temp / name, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temp, folder)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swtpm_argv(tpm: Tpm, state: Path, runtime: RuntimePaths, swtpm: str) -> list[str]:
    """``swtpm socket`` as libvirt runs it (qemuTPMEmulatorBuildCommand), daemonized with a
    pid file so qsnap can find it, ending when QEMU closes the control socket."""
    log = f"file={escape_commas(str(runtime.folder / 'swtpm.log'))}"
    if tpm.debug is not None:
        log += f",level={tpm.debug}"
    return [swtpm, "socket", "--daemon",
            "--ctrl", f"type=unixio,path={escape_commas(str(runtime.swtpm))},mode=0600",
            "--tpmstate", f"dir={escape_commas(str(state / tpm.state_name))},mode=0600",
            "--log", log, "--pid", f"file={escape_commas(str(runtime.swtpm_pid))}",
            "--terminate", *(["--tpm2"] if tpm.version == "2.0" else [])]


async def run_swtpm(tpm: Tpm, state: Path, runtime: RuntimePaths, domain: str) -> int:
    """Start the emulator on the runtime folder's control socket; its pid."""
    for stale in (runtime.swtpm, runtime.swtpm_pid):
        stale.unlink(missing_ok=True)
    await _run(swtpm_argv(tpm, state, runtime, _tool("swtpm", domain)), "swtpm", domain,
               runtime.folder / "swtpm.log")
    try:
        return int(runtime.swtpm_pid.read_text().strip())
    except (OSError, ValueError):
        raise LaunchError(f"swtpm for domain '{domain}' started but wrote no pid file",
                          domain=domain) from None


def running_swtpm(runtime: RuntimePaths) -> int | None:
    """The pid an earlier start's emulator wrote, if that emulator still runs (not a zombie,
    not a recycled pid)."""
    try:
        pid = int(runtime.swtpm_pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, str(runtime.swtpm)) else None
