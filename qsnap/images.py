"""qemu-img, for images of stopped guests (the running guest's images belong to QEMU)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping

from qsnap import children
from qsnap.errors import ImageToolError
from qsnap.model.image_graph import ImageFacts


async def _spawn(*args: str) -> subprocess.Popen[bytes]:
    try:
        return await children.spawn([*children.dies_with_us(), "qemu-img", *args])
    except FileNotFoundError:
        raise ImageToolError("qemu-img not found (install Debian's qemu-utils)") from None


async def qemu_img(*args: str, timeout: float = 300.0) -> str:
    proc = await _spawn(*args)
    try:  # a timeout, or the caller cancelled: it is killed, it must not outlive us
        out, err = await children.finish(proc, timeout)
    except TimeoutError:
        raise ImageToolError(f"qemu-img {args[0]} did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        raise ImageToolError(f"qemu-img {args[0]} failed: "
                             f"{err.decode(errors='replace').strip()}")
    return out.decode()


def _escape_option(value: str) -> str:
    """qemu-img -o values escape commas by doubling them."""
    return value.replace(",", ",,")


async def check_chain(image: str, fmt: str | None = None) -> None:
    """*image* (of format *fmt*: a damaged qcow2 must not pass as raw) and every backing file
    under it open: none is missing or damaged, and the chain does not loop (a loop made by
    hand makes ``qemu-img create`` on it spin for ever; ``info --backing-chain`` detects it
    at once). Run before anything depends on the chain."""
    given = ("-f", fmt) if fmt else ()
    try:
        await qemu_img("info", "--backing-chain", "-U", "--output=json", *given, image,
                       timeout=60)
    except ImageToolError as exc:
        reason = str(exc).removeprefix("qemu-img info failed: ").replace("qemu-img: ", "")
        raise ImageToolError(f"image '{image}' or a backing file under it cannot be used: "
                             f"{reason}") from None


def reserve_private_file(path: str) -> None:
    """Create *path* empty, 0600, never through a link or over a file. QEMU and qemu-img
    create images with their own umask (0640 and 0644 were seen), readable by others even
    over a 0600 base (libvirt's CVE-2025-13193); both keep the mode of a file that exists."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise ImageToolError(f"cannot create the overlay '{path}': {exc.strerror}") from None


async def create_overlay(path: str, fmt: str, backing: str, backing_format: str) -> None:
    """A new overlay at *path* (0600) on *backing*; nothing is left if it fails."""
    await check_chain(backing, backing_format)
    reserve_private_file(path)
    try:
        await qemu_img("create", "-q", "-f", fmt, "-o",
                       f"backing_file={_escape_option(backing)},backing_fmt={backing_format}",
                       path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


async def snapshot_create(image: str, name: str) -> None:
    await qemu_img("snapshot", "-c", name, image)


async def snapshot_delete(image: str, name: str) -> None:
    await qemu_img("snapshot", "-d", name, image)


async def info(image: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(await qemu_img("info", "--output=json", "-U",
                                                           image))
    return result


async def facts(image: str) -> ImageFacts:
    """What ``qemu-img info`` says of *image* (its own, not its backing chain's)."""
    return parse_info(await info(image))


def parse_info(details: Mapping[str, object]) -> ImageFacts:
    """One ``qemu-img info --output=json`` object as :class:`ImageFacts`."""
    snapshots = details.get("snapshots") or []
    backing = details.get("full-backing-filename") or details.get("backing-filename")
    size = details.get("actual-size")
    return ImageFacts(
        path=str(details["filename"]), format=str(details["format"]),
        backing=str(backing) if backing else None,
        backing_format=str(details["backing-filename-format"])
        if details.get("backing-filename-format") else None,
        tags=frozenset(str(s.get("name")) for s in snapshots if isinstance(s, dict))
        if isinstance(snapshots, list) else frozenset(),
        allocated=size if isinstance(size, int) else 0)


async def rebase_unsafe(image: str, backing: str, backing_format: str) -> None:
    """Point *image* at a new backing file without copying anything (``rebase -u``): right
    only when the new backing reads exactly as the old one did, as after a commit into it."""
    await qemu_img("rebase", "-u", "-b", backing, "-F", backing_format, image)


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


async def commit(top: str, base: str, progress: Callable[[float], None] | None = None,
                 timeout: float = 24 * 3600.0) -> None:
    """Copy *top*'s data (and that of the images between) into *base*, which must be in its
    backing chain; *top* itself is left as it was (``-b`` implies ``-d``). *progress* gets
    the fraction done as qemu-img reports it."""
    proc = await _spawn("commit", "-p", "-b", base, top)

    async def follow() -> bytes:
        async for chunk in children.chunks(proc):
            if progress is not None:
                found = _PERCENT.findall(chunk)
                if found:
                    progress(float(found[-1]) / 100)
        return await children.stderr_and_wait(proc)

    try:
        err = await asyncio.wait_for(follow(), timeout)
    except BaseException:
        await children.kill(proc)
        raise
    if proc.returncode != 0:
        raise ImageToolError(f"qemu-img commit failed: {err.decode(errors='replace').strip()}")

