"""What every operation on a domain's images works with: the domain's folder (locked by the
caller), its runtime paths, the QEMU running now (or None), how to start a new one, and who
hears progress. :class:`~qsnap.engine.engine.Engine` makes one per call; crash recovery makes
one for the operation it settles, so both walk the operation's steps with the same facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qsnap.errors import OperationAbortedError
from qsnap.launcher.runtime import RuntimeInfo, RuntimePaths, read_runtime
from qsnap.progress import ProgressCallback
from qsnap.store.folder import DomainFolder

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.launcher.process import Launcher


@dataclass
class Context:
    folder: DomainFolder
    paths: RuntimePaths
    running: RuntimeInfo | None
    launch: Launcher
    progress: ProgressCallback | None = None
    #: Whether an abort was asked for (domjobabort): the operation's job on the board.
    abort_asked: Callable[[], bool] | None = None
    #: Where the domain's emulated TPM keeps its state (StateDir.tpm_state).
    tpm_state: Path | None = None

    @property
    def domain(self) -> str:
        return self.folder.name

    def checkpoint(self) -> None:
        """Raise :class:`OperationAbortedError` if an abort was asked for: called before each
        step past which the operation could no longer be undone, so that an abort that came
        before QEMU's work began (and that cancelling QEMU's work therefore missed) still wins."""
        if self.abort_asked is not None and self.abort_asked():
            raise OperationAbortedError(f"domain '{self.domain}': the operation was aborted "
                                        "on request", domain=self.domain)

    def refresh(self) -> RuntimeInfo | None:
        """The QEMU running now (it may have died, or been replaced, since the call began)."""
        self.running = read_runtime(self.paths)
        return self.running
