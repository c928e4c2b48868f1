"""The snapshot tree of one domain: parents, children, roots, leaves and the current snapshot.

Pure and in memory; the store builds it from the metadata files, and plans query it. Children are
always returned sorted by name (case-insensitively, as virsh sorts), so every listing is stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from qsnap.errors import CorruptMetadataError, NoSnapshotError

if TYPE_CHECKING:  # the tree works on summaries; only SnapshotSummary.of reads a parsed file
    from qsnap.model.snapshot import SnapshotDef


def name_key(name: str) -> tuple[str, str]:
    """Sort key for snapshot names: case-insensitive first, then exact, so order is total."""
    return (name.casefold(), name)


@dataclass(frozen=True)
class SnapshotSummary:
    """What listing and tree queries need of a snapshot, without its disks or domain."""

    name: str
    parent: str | None
    creation_time: int
    state: str
    external: bool

    @classmethod
    def of(cls, snap: SnapshotDef) -> SnapshotSummary:
        if snap.name is None:
            raise ValueError("a stored snapshot always has a name")
        return cls(snap.name, snap.parent, snap.creation_time or 0, snap.state or "",
                   snap.is_external)

    @property
    def location(self) -> str:
        return "external" if self.external else "internal"


class TreeView(Protocol):
    """The part of a tree that checks on one new snapshot need: membership, ancestry, current.

    :class:`SnapshotTree` is one; the store offers another that reads only the files it is asked
    about, so adding a snapshot costs the same with ten thousand siblings as with none.
    """

    current: str | None

    def __contains__(self, name: object) -> bool: ...

    def ancestors(self, name: str) -> list[str]: ...


class SnapshotTree:
    """Immutable view of a domain's snapshots.

    A snapshot whose parent is missing is treated as a root, as libvirt does, and the fact is
    kept in :attr:`problems` so callers can warn. Parent links that form a cycle cannot come from
    qsnap itself (redefine refuses them), only from hand-edited files: that is an error.
    """

    def __init__(self, summaries: Iterable[SnapshotSummary], current: str | None = None,
                 domain: str = "") -> None:
        self.domain = domain
        self._nodes: dict[str, SnapshotSummary] = {s.name: s for s in summaries}
        self.problems: list[str] = []
        self._children: dict[str | None, list[str]] = {}
        for summary in self._nodes.values():
            parent = summary.parent
            if parent is not None and parent not in self._nodes:
                self.problems.append(f"snapshot '{summary.name}' names parent '{parent}', "
                                     "which does not exist; it is shown as a root")
                parent = None
            self._children.setdefault(parent, []).append(summary.name)
        for names in self._children.values():
            names.sort(key=name_key)
        self._check_acyclic()
        if current is not None and current not in self._nodes:
            self.problems.append(f"the current snapshot '{current}' does not exist")
            current = None
        self.current = current

    def _check_acyclic(self) -> None:
        reached = sum(1 for _ in self._walk(None))
        if reached != len(self._nodes):
            seen = set(self._walk(None))
            stuck = sorted((n for n in self._nodes if n not in seen), key=name_key)
            raise CorruptMetadataError(
                f"snapshot metadata of domain '{self.domain}' is inconsistent: the parents of "
                f"{', '.join(repr(n) for n in stuck)} form a cycle")

    def _effective_parent(self, name: str) -> str | None:
        parent = self._nodes[name].parent
        return parent if parent in self._nodes else None

    def _walk(self, start: str | None) -> Iterator[str]:
        """Pre-order walk below *start* (None: every root), children in name order."""
        stack = list(reversed(self._children.get(start, [])))
        while stack:
            name = stack.pop()
            yield name
            stack.extend(reversed(self._children.get(name, [])))

    # -- lookups --------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[SnapshotSummary]:
        """All snapshots sorted by name."""
        return (self._nodes[n] for n in sorted(self._nodes, key=name_key))

    def get(self, name: str) -> SnapshotSummary:
        try:
            return self._nodes[name]
        except KeyError:
            raise NoSnapshotError(
                f"domain '{self.domain}' has no snapshot named '{name}'", domain=self.domain,
                snapshot=name) from None

    def parent(self, name: str) -> str | None:
        self.get(name)
        return self._effective_parent(name)

    def children(self, name: str | None) -> list[str]:
        """Direct children in name order; ``None`` gives the roots."""
        if name is not None:
            self.get(name)
        return list(self._children.get(name, []))

    def descendants(self, name: str) -> list[str]:
        """Every snapshot below *name*, parents before their children."""
        self.get(name)
        return list(self._walk(name))

    def ancestors(self, name: str) -> list[str]:
        """Parent, grandparent, ... up to the root."""
        result = []
        parent = self.parent(name)
        while parent is not None:
            result.append(parent)
            parent = self._effective_parent(parent)
        return result

    def roots(self) -> list[str]:
        return self.children(None)

    def is_leaf(self, name: str) -> bool:
        self.get(name)
        return not self._children.get(name)

    def leaves(self) -> list[str]:
        return [s.name for s in self if not self._children.get(s.name)]

    def topological(self) -> list[str]:
        """Every snapshot, no child before its parent."""
        return list(self._walk(None))
