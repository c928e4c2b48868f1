"""A stall detector for an asyncio event loop: a heartbeat task on the loop and a watchdog
thread that, whenever the heartbeat is late by more than a limit, records the loop thread's
Python stack at that moment, so a stall names the code that held the loop."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import qsnap

#: Where qsnap's own modules are, as traceback prints a frame's file ('File "…/qsnap/x.py"').
#: A substring such as "/qsnap/" would also match a checkout cloned into a folder named qsnap
#: (git's default): the venv's site-packages and asyncio's select() beneath it (issue 28).
QSNAP_FILES = f'File "{Path(qsnap.__file__).parent}/'


@dataclass
class Stall:
    length: float
    stack: list[str] = field(default_factory=list)

    def where(self) -> str:
        """The innermost frame of qsnap's on the stack, and the innermost of all."""
        ours = [line for line in self.stack if is_qsnap_frame(line)]
        inner = self.stack[-1].strip() if self.stack else "?"
        return f"{ours[-1].strip() if ours else '-'} | innermost: {inner}"

    @property
    def in_qsnap(self) -> bool:
        """qsnap's code was running on the loop thread (any call it makes, blocking or
        not, has qsnap's frame under it). Otherwise the loop was waiting in select(), or
        running asyncio's own callbacks, when the process was not scheduled in time."""
        return any(is_qsnap_frame(line) for line in self.stack)


def is_qsnap_frame(line: str) -> bool:
    """Whether a formatted stack entry is a frame of qsnap's package itself."""
    return line.lstrip().startswith(QSNAP_FILES)


class LoopWatch:
    """``async with LoopWatch(limit) as watch:`` ... then ``watch.stalls``."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.stalls: list[Stall] = []
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()
        self._current: Stall | None = None

    async def __aenter__(self) -> LoopWatch:
        self._beat = time.monotonic()
        self._task = asyncio.create_task(self._heartbeat())
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        self._task.cancel()
        self._thread.join()

    async def _heartbeat(self) -> None:
        while True:
            now = time.monotonic()
            late = now - self._beat
            if self._current is not None:
                self._current.length = late
                self._current = None
            self._beat = now
            await asyncio.sleep(0.001)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            late = time.monotonic() - self._beat
            if late > self.limit and self._current is None:
                frame = sys._current_frames().get(self._loop_thread)
                stack = traceback.format_stack(frame) if frame is not None else []
                self._current = Stall(late, stack)
                self.stalls.append(self._current)
