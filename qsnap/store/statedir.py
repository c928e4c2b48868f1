"""The state directory: where qsnap keeps every domain's metadata, and how it is found."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qsnap.model.names import check_domain_name
from qsnap.store.atomic import fsync_dir, make_dirs
from qsnap.store.folder import DEFINITION, DomainFolder
from qsnap.store.lock import DomainLock

_TRASH_PREFIX = ".trash-"


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--state-dir``, else ``$QSNAP_STATE_DIR``, else ``$XDG_STATE_HOME/qsnap``
    (``~/.local/state/qsnap`` when XDG_STATE_HOME is unset)."""
    if explicit:
        return Path(explicit).absolute()
    if os.environ.get("QSNAP_STATE_DIR"):
        return Path(os.environ["QSNAP_STATE_DIR"]).absolute()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).absolute() / "qsnap"


class StateDir:
    """Finds and locks domain folders. The tree is created private (0700) on first write:
    snapshot metadata embeds whole domain definitions, secrets included."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.domains_dir = root / "domains"
        self.locks_dir = root / "locks"

    def tpm_state(self, uuid: str) -> Path:
        """Where the emulated TPM of the domain with *uuid* keeps its state
        (``STATE/swtpm/UUID/tpm2``, as libvirt keeps ``/var/lib/libvirt/swtpm/UUID/tpm2``):
        by UUID and outside the domain's folder, so that state a definition asks to keep
        (``persistent_state='yes'``) outlives an undefine and serves a definition again."""
        return self.root / "swtpm" / uuid

    def folder(self, name: str) -> DomainFolder:
        check_domain_name(name)
        return DomainFolder(self.domains_dir / name, name)

    def domain_names(self) -> list[str]:
        """Defined domains, sorted; a folder without its definition is not a domain."""
        if not self.domains_dir.is_dir():
            return []
        return sorted(entry.name for entry in self.domains_dir.iterdir()
                      if not entry.name.startswith(".") and (entry / DEFINITION).is_file())

    def lock(self, name: str) -> DomainLock:
        """*name*'s lock, not yet taken (for callers that acquire it off the event loop)."""
        check_domain_name(name)
        make_dirs(self.locks_dir)
        return DomainLock(self.locks_dir / f"{name}.lock", name)

    @contextmanager
    def locked(self, name: str) -> Iterator[tuple[DomainFolder, list[str]]]:
        """Hold *name*'s lock; yield its folder, recovered, and what recovery did."""
        folder = self.folder(name)
        make_dirs(self.locks_dir)
        with DomainLock(self.locks_dir / f"{name}.lock", name):
            yield folder, folder.recover()

    @contextmanager
    def defining(self) -> Iterator[None]:
        """The state-wide lock that ``define`` holds while it checks UUIDs and writes."""
        make_dirs(self.locks_dir)
        with DomainLock(self.locks_dir / ".define.lock", "(any, while defining)"):
            yield

    def remove_folder(self, folder: DomainFolder) -> None:
        """Remove a domain folder: one atomic rename out of sight, then the deletion.

        A crash after the rename leaves only a hidden trash folder, which
        :meth:`sweep_trash` removes; the domain is gone either way.
        """
        import shutil  # here: commands that read start faster without it

        trash = self.domains_dir / f"{_TRASH_PREFIX}{os.urandom(6).hex()}-{folder.name}"
        os.rename(folder.path, trash)
        fsync_dir(self.domains_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def sweep_trash(self) -> None:
        if self.domains_dir.is_dir():
            for entry in self.domains_dir.iterdir():
                if entry.name.startswith(_TRASH_PREFIX):
                    import shutil

                    shutil.rmtree(entry, ignore_errors=True)
