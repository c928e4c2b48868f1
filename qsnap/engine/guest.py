"""A handle on one domain's guest, for embedders: what runs now (state, QEMU pid, QMP socket,
accelerator) and the snapshot operations without repeating the domain's name.

A handle holds no connection and no lock: every call goes through its :class:`Engine`, which
serialises calls on the domain and finishes what a crash left. So a handle stays valid across
reverts and restores that start a new QEMU; :meth:`Guest.info` always reads the present one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from qsnap.launcher.runtime import RuntimeInfo
from qsnap.model.snapshot import SnapshotDef
from qsnap.model.tree import SnapshotSummary
from qsnap.plan.delete import MetadataDeletePlan
from qsnap.plan.flags import CreateFlags, DeleteFlags, ListFilter, RevertFlags
from qsnap.progress import ProgressCallback


@dataclass(frozen=True)
class GuestInfo:
    """The guest as it is now. *pid*, *qmp* and *accel* are None while it is shut off;
    *owner* is ``qsnap`` (started from the definition) or ``attached`` (started by the
    embedder, and started again from its own command line or hook)."""

    name: str
    state: str
    pid: int | None
    qmp: str | None
    accel: str | None
    owner: str | None
    #: Why it is in that state, where qsnap knows: ``crashed`` (its QEMU ended without a
    #: clean exit, virsh's "shut off (crashed)"), else None.
    reason: str | None = None


class GuestOperations(Protocol):
    """The engine's operations a :class:`Guest` forwards, with the engine's own signatures:
    :class:`qsnap.Engine` is checked against it wherever it makes a Guest, so the two cannot
    drift apart. (The methods are coroutines; the
    engine's decorator types them as returning awaitables.)"""

    def guest_info(self, domain: str, *, timeout: float | None = None) -> Awaitable[GuestInfo]: ...

    def guest_state(self, domain: str, *, timeout: float | None = None) -> Awaitable[str]: ...

    def create(self, domain: str, xml: str | bytes | None = None,
                     flags: CreateFlags = CreateFlags(), *, live_strategy: str | None = None,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> Awaitable[str]: ...

    def revert(self, domain: str, snapshot: str | None,
                     flags: RevertFlags = RevertFlags(), *,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> Awaitable[str]: ...

    def delete(self, domain: str, snapshot: str | None,
                     flags: DeleteFlags = DeleteFlags(), *,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> Awaitable[MetadataDeletePlan]: ...

    def snapshots(self, domain: str, flt: ListFilter = ListFilter(), *,
                        timeout: float | None = None) -> Awaitable[list[SnapshotSummary]]: ...

    def get(self, domain: str, snapshot: str | None, *,
                  timeout: float | None = None) -> Awaitable[SnapshotDef]: ...

    def save(self, domain: str, path: str | os.PathLike[str], *,
                   running: bool | None = None, xml: str | None = None,
                   image_format: str | None = None, parallel_channels: int | None = None,
                   progress: ProgressCallback | None = None,
                   timeout: float | None = None) -> Awaitable[None]: ...

    def start(self, domain: str, *, reset_nvram: bool = False,
                    progress: ProgressCallback | None = None,
                    timeout: float | None = None) -> Awaitable[Guest]: ...

    def shutdown(self, domain: str, *, timeout: float | None = None) -> Awaitable[None]: ...

    def destroy(self, domain: str, *, timeout: float | None = None) -> Awaitable[None]: ...


class Guest:
    """One domain's guest (see the module docstring). ``pid``, ``qmp``, ``accel`` and
    ``owner`` are as they were when the handle was made; :meth:`info` reads them anew."""

    def __init__(self, engine: GuestOperations, name: str,
                 info: RuntimeInfo | None = None) -> None:
        self.engine = engine
        self.name = name
        self.pid = info.pid if info else None
        self.qmp = info.qmp if info else None
        self.accel = info.accel if info else None
        self.owner = info.owner if info else None

    def __repr__(self) -> str:
        return f"<Guest {self.name!r} pid={self.pid} qmp={self.qmp!r}>"

    async def info(self, *, timeout: float | None = None) -> GuestInfo:
        return await self.engine.guest_info(self.name, timeout=timeout)

    async def state(self, *, timeout: float | None = None) -> str:
        """virsh domstate: running, paused or shut off (``unknown`` when QEMU does not answer
        within *timeout*). It does not wait for an operation that holds the domain: it asks
        QEMU beside it (:meth:`Engine.guest_state`)."""
        return await self.engine.guest_state(self.name, timeout=timeout)

    async def snapshot(self, xml: str | bytes | None = None, flags: CreateFlags = CreateFlags(),
                       *, progress: ProgressCallback | None = None,
                       timeout: float | None = None) -> str:
        """:meth:`Engine.create`; returns the snapshot's name."""
        return await self.engine.create(self.name, xml, flags, progress=progress,
                                        timeout=timeout)

    async def revert(self, snapshot: str | None, flags: RevertFlags = RevertFlags(), *,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> str:
        """:meth:`Engine.revert`; returns the snapshot's name."""
        return await self.engine.revert(self.name, snapshot, flags, progress=progress,
                                 timeout=timeout)

    async def delete(self, snapshot: str | None, flags: DeleteFlags = DeleteFlags(), *,
                     progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> MetadataDeletePlan:
        """:meth:`Engine.delete`; returns what was removed and who became current."""
        return await self.engine.delete(self.name, snapshot, flags, progress=progress,
                                 timeout=timeout)

    async def snapshots(self, flt: ListFilter = ListFilter(), *,
                        timeout: float | None = None) -> list[SnapshotSummary]:
        return await self.engine.snapshots(self.name, flt, timeout=timeout)

    async def get(self, snapshot: str | None, *, timeout: float | None = None) -> SnapshotDef:
        return await self.engine.get(self.name, snapshot, timeout=timeout)

    async def save(self, path: str | os.PathLike[str], *, running: bool | None = None,
                   image_format: str | None = None, parallel_channels: int | None = None,
                   progress: ProgressCallback | None = None,
                   timeout: float | None = None) -> None:
        await self.engine.save(self.name, path, running=running, image_format=image_format,
                               parallel_channels=parallel_channels, progress=progress,
                               timeout=timeout)

    async def start(self, *, reset_nvram: bool = False,
                    progress: ProgressCallback | None = None,
                    timeout: float | None = None) -> Guest:
        return await self.engine.start(self.name, reset_nvram=reset_nvram, progress=progress,
                                       timeout=timeout)

    async def shutdown(self, *, timeout: float | None = None) -> None:
        await self.engine.shutdown(self.name, timeout=timeout)

    async def destroy(self, *, timeout: float | None = None) -> None:
        await self.engine.destroy(self.name, timeout=timeout)
