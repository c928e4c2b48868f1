"""Folders shared over virtiofs (``<filesystem type='mount'><driver type='virtiofs'>``), as
libvirt shares them (qemu_virtiofs.c): QEMU's ``vhost-user-fs-pci`` on a socket that a
``virtiofsd`` per share serves, or that the definition names (``<source socket=>``: someone
else runs it).

virtiofsd maps guest RAM, so the guest's RAM must be shared memory (``<memoryBacking><access
mode='shared'/>``, or every NUMA cell's ``memAccess='shared'``), as libvirt requires. qsnap
starts each virtiofsd before QEMU, detached from qsnap (so no zombie is left with an embedder),
on a socket in the runtime folder; it ends when QEMU closes the socket. QEMU 7.2 cannot
migrate a vhost-user-fs device: memory snapshots and saves of such a guest are refused up
front with QEMU's reason, as any migration blocker is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from qsnap.errors import LaunchError, NotSupportedError
from qsnap.launcher.devices import VIRTIO_OPTIONS, virtio_keys
from qsnap.launcher.refusal import refuse, refuse_unknown_parts
from qsnap.model.options import escape_commas

#: Where distributions put virtiofsd (the Rust one, and QEMU's own C one in Debian 12).
_VIRTIOFSD = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")


@dataclass(frozen=True)
class Share:
    """One virtiofs share: the socket QEMU connects to, and how to run its virtiofsd (None:
    the definition's own socket, served by someone else)."""

    index: int
    tag: str
    socket: str
    daemon: list[str] | None = field(default=None)


def _options(binary: etree._Element | None) -> list[str]:
    """``<binary>``'s options as virtiofsd's (the C one's ``-o``, which the Rust one takes
    too)."""
    if binary is None:
        return []
    refuse_unknown_parts(binary, "<filesystem><binary>",
                         {"cache", "sandbox", "thread_pool", "lock", "openfiles"},
                         {"path", "xattr"})
    options: list[str] = []
    if binary.get("xattr") == "on":
        options += ["-o", "xattr"]
    cache = binary.find("cache")
    if cache is not None and cache.get("mode"):
        options += ["-o", f"cache={cache.get('mode')}"]
    sandbox = binary.find("sandbox")
    if sandbox is not None and sandbox.get("mode"):
        options += ["-o", f"sandbox={sandbox.get('mode')}"]
    pool = binary.find("thread_pool")
    if pool is not None and pool.get("size"):
        options += [f"--thread-pool-size={int(pool.get('size', '0'))}"]
    lock = binary.find("lock")
    if lock is not None:
        for attribute, name in (("posix", "posix_lock"), ("flock", "flock")):
            if lock.get(attribute) is not None:
                options += ["-o", name if lock.get(attribute) == "on" else f"no_{name}"]
    openfiles = binary.find("openfiles")
    if openfiles is not None and openfiles.get("max"):
        options += [f"--rlimit-nofile={int(openfiles.get('max', '0'))}"]
    return options


def _binary(binary: etree._Element | None) -> str:
    named = binary.get("path") if binary is not None else None
    if named:
        return named
    for path in _VIRTIOFSD:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("virtiofsd") or "virtiofsd"


def _shared_memory(root: etree._Element) -> bool:
    if root.find("memoryBacking/access[@mode='shared']") is not None:
        return True
    cells = root.findall("cpu/numa/cell")
    return bool(cells) and all(c.get("memAccess") == "shared" for c in cells)


def read_shares(root: etree._Element, runtime_folder: str) -> list[Share]:
    """The domain's virtiofs shares (their sockets in *runtime_folder*); what qsnap cannot
    start is refused by name."""
    shares: list[Share] = []
    for index, node in enumerate(root.iterfind("devices/filesystem")):
        driver = node.find("driver")
        if driver is None or driver.get("type") != "virtiofs":
            continue
        what = "<filesystem><driver type='virtiofs'>"
        refuse_unknown_parts(node, what, {"driver", "binary", "source", "target", "address",
                                          "boot", "readonly"}, {"accessmode"})
        refuse_unknown_parts(driver, what, set(), {"type", "queue", *VIRTIO_OPTIONS})
        if node.get("accessmode", "passthrough") != "passthrough":
            raise refuse(f"{what} accessmode='{node.get('accessmode')}'", "virtiofsd passes "
                         "the host's owners through (accessmode='passthrough')")
        if node.find("readonly") is not None:
            raise refuse(f"{what}<readonly/>", "virtiofsd shares folders read-write")
        if not _shared_memory(root):
            raise NotSupportedError(f"{what}: virtiofs needs the guest's RAM shared "
                                    "(<memoryBacking><access mode='shared'/></memoryBacking>, "
                                    "or memAccess='shared' on every NUMA cell), as libvirt "
                                    "requires")
        source, target = node.find("source"), node.find("target")
        tag = target.get("dir", "") if target is not None else ""
        if not tag:
            raise NotSupportedError(f"{what} needs <target dir=...> (the guest's mount tag)")
        if source is not None and source.get("socket"):
            shares.append(Share(index, tag, source.get("socket", "")))
            continue
        if source is None or not source.get("dir"):
            raise NotSupportedError(f"{what} needs <source dir=...> or <source socket=...>")
        if "," in source.get("dir", ""):
            raise NotSupportedError(f"{what}: <source dir='{source.get('dir')}'>: virtiofsd "
                                    "reads the folder from a comma-separated option; rename "
                                    "it or share a folder above it")
        binary = node.find("binary")
        socket = f"{runtime_folder}/fs{index}-fs.sock"
        daemon = [_binary(binary), f"--socket-path={socket}", "-o",
                  f"source={source.get('dir')}", *_options(binary)]
        shares.append(Share(index, tag, socket, daemon))
    return shares


def share_args(share: Share, node: etree._Element, placed: dict[str, object]) -> list[str]:
    """The socket chardev and ``vhost-user-fs-pci`` (libvirt's ids) at *placed*."""
    driver = node.find("driver")
    device: dict[str, object] = {"driver": "vhost-user-fs-pci", "id": f"fs{share.index}",
                                 "chardev": f"chr-vu-fs{share.index}"}
    if driver is not None and driver.get("queue"):
        device["queue-size"] = int(driver.get("queue", "0"))
    device["tag"] = share.tag
    device.update(virtio_keys(driver))
    boot = node.find("boot")
    if boot is not None:
        device["bootindex"] = int(boot.get("order", "0"))
    device.update(placed)
    return ["-chardev", f"socket,id=chr-vu-fs{share.index},path={escape_commas(share.socket)}",
            "-device", json.dumps(device)]


def _pidfile(share: Share) -> Path:
    return Path(share.socket).with_suffix(".pid")


async def start_daemons(shares: list[Share], domain: str) -> list[int]:
    """Start each share's virtiofsd, detached, and wait until its socket listens; their
    pids (for :func:`stop_daemons` if QEMU then fails to start)."""
    pids: list[int] = []
    try:
        for share in shares:
            if share.daemon is not None:
                pids.append(await _start(share, domain))
    except BaseException:
        stop_daemons(pids)
        raise
    return pids


def stop_daemons(pids: list[int]) -> None:
    """End virtiofsds no QEMU connected to (they would wait for one for ever)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


async def _start(share: Share, domain: str) -> int:
    assert share.daemon is not None
    Path(share.socket).unlink(missing_ok=True)
    pidfile = _pidfile(share)
    pidfile.unlink(missing_ok=True)
    log = Path(share.socket).with_suffix(".log")
    # setsid --fork: virtiofsd is nobody's child (no zombie in an embedder's process); the
    # shell writes its pid, then becomes it. (virtiofsd is found by setsid's exec: a missing
    # one shows in the log and as no socket.)
    with log.open("wb") as output:
        await asyncio.to_thread(
            subprocess.run, ["setsid", "--fork", "sh", "-c", 'echo $$ > "$0"; exec "$@"',
                             str(pidfile), *share.daemon],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, timeout=30)
    for _ in range(250):
        if Path(share.socket).exists():
            break
        await asyncio.sleep(0.02)
    else:
        detail = log.read_text(errors="replace").strip() if log.exists() else ""
        with contextlib.suppress(OSError, ValueError):
            stop_daemons([int(pidfile.read_text())])
        raise LaunchError(f"virtiofsd ({share.daemon[0]}) for share '{share.tag}' of domain "
                          f"'{domain}' did not listen on {share.socket} within 5 s"
                          + (f": {detail.splitlines()[-1]}" if detail else ""),
                          domain=domain)
    return int(pidfile.read_text())
