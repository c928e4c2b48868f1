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
from typing import Any

from qsnap.errors import CorruptMetadataError
from qsnap.store.atomic import atomic_write, remove_durably

INTENT_NAME = "intent.json"


def write_intent(folder: Path, record: dict[str, Any]) -> None:
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
