"""qsnap's public asyncio API: one :class:`Engine` per state directory.

Every method takes the domain's lock, finishes anything a crashed process left half-done, and
then works on that domain alone, so concurrent calls on one domain run one after another while
calls on different domains run side by side. Metadata work is file I/O, so it runs in a worker
thread and never blocks the caller's event loop.

Snapshot arguments named ``snapshot`` accept ``None`` to mean the current snapshot, resolved under
the same lock as the rest of the call (virsh's ``--current``).

For the operations on images (create, revert, delete, save, restore) the engine only locks,
settles what a crash left, and hands the call to the operation's module
(:mod:`qsnap.engine.create`, ...), which gathers the facts, plans, records its intent and walks
its steps; crash recovery (:mod:`qsnap.engine.recovery`) hands a record to the same module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from qemu.qmp import QMPClient

from qsnap.engine.bounded import public_operation
from qsnap.engine.context import Context
from qsnap.engine.guest import Guest, GuestInfo
from qsnap.engine.guests import state_of
from qsnap.engine.preload import preload
from qsnap.engine.reader import (
    Reader,
    block_info,
    current_snapshot,
    domain_details,
    domain_xml,
    load_tree,
    resolve,
    snapshot_definition,
    snapshot_info,
    snapshot_list,
    snapshot_parent,
    snapshot_xml,
)
from qsnap.engine.recovery import finish_interrupted
from qsnap.engine.results import BlockInfo, DomainDetails, DomainInfo, SnapshotInfo
from qsnap.errors import InvalidArgumentError, NoDomainError, QsnapError
from qsnap.launcher.runtime import RuntimeInfo, RuntimePaths, read_runtime, runtime_paths
from qsnap.logs import logger
from qsnap.model.block_jobs import JobOutcome
from qsnap.model.domain import DomainDisk, parse_domain, same_uuid, with_generation_id
from qsnap.model.names import absolute_file, check_domain_name, check_snapshot_name
from qsnap.model.snapshot import SnapshotDef, parse_snapshot
from qsnap.model.tree import SnapshotSummary, SnapshotTree
from qsnap.monitor import share_connection
from qsnap.plan.flags import CreateFlags, DeleteFlags, ListFilter, RevertFlags
from qsnap.plan.save import check_parallel_channels, image_definition
from qsnap.procfs import generation_id
from qsnap.progress import ProgressCallback, ProgressMeter
from qsnap.store import DomainFolder, StateDir, resolve_state_dir
from qsnap.store.intent import has_intent

if TYPE_CHECKING:
    from qsnap.engine.block_jobs import BlockJobInfo
    from qsnap.launcher.foreign import RelaunchHook
    from qsnap.launcher.process import Launcher
    from qsnap.plan.delete import MetadataDeletePlan

# Each operation's module (qsnap.engine.create, .power, .domains, ...) is imported by the
# method that dispatches to it: a command loads the modules of its own operation only.

log = logger("qsnap")
T = TypeVar("T")


class Engine:
    """Snapshot operations on the domains of one state directory.

    *state_dir* defaults to ``$QSNAP_STATE_DIR``, else ``$XDG_STATE_HOME/qsnap``.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, *,
                 relaunch: RelaunchHook | None = None, preload: bool = True) -> None:
        self.state = StateDir(resolve_state_dir(state_dir))
        self.reader = Reader(self.state)
        self._preload = preload
        #: Starts attached domains again (revert, restore, start); per domain by ``attach``.
        self._relaunch = relaunch
        self._hooks: dict[str, RelaunchHook] = {}

    @property
    def state_dir(self) -> Path:
        return self.state.root

    async def ready(self, *, timeout: float | None = None) -> None:
        """Import what the operations use in a worker thread (once per process), so that no
        operation's first use holds the caller's event loop for its imports
        (:mod:`qsnap.engine.preload`). Every operation awaits it first; an embedder may
        await it at start-up. With ``Engine(preload=False)`` (the command line's: one
        operation per process) each operation imports only what it uses, on first use.
        (*timeout* is taken as by every method; imports are not waited for by time.)"""
        if self._preload:
            await preload()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, domain: str, work: Callable[[DomainFolder], T], *,
                   must_exist: bool = True, reading: bool = False) -> T:
        """Run metadata *work* under the lock in a worker thread. An operation on images that
        a crash interrupted is finished first; when that fails, reads go on (with a warning)
        and changes are refused."""
        if has_intent(self.state.folder(domain).path):
            try:
                async with self._session(domain):
                    pass
            except QsnapError as exc:
                if not reading:
                    raise
                log.warning("domain '%s': an interrupted operation could not be finished: %s",
                            domain, exc)
        if must_exist and not self.state.folder(domain).exists():
            # Checked before locking too, so a mistyped name leaves no lock file behind.
            raise NoDomainError(f"domain '{domain}' is not defined", domain=domain)
        lock = self.state.lock(domain)
        await lock.acquire_async()
        try:
            return await asyncio.to_thread(self.reader.locked, domain, work,
                                          must_exist=must_exist)
        finally:
            lock.release()

    async def _defining(self, domain: str, work: Callable[[DomainFolder], T]) -> T:
        """Run *work* holding the state-wide define lock as well as *domain*'s, so two
        definitions (define, attach) cannot claim one UUID at once."""
        def locked() -> T:
            with self.state.defining(), self.state.lock(domain):
                return self.reader.locked(domain, work, must_exist=False)

        return await asyncio.to_thread(locked)

    @contextlib.asynccontextmanager
    async def _session(self, domain: str,
                       recovered: list[str] | None = None) -> AsyncIterator[DomainFolder]:
        """Hold *domain*'s lock across awaits (QEMU work); writes that fsync run in worker
        threads, so one domain's metadata work never stalls the others' on the event loop.
        First finish what a crash left: a metadata change, then an operation on images."""
        folder = self.state.folder(domain)
        if not folder.exists():
            raise NoDomainError(f"domain '{domain}' is not defined", domain=domain)
        lock = self.state.lock(domain)
        await lock.acquire_async()
        try:
            lines = await asyncio.to_thread(folder.recover) if folder.needs_recovery() else []
            if has_intent(folder.path):
                line = await finish_interrupted(self._context(folder))
                lines += [line] if line else []
            for line in lines:
                log.warning("recovered: %s", line)
            if recovered is not None:
                recovered.extend(lines)
            await asyncio.to_thread(self._checked, folder)
            yield folder
        finally:
            lock.release()

    def _context(self, folder: DomainFolder,
                 progress: ProgressCallback | None = None) -> Context:
        paths, info = self._runtime(folder.name)
        # The job board's watch (engine.jobs.JobWatch) is the progress callback of a posted
        # operation, and says whether an abort was asked for.
        return Context(folder, paths, info, self._launcher(folder), progress,
                       getattr(progress, "abort_asked", None), self._tpm_state(folder))

    def _tpm_state(self, folder: DomainFolder) -> Path:
        return self.state.tpm_state(folder.definition.uuid or folder.name)

    def _launcher(self, folder: DomainFolder) -> Launcher:
        from qsnap.engine.launchers import launcher_for

        return launcher_for(folder, self._tpm_state(folder),
                            self._hooks.get(folder.name, self._relaunch))

    def _job(self, folder: DomainFolder, operation: str, progress: ProgressCallback | None,
             *, abortable: bool = True, details: dict[str, object] | None = None
             ) -> contextlib.AbstractAsyncContextManager[ProgressCallback]:
        """Post *operation* on the domain's job board for its duration (domjobinfo, and
        domjobabort where *abortable*); yields the progress callback to hand it."""
        from qsnap.engine.jobs import JobWatch

        return JobWatch(folder.path, runtime_paths(self.state_dir, folder.name), operation,
                        progress, abortable, details).posted()

    def _runtime(self, domain: str) -> tuple[RuntimePaths, RuntimeInfo | None]:
        paths = runtime_paths(self.state_dir, domain)
        return paths, read_runtime(paths)

    # -- domains ----------------------------------------------------------------------------

    @public_operation
    async def define(self, xml: str | bytes, *, timeout: float | None = None) -> str:
        """Define (or update) a domain from libvirt domain XML, completed as libvirt
        completes it at define; returns its name. A definition without a UUID gets a new
        one; an existing domain keeps its UUID, and a UUID another domain uses is refused."""
        from qsnap.engine import domains

        domain = parse_domain(xml)
        check_domain_name(domain.name)
        domain = await domains.resolved(self.state, domain)
        return await self._defining(domain.name, functools.partial(
            domains.store_definition, self.state, domain=domain))

    @public_operation
    async def undefine(self, domain: str, *, snapshots_metadata: bool = False,
                       timeout: float | None = None) -> None:
        """Remove a domain's definition; with *snapshots_metadata* also its snapshot metadata
        (images are never touched). Without it, a stopped domain with snapshots is refused.

        A running domain stays, transient, as in libvirt: every command works on it until
        its guest stops, and then it is gone (its snapshot metadata with it). ``define``
        makes it persistent again."""
        from qsnap.engine import domains

        await self._run(domain, functools.partial(domains.remove_definition, self.state,
                                                  snapshots_metadata=snapshots_metadata))

    def _checked(self, folder: DomainFolder) -> None:
        """The definition is read (and parsed, once) here, off the loop; a transient domain
        whose guest has stopped is gone."""
        _ = folder.definition
        self.reader.gone_if_transient(folder)

    @public_operation
    async def domains(self, *, timeout: float | None = None) -> list[DomainInfo]:
        """Every defined domain with its UUID and state (virsh list --all). States are asked
        through :func:`state_of`, which uses a connection an embedder shares (the reader's
        blocking query would wait behind it)."""
        defined = await asyncio.to_thread(lambda: [(folder.name, folder.definition.uuid, info)
                                                   for folder, info in self.reader.defined()])
        return [DomainInfo(name, uuid, await state_of(info)) for name, uuid, info in defined]

    # -- running guests ---------------------------------------------------------------------

    @public_operation
    async def start(self, domain: str, *, reset_nvram: bool = False,
                    progress: ProgressCallback | None = None,
                    timeout: float | None = None) -> Guest:
        """Start the domain's QEMU (virsh start); returns its :class:`Guest` handle (how to
        reach it, accelerator included). A managed save image is resumed instead (*progress*
        hears it load), and removed once the guest runs from it. *reset_nvram* makes a UEFI
        guest's NVRAM anew from its template first (virsh start --reset-nvram)."""
        from qsnap.engine import power

        async with self._session(domain) as folder:
            info = await power.start(self._context(folder, progress), reset_nvram=reset_nvram)
            return Guest(self, domain, info)

    @staticmethod
    def share_connection(qmp: str, connection: QMPClient) -> None:
        """Use the embedder's *connection* (a connected ``qemu.qmp.QMPClient`` it keeps open)
        for the QEMU whose QMP socket is *qmp*, instead of connecting: QEMU answers one client
        per monitor at a time, so a second connection would wait while the embedder holds
        its own. qsnap never closes it; a relaunch hook shares its new QEMU's connection the
        same way before it returns. Once that QEMU exits, qsnap connects on its own."""
        share_connection(os.path.abspath(qmp), connection)

    def guest(self, domain: str) -> Guest:
        """A handle on *domain*'s guest (:class:`Guest`); it checks nothing until used."""
        return Guest(self, domain)

    @public_operation
    async def guest_info(self, domain: str, *, timeout: float | None = None) -> GuestInfo:
        """The guest as it is now: state, and its QEMU's pid, QMP socket and accelerator."""
        from qsnap.launcher.runtime import read_crash

        async with self._session(domain):
            paths, info = self._runtime(domain)
            state = await state_of(info)
            crashed = info is None and read_crash(paths) is not None
        if info is None:
            return GuestInfo(domain, state, None, None, None, None,
                             "crashed" if crashed else None)
        return GuestInfo(domain, state, info.pid, info.qmp, info.accel, info.owner)

    @public_operation
    async def guest_state(self, domain: str, *, timeout: float | None = None) -> str:
        """The guest's state (virsh domstate) without waiting for the domain's lock, which a
        long operation may hold for minutes: QEMU is asked beside it (through the same
        connection, when that operation runs in this process), and a QEMU that does not
        answer within *timeout* (5 s by default) reads as ``unknown``."""
        if not self.state.folder(domain).exists():
            raise NoDomainError(f"domain '{domain}' is not defined", domain=domain)
        return await state_of(self._runtime(domain)[1], borrow=True,
                              timeout=5.0 if timeout is None else timeout)


    @public_operation
    async def destroy(self, domain: str, *, timeout: float | None = None) -> None:
        """Stop the domain's QEMU at once (virsh destroy): ``quit``, else SIGTERM, SIGKILL."""
        from qsnap.engine import power

        async with self._session(domain) as folder:
            if await power.destroy(self._context(folder)):  # a transient domain goes with it
                await asyncio.to_thread(self.state.remove_folder, folder)

    @public_operation
    async def attach(self, domain: str, qmp: str, *,
                     relaunch: RelaunchHook | None = None,
                     connection: QMPClient | None = None,
                     timeout: float | None = None) -> Guest:
        """Adopt a QEMU someone else launched, through its QMP socket (``qsnap attach``).

        An undefined domain is defined from what QEMU reports (name, UUID, memory, vCPUs, and
        each disk's current file and format); a defined one must have QEMU's UUID, and its disk
        sources are updated to the files QEMU uses now.

        The QEMU's command line and working directory are recorded, so that a revert or
        restore (which need a new QEMU) starts the same machine again: with *relaunch* (or
        the engine's hook) by asking the embedder, else by running that command line with
        only the disk images and ``-incoming`` changed (:mod:`qsnap.launcher.foreign`).

        *connection*: the embedder's own QMP connection to this QEMU, kept open by it; qsnap
        uses it instead of connecting (see :meth:`share_connection`).
        """
        from qsnap.engine import domains

        check_domain_name(domain)
        if connection is not None:
            self.share_connection(qmp, connection)
        adoption = await domains.describe_foreign(domain, qmp)
        attached = await self._defining(domain, functools.partial(domains.adopt, self.state,
                                                                  adoption=adoption))
        if relaunch is not None:
            self._hooks[domain] = relaunch
        return Guest(self, domain, attached)

    # -- memory: save and restore ------------------------------------------------------------

    @public_operation
    async def save(self, domain: str, path: str | os.PathLike[str], *,
                   running: bool | None = None, xml: str | None = None,
                   image_format: str | None = None, parallel_channels: int | None = None,
                   progress: ProgressCallback | None = None,
                   timeout: float | None = None) -> None:
        """virDomainSave: write the guest's memory and device state to *path*, then stop it.

        The guest is paused for the save; it restores running if it was running, unless
        *running* says otherwise (``--running``/``--paused``). *xml* replaces the domain
        definition stored in the image (same name and UUID). *image_format* is libvirt's
        save-image format (``raw``, ``sparse``, ``zstd``; by default the faster one this QEMU
        has), *parallel_channels* the multifd channels of a sparse image (virsh save
        --image-format --parallel-channels). If the save fails, the guest goes on as it was
        and no file is left.
        """
        from qsnap.engine import save as save_op

        target = absolute_file("the save image", path)
        async with self._session(domain) as folder, \
                self._job(folder, "Save", progress) as progress:
            await save_op.run(self._context(folder, progress), target, running=running, xml=xml,
                              image_format=image_format, channels=parallel_channels)

    @public_operation
    async def managedsave(self, domain: str, *, running: bool | None = None,
                          image_format: str | None = None,
                          parallel_channels: int | None = None,
                          progress: ProgressCallback | None = None,
                          timeout: float | None = None) -> None:
        """virDomainManagedSave: save into the domain's own folder; ``start`` resumes from it."""
        await self.save(domain, self.state.folder(domain).managed_save, running=running,
                        image_format=image_format, parallel_channels=parallel_channels,
                        progress=progress)

    @public_operation
    async def managedsave_remove(self, domain: str, *, timeout: float | None = None) -> bool:
        """virDomainManagedSaveRemove: discard the managed save image, so that ``start``
        boots the domain afresh; False when there was none."""
        from qsnap.store.atomic import unlink_if_present

        return await self._run(domain, lambda folder: unlink_if_present(folder.managed_save))

    @public_operation
    async def restore(self, path: str | os.PathLike[str], *, running: bool | None = None,
                      xml: str | None = None, parallel_channels: int | None = None,
                      progress: ProgressCallback | None = None,
                      timeout: float | None = None) -> Guest:
        """virDomainRestore: start the domain saved in *path* and load its state; returns its
        :class:`Guest` handle. A domain qsnap does not know yet is defined from the image. If
        loading fails, its QEMU is stopped again: a guest is never left half-restored.
        *parallel_channels*: the multifd channels that read a sparse image (by default one
        per CPU)."""
        from qsnap.engine import restore as restore_op
        from qsnap.engine.memory import read_image

        check_parallel_channels(parallel_channels)
        source = absolute_file("the save image", path)
        image = await asyncio.to_thread(read_image, source)
        domain = parse_domain(image_definition(parse_domain(image.domain_xml), xml),
                              f"domain XML of save image '{source}'")
        folder = self.state.folder(domain.name)
        if folder.exists() and not (folder.transient and self._runtime(domain.name)[1] is None):
            known = folder.definition.uuid
            if known and domain.uuid and not same_uuid(known, domain.uuid):
                raise InvalidArgumentError(f"save image '{source}' is of a domain '{domain.name}' "
                                           f"with uuid {domain.uuid}, not {known}")
        else:
            await self.define(domain.to_xml())
        async with self._session(domain.name) as folder, \
                self._job(folder, "Restore", progress) as progress:
            info = await restore_op.run(self._context(folder, progress), domain, source, image,
                                        running, channels=parallel_channels)
        return Guest(self, domain.name, info)

    @public_operation
    async def save_image_xml(self, path: str | os.PathLike[str], *, secure: bool = False,
                             timeout: float | None = None) -> str:
        """virDomainSaveImageGetXMLDesc: the domain definition inside a save image."""
        from qsnap.engine.memory import read_image

        image = await asyncio.to_thread(read_image, absolute_file("the save image", path))
        return parse_domain(image.domain_xml, f"save image '{path}'").to_xml(secure=secure)

    @public_operation
    async def shutdown(self, domain: str, *, timeout: float | None = None) -> None:
        """Ask the guest to power off (ACPI power button), as virsh shutdown does; returns at
        once, and the guest decides when (or whether) it stops."""
        from qsnap.engine import power

        async with self._session(domain) as folder:
            await power.shutdown(self._context(folder))

    @public_operation
    async def disks(self, domain: str, *, timeout: float | None = None) -> list[DomainDisk]:
        """virsh domblklist: the domain's disks, naming the images the guest uses now."""
        return await self._run(domain, lambda folder: list(folder.definition.disks),
                               reading=True)

    @public_operation
    async def domain_details(self, domain: str, *,
                             timeout: float | None = None) -> DomainDetails:
        """virsh dominfo."""
        return await self._run(domain, lambda folder: domain_details(
            folder, self._runtime(domain)[1]), reading=True)

    @public_operation
    async def block_info(self, domain: str, disk: str | None = None, *,
                         timeout: float | None = None) -> list[BlockInfo]:
        """virsh domblkinfo: sizes of *disk* (every disk with an image when None)."""
        return await self._run(domain, functools.partial(block_info, disk=disk),
                               reading=True)

    async def job_info(self, domain: str, *, completed: bool = False,
                       timeout: float | None = None) -> dict[str, object] | None:
        """virsh domjobinfo: the long operation running on *domain* (in any process), as
        posted on its job board, or None; *completed*: the last one that finished."""
        return await asyncio.to_thread(self.reader.job, domain, completed=completed)

    async def abort_job(self, domain: str, *, timeout: float | None = None) -> None:
        """virsh domjobabort: stop the operation running on *domain* (in any process); it
        settles as a failed one would, and this returns once it has (within *timeout*
        seconds, 60 by default)."""
        await asyncio.to_thread(self.reader.abort_job, domain, timeout or 60.0)

    @public_operation
    async def suspend(self, domain: str, *, timeout: float | None = None) -> None:
        """virsh suspend: stop the guest's vCPUs (a paused guest stays paused)."""
        from qsnap.engine import power

        async with self._session(domain) as folder:
            await power.suspend(self._context(folder))

    @public_operation
    async def resume(self, domain: str, *, timeout: float | None = None) -> None:
        """virsh resume: run a paused guest's vCPUs again."""
        from qsnap.engine import power

        async with self._session(domain) as folder:
            await power.resume(self._context(folder))

    @public_operation
    async def reboot(self, domain: str, *, mode: str | None = None,
                     wait: float = 120.0, timeout: float | None = None) -> None:
        """virsh reboot. *mode* ``agent`` has the guest agent reboot the guest, and returns at
        once; ``acpi`` presses the ACPI power button and, once the guest has shut down
        (within *wait* seconds), resets and runs the machine, as libvirt's "fake reboot"
        does, here without a daemon: this call waits for it; ``reset`` resets the machine
        at once (virsh reset). By default the agent is tried where the definition has its
        channel, and ACPI is used where it has none or refuses (as libvirt does)."""
        from qsnap.engine import power

        async with self._session(domain) as folder:
            await power.reboot(self._context(folder), mode, wait)

    @public_operation
    async def block_commit(self, domain: str, disk: str, *, base: str | None = None,
                           top: str | None = None, active: bool = False,
                           shallow: bool = False, delete: bool = False, wait: bool = False,
                           pivot: bool = False, keep_overlay: bool = False,
                           wait_timeout: float | None = None, bandwidth: int = 0,
                           progress: ProgressCallback | None = None,
                           timeout: float | None = None) -> JobOutcome:
        """virDomainBlockCommit (and virsh's waiting): merge *top* (default: the image the
        guest writes to, which needs *active*) down into *base* (default: the bottom of the
        chain) on the running guest, at most *bandwidth* bytes per second (0: as fast as
        it goes). See :func:`qsnap.engine.block_jobs.run_commit` for
        what it returns; the definition and the snapshots' metadata follow the merge, and a
        commit into an image a snapshot still needs is refused."""
        from qsnap.engine import block_jobs

        active = active or pivot or keep_overlay
        label = "Active Block Commit" if active else "Block Commit"
        async with self._session(domain) as folder, \
                self._job(folder, "Block commit", progress,
                          details={"disk": disk, "kind": label}) as progress:
            return await block_jobs.run_commit(
                self._context(folder), disk, base=base, top=top,
                active=active, shallow=shallow, delete=delete,
                wait=wait or pivot or keep_overlay or wait_timeout is not None, pivot=pivot,
                keep_overlay=keep_overlay, timeout=wait_timeout,
                meter=ProgressMeter("Block commit", progress), bandwidth=bandwidth)

    @public_operation
    async def block_pull(self, domain: str, disk: str, *, base: str | None = None,
                         wait: bool = False, wait_timeout: float | None = None,
                         bandwidth: int = 0, progress: ProgressCallback | None = None,
                         timeout: float | None = None) -> JobOutcome:
        """virDomainBlockPull / BlockRebase: copy the backing images' data (down to *base*)
        into the guest's top image; ``started``, ``pulled`` or ``aborted``."""
        from qsnap.engine import block_jobs

        async with self._session(domain) as folder, \
                self._job(folder, "Block pull", progress,
                          details={"disk": disk, "kind": "Block Pull"}) as progress:
            return await block_jobs.run_pull(
                self._context(folder), disk, base=base,
                wait=wait or wait_timeout is not None, timeout=wait_timeout,
                meter=ProgressMeter("Block pull", progress), bandwidth=bandwidth)

    @public_operation
    async def block_job(self, domain: str, disk: str, action: str = "info", *,
                        timeout: float | None = None) -> BlockJobInfo | None:
        """virsh blockjob: ``info`` (the disk's job, or None), ``abort`` or ``pivot``."""
        from qsnap.engine import block_jobs

        async with self._session(domain) as folder:
            return await block_jobs.block_job(self._context(folder), disk, action)

    @public_operation
    async def domstate(self, domain: str, *, timeout: float | None = None) -> str:
        """virsh domstate: running, paused or shut off."""
        async with self._session(domain):
            return await state_of(self._runtime(domain)[1])

    @public_operation
    async def domain_xml(self, domain: str, *, secure: bool = False,
                         timeout: float | None = None) -> str:
        """The definition; while the guest runs, with the generation ID it runs with (a
        revert to a memory snapshot or a restore gives it a new one, as libvirt does)."""
        xml = await self._run(domain, functools.partial(domain_xml, secure=secure),
                              reading=True)
        info = self._runtime(domain)[1]
        guid = generation_id(info.pid) if info is not None else None
        return with_generation_id(xml, guid) if guid else xml

    # -- creating ---------------------------------------------------------------------------

    @public_operation
    async def create(self, domain: str, xml: str | bytes | None = None,
                     flags: CreateFlags = CreateFlags(), *,
                     live_strategy: str | None = None,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> str:
        """virDomainSnapshotCreateXML: take a snapshot, or with ``flags.redefine`` store given
        metadata. Returns the snapshot's name.

        A full-system snapshot notes how its memory was captured and how long the guest was
        paused (``info`` shows it). *live_strategy* ("background", "precopy" or "paused")
        overrides the choice :func:`~qsnap.plan.full_snapshot.choose_capture` makes.
        *progress* hears how an external memory file is written."""
        if flags.redefine:
            if xml is None:
                raise InvalidArgumentError("--redefine requires an XML description of the "
                                           "snapshot")
            return await self.redefine(domain, xml, current=flags.current,
                                       disk_only=flags.disk_only, validate=flags.validate)
        from qsnap.engine import create as create_op

        async with self._session(domain) as folder, \
                self._job(folder, "Snapshot", progress) as progress:
            return await create_op.run(self._context(folder, progress), xml, flags,
                                       live_strategy)

    @public_operation
    async def redefine(self, domain: str, xml: str | bytes, *, current: bool = False,
                       disk_only: bool = False, validate: bool = False,
                       edited_from: str | None = None, expected: str | None = None,
                       rename: bool = False, timeout: float | None = None) -> str:
        """Add or replace snapshot metadata without touching any image (``--redefine``).

        An edit (``snapshot-edit``) names the snapshot its XML was read from
        (*edited_from*) and that XML as it was read (*expected*, from :meth:`get_xml` with
        ``secure=True``): if that snapshot changed or vanished since, nothing is stored.
        With *rename*, the XML (under another name) replaces *edited_from*: its children
        follow it, its NVRAM copy moves, it stays current if it was, and the old name goes,
        all in one journaled change (:meth:`rename_snapshot`). Without it, a new name is a
        clone, which keeps a copy of the NVRAM copy."""
        from qsnap.engine import metadata

        flags = CreateFlags(redefine=True, current=current, disk_only=disk_only,
                            validate=validate)
        snap = parse_snapshot(xml, redefine=True, validate=validate)
        return await self._run(domain, functools.partial(
            metadata.redefine, snap=snap, flags=flags, edited_from=edited_from,
            expected=expected, rename=rename))

    @public_operation
    async def rename_snapshot(self, domain: str, snapshot: str, new_name: str, *,
                              timeout: float | None = None) -> None:
        """Rename *snapshot* to *new_name* (snapshot-edit --rename, without an editor): its
        children follow it, its NVRAM copy moves, it stays current if it was; one journaled
        change, so a crash leaves either name, never both. Internal snapshots cannot be
        renamed (their name is the tag in their images)."""
        from qsnap.model.snapshot import format_snapshot

        check_snapshot_name(new_name)
        read = await self.get_xml(domain, snapshot, secure=True)
        snap = parse_snapshot(read, redefine=True)
        await self.redefine(domain, format_snapshot(snap.copy(name=new_name), active=False),
                            edited_from=snapshot, expected=read, rename=True)

    # -- reading ----------------------------------------------------------------------------

    @public_operation
    async def snapshots(self, domain: str,
                        flt: ListFilter = ListFilter(), *,
                        timeout: float | None = None) -> list[SnapshotSummary]:
        """virDomainListAllSnapshots / virDomainSnapshotListAllChildren with their filters."""
        return await self._run(domain, functools.partial(snapshot_list, flt=flt),
                               reading=True)

    @public_operation
    async def tree(self, domain: str, *, timeout: float | None = None) -> SnapshotTree:
        """The whole snapshot tree, for drawing or walking."""
        return await self._run(domain, load_tree, reading=True)

    @public_operation
    async def get_xml(self, domain: str, snapshot: str | None, *, secure: bool = False,
                      timeout: float | None = None) -> str:
        """virDomainSnapshotGetXMLDesc; *secure* includes passwords (``--security-info``)."""
        return await self._run(domain, functools.partial(snapshot_xml, snapshot=snapshot,
                                                         secure=secure), reading=True)

    @public_operation
    async def get(self, domain: str, snapshot: str | None, *,
                  timeout: float | None = None) -> SnapshotDef:
        """The parsed definition of a snapshot."""
        return await self._run(domain, functools.partial(snapshot_definition,
                                                         snapshot=snapshot), reading=True)

    @public_operation
    async def info(self, domain: str, snapshot: str | None, *,
                   timeout: float | None = None) -> SnapshotInfo:
        return await self._run(domain, functools.partial(snapshot_info, snapshot=snapshot),
                               reading=True)

    @public_operation
    async def current(self, domain: str, *, timeout: float | None = None) -> str | None:
        """The current snapshot's name, or None."""
        return await self._run(domain, current_snapshot, reading=True)

    @public_operation
    async def set_current(self, domain: str, snapshot: str, *,
                          timeout: float | None = None) -> None:
        """Make an existing snapshot current without reverting to it."""

        from qsnap.engine import metadata

        await self._run(domain, functools.partial(metadata.set_current, snapshot=snapshot))

    @public_operation
    async def parent(self, domain: str, snapshot: str | None, *,
                     timeout: float | None = None) -> str | None:
        return await self._run(domain, functools.partial(snapshot_parent, snapshot=snapshot),
                               reading=True)

    # -- changing state ---------------------------------------------------------------------

    @public_operation
    async def revert(self, domain: str, snapshot: str | None,
                     flags: RevertFlags = RevertFlags(), *,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> str:
        """virDomainRevertToSnapshot; returns the snapshot's name, which becomes current.
        *progress* hears a memory file load."""
        from qsnap.engine import revert as revert_op

        async with self._session(domain) as folder, \
                self._job(folder, "Snapshot revert", progress, abortable=False) as progress:
            name = resolve(folder, snapshot)
            await revert_op.run(self._context(folder, progress), name, flags)
            return name

    @public_operation
    async def delete(self, domain: str, snapshot: str | None,
                     flags: DeleteFlags = DeleteFlags(), *,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> MetadataDeletePlan:
        """virDomainSnapshotDelete. Returns what was removed and who became current.

        With ``metadata_only`` only qsnap's metadata goes. Otherwise the snapshots' data goes
        too: internal snapshots are deleted from their images, and external ones are merged
        into the images above them (see :mod:`qsnap.plan.external_delete`), on a running guest
        by QEMU, on a stopped one by qemu-img. *progress* hears how each merge advances.
        A crash part-way is finished by the next command on the domain.
        """
        from qsnap.engine import delete as delete_op
        from qsnap.engine import metadata

        async with self._session(domain) as folder:
            name = resolve(folder, snapshot)
            if flags.metadata_only:
                return await asyncio.to_thread(metadata.delete_metadata_only, folder, name,
                                               flags)
            plan, moved = await asyncio.to_thread(metadata.plan_delete, folder, name, flags)
            async with self._job(folder, "Snapshot delete", progress,
                                 abortable=False) as progress:
                await delete_op.run(self._context(folder, progress), name, plan, moved)
            return plan

    @public_operation
    async def recover(self, domain: str, *, timeout: float | None = None) -> list[str]:
        """Finish whatever a crash left half-done on *domain* (``qsnap recover``); returns a
        line per thing recovered (every other command does this first, too)."""
        from qsnap.engine.recovery import still_under_way

        lines: list[str] = []
        async with self._session(domain, recovered=lines) as folder:
            waiting = await asyncio.to_thread(still_under_way, self._context(folder))
        return lines + ([waiting] if waiting else [])
