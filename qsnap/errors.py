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
