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

from qsnap.errors import CorruptMetadataError, NotSupportedError
from qsnap.store.atomic import atomic_write, remove_durably

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self, TypeVar

    T = TypeVar("T")

INTENT_NAME = "intent.json"


#: The format of the records this release writes. Version 1 is that of the releases before
#: records carried a version (no ``version`` key); 2 has the same fields, with ``version``
#: and ``lasting``. A record of a newer version than this is refused by name, never read as
#: a damaged one: the qsnap that wrote it must settle it.
RECORD_VERSION = 2


class IntentRecord:
    """Base of the dataclasses that describe an operation in its record: ``KIND`` names the
    operation (recovery hands the record back to the code that owns that kind), the fields
    are the rest of the JSON object, read back by their annotations (:func:`from_json`).
    ``LASTING``: the record stays while QEMU runs the operation's job (a block commit nobody
    waits for), and no other operation may write its own record over it."""

    KIND: ClassVar[str]
    LASTING: ClassVar[bool] = False

    def refusal(self) -> str | None:
        """What a lasting record says to an operation it refuses ("{domain}" stands for the
        domain's name): how to end it, in the words of the code that wrote it."""
        return None

    def record(self) -> dict[str, Any]:
        from dataclasses import asdict

        envelope = {"kind": self.KIND, "version": RECORD_VERSION, "lasting": self.LASTING}
        refusal = self.refusal()
        if refusal is not None:
            envelope["refusal"] = refusal
        return {**envelope, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Self:
        """The record as this class, whichever version wrote it (:meth:`upgrade`)."""
        fields = {k: v for k, v in record.items() if k not in _ENVELOPE}
        return from_json(cls, cls.upgrade(fields, record.get("version", 1)), cls.KIND)

    @classmethod
    def upgrade(cls, fields: dict[str, Any], version: int) -> dict[str, Any]:
        """A record's fields as written by format *version*, in this release's shape. Version
        1 differs only in its envelope, so nothing changes here yet; a class whose fields
        change overrides this and keeps a record of the older version among the tests."""
        return fields


#: The keys every record has beside its operation's own fields.
_ENVELOPE = frozenset({"kind", "version", "lasting", "refusal"})

#: Kinds whose records of version 1 (which carried no ``lasting``) lasted.
_LASTING_IN_VERSION_1 = frozenset({"blockcommit", "blockpull"})


def lasts(record: dict[str, Any]) -> bool:
    """Whether *record* stays while QEMU runs its job (see :class:`IntentRecord`)."""
    if "lasting" in record:
        return bool(record["lasting"])
    return record.get("kind") in _LASTING_IN_VERSION_1


def from_json(cls: type[T], data: object, where: str) -> T:
    """*data* (parsed JSON) as dataclass *cls*, read field by field from the annotations:
    nested dataclasses, lists, tuples, dicts, optionals, enums and plain values. A missing
    required field, an unknown one or a value of the wrong type is a ValueError naming it
    (*where* says whose it is)."""
    value: T = _read(cls, data, where)
    return value


def _read(tp: Any, value: Any, where: str) -> Any:
    import dataclasses
    import enum
    import sys
    import types
    import typing

    if tp is typing.Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"{where}: {tp} cannot be read from a record")
        return _read(kinds[0], value, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, found {value!r}")
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        scope = vars(sys.modules[tp.__module__])

        def annotation(name: str) -> Any:
            declared = fields[name].type  # a string under 'from __future__ import annotations'
            return eval(declared, scope) if isinstance(declared, str) else declared

        return tp(**{name: _read(annotation(name), item, f"{where}.{name}")
                     for name, item in value.items()})
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, found {value!r}")
        return [_read(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_read(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items, found {len(value)}")
        return tuple(_read(a, item, f"{where}[{i}]")
                     for i, (a, item) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, found {value!r}")
        return {key: _read(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {tp.__name__}, found {value!r}")
        return value
    raise TypeError(f"{where}: {tp} cannot be read from a record")


def write_intent(folder: Path, record: dict[str, Any]) -> None:
    """Write (or update) the record. One of another operation that lasts while QEMU runs its
    job refuses the new operation before it changes anything."""
    if not lasts(record):
        try:
            existing = json.loads((folder / INTENT_NAME).read_bytes())
        except (FileNotFoundError, ValueError):
            existing = None
        if isinstance(existing, dict) and lasts(existing):
            from qsnap.errors import OperationInvalidError

            refusal = existing.get("refusal")
            raise OperationInvalidError(
                str(refusal).replace("{domain}", folder.name) if refusal else
                f"domain '{folder.name}' has a {existing.get('kind')} under way in QEMU "
                f"(disk '{existing.get('target', '?')}'); it must end before another "
                "operation starts")
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
        version = record.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version {version!r}")
    except ValueError as exc:
        raise CorruptMetadataError(f"intent record '{path}' is corrupt ({exc}); move it away "
                                   "to continue, after checking the images it names") from None
    if version > RECORD_VERSION:
        raise NotSupportedError(
            f"intent record '{path}' (a {record['kind']}) has format version {version}, "
            f"written by a newer qsnap; this one reads versions 1 to {RECORD_VERSION}. Settle "
            "it with the qsnap that wrote it (its next command on the domain, or 'qsnap "
            "recover'), or move it away after checking the images it names", path=str(path))
    return record


def has_intent(folder: Path) -> bool:
    return (folder / INTENT_NAME).exists()


def clear_intent(folder: Path) -> None:
    remove_durably(folder / INTENT_NAME)
