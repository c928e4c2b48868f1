"""How a full-system snapshot's memory was captured, and how long the guest was paused for it.

qsnap notes this in the snapshot's ``<cookie>``: libvirt's schema lets any element live there
and its QEMU driver reads only ``<cpu>`` and ``<slirpHelper>`` from it, so the note travels
with the snapshot and harms nobody. ``snapshot-info`` shows it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum

from lxml import etree

ELEMENT = "qsnapCapture"

class CaptureStrategy(StrEnum):
    """How a full-system snapshot's memory is captured."""

    #: QEMU's background-snapshot: the START moment, the guest running while RAM is written.
    BACKGROUND = "background"
    #: RAM copied while the guest runs, then paused for the rest: the END moment.
    PRECOPY = "precopy"
    #: Paused for the whole save (libvirt's default).
    PAUSED = "paused"
    #: QEMU's snapshot-save job (paused throughout).
    INTERNAL = "internal"


#: The strategies a user may ask for (``--live-strategy``); internal follows from the XML.
LIVE_STRATEGIES = (CaptureStrategy.BACKGROUND, CaptureStrategy.PRECOPY, CaptureStrategy.PAUSED)


@dataclass(frozen=True)
class Capture:
    strategy: CaptureStrategy
    pause: float  # seconds the guest's vCPUs were stopped, by QEMU's event timestamps
    #: The external memory file's size once complete: a revert checks the file still has it.
    memory_bytes: int | None = None

    def describe(self) -> str:
        return f"{self.strategy}, guest paused {self.pause * 1000:.1f} ms"


def with_capture(cookie: etree._Element | None, capture: Capture) -> etree._Element:
    """*cookie* (or a new one) with *capture* noted in it, replacing an earlier note."""
    result = copy.deepcopy(cookie) if cookie is not None else etree.Element("cookie")
    for old in result.findall(ELEMENT):
        result.remove(old)
    node = etree.SubElement(result, ELEMENT, strategy=capture.strategy,
                            pauseMicroseconds=str(round(capture.pause * 1e6)))
    if capture.memory_bytes is not None:
        node.set("memoryBytes", str(capture.memory_bytes))
    return result


def capture_of(cookie: etree._Element | None) -> Capture | None:
    """The note in a snapshot's cookie, if qsnap wrote one (and it reads back)."""
    node = cookie.find(ELEMENT) if cookie is not None else None
    if node is None or node.get("strategy") not in set(CaptureStrategy):
        return None
    try:
        pause = int(node.get("pauseMicroseconds", "")) / 1e6
        size = node.get("memoryBytes")
        memory_bytes = int(size) if size is not None else None
    except ValueError:
        return None
    return Capture(CaptureStrategy(node.get("strategy", "")), pause, memory_bytes)
