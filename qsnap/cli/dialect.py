"""Errors in virsh's words: libvirt's prefix for each kind of error and virsh's first line
when a domain operation fails."""

from __future__ import annotations

from qsnap.cli.args import UsageError
from qsnap.cli.runner import Args
from qsnap.errors import (
    AlreadyExistsError,
    DomainNotRunningError,
    DomainRunningError,
    InvalidArgumentError,
    NoDomainError,
    NoSnapshotError,
    NotSupportedError,
    OperationAbortedError,
    OperationFailedError,
    OperationIncompleteError,
    OperationInvalidError,
    QsnapError,
    XMLError,
)

# -- errors in libvirt's words ---------------------------------------------------------------------

#: libvirt's prefix for an error of each kind (its error code's text), so that scripts
#: written against virsh's messages keep working.
LIBVIRT_PREFIX: tuple[tuple[type[QsnapError], str], ...] = (
    (OperationAbortedError, "operation aborted: "),
    (AlreadyExistsError, "operation failed: "),
    (OperationIncompleteError, "operation failed: "),
    (OperationFailedError, "operation failed: "),
    (InvalidArgumentError, "invalid argument: "),
    (OperationInvalidError, "Requested operation is not valid: "),
    (NotSupportedError, "Operation not supported: "),
    (XMLError, "XML error: "),
)


#: virsh's first error line when a domain operation fails (before libvirt's own reason).
FAILED_TO = {
    "define": "Failed to define domain from {file}",
    "undefine": "Failed to undefine domain '{domain}'",
    "shutdown": "Failed to shutdown domain '{domain}'",
    "destroy": "Failed to destroy domain '{domain}'",
    "save": "Failed to save domain '{domain}' to {file}",
    "restore": "Failed to restore domain from {file}",
    "managedsave": "Failed to save domain '{domain}' state",
    "start": "Failed to start domain '{domain}'",
    "suspend": "Failed to suspend domain '{domain}'",
    "resume": "Failed to resume domain '{domain}'",
    "reboot": "Failed to reboot domain '{domain}'",
}


def virsh_message(exc: QsnapError, command: str | None = None,
                  args: Args | None = None) -> str:
    """What virsh prints after ``error:`` for the same condition (one or two lines); qsnap's
    own text (under libvirt's prefix for its kind) where libvirt has none."""
    if isinstance(exc, UsageError):
        return str(exc)
    if isinstance(exc, NoDomainError) and exc.domain:
        return f"failed to get domain '{exc.domain}'"
    if isinstance(exc, DomainRunningError) and command == "start":
        return "Domain is already active"  # virsh's own check
    reason = libvirt_reason(exc)
    if command in FAILED_TO and args is not None:
        return FAILED_TO[command].format(**vars(args)) + "\nerror: " + reason
    return reason


def libvirt_reason(exc: QsnapError) -> str:
    if isinstance(exc, DomainNotRunningError):
        return "Requested operation is not valid: domain is not running"
    if isinstance(exc, NoSnapshotError):
        if exc.snapshot is None:  # --current without one
            return "Domain snapshot not found: the domain does not have a current snapshot"
        return ("Domain snapshot not found: no domain snapshot with matching name "
                f"'{exc.snapshot}'")
    if isinstance(exc, AlreadyExistsError) and exc.snapshot:
        return f"operation failed: domain moment {exc.snapshot} already exists"
    for kind, prefix in LIBVIRT_PREFIX:
        if isinstance(exc, kind):
            return prefix + str(exc)
    return str(exc)


