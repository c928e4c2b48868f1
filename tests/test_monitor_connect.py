"""Connecting to a monitor whose first message is not the greeting (no QEMU: a peer that
behaves as QEMU 10 was seen to in CI, sending a gone client's reply before the greeting).
The connection is made again; a peer that never greets is still refused by name."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from qsnap.errors import MonitorClosedError
from qsnap.monitor import Monitor

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""},
                    "capabilities": []}}


async def _serve(server: socket.socket, first_messages: list[list[dict[str, object]]]) -> None:
    """Answer one connection per entry of *first_messages*: send those messages, then
    answer qmp_capabilities (if asked) and keep the connection until the client leaves."""
    loop = asyncio.get_running_loop()
    server.setblocking(False)
    for messages in first_messages:
        conn, _ = await loop.sock_accept(server)
        for message in messages:
            await loop.sock_sendall(conn, json.dumps(message).encode() + b"\n")
        while data := await loop.sock_recv(conn, 4096):
            if b"qmp_capabilities" in data:
                await loop.sock_sendall(conn, b'{"return": {}}\n')
        conn.close()


def _listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    return server


async def test_a_stale_reply_before_the_greeting_is_met_by_connecting_again(
        tmp_path: Path) -> None:
    server = _listening(tmp_path / "qmp.sock")
    task = asyncio.create_task(_serve(server, [[{"return": {"status": "running"}}, GREETING],
                                               [GREETING]]))
    monitor = await Monitor.connect(str(tmp_path / "qmp.sock"), 5.0)
    assert monitor.open
    await monitor.close()
    await asyncio.wait_for(task, 5.0)
    server.close()


async def test_a_peer_that_never_greets_is_refused_by_name(tmp_path: Path) -> None:
    server = _listening(tmp_path / "qmp.sock")
    stale = [{"return": {}}]
    task = asyncio.create_task(_serve(server, [stale, stale, stale]))
    with pytest.raises(MonitorClosedError, match="its first message is not a greeting"):
        await Monitor.connect(str(tmp_path / "qmp.sock"), 5.0)
    task.cancel()
    server.close()
