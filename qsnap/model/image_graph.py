"""Disk images and their backing files, as facts the plans can reason about without I/O.

The engine asks ``qemu-img info`` about every image the metadata names and follows backing
files; the result is an :class:`ImageGraph`. Deleting external snapshots is a question about
this graph (which images are still needed, which have exactly one needed image above them and
can therefore be merged), so it is answered here and in :mod:`qsnap.plan.external_delete`,
where it is tested without a single file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageFacts:
    """One image: its format, its backing file (absolute, or None), its format's name for
    that backing file, the internal snapshot tags it holds and its allocated size in bytes."""

    path: str
    format: str
    backing: str | None = None
    backing_format: str | None = None
    tags: frozenset[str] = frozenset()
    allocated: int = 0


@dataclass
class ImageGraph:
    """Known images by path. Only images somebody named (and their backing chains) are known:
    an unknown file that happens to use a known image as its backing is invisible here."""

    images: dict[str, ImageFacts] = field(default_factory=dict)

    def __contains__(self, path: object) -> bool:
        return path in self.images

    def __getitem__(self, path: str) -> ImageFacts:
        return self.images[path]

    def add(self, facts: ImageFacts) -> None:
        self.images[facts.path] = facts

    def missing_backings(self) -> set[str]:
        """Backing files named by known images but not known themselves (to look up next)."""
        return {f.backing for f in self.images.values()
                if f.backing is not None and f.backing not in self.images}

    def children(self, path: str) -> list[str]:
        """Known images whose backing file is *path*, in a stable order."""
        return sorted(p for p, f in self.images.items() if f.backing == path)

    def chain(self, path: str) -> list[str]:
        """*path* and its backing files, top first (stops at an unknown or looping image)."""
        result: list[str] = []
        current: str | None = path
        while current is not None and current not in result:
            result.append(current)
            facts = self.images.get(current)
            current = facts.backing if facts is not None else None
        return result

    def loop(self, path: str) -> list[str] | None:
        """The images of a backing loop *path*'s chain runs into (``a → b → a`` made by
        hand), in chain order with the first repeated at the end; None when it ends."""
        chain = self.chain(path)
        facts = self.images.get(chain[-1])
        if facts is None or facts.backing is None or facts.backing not in chain:
            return None
        return [*chain[chain.index(facts.backing):], facts.backing]

    def closure(self, paths: Iterable[str]) -> set[str]:
        """Every image in the chains of *paths*: what must exist for them to be readable."""
        needed: set[str] = set()
        for path in paths:
            needed.update(self.chain(path))
        return needed

    def descendants(self, path: str) -> list[str]:
        """Known images built on *path*, directly or not, nearest first."""
        result: list[str] = []
        queue = self.children(path)
        while queue:
            image = queue.pop(0)
            if image in result or image == path:
                continue
            result.append(image)
            queue.extend(self.children(image))
        return result
