"""Domain lifecycle: define, undefine, and attach (adopting a QEMU someone else started).

The functions that change a domain's folder run in a worker thread under the state-wide
define lock and the domain's lock (:meth:`Engine._defining`, :meth:`Engine._run`), so that two
definitions cannot claim one UUID at once; what needs QEMU or the host (the machine aliases,
the firmware descriptors, QEMU's own report of itself) is gathered before, on the loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid as uuidlib
from dataclasses import dataclass

from qsnap.errors import (
    AlreadyExistsError,
    DomainRunningError,
    InvalidArgumentError,
    OperationInvalidError,
)
from qsnap.launcher.firmware import read_descriptors
from qsnap.launcher.foreign import ForeignCommand, read_process_command
from qsnap.launcher.machines import machine_aliases
from qsnap.launcher.runtime import RuntimeInfo, read_runtime, runtime_paths, write_runtime
from qsnap.model.domain import (
    DomainDef,
    RunningDisk,
    domain_from_qemu,
    parse_domain_element,
    same_uuid,
    with_disk_images,
    with_uuid,
)
from qsnap.monitor import Monitor
from qsnap.monitor.client import QemuFacts
from qsnap.plan.domain_define import DefineFacts, new_mac_address, resolve_definition
from qsnap.store import DomainFolder, StateDir


def _runs(state: StateDir, name: str) -> bool:
    return read_runtime(runtime_paths(state.root, name)) is not None


async def resolved(state: StateDir, domain: DomainDef) -> DomainDef:
    """*domain* with what libvirt fixes at define (:mod:`qsnap.plan.domain_define`)."""
    emulator = (domain.element.findtext("devices/emulator") or "qemu-system-x86_64").strip()
    aliases, firmware = await asyncio.gather(asyncio.to_thread(machine_aliases, emulator),
                                             asyncio.to_thread(read_descriptors))
    # Not libvirt's NAME_VARS.fd: a name may be 251 bytes, the longest a file name leaves
    # for a ".xml" suffix.
    nvram = state.folder(domain.name).path / "VARS.fd"
    facts = DefineFacts(machine_aliases=aliases, firmware=firmware, nvram_path=str(nvram),
                        new_mac=new_mac_address, new_guid=lambda: str(uuidlib.uuid4()))
    return parse_domain_element(resolve_definition(domain.element, facts))


def store_definition(state: StateDir, folder: DomainFolder, domain: DomainDef) -> str:
    """Define (or update) *domain* in *folder*; its name. An existing domain keeps its UUID;
    a new one without a UUID gets one; a UUID another domain uses is refused. A transient
    domain becomes persistent (or, if its guest has stopped, is defined anew)."""
    if folder.exists() and folder.transient:
        if _runs(state, domain.name):
            folder.set_transient(False)
        else:
            state.remove_folder(folder)  # it stopped: gone, defined anew
    if folder.exists():
        existing = folder.definition
        if domain.uuid is None:
            domain = with_uuid(domain, existing.uuid or str(uuidlib.uuid4()))
        elif existing.uuid and not same_uuid(existing.uuid, domain.uuid):
            raise AlreadyExistsError(
                f"domain '{domain.name}' already exists with uuid {existing.uuid}")
    else:
        if domain.uuid is None:
            domain = with_uuid(domain, str(uuidlib.uuid4()))
        refuse_duplicate_uuid(state, domain)
    folder.write_definition(domain)
    return domain.name


def refuse_duplicate_uuid(state: StateDir, domain: DomainDef) -> None:
    for other in state.domain_names():
        if other == domain.name:
            continue
        other_uuid = state.folder(other).definition.uuid
        if other_uuid and domain.uuid and same_uuid(other_uuid, domain.uuid):
            raise AlreadyExistsError(
                f"domain '{other}' is already defined with uuid {domain.uuid}")


def remove_definition(state: StateDir, folder: DomainFolder, *,
                      snapshots_metadata: bool) -> None:
    """Undefine: a running domain stays, transient, until its guest stops; a stopped one with
    snapshots is refused unless their metadata goes too. Images are never touched; the TPM's
    state goes unless the definition keeps it."""
    names = folder.snapshot_names()
    if _runs(state, folder.name):
        if snapshots_metadata and names:
            folder.save(drop=names, current=None)
        folder.set_transient(True)
        return
    if names and not snapshots_metadata:
        raise OperationInvalidError(f"cannot delete inactive domain with {len(names)} snapshots")
    definition = folder.definition
    tpm_state = state.tpm_state(definition.uuid or folder.name)
    state.remove_folder(folder)
    if definition.emulated_tpm and not definition.tpm_state_outlives_undefine:
        shutil.rmtree(tpm_state, ignore_errors=True)


@dataclass(frozen=True)
class Adoption:
    """What attach learnt of a QEMU someone else started, before it takes any lock."""

    name: str
    qmp: str
    facts: QemuFacts
    info: RuntimeInfo
    command: ForeignCommand

    @property
    def disks(self) -> list[RunningDisk]:
        return [RunningDisk(name, d.file, d.format, d.read_only)
                for name, d in self.facts.disks.items()]


async def describe_foreign(name: str, qmp: str) -> Adoption:
    """Ask the QEMU at *qmp* what it runs, and read the command line that started it."""
    socket_path = os.path.abspath(qmp)
    async with await Monitor.connect(socket_path) as monitor:
        facts = await monitor.describe()
        pid = monitor.peer_pid()
    if pid is None:
        raise OperationInvalidError(f"cannot tell which process serves {qmp}")
    info = RuntimeInfo(pid=pid, qmp=socket_path, accel="kvm" if facts.kvm else "tcg",
                       owner="attached")
    argv, cwd = read_process_command(pid)
    disks = {name: d.file for name, d in facts.disks.items()}
    return Adoption(name, qmp, facts, info,
                    ForeignCommand(argv, cwd, info.qmp, disks, info.accel))


def adopt(state: StateDir, folder: DomainFolder, adoption: Adoption) -> RuntimeInfo:
    """Record the adopted QEMU: define the domain from it (or check a defined one against it
    and follow its disks), its command line and its runtime record."""
    name, qmp, uuid = adoption.name, adoption.qmp, adoption.facts.uuid
    running = adoption.disks
    if folder.exists():
        definition = folder.definition
        if uuid and definition.uuid and not same_uuid(uuid, definition.uuid):
            raise InvalidArgumentError(f"QEMU at {qmp} runs uuid {uuid}, but domain "
                                       f"'{name}' has uuid {definition.uuid}")
        by_target = {d.target: d for d in running}
        missing = [d.target for d in definition.disks if d.target not in by_target]
        if missing:
            raise InvalidArgumentError(
                f"QEMU at {qmp} has no disk {', '.join(missing)} of domain '{name}'")
        updated = with_disk_images(definition, {
            d.target: (by_target[d.target].path, by_target[d.target].format)
            for d in definition.disks})
    else:
        facts = adoption.facts
        updated = domain_from_qemu(name, uuid or str(uuidlib.uuid4()), facts.memory,
                                   facts.vcpus, facts.kvm, running)
        refuse_duplicate_uuid(state, updated)
    if _runs(state, name):
        raise DomainRunningError(f"domain '{name}' is already running", domain=name)
    folder.write_definition(updated)
    folder.write_launch(adoption.command.to_json())
    write_runtime(runtime_paths(state.root, name), adoption.info)
    return adoption.info
