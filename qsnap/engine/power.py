"""Power operations on a domain's guest: start, destroy, shutdown, suspend, resume, reboot.

Each runs under the domain's lock with a :class:`Context` made by the engine; none keeps an
intent record. A start from a managed save is a restore (:mod:`qsnap.engine.restore`, which
records its intent); everything else is one QMP command, or the launcher.
"""

from __future__ import annotations

import asyncio

from qsnap.engine import restore as restore_op
from qsnap.engine.context import Context
from qsnap.engine.guests import stop
from qsnap.engine.memory import read_image
from qsnap.errors import (
    DomainNotRunningError,
    DomainRunningError,
    GuestAgentError,
    InvalidArgumentError,
    OperationInvalidError,
)
from qsnap.launcher.accel import choose_accel
from qsnap.launcher.command import agent_socket
from qsnap.launcher.process import create_nvram
from qsnap.launcher.runtime import RuntimeInfo
from qsnap.logs import logger
from qsnap.model.domain import parse_domain
from qsnap.model.power import RebootMode
from qsnap.monitor import Monitor
from qsnap.monitor.agent import GuestAgent

log = logger("qsnap")


def running(ctx: Context) -> RuntimeInfo:
    """The guest's QEMU, or the error virsh gives for a domain that is not running."""
    if ctx.running is None:
        raise DomainNotRunningError(f"domain '{ctx.domain}' is not running", domain=ctx.domain)
    return ctx.running


async def start(ctx: Context, *, reset_nvram: bool) -> RuntimeInfo:
    """Start the guest's QEMU: from its managed save image when there is one (removed once
    the guest runs from it), else booted from the definition."""
    if ctx.running is not None:
        raise DomainRunningError(f"domain '{ctx.domain}' is already running "
                                 f"(QEMU pid {ctx.running.pid})", domain=ctx.domain)
    managed = ctx.folder.managed_save
    if managed.exists():
        image = await asyncio.to_thread(read_image, managed)
        saved = parse_domain(image.domain_xml, f"managed save image '{managed}'")
        return await restore_op.run(ctx, saved, managed, image, None, managed=True)
    definition = ctx.folder.definition
    if reset_nvram:
        await create_nvram(definition, reset=True)
    return await ctx.launch(definition, ctx.paths, choose_accel(definition.type))


async def destroy(ctx: Context) -> bool:
    """Stop the guest's QEMU at once (``quit``, else SIGTERM, SIGKILL); True when the domain
    is transient, and so gone with it."""
    await stop(ctx.paths, running(ctx))
    return ctx.folder.transient


async def shutdown(ctx: Context) -> None:
    """Press the ACPI power button; the guest decides when (or whether) it stops."""
    async with await Monitor.connect(running(ctx).qmp) as monitor:
        await monitor.powerdown()


async def suspend(ctx: Context) -> None:
    """Stop the vCPUs (a paused guest stays paused)."""
    async with await Monitor.connect(running(ctx).qmp) as monitor:
        if await monitor.status() != "paused":
            await monitor.pause()


async def resume(ctx: Context) -> None:
    """Run a paused guest's vCPUs again."""
    async with await Monitor.connect(running(ctx).qmp) as monitor:
        status = await monitor.status()
        if status == "running":
            raise OperationInvalidError("domain is already running", domain=ctx.domain)
        if status not in ("paused", "postmigrate"):
            raise OperationInvalidError(f"domain '{ctx.domain}' cannot be resumed from "
                                        f"QEMU's state '{status}'", domain=ctx.domain)
        await monitor.resume()


async def reboot(ctx: Context, mode: str | None, wait: float) -> None:
    """virsh reboot (see :meth:`qsnap.Engine.reboot`): the agent where the definition has
    its channel, else (or where it refuses, when no mode was asked for) ACPI."""
    info = running(ctx)
    agent = agent_socket(ctx.folder.definition, ctx.paths)
    try:
        chosen = RebootMode(mode or ("agent" if agent else "acpi"))
    except ValueError:
        raise InvalidArgumentError(f"unsupported reboot mode '{mode}': qsnap offers "
                                   f"{', '.join(RebootMode)}") from None
    if chosen is RebootMode.AGENT:
        if agent is None:
            raise OperationInvalidError("QEMU guest agent is not configured",
                                        domain=ctx.domain)
        try:
            async with await GuestAgent.connect(agent) as channel:
                await channel.shutdown("reboot")
            return
        except GuestAgentError as exc:
            if mode is not None:
                raise
            log.warning("%s; rebooting through ACPI instead", exc)
            chosen = RebootMode.ACPI  # as libvirt does when the agent was not asked for
    async with await Monitor.connect(info.qmp) as monitor:
        if chosen is RebootMode.ACPI:
            await monitor.power_cycle(wait)
        else:
            await monitor.reset()
