"""Child processes (qemu-img, a QEMU that daemonizes) run without holding the event loop.

Starting a process is a ``fork``/``exec`` that took 30-55 ms here while TCG guests kept the
CPUs busy, and asyncio's own ``create_subprocess_exec`` does it on the loop: an embedder's
loop stood still that long per qemu-img call (tests/test_qemu_event_loop.py found it). Here
the spawn, the reads and the wait run in worker threads; a cancelled or timed-out caller kills
the child first, so it never outlives the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Sequence


async def spawn(argv: Sequence[str], *, cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start *argv* with stdin from /dev/null and stdout/stderr piped."""
    return await asyncio.to_thread(
        subprocess.Popen, list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=cwd)


async def finish(child: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """Its whole stdout and stderr once it exits; TimeoutError after *timeout* seconds. On a
    timeout or cancellation the child is killed and reaped."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(child.communicate), timeout)
    except BaseException:
        await kill(child)
        raise


async def chunks(child: subprocess.Popen[bytes]) -> AsyncIterator[bytes]:
    """Its stdout as it comes."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    while chunk := await asyncio.to_thread(os.read, fd, 4096):
        yield chunk


async def stderr_and_wait(child: subprocess.Popen[bytes]) -> bytes:
    """Its stderr once it exits (after :func:`chunks` has drained stdout)."""
    assert child.stderr is not None
    err = await asyncio.to_thread(child.stderr.read)
    await asyncio.to_thread(child.wait)
    return err


async def kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    await asyncio.to_thread(child.wait)
    for pipe in (child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()
