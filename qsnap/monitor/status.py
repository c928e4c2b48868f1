"""One QMP question asked without asyncio: a QEMU's run state, for ``list`` and ``domstate``.

These commands ask one question and exit, so they speak QMP directly over a blocking socket
instead of starting an event loop and :mod:`qemu.qmp` (which together cost about 80 ms of
start-up against the 2 ms the question takes). Everything else goes through
:class:`~qsnap.monitor.client.Monitor`.
"""

from __future__ import annotations

import json
import socket
import time

from qsnap.errors import MonitorClosedError, MonitorError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any


def query_status(socket_path: str, timeout: float) -> str:
    """QEMU's run state (``query-status``): running, paused, postmigrate, shutdown, ...
    Raises :class:`MonitorClosedError` when the socket does not answer as QMP within
    *timeout* seconds in all, :class:`MonitorError` when QEMU refuses."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            reader = _Replies(sock, deadline)
            if "QMP" not in reader.next_message():
                raise ValueError("no QMP greeting")
            reader.ask("qmp_capabilities")
            answer = reader.ask("query-status")
            return str(answer["status"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MonitorClosedError(f"QMP at '{socket_path}' did not answer query-status: "
                                 f"{exc}", path=socket_path) from None


class _Replies:
    """QMP messages from *sock*, one JSON object per line; events are skipped."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = b""

    def next_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("QEMU closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"unexpected QMP message {line!r}")
        return message

    def ask(self, command: str) -> Any:
        """Run *command*; its ``return`` value (QEMU's ``error`` raises)."""
        self._sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            message = self.next_message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                error = message["error"]
                raise MonitorError(command, str(error.get("class")), str(error.get("desc")))
