"""How a domain's QEMU is started again (start, revert, restore): from its definition, or,
for an attached domain, as its QEMU was first started (through the embedder's hook where one
is registered). A damaged launch record stops only what would start QEMU; its error names
the file, and snapshots and deletes of the running guest go on."""

from __future__ import annotations

from pathlib import Path

from qsnap.errors import CorruptMetadataError, QsnapError
from qsnap.launcher.foreign import ForeignCommand, RelaunchHook
from qsnap.launcher.process import Launcher, OwnCommandLine, foreign_launcher
from qsnap.launcher.runtime import RuntimeInfo, RuntimePaths
from qsnap.model.domain import DomainDef
from qsnap.store import DomainFolder


def launcher_for(folder: DomainFolder, tpm_state: Path, hook: RelaunchHook | None) -> Launcher:
    """The launcher of *folder*'s domain (see the module docstring)."""
    recorded = folder.read_launch()
    if recorded is None:
        return OwnCommandLine(tpm_state)
    try:
        command = ForeignCommand.from_json(recorded)
    except (ValueError, KeyError, TypeError) as exc:
        return Refusal(CorruptMetadataError(
            f"'{folder.path / 'launch.json'}' is corrupt ({exc}), so the attached QEMU cannot "
            f"be started again; 'qsnap attach {folder.name} --qmp SOCKET' records it anew",
            domain=folder.name, path=str(folder.path / "launch.json")))
    return foreign_launcher(command, hook)


class Refusal:
    """A launcher that refuses every start with *error* (a damaged launch record)."""

    def __init__(self, error: QsnapError) -> None:
        self.error = error

    def check(self, domain: DomainDef) -> None:
        raise self.error

    async def __call__(self, domain: DomainDef, paths: RuntimePaths, accel: str, *,
                       incoming: bool = False, paused: bool = False) -> RuntimeInfo:
        raise self.error
