"""The only code that talks QMP: commands with timeouts, jobs awaited through events, fd passing.

Built on ``qemu.qmp``'s :class:`~qemu.qmp.QMPClient`, which has no timeouts of its own: every call
here has one, so a hung or dead QEMU becomes an error instead of a wait without end. QEMU's own
error text is kept in the qsnap error, prefixed with the command that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    Runstate,
)
from qemu.qmp.protocol import StateError
from qemu.qmp.qmp_client import GreetingError

from qsnap.errors import MonitorClosedError, MonitorError, MonitorTimeoutError, QsnapError
from qsnap.faults import crash_point
from qsnap.logs import logger
from qsnap.model.capabilities import QemuCapabilities, StreamSupport
from qsnap.model.domain import NVRAM_TARGET
from qsnap.monitor.channel import StreamChannel
from qsnap.monitor.jobs import Jobs
from qsnap.procfs import start_time
from qsnap.timeouts import call_timeout

log = logger("qsnap.monitor")

DEFAULT_TIMEOUT = 30.0

#: Migration states in which QEMU is still reading or writing the stream, or still holds it:
#: QEMU 10.2 added ``postcopy-device``, and 11.0 ``failing`` (an error happened, its
#: clean-up is under way; ``failed`` follows), in which QEMU still has the image open.
_MIGRATION_UNDER_WAY = frozenset({"setup", "active", "pre-switchover", "device", "cancelling",
                                  "wait-unplug", "postcopy-active", "postcopy-device",
                                  "failing"})

#: Block drivers that are not an image format: protocol nodes and the filters jobs insert.
_NOT_FORMAT_DRIVERS = frozenset({"file", "host_device", "host_cdrom", "commit_top",
                                 "mirror_top", "throttle", "copy-on-read", "copy-before-write",
                                 "snapshot-access", "blkdebug", "blkverify", "null-co"})


def _seconds_from_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def command_timeout() -> float:
    """Seconds to wait for one QMP command: the call's ``timeout=``, else
    ``$QSNAP_QMP_TIMEOUT`` or 30."""
    return call_timeout() or _seconds_from_env("QSNAP_QMP_TIMEOUT", DEFAULT_TIMEOUT)


#: Seconds a memory stream may stand still before QEMU is asked whether it is alive at all.
DEFAULT_STALL = 30.0


def stall_timeout() -> float:
    """How long a migration may make no progress before qsnap asks QEMU whether it still
    answers: ``$QSNAP_STALL_TIMEOUT`` or 30. A QEMU that then does not answer within
    :func:`command_timeout` (stopped by SIGSTOP, hung) ends the wait with an error that
    says so, instead of a silent wait of up to an hour."""
    return _seconds_from_env("QSNAP_STALL_TIMEOUT", DEFAULT_STALL)


class PauseClock:
    """The stopped intervals of a guest, from QEMU's STOP/RESUME event timestamps. A stop
    still open when the block ends is not counted (the guest was left paused on purpose)."""

    def __init__(self) -> None:
        self.paused = 0.0
        self._stopped_at: float | None = None

    def add(self, event: str, when: float) -> None:
        if event == "STOP" and self._stopped_at is None:
            self._stopped_at = when
        elif event == "RESUME" and self._stopped_at is not None:
            self.paused += when - self._stopped_at
            self._stopped_at = None


def _furthest(read_position: Callable[[int | None], int],
              pid: int | None) -> Callable[[], int]:
    """The furthest QEMU has read so far (its file is closed once it is done with it)."""
    furthest = 0

    def position() -> int:
        nonlocal furthest
        furthest = max(furthest, read_position(pid))
        return furthest
    return position


T = TypeVar("T")

#: What each QEMU process offers for streams, by (pid, start time): fixed for its life.
_STREAM_SUPPORT: dict[tuple[int, str], StreamSupport] = {}
_FILE_URI: dict[tuple[int, str], bool] = {}


def _process_identity(pid: int | None) -> tuple[int, str] | None:
    """*pid* with its start time, which tells a reused pid apart; None where it cannot be
    read."""
    started = None if pid is None else start_time(pid)
    return None if pid is None or started is None else (pid, started)


def _enum_names(entry: dict[str, Any]) -> set[str]:
    """The names of an enum in ``query-qmp-schema``: its ``members`` (QEMU 6.2+); its
    ``values``, deprecated since then (and hidden under ``-compat deprecated-output=hide``),
    where a QEMU has only those."""
    members = entry.get("members")
    if isinstance(members, list):
        return {str(m.get("name")) for m in members if isinstance(m, dict)}
    return {str(v) for v in entry.get("values", [])}


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process on the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def _silent_peer(socket_path: str, timeout: float) -> str:
    """Why the process on *socket_path* did not greet: it is stopped (SIGSTOP, a debugger),
    or busy or hung, or not QEMU at all; the kernel tells which process listens there."""
    said = f"QMP socket {socket_path} did not greet within {timeout:g} s"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(socket_path)
            pid = _peer_pid(probe)
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            fields = stat.read()
        command = fields[fields.index("(") + 1:fields.rindex(")")]
        state = fields[fields.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return f"{said} (is it a QEMU monitor?)"
    if state in "Tt":
        return (f"{said}: its process {pid} ({command}) is stopped (by SIGSTOP or a "
                f"debugger), so it cannot answer; 'kill -CONT {pid}' lets it run again")
    kind = "QEMU" if command.startswith("qemu") else f"'{command}', which is not QEMU"
    return f"{said}: its process {pid} ({kind}) is running but does not answer (busy or hung?)"


class _QuietClient(QMPClient):
    """A :class:`~qemu.qmp.QMPClient` that formats messages for its debug log only when that
    log is on. qemu.qmp 0.0.6 pretty-prints every message it sends or receives before the
    logger decides to drop it: a ``query-block`` answer costs about half a millisecond of
    ``json.dumps``, and a disk-only snapshot paid over a millisecond that way."""

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            return super()._cb_outbound(msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            return super()._cb_inbound(msg)
        return msg


#: Connections embedders share with qsnap, by the real path of their QMP socket. A QEMU
#: serves one client per monitor at a time: while an embedder keeps its own connection open,
#: a second one waits unanswered. So an embedder hands its connection over instead.
_SHARED: dict[str, QMPClient] = {}


def share_connection(socket_path: str, client: QMPClient) -> None:
    """Let qsnap use *client* (connected, and kept open by its owner) for the QEMU at
    *socket_path*, instead of connecting itself. qsnap never closes it; once it is no
    longer connected (that QEMU exited), qsnap connects on its own again."""
    _SHARED[os.path.realpath(socket_path)] = client


def unshare_connection(socket_path: str) -> None:
    _SHARED.pop(os.path.realpath(socket_path), None)


def _shared(socket_path: str) -> QMPClient | None:
    client = _SHARED.get(os.path.realpath(socket_path))
    if client is not None and client.runstate != Runstate.RUNNING:
        unshare_connection(socket_path)
        return None
    return client


#: The connections of the running operation, by the real path of their QMP socket: inside
#: :func:`one_connection_per_qemu`, every :meth:`Monitor.connect` to one QEMU reuses one
#: connection (a delete opened seven, each a handshake and a capabilities exchange).
_POOL: ContextVar[dict[str, QMPClient] | None] = ContextVar("qsnap_monitor_pool", default=None)


#: Every connection an operation of this process holds open now, by socket path: QEMU
#: serves one QMP client at a time, so a quick question from another task of the same
#: process (:meth:`Monitor.connect` with ``borrow``) asks through it instead of waiting.
_IN_USE: dict[str, QMPClient] = {}


@contextlib.asynccontextmanager
async def one_connection_per_qemu() -> AsyncIterator[None]:
    """Inside the block, one connection per QEMU serves every :meth:`Monitor.connect`; they
    close at its end. A nested block joins the outer one."""
    if _POOL.get() is not None:
        yield
        return
    pool: dict[str, QMPClient] = {}
    token = _POOL.set(pool)
    try:
        yield
    finally:
        _POOL.reset(token)
        for path, client in pool.items():
            if _IN_USE.get(path) is client:
                del _IN_USE[path]
            await _disconnect(client)


async def forget_connection(socket_path: str) -> None:
    """The QEMU at *socket_path* is stopped or replaced: close the operation's connection
    to it, so that a QEMU started on the same socket path gets a new one. (A closed
    connection is noticed anyway, but only once its reader has seen the end, which may
    come after the next connect.)"""
    pool = _POOL.get()
    path = os.path.realpath(socket_path)
    client = pool.pop(path, None) if pool is not None else None
    if client is not None:
        if _IN_USE.get(path) is client:
            del _IN_USE[path]
        await _disconnect(client)


async def _disconnect(client: QMPClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 5)


@dataclass(frozen=True)
class BlockDevice:
    """One disk as QEMU has it: the format node it writes to, its file (as QEMU was given
    it), the file of the top image (``json:...`` where QEMU describes it by options), its
    format driver, and whether it is read-only."""

    name: str
    node: str
    file: str
    writes_to: str
    format: str
    read_only: bool


@dataclass(frozen=True)
class QemuFacts:
    """What a running QEMU says of its machine: UUID (None if unset), base memory in bytes,
    vCPUs, whether KVM is on, and its disks."""

    uuid: str | None
    memory: int
    vcpus: int
    kvm: bool
    disks: dict[str, BlockDevice]


@dataclass(frozen=True)
class OverlaySwitch:
    """One disk's switch to a new overlay: the format node it writes to now, the overlay's
    file (created by QEMU, or an existing one to *reuse*), the new node's name, its format."""

    node: str
    path: str
    new_node: str
    format: str
    reuse: bool


class _StaleReply(Exception):
    """The peer's first message was a JSON object other than QMP's greeting."""


class Monitor:
    """One QMP connection to one QEMU process: qsnap's own, or one an embedder shares
    (:func:`share_connection`), which qsnap uses but does not close."""

    def __init__(self, client: QMPClient, *, owned: bool = True) -> None:
        self._client = client
        self._owned = owned
        self._capabilities: QemuCapabilities | None = None
        #: QEMU's jobs through this connection (typed; the block-commit sequence).
        self.jobs = Jobs(self)

    @classmethod
    async def connect(cls, socket_path: str, timeout: float | None = None, *,
                      borrow: bool = False) -> Monitor:
        """Connect to the QMP socket at *socket_path* (the QMP handshake proves it is QMP),
        or use the connection an embedder shares for it. With *borrow*, a connection another
        operation of this process holds open serves too (for a quick question asked
        beside it)."""
        shared = _shared(socket_path)
        if shared is not None:
            return cls(shared, owned=False)
        path = os.path.realpath(socket_path)
        pool = _POOL.get()
        if pool is not None:
            pooled = pool.get(path)
            if pooled is not None and pooled.runstate == Runstate.RUNNING:
                return cls(pooled, owned=False)
        if borrow:
            busy = _IN_USE.get(path)
            if busy is not None and busy.runstate == Runstate.RUNNING:
                return cls(busy, owned=False)
        monitor = await cls._open(socket_path, timeout)
        if pool is not None:
            pool[path] = monitor._client
            _IN_USE[path] = monitor._client
            monitor._owned = False
        return monitor

    @classmethod
    async def _open(cls, socket_path: str, timeout: float | None) -> Monitor:
        """Connect and shake hands. A first message that is a JSON object but not QMP's
        greeting is a reply QEMU owed a client that has gone (one that timed out while QEMU
        was stopped, say): QEMU 10 was seen to send it to the next client before the
        greeting, and that client then settles nothing (test_qemu_that_stops_answering_
        mid_create in CI). Such a connection is dropped and made again, twice at most."""
        for attempt in range(3):
            try:
                return await cls._connect_once(socket_path, timeout)
            except _StaleReply:
                log.warning("QEMU at %s answered a gone client first; connecting again",
                            socket_path)
                await asyncio.sleep(0.1 * (attempt + 1))
        raise MonitorClosedError(f"{socket_path} is not a QEMU monitor (QMP handshake failed: "
                                 "its first message is not a greeting)", path=socket_path)

    @classmethod
    async def _connect_once(cls, socket_path: str, timeout: float | None) -> Monitor:
        timeout = min(command_timeout(), 10.0) if timeout is None else timeout
        client = _QuietClient("qsnap")
        try:
            await asyncio.wait_for(client.connect(socket_path), timeout)
        except ConnectError as exc:
            cause = exc.exc
            if isinstance(cause, GreetingError) and "requires 'QMP' member" in str(cause):
                raise _StaleReply from None
            if isinstance(cause, TimeoutError | asyncio.CancelledError):
                raise MonitorTimeoutError(_silent_peer(socket_path, timeout),
                                          path=socket_path) from None
            if isinstance(cause, OSError):
                raise MonitorClosedError(f"cannot connect to QMP socket {socket_path}: "
                                         f"{cause.strerror or cause}",
                                         path=socket_path) from None
            reason = str(cause or exc).splitlines()[0] if str(cause or exc) else "no reason"
            raise MonitorClosedError(f"{socket_path} is not a QEMU monitor (QMP handshake "
                                     f"failed: {reason})", path=socket_path) from None
        except TimeoutError:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise MonitorTimeoutError(_silent_peer(socket_path, timeout),
                                          path=socket_path) from None
        except OSError as exc:  # after TimeoutError, which is an OSError too
            raise MonitorClosedError(f"cannot connect to QMP socket {socket_path}: "
                                     f"{exc.strerror or exc}", path=socket_path) from None
        return cls(client)

    async def capabilities(self) -> QemuCapabilities:
        """What this QEMU offers (version, QMP commands and events), probed on first use:
        the schema is large (tens of milliseconds to fetch and parse), and most operations
        never need it, so connecting does not pay for it."""
        if self._capabilities is None:
            qemu = (await self.execute("query-version"))["qemu"]
            schema = await self.execute("query-qmp-schema")
            self._capabilities = QemuCapabilities(
                (qemu["major"], qemu["minor"], qemu["micro"]),
                frozenset(e["name"] for e in schema if e.get("meta-type") == "command"),
                frozenset(e["name"] for e in schema if e.get("meta-type") == "event"))
        return self._capabilities

    @property
    def open(self) -> bool:
        """Whether the connection is up (QEMU has not closed it)."""
        return bool(self._client.runstate == Runstate.RUNNING)

    async def close(self) -> None:
        if self._owned:
            await _disconnect(self._client)

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None, *,
                      timeout: float | None = None) -> Any:
        """Run one QMP command and return its result (*timeout*: see :func:`command_timeout`)."""
        timeout = command_timeout() if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            error = exc.error.error
            raise MonitorError(command, error.class_, error.desc) from None
        except (ExecInterruptedError, StateError, ConnectionError, EOFError) as exc:
            raise MonitorClosedError(f"QEMU closed its monitor during {command} "
                                     f"(it may have exited): {exc}") from None
        except TimeoutError:
            raise MonitorTimeoutError(f"QEMU did not answer {command} within {timeout:g} s") \
                from None

    async def block_devices(self, *, nvram: bool = False) -> dict[str, dict[str, Any]]:
        """Each disk with a medium, by name: the guest device's id (qsnap launches disks with
        id = target), else the legacy drive id. Values are ``query-block``'s ``inserted``.
        With *nvram*, also the firmware's writable flash (a UEFI guest's NVRAM), named
        :data:`~qsnap.model.domain.NVRAM_TARGET`, for internal snapshots."""
        devices: dict[str, dict[str, Any]] = {}
        for entry in await self.execute("query-block"):
            inserted = entry.get("inserted")
            if not inserted:
                continue
            qdev = entry.get("qdev") or ""
            if qdev.startswith("/machine/system.flash"):
                if nvram and not inserted.get("ro"):
                    devices[NVRAM_TARGET] = inserted
                continue
            if "/peripheral/" in qdev:
                name = qdev.split("/peripheral/", 1)[1].split("/", 1)[0]
            elif qdev and "/" not in qdev:
                name = qdev  # QEMU gives some devices (scsi-hd, ide-cd) by bare id
            elif entry.get("device"):
                name = entry["device"]
            else:
                continue  # an anonymous device: nothing stable to call it by
            devices[name] = inserted
        return devices

    async def disks(self) -> dict[str, BlockDevice]:
        """Each disk with a medium (named as :meth:`block_devices` names them), typed."""
        return {name: BlockDevice(name, str(inserted["node-name"]), str(inserted["file"]),
                                  str(inserted.get("image", {}).get("filename", "")),
                                  str(inserted["drv"]), bool(inserted.get("ro", False)))
                for name, inserted in (await self.block_devices()).items()}

    async def block_tops(self, *, nvram: bool = False) -> dict[str, str]:
        """The node each disk writes to now, by the names of :meth:`block_devices`."""
        return {name: inserted["node-name"]
                for name, inserted in (await self.block_devices(nvram=nvram)).items()}

    async def block_chains(self) -> dict[str, list[tuple[str, str]]]:
        """Each disk's backing chain as QEMU has it open, top first: (node name, file name).

        Backing files QEMU opened by itself have generated node names, so names are matched
        to files through ``query-named-block-nodes`` (format nodes only: the protocol node
        underneath names the same file).
        """
        return await self._chains(await self._named_nodes())

    async def _named_nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = await self.execute("query-named-block-nodes",
                                                         {"flat": True})
        return nodes

    async def _chains(self, named: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
        """:meth:`block_chains` from a ``query-named-block-nodes`` answer already at hand."""
        nodes: dict[str, str] = {}
        for node in named:
            if node.get("drv") not in _NOT_FORMAT_DRIVERS and node.get("file"):
                nodes.setdefault(node["file"], node["node-name"])
        chains: dict[str, list[tuple[str, str]]] = {}
        for name, inserted in (await self.block_devices()).items():
            chain = [(inserted["node-name"], inserted["image"]["filename"])]
            image = inserted["image"].get("backing-image")
            while image is not None:
                filename = image["filename"]
                chain.append((nodes.get(filename, ""), filename))
                image = image.get("backing-image")
            chains[name] = chain
        return chains

    async def drop_detached_nodes(self) -> list[str]:
        """Delete the named nodes that no disk's chain uses any more; returns their names.

        Nodes made with ``-blockdev`` (as qsnap's launcher makes every disk) belong to the
        monitor, so when an active commit pivots a disk off its top image, that node stays,
        still holding the image below as its backing file. QEMU then refuses the next
        snapshot or commit on that image ("node is used as backing hd", "Need a root block
        node"). Format nodes go first, then the protocol nodes under them; a node QEMU still
        needs, or one the monitor does not own, is refused by QEMU and left alone.
        """
        named = await self._named_nodes()
        in_use = {f for chain in (await self._chains(named)).values() for _, f in chain}
        nodes = [n for n in named
                 if not n["node-name"].startswith("#") and n.get("file") not in in_use]
        nodes.sort(key=lambda n: n.get("drv") in _NOT_FORMAT_DRIVERS)
        dropped = []
        for node in nodes:
            try:
                await self.execute("blockdev-del", {"node-name": node["node-name"]})
            except MonitorError:
                continue
            dropped.append(node["node-name"])
        return dropped

    # -- the guest's run state ----------------------------------------------------------------

    async def status(self) -> str:
        """QEMU's run state: running, paused, postmigrate, shutdown, ..."""
        return str((await self.execute("query-status"))["status"])

    async def migration_blockers(self) -> list[str]:
        """Why QEMU cannot save this guest's state now (``query-migrate``'s
        ``blocked-reasons``, since QEMU 6.0): empty when it can."""
        return [str(r) for r in (await self.execute("query-migrate")).get("blocked-reasons",
                                                                            [])]

    async def generation_id(self) -> str:
        """The VM generation ID the guest sees (its ``vmgenid`` device)."""
        return str((await self.execute("query-vm-generation-id"))["guid"])

    async def resume_if_stopped(self) -> bool:
        """Run a guest that is paused, or stopped after a finished outgoing migration
        (``postmigrate``); True if it was. For settling what a crash left paused."""
        if await self.status() not in ("paused", "postmigrate"):
            return False
        await self.resume()
        return True

    async def pause(self) -> None:
        await self.execute("stop")

    async def resume(self) -> None:
        await self.execute("cont")

    async def quit(self, timeout: float = 5.0) -> None:
        await self.execute("quit", timeout=timeout)

    async def power_cycle(self, wait: float) -> None:
        """Press the ACPI power button and, once the guest has shut down, reset and run the
        machine instead of letting QEMU exit (libvirt's "fake reboot"): QEMU is told to
        pause on the guest's shutdown for the while (``set-action``, QEMU 6.0), and put back
        to QEMU's default, powering off, after. A guest that does not shut down within
        *wait* seconds is left running, with an error."""
        await self.execute("set-action", {"shutdown": "pause"})
        try:
            async with self.events("SHUTDOWN") as listener:
                await self.powerdown()
                try:
                    await asyncio.wait_for(listener.get(), wait)
                except TimeoutError:
                    raise MonitorTimeoutError(
                        f"the guest did not shut down within {wait:g} s of the ACPI power "
                        "button, so it was not rebooted (does it handle ACPI?)") from None
            await self.reset()
            await self.resume()
        finally:
            with contextlib.suppress(QsnapError):
                await self.execute("set-action", {"shutdown": "poweroff"})

    async def reset(self) -> None:
        """Reset the machine at once (``system_reset``), as a reset button would."""
        await self.execute("system_reset")

    async def cancel_migration(self) -> bool:
        """Cancel the migration (a save, a memory snapshot) under way, if one is; True if
        there was one. The migration then ends ``cancelled`` and its waiter fails."""
        if await self.migration_status() not in _MIGRATION_UNDER_WAY:
            return False
        await self.execute("migrate_cancel")
        return True

    async def powerdown(self) -> None:
        """Press the ACPI power button."""
        await self.execute("system_powerdown")

    async def describe(self) -> QemuFacts:
        """What ``attach`` needs to define a domain."""
        uuid = str((await self.execute("query-uuid"))["UUID"])
        return QemuFacts(
            uuid=None if uuid == "00000000-0000-0000-0000-000000000000" else uuid,
            memory=int((await self.execute("query-memory-size-summary"))["base-memory"]),
            vcpus=len(await self.execute("query-cpus-fast")),
            kvm=await self._kvm_enabled(),
            disks=await self.disks())

    async def _kvm_enabled(self) -> bool:
        """Whether this QEMU runs its guest under KVM: ``query-accelerators`` where offered
        (``query-kvm`` is deprecated since QEMU 11.0 and refused under
        ``-compat deprecated-input=reject``), else ``query-kvm``."""
        try:
            answer = await self.execute("query-accelerators")
        except MonitorError as exc:
            if exc.qmp_class != "CommandNotFound":
                raise
            return bool((await self.execute("query-kvm"))["enabled"])
        return bool(answer.get("enabled") == "kvm")

    # -- disks and internal snapshots ---------------------------------------------------------

    async def switch_to_overlays(self, switches: list[OverlaySwitch]) -> None:
        """Every disk of *switches* onto its new overlay in one atomic QMP ``transaction``
        (one ``blockdev-snapshot-sync`` each): all of them, or none."""
        await self.transaction([
            {"type": "blockdev-snapshot-sync",
             "data": {"node-name": s.node, "snapshot-file": s.path,
                      "snapshot-node-name": s.new_node, "format": s.format,
                      "mode": "existing" if s.reuse else "absolute-paths"}}
            for s in switches])

    async def transaction(self, actions: list[dict[str, object]]) -> None:
        """Run *actions* (built by the plan) as one atomic QMP ``transaction``."""
        await self.execute("transaction", {"actions": actions})

    async def internal_snapshot_tags(self, nodes: list[str]) -> dict[str, set[str]]:
        """The internal snapshot tags each of *nodes* (format nodes) holds."""
        tags: dict[str, set[str]] = {node: set() for node in nodes}
        for node in await self.execute("query-named-block-nodes", {"flat": True}):
            if node["node-name"] in tags:
                tags[node["node-name"]] = {
                    s.get("name", "") for s in node.get("image", {}).get("snapshots", [])}
        return tags

    async def save_internal(self, tag: str, vmstate: str, devices: list[str]) -> None:
        """savevm as a job: every device's state, and the memory in *vmstate*."""
        await self.jobs.run("snapshot-save", {"tag": tag, "vmstate": vmstate,
                                             "devices": devices}, self.jobs.unique_id("save"))

    async def load_internal(self, tag: str, vmstate: str, devices: list[str]) -> None:
        await self.jobs.run("snapshot-load", {"tag": tag, "vmstate": vmstate,
                                             "devices": devices}, self.jobs.unique_id("load"))

    async def delete_internal(self, tag: str, devices: list[str]) -> None:
        await self.jobs.run("snapshot-delete", {"tag": tag, "devices": devices},
                           self.jobs.unique_id("delete"))

    def peer_pid(self) -> int | None:
        """The pid of the process on the other end of the QMP socket (SO_PEERCRED)."""
        transport = getattr(self._client, "_writer", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        return _peer_pid(sock)

    async def send_fd(self, fd: int, name: str) -> None:
        """Pass *fd* to QEMU (SCM_RIGHTS) under *name*, for ``fd:NAME`` URIs."""
        try:
            self._client.send_fd_scm(fd)
        except (StateError, OSError) as exc:
            raise MonitorClosedError(f"cannot pass a file to QEMU: {exc}") from None
        await self.execute("getfd", {"fdname": name})

    async def _migration(self, command: str, channel: StreamChannel, timeout: float,
                         just_before: Callable[[], Awaitable[None]] | None = None,
                         progress: Callable[[int], None] | None = None,
                         position: Callable[[], int] | None = None,
                         once_started: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run an outgoing or incoming migration over *channel* and wait until it is over
        (*once_started* runs beside the wait, from the moment QEMU accepted the command);
        *just_before* runs after all the set-up (QEMU holds its copy of a pipe by then), right
        before the migration command. *progress* hears how far the stream has got about four
        times a second: *position* tells, or else how much of the channel's file is
        written."""
        await self.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        if channel.pipe is not None:
            name = f"qsnap-migration-{os.getpid()}-{channel.pipe}"
            await self.send_fd(channel.pipe, name)
            uri = f"fd:{name}"
        else:
            uri = channel.uri()
        restore = await self._set_stream_options(channel, outgoing=command == "migrate")
        try:
            async with self.events("MIGRATION") as listener:
                if just_before is not None:
                    await just_before()
                await self.execute(command, {"uri": uri})
                crash_point(f"{command}: started")
                beside = asyncio.ensure_future(once_started()) if once_started else None
                try:
                    if position is None:
                        position = (channel.position if command == "migrate"
                                    else _furthest(channel.read_position, self.peer_pid()))
                    ended = await asyncio.wait_for(self._wait_migration(
                        command, listener, position, progress), timeout)
                    if beside is not None:
                        await beside
                except TimeoutError:
                    with contextlib.suppress(QsnapError):
                        await self.execute("migrate_cancel")
                    raise MonitorTimeoutError(f"QEMU did not finish {command} within "
                                              f"{timeout:g} s; it was cancelled") from None
                finally:
                    if beside is not None and not beside.done():
                        beside.cancel()
                        with contextlib.suppress(asyncio.CancelledError, QsnapError):
                            await beside
            if ended != "completed":  # QEMU's own event says so: no round trip to ask again
                status = await self.execute("query-migrate")
                raise MonitorError(command, "GenericError", status.get("error-desc")
                                   or f"migration {status.get('status')}")
        finally:
            if restore:
                with contextlib.suppress(QsnapError):
                    await restore()

    async def _set_stream_options(self, channel: StreamChannel, *, outgoing: bool
                                  ) -> Callable[[], Awaitable[None]] | None:
        """Switch on what *channel* needs (mapped-ram with multifd channels, direct I/O);
        returns what puts the QEMU back as it was (a later background snapshot refuses
        multifd), or None when nothing was changed. An outgoing stream without mapped-ram
        first switches off mapped-ram and multifd left on by a qsnap killed during a sparse
        save: QEMU refuses a pipe or a background snapshot with them."""
        if not channel.mapped_ram_channels:
            if outgoing:
                states = {c["capability"]: c["state"]
                          for c in await self.execute("query-migrate-capabilities")}
                leftover = [name for name in ("mapped-ram", "multifd") if states.get(name)]
                if leftover:
                    log.warning("QEMU still had %s on (from an interrupted sparse save?); "
                                "switched off", " and ".join(leftover))
                    await self.execute("migrate-set-capabilities", {"capabilities": [
                        {"capability": name, "state": False} for name in leftover]})
            return None
        before = await self.execute("query-migrate-parameters")
        parameters: dict[str, object] = {"multifd-channels": channel.mapped_ram_channels}
        if channel.direct_io:
            parameters["direct-io"] = True
        await self.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "mapped-ram", "state": True},
            {"capability": "multifd", "state": True}]})
        await self.execute("migrate-set-parameters", parameters)

        async def restore() -> None:
            await self.execute("migrate-set-parameters", {
                name: before[name] for name in parameters if name in before})
            await self.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "mapped-ram", "state": False},
                {"capability": "multifd", "state": False}]})
        return restore

    async def stream_support(self) -> StreamSupport:
        """How this QEMU can move a migration stream into files: ``mapped-ram`` with multifd
        (QEMU 9.0), ``direct-io`` (9.1), and background snapshots. Probed from its migration
        capabilities and parameters, never from its version number."""
        async def probe() -> StreamSupport:
            capabilities = {c["capability"]
                            for c in await self.execute("query-migrate-capabilities")}
            parameters = await self.execute("query-migrate-parameters")
            mapped_ram = {"mapped-ram", "multifd"} <= capabilities
            return StreamSupport(mapped_ram=mapped_ram,
                                 direct_io=mapped_ram and "direct-io" in parameters,
                                 background="background-snapshot" in capabilities)
        return await self._per_process(_STREAM_SUPPORT, probe)

    async def takes_file_uri(self) -> bool:
        """Whether this QEMU opens ``file:PATH,offset=N`` migration URIs itself (QEMU 8.2).
        Mapped-ram exists only over ``file:``, so it answers without the schema, which costs
        25-40 ms here to fetch and parse; only a QEMU without it is asked for its schema."""
        async def probe() -> bool:
            if (await self.stream_support()).mapped_ram:
                return True
            return any(e.get("meta-type") == "enum" and {"exec", "file"} <= _enum_names(e)
                       for e in await self.execute("query-qmp-schema"))
        return await self._per_process(_FILE_URI, probe)

    async def _per_process(self, known: dict[tuple[int, str], T],
                           probe: Callable[[], Awaitable[T]]) -> T:
        """*probe*'s answer, remembered in *known* for the life of the QEMU process (its pid
        and start time): what a QEMU offers does not change while it runs, so the operations
        of an embedding program probe once."""
        process = _process_identity(self.peer_pid())
        if process is not None and process in known:
            return known[process]
        answer = await probe()
        if process is not None:
            known[process] = answer
        return answer

    async def migration_status(self) -> str | None:
        """The state of this QEMU's last migration (``active``, ``completed``, ...), or None."""
        status: str | None = (await self.execute("query-migrate")).get("status")
        return status

    async def end_migration(self, *, cancel: bool, timeout: float = 600.0) -> None:
        """Wait until no migration is under way, cancelling one first if *cancel*. A crashed
        qsnap leaves QEMU writing a memory image through the fd it was passed; recovery must
        not touch that image before QEMU lets go of it."""
        deadline = asyncio.get_running_loop().time() + timeout
        cancelled = False
        while await self.migration_status() in _MIGRATION_UNDER_WAY:
            if cancel and not cancelled:
                await self.execute("migrate_cancel")
                cancelled = True
            if asyncio.get_running_loop().time() > deadline:
                raise MonitorTimeoutError(f"QEMU's migration did not end within {timeout:g} s")
            await asyncio.sleep(0.05)

    async def _wait_migration(self, command: str, listener: EventListener,
                              position: Callable[[], int],
                              progress: Callable[[int], None] | None) -> str:
        """Wait for the MIGRATION event that ends it; returns its status. A monitor that
        closes (QEMU died) ends the wait at once; a stream that stands still for
        :func:`stall_timeout` seconds makes qsnap ask QEMU, and a QEMU that does not answer
        ends it too (both with an error that says which)."""
        loop = asyncio.get_running_loop()
        last, moved_at = -1, loop.time()
        while True:
            if self._client.runstate != Runstate.RUNNING:
                raise MonitorClosedError(f"QEMU closed its monitor during {command} (it "
                                         "exited or was killed)")
            where = position()
            if progress is not None:
                progress(where)
            if where != last:
                last, moved_at = where, loop.time()
            elif loop.time() - moved_at > stall_timeout():
                await self._check_answers(command, loop.time() - moved_at)
                moved_at = loop.time()
            try:
                event: Any = await asyncio.wait_for(listener.get(), 0.25)
            except TimeoutError:
                continue
            status = event.get("data", {}).get("status")
            if status in ("completed", "failed", "cancelled"):
                if progress is not None:
                    progress(position())
                return str(status)

    async def _check_answers(self, command: str, still: float) -> None:
        """After the stream stood still for *still* seconds: QEMU must at least answer."""
        try:
            await self.execute("query-migrate")
        except MonitorTimeoutError:
            raise MonitorTimeoutError(
                f"QEMU stalled during {command}: the stream has not moved for {still:.0f} s "
                f"and QEMU does not answer its monitor (is the process stopped, e.g. by "
                "SIGSTOP, or hung?)") from None
        log.warning("QEMU's %s has not moved for %.0f s; QEMU still answers, so qsnap goes "
                    "on waiting", command, still)

    async def save(self, channel: StreamChannel, timeout: float = 3600.0, *,
                   background: bool = False,
                   just_before: Callable[[], Awaitable[None]] | None = None,
                   progress: Callable[[int], None] | None = None,
                   position: Callable[[], int] | None = None) -> None:
        """Write the guest's RAM and device state into *channel* (for a pipe, *position* tells
        *progress* how far the stream has got).

        QEMU caps migration at 128 MiB/s by default, a tenth of a disk's speed; the cap is
        lifted for the save and put back after, as libvirt does for saves to files.

        With *background*, QEMU's ``background-snapshot`` capability is on for this save: QEMU
        stops the guest for the device state, write-protects its RAM, runs it again at once,
        and writes each page before the guest may change it, so the image holds the moment
        the save STARTED while the guest runs. QEMU resumes the guest itself, whatever its
        state before. *just_before* runs right before ``migrate``, after every other command:
        what it pauses is paused for one command only.
        """
        params = await self.execute("query-migrate-parameters")
        await self.execute("migrate-set-parameters", {"max-bandwidth": 1 << 62})
        if background:
            await self._set_capability("background-snapshot", True)
        try:
            await self._migration("migrate", channel, timeout, just_before, progress, position,
                                  self._run_once_captured if background else None)
        finally:
            with contextlib.suppress(QsnapError):
                await self.execute("migrate-set-parameters",
                                   {"max-bandwidth": params["max-bandwidth"]})
                if background:
                    await self._set_capability("background-snapshot", False)

    async def _run_once_captured(self) -> None:
        """A background snapshot of a guest qsnap paused (to switch its disks at the same
        moment): QEMU 7.2 runs the guest itself once it has the device state and has
        write-protected the RAM; QEMU 10 puts it back in the state it found it in (paused). So wait
        until QEMU sends RAM pages, which it does only after both, and run the guest if it is
        still paused: running it any earlier would move the memory's moment past the disks'."""
        while True:
            status = await self.execute("query-migrate")
            if status.get("status") not in _MIGRATION_UNDER_WAY:
                break
            ram = status.get("ram", {})
            if ram.get("normal", 0) + ram.get("duplicate", 0) > 0:
                break
            await asyncio.sleep(0.001)
        if await self.status() == "paused":
            await self.resume()

    async def _set_capability(self, name: str, state: bool) -> None:
        await self.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": name, "state": state}]})

    async def background_snapshot_refusal(self) -> str | None:
        """None when this QEMU on this host can take background snapshots, else why not
        (QEMU >= 6.0, and userfaultfd write-protection in the host kernel, which QEMU
        checks when the capability is switched on)."""
        capabilities = {c["capability"] for c in await self.execute("query-migrate-capabilities")}
        if "background-snapshot" not in capabilities:
            version = ".".join(map(str, (await self.capabilities()).version))
            return f"QEMU {version} has no background-snapshot migration capability"
        try:
            await self._set_capability("background-snapshot", True)
        except MonitorError as exc:
            return exc.desc
        with contextlib.suppress(QsnapError):
            await self._set_capability("background-snapshot", False)
        return None

    @contextlib.asynccontextmanager
    async def pause_clock(self) -> AsyncIterator[PauseClock]:
        """Measure how long the guest's vCPUs are stopped inside the block, from the
        timestamps QEMU puts on its own STOP and RESUME events."""
        clock = PauseClock()
        async with self.events("STOP", "RESUME") as listener:
            try:
                yield clock
            finally:
                for stopped in listener.clear():
                    event: Any = stopped
                    stamp = event.get("timestamp", {})
                    clock.add(event["event"], stamp.get("seconds", 0)
                              + stamp.get("microseconds", 0) / 1e6)

    async def load(self, channel: StreamChannel, timeout: float = 3600.0,
                   progress: Callable[[int], None] | None = None,
                   position: Callable[[], int] | None = None) -> None:
        """Read a saved state from *channel* into a QEMU started with ``-incoming defer``;
        *progress* hears how far QEMU has read (*position*, for a pipe)."""
        await self._migration("migrate-incoming", channel, timeout, progress=progress,
                              position=position)

    @contextlib.asynccontextmanager
    async def events(self, *names: str) -> AsyncIterator[EventListener]:
        """Listen for *names* inside the block (enter it before the command that causes them)."""
        listener = EventListener(names)
        with self._client.listen(listener):
            yield listener

