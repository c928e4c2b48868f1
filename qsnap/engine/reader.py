"""Reading a state folder without an event loop: what ``list``, ``domstate`` and the snapshot
listings show.

The engine's read calls (:meth:`Engine.snapshots <qsnap.engine.engine.Engine.snapshots>`,
``current``, ``info``, ...) do their work here in a worker thread; the ``qsnap`` command calls
the same methods directly, so a command that only reads starts without asyncio, qemu.qmp or
(where no XML is parsed) lxml. What only the engine can do stays there: when a crash left an
operation on images half-done (an intent record), reading first needs the engine to settle it,
and :class:`NeedsSettling` says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from qsnap.errors import NoDomainError, NoSnapshotError, QsnapError
from qsnap.launcher.runtime import (
    RuntimeInfo,
    pid_alive,
    read_crash,
    read_runtime,
    runtime_paths,
)
from qsnap.store import DomainFolder, StateDir
from qsnap.store.intent import has_intent

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import TypeVar

    from qsnap.engine.results import BlockInfo, DomainDetails, DomainInfo, SnapshotInfo
    from qsnap.model.domain import DomainDisk
    from qsnap.model.snapshot import SnapshotDef
    from qsnap.model.tree import SnapshotSummary, SnapshotTree
    from qsnap.plan.flags import ListFilter

    T = TypeVar("T")

#: Where warnings go: the ``qsnap`` logger, or (the ``qsnap`` command) straight to stderr.
Warn = Callable[[str], None]

#: QEMU run states as virsh names them (all others read as paused).
VIRSH_STATES = {"running": "running", "shutdown": "shut off", "guest-panicked": "crashed"}
#: How long ``list`` and ``domstate`` wait for a QEMU to say its run state.
STATUS_TIMEOUT = 5.0


class NeedsSettling(Exception):
    """*domain* has an intent record: the engine must settle it before anything is read."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self.domain = domain


def virsh_state(status: str) -> str:
    """virsh's word for a QEMU run state (``query-status``)."""
    return VIRSH_STATES.get(status, "paused")


def guest_state(info: RuntimeInfo | None) -> str:
    """running, paused, crashed or shut off; a QEMU that stopped answering reads as shut off
    once its process is gone, else as unknown."""
    if info is None:
        return "shut off"
    from qsnap.monitor.status import query_status

    try:
        return virsh_state(query_status(info.qmp, STATUS_TIMEOUT))
    except QsnapError:
        return "shut off" if not pid_alive(info.pid) else "unknown"


def log_warning(message: str) -> None:
    """A warning on the ``qsnap`` logger (:mod:`logging` is imported only when there is one)."""
    from qsnap.logs import logger

    logger().warning("%s", message)


class Reader:
    """Synchronous reads of the domains in *state*, each under the domain's lock.

    Reads of a domain with an intent record raise :class:`NeedsSettling` unless the domain is
    in :attr:`settled` (the engine settles it, or has tried and warned, and adds it)."""

    def __init__(self, state: StateDir, warn: Warn = log_warning) -> None:
        self.state = state
        self.warn = warn
        self.settled: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def read(self, domain: str, work: Callable[[DomainFolder], T]) -> T:
        """Run *work* on *domain*'s folder with its lock held."""
        folder = self.state.folder(domain)
        if domain not in self.settled and has_intent(folder.path):
            raise NeedsSettling(domain)
        if not folder.exists():
            # Checked before locking too, so a mistyped name leaves no lock file behind.
            raise NoDomainError(f"domain '{domain}' is not defined", domain=domain)
        lock = self.state.lock(domain)
        lock.acquire()
        try:
            return self.locked(domain, work, parse_definition=False)
        finally:
            lock.release()

    def locked(self, domain: str, work: Callable[[DomainFolder], T], *,
               must_exist: bool = True, parse_definition: bool = True) -> T:
        """Recover the folder, check it, and run *work*, with *domain*'s lock already held.
        A definition is parsed only where *parse_definition* (the engine, which uses it);
        else a cached note that this very file parsed before stands in for it."""
        folder = self.state.folder(domain)
        for line in folder.recover():
            self.warn(f"recovered: {line}")
        if must_exist:
            if parse_definition:
                _ = folder.definition  # raises NoDomainError with the domain's name
            else:
                folder.check_definition()
            self.gone_if_transient(folder)
        return work(folder)

    def gone_if_transient(self, folder: DomainFolder) -> None:
        """A transient domain whose guest has stopped no longer exists: its folder goes
        (called with the domain's lock held, so never in the middle of a revert's restart)."""
        if folder.transient and self.runtime(folder.name) is None:
            self.state.remove_folder(folder)
            raise NoDomainError(f"domain '{folder.name}' is not defined (it was transient, and "
                                "its guest has stopped)", domain=folder.name)

    def runtime(self, domain: str) -> RuntimeInfo | None:
        return read_runtime(runtime_paths(self.state.root, domain))

    # -- domains ----------------------------------------------------------------------------

    def domain_states(self) -> list[tuple[str, str]]:
        """Every defined domain's name and state, sorted by name (virsh list --all)."""
        return [(folder.name, guest_state(info)) for folder, info in self.defined()]

    def domains(self) -> list[DomainInfo]:
        """Every defined domain with its UUID and state."""
        from qsnap.engine.results import DomainInfo

        return [DomainInfo(folder.name, folder.definition.uuid, guest_state(info))
                for folder, info in self.defined()]

    def defined(self) -> list[tuple[DomainFolder, RuntimeInfo | None]]:
        """Every defined domain's folder and running QEMU (None: shut off), by name."""
        self.state.sweep_trash()
        result = []
        for name in self.state.domain_names():
            folder = self.state.folder(name)
            info = self.runtime(name)
            if info is None and folder.transient:
                continue  # its guest stopped: it no longer exists (removed by the next command)
            result.append((folder, info))
        return result

    def domstate(self, domain: str, *, reason: bool = False) -> str:
        """virsh domstate; with *reason*, virsh's ``(reason)`` after it: ``crashed`` for a
        QEMU that died without a clean exit, else ``unknown`` (qsnap keeps no other)."""
        def read(folder: DomainFolder) -> str:
            state = guest_state(self.runtime(folder.name))
            if not reason:
                return state
            crash = read_crash(runtime_paths(self.state.root, folder.name)) \
                if state == "shut off" else None
            return f"{state} ({'crashed' if crash is not None else 'unknown'})"

        return self.read(domain, read)

    def domain_xml(self, domain: str, *, secure: bool = False) -> str:
        return self.read(domain, functools.partial(domain_xml, secure=secure))

    def disks(self, domain: str) -> list[DomainDisk]:
        """The domain's disks (virsh domblklist): the definition, which qsnap keeps naming
        the images the running guest uses."""
        return self.read(domain, lambda folder: list(folder.definition.disks))

    def details(self, domain: str) -> DomainDetails:
        return self.read(domain, lambda folder: domain_details(
            folder, self.runtime(folder.name)))

    def block_info(self, domain: str, disk: str | None) -> list[BlockInfo]:
        return self.read(domain, functools.partial(block_info, disk=disk))

    def job(self, domain: str, *, completed: bool = False) -> dict[str, object] | None:
        """The job posted on *domain*'s board (domjobinfo), read without the domain's lock,
        which the job's own process holds; None when none runs. *completed*: the last job
        that finished instead."""
        from qsnap.store import job_board

        folder = self.state.folder(domain)
        if not folder.exists():
            raise NoDomainError(f"domain '{domain}' is not defined", domain=domain)
        if completed:
            return job_board.read(folder.path, name=job_board.DONE_NAME)
        job = live_job(folder)
        if job is None and self.runtime(domain) is None:
            from qsnap.errors import DomainNotRunningError

            raise DomainNotRunningError(f"domain '{domain}' is not running", domain=domain)
        return job

    def abort_job(self, domain: str, wait: float = 60.0) -> None:
        """domjobabort: ask the job on *domain*'s board to stop, and wait until its
        operation has settled (the job leaves the board)."""
        import time

        from qsnap.errors import OperationInvalidError
        from qsnap.store import job_board

        job = self.job(domain)
        if job is None:
            raise OperationInvalidError("no job is active on the domain", domain=domain)
        if not job.get("abortable"):
            raise OperationInvalidError(f"job '{job.get('operation')}' cannot be aborted: "
                                        "it is past the point where stopping would lose "
                                        "nothing", domain=domain)
        folder = self.state.folder(domain)
        job_board.request_abort(folder.path)
        deadline = time.monotonic() + wait
        while live_job(folder) is not None:
            if time.monotonic() > deadline:
                raise OperationInvalidError(f"job '{job.get('operation')}' did not stop "
                                            f"within {wait:g} s of the abort request",
                                            domain=domain)
            time.sleep(0.05)
        done = job_board.read(folder.path, name=job_board.DONE_NAME)
        if done is not None and done["started"] == job["started"] and \
                done["pid"] == job["pid"]:
            from qsnap.errors import OperationFailedError

            raise OperationFailedError(f"job '{job.get('operation')}' finished before it could "
                                       "be aborted", domain=domain)

    # -- snapshots --------------------------------------------------------------------------

    def snapshots(self, domain: str, flt: ListFilter | None = None) -> list[SnapshotSummary]:
        from qsnap.plan.flags import ListFilter

        return self.read(domain, functools.partial(
            snapshot_list, flt=flt or ListFilter(), warn=self.warn))

    def tree(self, domain: str) -> SnapshotTree:
        return self.read(domain, functools.partial(load_tree, warn=self.warn))

    def get(self, domain: str, snapshot: str | None) -> SnapshotDef:
        return self.read(domain, functools.partial(snapshot_definition, snapshot=snapshot))

    def get_xml(self, domain: str, snapshot: str | None, *, secure: bool = False) -> str:
        return self.read(domain, functools.partial(snapshot_xml, snapshot=snapshot,
                                                   secure=secure))

    def info(self, domain: str, snapshot: str | None) -> SnapshotInfo:
        return self.read(domain, functools.partial(snapshot_info, snapshot=snapshot,
                                                   warn=self.warn))

    def current(self, domain: str) -> str | None:
        return self.read(domain, current_snapshot)

    def parent(self, domain: str, snapshot: str | None) -> str | None:
        return self.read(domain, functools.partial(snapshot_parent, snapshot=snapshot))


# -- what each read does, on a folder whose lock the caller holds (the engine runs these too) --


def load_tree(folder: DomainFolder, warn: Warn = log_warning) -> SnapshotTree:
    tree = folder.load_tree()
    for problem in tree.problems:
        warn(f"domain '{folder.name}': {problem}")
    return tree


def resolve(folder: DomainFolder, snapshot: str | None) -> str:
    """*snapshot*, which must exist, or the current snapshot for None."""
    if snapshot is not None:
        if not folder.has_snapshot(snapshot):
            raise NoSnapshotError(f"domain '{folder.name}' has no snapshot named '{snapshot}'",
                                  domain=folder.name, snapshot=snapshot)
        return snapshot
    current = folder.read_current()
    if current is None:
        raise NoSnapshotError(f"domain '{folder.name}' has no current snapshot",
                              domain=folder.name)
    return current


def domain_xml(folder: DomainFolder, *, secure: bool) -> str:
    return folder.definition.to_xml(secure=secure)


def snapshot_list(folder: DomainFolder, *, flt: ListFilter,
                  warn: Warn = log_warning) -> list[SnapshotSummary]:
    """virDomainListAllSnapshots / virDomainSnapshotListAllChildren with their filters."""
    from qsnap.plan.listing import select_snapshots

    return select_snapshots(load_tree(folder, warn), flt)


def snapshot_definition(folder: DomainFolder, *, snapshot: str | None) -> SnapshotDef:
    return folder.read_snapshot(resolve(folder, snapshot))


def snapshot_xml(folder: DomainFolder, *, snapshot: str | None, secure: bool) -> str:
    """virDomainSnapshotGetXMLDesc; *secure* includes passwords (``--security-info``)."""
    from qsnap.model.snapshot import format_snapshot

    snap = folder.read_snapshot(resolve(folder, snapshot))
    return format_snapshot(snap, uuid=folder.definition.uuid, secure=secure)


def snapshot_info(folder: DomainFolder, *, snapshot: str | None,
                  warn: Warn = log_warning) -> SnapshotInfo:
    from qsnap.engine.results import SnapshotInfo
    from qsnap.model.capture import capture_of

    name = resolve(folder, snapshot)
    tree = load_tree(folder, warn)
    summary = tree.get(name)
    capture = capture_of(folder.read_snapshot(name).cookie)
    return SnapshotInfo(name=name, domain=folder.name, current=tree.current == name,
                        state=summary.state, location=summary.location,
                        parent=tree.parent(name), children=len(tree.children(name)),
                        descendants=len(tree.descendants(name)),
                        memory_capture=capture.describe() if capture else None)


def current_snapshot(folder: DomainFolder) -> str | None:
    """The current snapshot's name, or None."""
    name = folder.read_current()
    return name if name is not None and folder.has_snapshot(name) else None


def snapshot_parent(folder: DomainFolder, *, snapshot: str | None) -> str | None:
    return folder.read_snapshot(resolve(folder, snapshot)).parent


def domain_details(folder: DomainFolder, info: RuntimeInfo | None) -> DomainDetails:
    """virsh dominfo's facts."""
    import os

    from qsnap.engine.results import DomainDetails

    definition = folder.definition
    cpu_time = None
    if info is not None:
        try:
            with open(f"/proc/{info.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cpu_time = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            cpu_time = None
    memory = definition.memory_bytes // 1024
    return DomainDetails(name=folder.name, uuid=definition.uuid, os_type="hvm",
                         state=guest_state(info), vcpus=definition.vcpus, cpu_time=cpu_time,
                         max_memory_kib=memory, used_memory_kib=memory, persistent=not
                         folder.transient, managed_save=folder.managed_save.exists())


def block_info(folder: DomainFolder, *, disk: str | None) -> list[BlockInfo]:
    """virsh domblkinfo: each disk's (or *disk*'s) capacity (the guest's size), allocation
    (bytes on the host's disk) and physical size (the file's length)."""
    import json
    import os
    import subprocess

    from qsnap.engine.results import BlockInfo
    from qsnap.errors import InvalidArgumentError

    definition = folder.definition
    if disk is not None:
        found = definition.disk_by_name(disk)
        if found is None:
            raise InvalidArgumentError(f"invalid path {disk} not assigned to domain")
        disks = [found]
    else:
        disks = [d for d in definition.disks if d.source]
    result = []
    for entry in disks:
        if not entry.source:
            result.append(BlockInfo(entry.target, 0, 0, 0))
            continue
        answer = subprocess.run(["qemu-img", "info", "-U", "--output=json", entry.source],
                                capture_output=True, text=True)
        if answer.returncode != 0:
            raise InvalidArgumentError(f"cannot read image '{entry.source}' of disk "
                                       f"'{entry.target}': {answer.stderr.strip()}")
        stat = os.stat(entry.source)
        result.append(BlockInfo(entry.target, int(json.loads(answer.stdout)["virtual-size"]),
                                stat.st_blocks * 512, stat.st_size))
    return result


def live_job(folder: DomainFolder) -> dict[str, object] | None:
    """The job posted on *folder*'s board, unless the process that posted it is gone (a
    crash leaves its last entry behind)."""
    from qsnap.store import job_board

    return job_board.live(folder.path)
