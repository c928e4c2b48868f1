"""The intent record of an operation on images that a crash must not leave half-done.

Metadata changes are atomic on their own (:mod:`qsnap.store.journal`), but an operation that
changes images through QEMU or qemu-img (a delete that merges chains) spans many steps that
cannot be undone once begun. Before its first change such an operation writes what it is going
to do, in full, to ``intent.json`` in the domain's folder; it updates the record as steps
complete and removes it at the end. The next qsnap command on the domain finds a record left by
a crash and finishes the operation from it. The record is JSON so that a person can read what
was under way.
"""

from __future__ import annotations

import json
from pathlib import Path

from qsnap.errors import CorruptMetadataError
from qsnap.store.atomic import atomic_write, remove_durably

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self

INTENT_NAME = "intent.json"


class IntentRecord:
    """Base of the dataclasses that describe an operation in its record: ``KIND`` names the
    operation (recovery hands the record back to the code that owns that kind), the fields
    are the rest of the JSON object."""

    KIND: ClassVar[str]

    def record(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"kind": self.KIND, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Self:
        return cls(**{k: v for k, v in record.items() if k != "kind"})


#: A record that stays while QEMU runs its job (a block commit nobody waits for): no other
#: operation may write its own record over it.
LASTING_KINDS = frozenset({"blockcommit", "blockpull"})


def write_intent(folder: Path, record: dict[str, Any]) -> None:
    """Write (or update) the record. One of another kind that lasts while QEMU runs its job
    refuses the new operation before it changes anything."""
    if record["kind"] not in LASTING_KINDS:
        try:
            existing = json.loads((folder / INTENT_NAME).read_bytes())
        except (FileNotFoundError, ValueError):
            existing = None
        if isinstance(existing, dict) and existing.get("kind") in LASTING_KINDS:
            from qsnap.errors import OperationInvalidError

            target = existing.get("target", "?")
            raise OperationInvalidError(
                f"disk '{target}' is in a block job ({existing['kind']}); finish it with "
                f"'blockjob {folder.name} {target} --pivot' or '--abort' first")
    atomic_write(folder / INTENT_NAME, json.dumps(record, indent=1).encode("utf-8"))


def read_intent(folder: Path) -> dict[str, Any] | None:
    path = folder / INTENT_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            raise ValueError("not an intent record")
    except ValueError as exc:
        raise CorruptMetadataError(f"intent record '{path}' is corrupt ({exc}); move it away "
                                   "to continue, after checking the images it names") from None
    return record


def has_intent(folder: Path) -> bool:
    return (folder / INTENT_NAME).exists()


def clear_intent(folder: Path) -> None:
    remove_durably(folder / INTENT_NAME)
