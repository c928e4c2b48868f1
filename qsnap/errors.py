"""Exceptions raised by qsnap's public API.

Every error a user can cause is a :class:`QsnapError` whose ``str()`` is a complete,
human-readable sentence naming what was wrong; the CLI prints exactly that after ``error:``.
Subclasses let embedders branch on the kind of failure the way libvirt's error codes do,
without parsing messages.
"""

from __future__ import annotations


class QsnapError(Exception):
    """Base class of every error qsnap reports on purpose. ``domain``, ``snapshot`` and
    ``path`` name what the error is about where that is known, for callers that branch on
    it (the CLI words libvirt's messages from them) without parsing the message."""

    def __init__(self, message: str = "", *, domain: str | None = None,
                 snapshot: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.domain = domain
        self.snapshot = snapshot
        self.path = path


class UsageError(QsnapError):
    """The command line itself is wrong (virsh's own message, printed as it is)."""


class XMLError(QsnapError):
    """The XML is malformed, or has an element, attribute or value qsnap does not accept."""


class InvalidArgumentError(QsnapError):
    """A request is well-formed but breaks a rule (conflicting flags, wrong UUID, a cycle...)."""


class NotFoundError(QsnapError):
    """A named domain or snapshot does not exist."""


class NoDomainError(NotFoundError):
    """The domain is not defined."""


class NoSnapshotError(NotFoundError):
    """The snapshot does not exist (or the domain has no current snapshot)."""


class AlreadyExistsError(QsnapError):
    """Something with that name already exists and would be overwritten."""


class OperationInvalidError(QsnapError):
    """The operation is not valid in the object's present state (libvirt's OPERATION_INVALID)."""


class DomainBusyError(OperationInvalidError):
    """Another call or process holds the domain (its lock) for longer than the caller's
    ``timeout=``: *holder_pid* and *operation* name who (where it could be told)."""

    def __init__(self, message: str = "", *, domain: str | None = None,
                 path: str | None = None, holder_pid: int | None = None,
                 operation: str | None = None) -> None:
        super().__init__(message, domain=domain, path=path)
        self.holder_pid = holder_pid
        self.operation = operation


class DomainNotRunningError(OperationInvalidError):
    """The operation needs the domain's guest running, and it is not."""


class DomainRunningError(OperationInvalidError):
    """The operation needs the domain's guest stopped, and it runs."""


class NotSupportedError(QsnapError):
    """qsnap does not (yet) implement this; nothing was changed."""


class CorruptMetadataError(QsnapError):
    """A file in the state directory cannot be read back; it is named in the message."""


class OperationIncompleteError(QsnapError):
    """An operation on images stopped part-way; it stays recorded, and the next command on the
    domain (or ``qsnap recover``) finishes it once the cause is fixed."""


class OperationFailedError(QsnapError):
    """An operation started and failed part-way for a reason outside the request (libvirt's
    OPERATION_FAILED); the message says why, and what was left as it was."""


class OperationAbortedError(OperationFailedError):
    """The operation was stopped on request (``domjobabort``) and settled as a failed one."""


class JobFailedError(OperationFailedError):
    """A QEMU job ended in an error (or before its work was done); ``reason`` is QEMU's own
    text, ``job_id`` the job's. The job was dismissed."""

    def __init__(self, message: str, *, job_id: str, reason: str, domain: str | None = None,
                 snapshot: str | None = None, path: str | None = None) -> None:
        super().__init__(message, domain=domain, snapshot=snapshot, path=path)
        self.job_id = job_id
        self.reason = reason


class GuestExitedError(OperationFailedError):
    """The guest's QEMU exited while an operation needed it (e.g. while it loaded a saved
    state); the operation was undone."""


class SaveImageError(XMLError):
    """The file is not a (complete, readable) save image; the message says which part."""


class MemoryImageError(QsnapError):
    """The memory image could not be written (full disk, I/O error); it was removed."""


class ImageToolError(QsnapError):
    """qemu-img failed; its own message is kept."""


class LaunchError(QsnapError):
    """QEMU would not start; the message carries QEMU's own error."""


class MonitorError(QsnapError):
    """QEMU refused a command; ``qmp_class`` and ``desc`` are QEMU's own."""

    def __init__(self, command: str, qmp_class: str, desc: str, *, domain: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(f"QEMU refused {command}: {desc}", domain=domain, path=path)
        self.command = command
        self.qmp_class = qmp_class
        self.desc = desc


class MonitorClosedError(QsnapError):
    """The connection to QEMU broke (QEMU exited or closed its monitor)."""


class MonitorTimeoutError(QsnapError):
    """QEMU did not answer in time."""


class GuestAgentError(QsnapError):
    """The guest agent is missing, silent, or refused a command."""
