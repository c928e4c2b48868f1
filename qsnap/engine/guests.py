"""A domain's QEMU process as the engine sees it: its state in virsh's words, and stopping it."""

from __future__ import annotations

import asyncio
import contextlib

from qsnap.engine.reader import virsh_state
from qsnap.errors import QsnapError
from qsnap.launcher.runtime import RuntimeInfo, RuntimePaths, clear_runtime, pid_alive
from qsnap.monitor import Monitor, forget_connection


async def state_of(info: RuntimeInfo | None, *, borrow: bool = False,
                   timeout: float = 5.0) -> str:
    """running, paused, crashed or shut off; a QEMU that stopped answering reads as shut off
    once its process is gone, else (after *timeout* seconds) as unknown. *borrow*: see
    :meth:`Monitor.connect`."""
    if info is None:
        return "shut off"
    try:
        async with asyncio.timeout(timeout):
            async with await Monitor.connect(info.qmp, timeout=timeout,
                                             borrow=borrow) as monitor:
                return await state_from(monitor)
    except (QsnapError, TimeoutError):
        return "shut off" if not pid_alive(info.pid) else "unknown"


async def state_from(monitor: Monitor | None) -> str:
    """:func:`state_of` through a monitor already connected (None: no QEMU runs)."""
    if monitor is None:
        return "shut off"
    return virsh_state(await monitor.status())


async def stop(paths: RuntimePaths, info: RuntimeInfo) -> None:
    """QMP quit, then SIGTERM, then SIGKILL; the runtime record goes with it."""
    from qsnap.launcher.process import kill_qemu, wait_gone

    with contextlib.suppress(QsnapError):
        async with await Monitor.connect(info.qmp, timeout=5) as monitor:
            with contextlib.suppress(QsnapError):
                await monitor.quit()
    if not await wait_gone(info.pid, 5):
        await kill_qemu(info)
    await forget_connection(info.qmp)
    clear_runtime(paths)
