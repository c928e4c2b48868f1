"""Progress of long operations (block merges), as plain values any front end can show.

The engine calls a :data:`ProgressCallback` with a :class:`Progress` whenever it learns more
(about four times a second for QEMU jobs, at each qemu-img update offline). The CLI turns it into
one line on a terminal; an embedder may log it, or feed it to its own bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """*operation* (e.g. ``merge vda: /img/o3 into /img/o2``) has done *done* of *total* bytes
    in *elapsed* seconds."""

    operation: str
    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def remaining(self) -> float | None:
        """Seconds left at the rate so far; None before there is a rate."""
        if self.rate <= 0 or self.total <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


ProgressCallback = Callable[[Progress], None]


class ProgressMeter:
    """Turns raw (done, total) readings of one operation into :class:`Progress` reports."""

    def __init__(self, operation: str, callback: ProgressCallback | None) -> None:
        self.operation = operation
        self.callback = callback
        self.started = time.monotonic()
        self.last: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.callback is not None:
            self.last = Progress(self.operation, done, total, time.monotonic() - self.started)
            self.callback(self.last)

    def finish(self, moved: int) -> None:
        """Report the end: *moved* bytes of *moved* (100 %). An estimate of the total (a
        guest's RAM size before its stream is written) is replaced by what was really
        moved."""
        if self.callback is None:
            return
        if self.last is None or (self.last.done, self.last.total) != (moved, moved):
            self(moved, moved)

    def fraction(self, total: int) -> Callable[[float], None]:
        """A reader for tools that report a fraction of *total* bytes (qemu-img)."""
        return lambda fraction: self(int(fraction * total), total)
