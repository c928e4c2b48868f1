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
import functools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence


@functools.cache
def dies_with_us() -> tuple[str, ...]:
    """The prefix that makes a child get SIGKILL when qsnap dies: a qemu-img left running
    by a killed qsnap keeps its image locks, and one spinning on a backing loop never ends
    (issue 15); a compressor left running would finish a stream qsnap no longer seals.
    util-linux's ``setpriv`` sets it in the child, where a ``preexec_fn`` would run Python
    between fork and exec in a process that has threads."""
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "KILL", "--") if setpriv else ()


async def spawn(argv: Sequence[str], *, cwd: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start *argv* with stdin from /dev/null and stdout/stderr piped; *env* adds to (or
    replaces names of) our environment."""
    return await asyncio.to_thread(
        subprocess.Popen, list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=cwd, env={**os.environ, **env} if env else None)


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


async def spawn_filter(argv: Sequence[str], stdin: int, stdout: int) -> subprocess.Popen[bytes]:
    """Start *argv* (a compressor or decompressor) reading *stdin* and writing *stdout*, both
    open descriptors, with stderr piped; it dies with qsnap."""
    return await asyncio.to_thread(
        subprocess.Popen, [*dies_with_us(), *argv], stdin=stdin, stdout=stdout,
        stderr=subprocess.PIPE)
