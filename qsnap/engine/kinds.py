"""The operations that keep an intent record, by the ``kind`` their records carry."""

from enum import StrEnum


class OperationKind(StrEnum):
    """An intent record's ``kind``: which operation wrote it, and so which one settles it
    (:mod:`qsnap.engine.recovery`). The values are those records have always carried."""

    CREATE = "create"
    REVERT = "revert"
    SAVE = "save"
    RESTORE = "restore"
    DELETE = "delete"
    BLOCKCOMMIT = "blockcommit"
    BLOCKPULL = "blockpull"
