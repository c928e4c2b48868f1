"""The QEMU guest agent (qemu-ga) protocol, for freezing guest file systems (``--quiesce``).

QGA speaks QMP-style JSON over the guest agent channel, but without a greeting, and a client
must first resynchronise: it sends ``guest-sync-delimited`` with a random id and skips everything
up to the 0xFF byte the agent sends back, then up to the reply carrying its id. Every call has a
timeout, because an agent that is not running in the guest simply never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

from qsnap.errors import GuestAgentError
from qsnap.monitor.client import command_timeout


class GuestAgent:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 path: str) -> None:
        self._reader = reader
        self._writer = writer
        self._path = path

    @classmethod
    async def connect(cls, path: str, timeout: float | None = None) -> GuestAgent:
        """Connect and resynchronise; fails if no agent answers within *timeout* (default:
        ``$QSNAP_QMP_TIMEOUT``, at most 10 s)."""
        timeout = min(command_timeout(), 10.0) if timeout is None else timeout
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except (OSError, TimeoutError) as exc:
            raise GuestAgentError(f"cannot reach the guest agent channel {path}: {exc}") \
                from None
        agent = cls(reader, writer, path)
        try:
            await asyncio.wait_for(agent._sync(), timeout)
        except TimeoutError:
            await agent.close()
            raise GuestAgentError(f"the QEMU guest agent is not responding on {path} "
                                  f"(is qemu-ga running in the guest?)") from None
        except BaseException:
            await agent.close()
            raise
        return agent

    async def _send(self, command: str, arguments: dict[str, Any] | None = None,
                    prefix: bytes = b"") -> None:
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self._writer.write(prefix + json.dumps(message).encode() + b"\n")
        await self._writer.drain()

    async def _sync(self) -> None:
        token = random.randrange(1, 2**31)
        await self._send("guest-sync-delimited", {"id": token}, prefix=b"\xff")
        await self._reader.readuntil(b"\xff")
        while True:
            reply = await self._read()
            if reply.get("return") == token:
                return

    async def _read(self) -> dict[str, Any]:
        line = await self._reader.readline()
        if not line:
            raise GuestAgentError(f"the guest agent closed {self._path}")
        try:
            reply = json.loads(line)
        except ValueError:
            return {}
        return reply if isinstance(reply, dict) else {}

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      timeout: float = 60.0) -> Any:
        await self._send(command, arguments)
        try:
            reply = await asyncio.wait_for(self._read(), timeout)
        except TimeoutError:
            raise GuestAgentError(f"the guest agent did not answer {command} within "
                                  f"{timeout:g} s") from None
        if "error" in reply:
            raise GuestAgentError(f"the guest agent refused {command}: "
                                  f"{reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    async def shutdown(self, mode: str, refusal_within: float = 2.0) -> None:
        """``guest-shutdown`` (*mode*: powerdown, halt or reboot). The agent answers only
        when it fails (the guest goes down otherwise), so an answer within
        *refusal_within* seconds is its refusal."""
        await self._send("guest-shutdown", {"mode": mode})
        try:
            reply = await asyncio.wait_for(self._read(), refusal_within)
        except (TimeoutError, GuestAgentError):
            return  # no answer, or the channel closed as the guest went down
        if "error" in reply:
            raise GuestAgentError(f"the guest agent refused guest-shutdown: "
                                  f"{reply['error'].get('desc', reply['error'])}")

    async def freeze(self) -> int:
        """Freeze the guest's file systems; returns how many were frozen."""
        return int(await self.execute("guest-fsfreeze-freeze"))

    async def thaw(self) -> int:
        return int(await self.execute("guest-fsfreeze-thaw"))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> GuestAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
