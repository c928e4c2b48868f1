"""qemu-img, for images of stopped guests (the running guest's images belong to QEMU)."""

from __future__ import annotations

import asyncio
import json

from qsnap.errors import QsnapError


class ImageToolError(QsnapError):
    """qemu-img failed; its own message is kept."""


async def qemu_img(*args: str, timeout: float = 300.0) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise ImageToolError("qemu-img not found (install Debian's qemu-utils)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise ImageToolError(f"qemu-img {args[0]} did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        raise ImageToolError(f"qemu-img {args[0]} failed: "
                             f"{err.decode(errors='replace').strip()}")
    return out.decode()


def _escape_option(value: str) -> str:
    """qemu-img -o values escape commas by doubling them."""
    return value.replace(",", ",,")


async def create_overlay(path: str, fmt: str, backing: str, backing_format: str) -> None:
    await qemu_img("create", "-q", "-f", fmt, "-o",
                   f"backing_file={_escape_option(backing)},backing_fmt={backing_format}", path)


async def snapshot_create(image: str, name: str) -> None:
    await qemu_img("snapshot", "-c", name, image)


async def snapshot_delete(image: str, name: str) -> None:
    await qemu_img("snapshot", "-d", name, image)


async def info(image: str) -> dict[str, object]:
    return json.loads(await qemu_img("info", "--output=json", "-U", image))
