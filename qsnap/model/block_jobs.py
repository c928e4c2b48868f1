"""virsh's block-job commands, as values: what blockjob is asked to do, and how a commit or
pull ended."""

from enum import StrEnum


class BlockJobAction(StrEnum):
    """``blockjob``'s action."""

    INFO = "info"
    ABORT = "abort"
    PIVOT = "pivot"


class JobOutcome(StrEnum):
    """How ``blockcommit`` or ``blockpull`` ended, as the command reports it."""

    #: Started; nobody waits for it (no ``--wait``).
    STARTED = "started"
    #: An active commit left ready, mirroring the guest's writes (``--wait`` alone).
    SYNCHRONIZED = "synchronized"
    #: An active commit completed, the guest on base (``--pivot``).
    PIVOTED = "pivoted"
    #: An active commit cancelled once ready, the guest on its top image (``--keep-overlay``).
    KEPT = "kept"
    #: A commit below the top, done.
    COMMITTED = "committed"
    #: A pull, done.
    PULLED = "pulled"
    #: ``--timeout`` passed: the job was cancelled, nothing changed.
    ABORTED = "aborted"
