"""Starting again a QEMU that someone else launched (``attach``): its own command line, with
only the disk images and the way it starts (paused, ``-incoming defer``) changed, or the
embedder's relaunch hook.

qsnap cannot rebuild such a machine from a domain definition: the embedder's device ids,
``-drive``/``-blockdev`` syntax and devices qsnap does not know would all come out different,
and a memory image only loads into the same device model. So ``attach`` records the QEMU's
argv, working directory and each disk's image at that moment, and a revert or restore runs
that argv with each disk's image replaced by the one it must now use. Images are found by
their file name in the options that name files (``file=``, ``filename=``, ``file.filename=``,
and the same keys inside JSON ``-blockdev``), whatever the syntax; the format follows the
new image (an overlay on a raw base is qcow2).

The rewriting is pure, so it is tested without QEMU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qsnap.errors import InvalidArgumentError
from qsnap.model.options import split_commas

#: Options whose value names no image and that qsnap sets itself on a relaunch.
_DROPPED_WITH_VALUE = frozenset({"-incoming", "-pidfile", "-loadvm"})
_DROPPED_ALONE = frozenset({"-S", "-daemonize"})
#: Options that may name an image file.
_DISK_OPTIONS = frozenset({"-drive", "-blockdev"})
#: Keys whose value is an image file name.
_FILE_KEYS = frozenset({"file", "filename", "file.filename"})
#: Block drivers that are formats (whose ``driver=`` follows the new image's format).
_FORMATS = frozenset({"qcow2", "raw"})


@dataclass(frozen=True)
class ForeignCommand:
    """What ``attach`` read from the process: enough to start the same machine again."""

    argv: list[str]
    cwd: str
    #: The QMP socket the argv makes QEMU listen on (where qsnap reaches it after a relaunch).
    qmp: str
    #: Each disk's image at attach time, by the device name qsnap uses for it.
    images: dict[str, str] = field(default_factory=dict)
    accel: str = "tcg"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ForeignCommand:
        raw = json.loads(data)
        return cls(argv=[str(a) for a in raw["argv"]], cwd=str(raw["cwd"]),
                   qmp=str(raw["qmp"]), accel=str(raw.get("accel", "tcg")),
                   images={str(k): str(v) for k, v in raw["images"].items()})


@dataclass(frozen=True)
class DiskImage:
    """The image a disk must open, with its format."""

    path: str
    format: str


@dataclass(frozen=True)
class RelaunchRequest:
    """What an embedder's relaunch hook is asked to do: start the domain's machine again, with
    each disk (by the device name qsnap reported for it at attach) on *disks*' image, paused
    (``-S``) when *paused*, and waiting for a saved state (``-incoming defer``) when
    *incoming*; then return the new QEMU's QMP socket path. The old QEMU has already exited.

    *argv* is the command line qsnap would run without a hook (the attached one, rewritten),
    for hooks that only want to adjust it."""

    domain: str
    disks: dict[str, DiskImage]
    incoming: bool
    paused: bool
    argv: list[str]


#: An embedder's relaunch hook: gets a :class:`RelaunchRequest`, returns the QMP socket path.
RelaunchHook = Callable[[RelaunchRequest], Awaitable[str]]


def read_process_command(pid: int) -> tuple[list[str], str]:
    """The argv and working directory of process *pid* (same user: /proc tells)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the command line of QEMU process {pid}: "
                                   f"{exc.strerror}") from None
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]], cwd


def split_options(text: str) -> list[tuple[str, str | None]]:
    """QEMU's ``key=value,key=value`` syntax (``,,`` is a literal comma); a bare word has no
    value (the implied first key of some options)."""
    result: list[tuple[str, str | None]] = []
    for part in split_commas(text):
        key, sep, value = part.partition("=")
        result.append((key, value if sep else None))
    return result


def join_options(options: list[tuple[str, str | None]]) -> str:
    return ",".join(key if value is None else f"{key}={value.replace(',', ',,')}"
                    for key, value in options)


def relaunch_argv(command: ForeignCommand, disks: dict[str, DiskImage], *, incoming: bool,
                  paused: bool, pidfile: str) -> list[str]:
    """*command*'s argv with each disk on its new image, daemonized with *pidfile*, and
    started paused and/or ``-incoming defer``. A disk whose attach-time image the argv does
    not name (e.g. hot-plugged later) is an error that names it: QEMU would open the wrong
    image."""
    renames = {command.images[t]: image for t, image in disks.items()
               if t in command.images and command.images[t] != image.path}
    unnamed = [t for t in disks if t not in command.images]
    if unnamed:
        raise InvalidArgumentError(
            f"disk {', '.join(sorted(unnamed))} was not there when the QEMU was attached; its "
            "command line cannot open it: register a relaunch hook, or attach again")
    argv = [command.argv[0]]
    rest = command.argv[1:]
    blockdevs: list[int] = []  # indices in argv of key=value -blockdev values
    found: set[str] = set()
    i = 0
    while i < len(rest):
        arg = rest[i]
        option = "-" + arg.lstrip("-") if arg.startswith("-") else arg
        if option in _DROPPED_ALONE:
            i += 1
            continue
        if option in _DROPPED_WITH_VALUE:
            i += 2
            continue
        if option in _DISK_OPTIONS and i + 1 < len(rest):
            value = rest[i + 1]
            if value.lstrip().startswith("{"):
                value = _rewrite_json(value, renames, found)
            else:
                value = _rewrite_options(value, renames, found, option == "-drive")
                if option == "-blockdev":
                    blockdevs.append(len(argv) + 1)
            argv += [arg, value]
            i += 2
            continue
        if arg in renames:  # -hda FILE and the like
            found.add(arg)
            arg = renames[arg].path
        argv.append(arg)
        i += 1
    _follow_protocol_nodes(argv, blockdevs, renames, found)
    missing = sorted(set(renames) - found)
    if missing:
        raise InvalidArgumentError(
            f"the attached QEMU's command line does not name image(s) {', '.join(missing)} "
            "(the disks changed after attach?): register a relaunch hook, or attach again")
    argv += ["-daemonize", "-pidfile", pidfile]
    if paused or incoming:
        argv.append("-S")
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def _rewrite_options(value: str, renames: dict[str, DiskImage], found: set[str],
                     is_drive: bool) -> str:
    options = split_options(value)
    hit: DiskImage | None = None
    for index, (key, text) in enumerate(options):
        if key in _FILE_KEYS and text is not None and text in renames:
            hit = renames[text]
            found.add(text)
            options[index] = (key, hit.path)
    if hit is None:
        return value
    keys = [k for k, _ in options]
    if is_drive:
        if "format" in keys:
            options[keys.index("format")] = ("format", hit.format)
        else:
            options.append(("format", hit.format))
    elif "driver" in keys and options[keys.index("driver")][1] in _FORMATS:
        options[keys.index("driver")] = ("driver", hit.format)  # one node: format + file.*
    # The chain under the new image is in its header: a backing given on the command line
    # described the old one.
    options = [(k, v) for k, v in options if k != "backing"]
    return join_options(options)


def _follow_protocol_nodes(argv: list[str], blockdevs: list[int],
                           renames: dict[str, DiskImage], found: set[str]) -> None:
    """The two-node ``-blockdev`` form: a protocol node (``driver=file,filename=P``) that was
    renamed above, and the format node on top of it (``file=NODE``), whose driver follows
    the new image's format."""
    parsed = {i: split_options(argv[i]) for i in blockdevs}
    new_format: dict[str, str] = {}
    for options in parsed.values():
        values = dict(options)
        filename = values.get("filename")
        node = values.get("node-name")
        if node and filename is not None:
            image = next((img for img in renames.values() if img.path == filename), None)
            if image is not None:
                new_format[node] = image.format
    for index, options in parsed.items():
        values = dict(options)
        child = values.get("file")
        if child in new_format and values.get("driver") in _FORMATS:
            argv[index] = join_options([("driver", new_format[child]) if k == "driver" else
                                        (k, v) for k, v in options if k != "backing"])


def _rewrite_json(value: str, renames: dict[str, DiskImage], found: set[str]) -> str:
    try:
        node = json.loads(value)
    except ValueError:
        return value
    if isinstance(node, dict) and _rewrite_json_node(node, renames, found) is not None:
        return json.dumps(node)
    return value


def _rewrite_json_node(node: dict[str, Any], renames: dict[str, DiskImage],
                       found: set[str]) -> DiskImage | None:
    """Rename in *node* and its ``file`` child; a format node above a renamed file gets the
    new format, and loses an explicit backing."""
    hit: DiskImage | None = None
    for key in ("filename", "file"):
        value = node.get(key)
        if isinstance(value, str) and value in renames:
            hit = renames[value]
            found.add(value)
            node[key] = hit.path
        elif isinstance(value, dict):
            hit = _rewrite_json_node(value, renames, found) or hit
    if hit is not None and node.get("driver") in _FORMATS and isinstance(node.get("file"), dict):
        node["driver"] = hit.format
        node.pop("backing", None)
    return hit
