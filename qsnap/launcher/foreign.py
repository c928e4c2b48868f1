"""Starting again a QEMU that someone else launched (``attach``): its own command line, with
only the disk images and the way it starts (paused, ``-incoming defer``) changed, or the
embedder's relaunch hook.

qsnap cannot rebuild such a machine from a domain definition: the embedder's device ids,
``-drive``/``-blockdev`` syntax and devices qsnap does not know would all come out different,
and a memory image only loads into the same device model. So ``attach`` records the QEMU's
argv, working directory and each disk's image at that moment, and a revert or restore runs
that argv with each disk's image replaced by the one it must now use.

A disk can be named in many ways: ``-drive file=`` or ``file.filename=``, ``-blockdev`` as
JSON or ``key=value`` (dotted keys for children), a protocol node nested in its format node
or a separate node the format node names (``file=NODE``, in either syntax), ``-hda`` and the
like. The command line's block nodes are read into one tree whatever their syntax; each
renamed protocol node's format node then takes the new image's format (an overlay on a raw
base is qcow2) and drops the backing the command line gave the old image. Where the rewrite
cannot be proven right it is refused (:class:`UnprovableRewrite`) before the guest is
touched; once QEMU has started, paused, each disk is checked to have opened the image and
format it must (:class:`qsnap.launcher.process.ForeignLauncher`). A rewrite that renamed the
file but left a raw format node once let the guest write over a qcow2 overlay's header.

The rewriting is pure, so it is tested without QEMU.
"""

from __future__ import annotations

import contextlib
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
#: Options whose whole value is an image file (QEMU probes its format).
_IMAGE_OPTIONS = frozenset({"-hda", "-hdb", "-hdc", "-hdd", "-cdrom", "-fda", "-fdb",
                            "-mtdblock", "-sd", "-pflash"})
#: Block drivers that are formats, whose ``driver=`` follows the new image's format.
_FORMATS = frozenset({"qcow2", "raw"})
#: What a ``-blockdev`` format node may hold besides its driver, whatever the driver: QAPI's
#: BlockdevOptionsBase, and its ``file`` and ``backing`` children. A node with anything else
#: (raw's ``offset``/``size``, qcow2's cache sizes or encryption) cannot change its format.
_ANY_FORMAT_KEYS = frozenset({"driver", "node-name", "discard", "cache", "read-only",
                              "auto-read-only", "force-share", "detect-zeroes", "file",
                              "backing"})
#: ``-drive`` options that belong to one format (a drive also holds the device's options,
#: so here the format's own are listed instead).
_FORMAT_OWN_DRIVE_KEYS = frozenset({
    "offset", "size", "lazy-refcounts", "cache-size", "l2-cache-size", "l2-cache-entry-size",
    "refcount-cache-size", "cache-clean-interval", "pass-discard-request",
    "pass-discard-snapshot", "pass-discard-other", "discard-no-unref", "overlap-check",
    "encrypt", "data-file", "data-file-raw"})


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


class UnprovableRewrite(InvalidArgumentError):
    """The attached command line names a disk in a way qsnap cannot rewrite for certain."""


def relaunch_argv(command: ForeignCommand, disks: dict[str, DiskImage], *, incoming: bool,
                  paused: bool, pidfile: str) -> list[str]:
    """*command*'s argv with each disk on its new image, daemonized with *pidfile*, and
    started paused and/or ``-incoming defer``.

    Each disk's attach-time image is found wherever the command line names it (``-drive``,
    ``-blockdev`` as JSON or ``key=value``, nested ``file`` children, a protocol node that
    a format node names by ``file=NODE``, ``-hda`` and the like), and the format node above
    it follows the new image's format. A rewrite that cannot be proven right is refused
    with :class:`UnprovableRewrite`, naming the disk and why, before anything runs: a
    protocol node no format node stands on (QEMU would show the guest a qcow2 overlay's
    bytes as a raw disk, as it once did), a format node of another kind or with options of
    its old format, an image named again somewhere qsnap does not rewrite, a disk the
    command line does not name at all."""
    renames = {command.images[t]: image for t, image in disks.items()
               if t in command.images and command.images[t] != image.path}
    unnamed = [t for t in disks if t not in command.images]
    if unnamed:
        raise InvalidArgumentError(
            f"disk {', '.join(sorted(unnamed))} was not there when the QEMU was attached; its "
            "command line cannot open it: register a relaunch hook, or attach again")
    rewrite = _Rewrite(renames)
    argv = [command.argv[0]]
    blockdevs: list[_BlockdevArg] = []
    rest = command.argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        option = "-" + arg.lstrip("-") if arg.startswith("-") else arg
        value = rest[i + 1] if i + 1 < len(rest) else None
        if option in _DROPPED_ALONE:
            i += 1
            continue
        if option in _DROPPED_WITH_VALUE:
            i += 2
            continue
        if value is not None and option == "-blockdev":
            blockdevs.append(_BlockdevArg.parse(len(argv) + 1, value))
        elif value is not None and option == "-drive":
            value = rewrite.drive(value)
        elif value is not None and option in _IMAGE_OPTIONS and value in renames:
            rewrite.found.add(value)
            value = renames[value].path
        if value is not None and option in ("-blockdev", "-drive", *_IMAGE_OPTIONS):
            argv += [arg, value]
            i += 2
            continue
        argv.append(arg)
        i += 1
    rewrite.blockdevs(blockdevs)
    for blockdev in blockdevs:
        argv[blockdev.index] = blockdev.text()
    missing = sorted(set(renames) - rewrite.found)
    if missing:
        raise UnprovableRewrite(
            f"the attached QEMU's command line does not name image(s) {', '.join(missing)} "
            "(the disks changed after attach?): register a relaunch hook, or attach again")
    _refuse_leftover_names(argv, renames)
    argv += ["-daemonize", "-pidfile", pidfile]
    if paused or incoming:
        argv.append("-S")
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def _tokens(arg: str) -> set[str]:
    """The values an argument may carry a file name in: itself, each ``key=value``'s
    value, a ``prefix:`` stripped (``unix:PATH``), and every string inside JSON."""
    found = {arg}
    if arg.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            stack = [json.loads(arg)]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    stack.extend(item.values())
                elif isinstance(item, list):
                    stack.extend(item)
                elif isinstance(item, str):
                    found.add(item)
        return found
    for _key, value in split_options(arg):
        if value is not None:
            found.update({value, value.partition(":")[2]})
    return found


def _refuse_leftover_names(argv: list[str], renames: dict[str, DiskImage]) -> None:
    """After the rewrite no argument may still name an image that was replaced: QEMU would
    open the old image through it (a second option, ``-set``, a device's property)."""
    for index, arg in enumerate(argv[1:], 1):
        stale = sorted(_tokens(arg) & set(renames))
        if stale:
            raise UnprovableRewrite(
                f"the attached QEMU's command line names image '{stale[0]}' in argument "
                f"{index} ('{arg}'), which qsnap does not know how to rewrite: register a "
                "relaunch hook, or attach again")


@dataclass
class _BlockdevArg:
    """One ``-blockdev`` value, as a tree of nested dicts whichever syntax it had (JSON, or
    ``key=value`` with dotted keys for children), written back in that syntax."""

    index: int
    tree: dict[str, Any]
    is_json: bool

    @classmethod
    def parse(cls, index: int, text: str) -> _BlockdevArg:
        if text.lstrip().startswith("{"):
            try:
                tree = json.loads(text)
            except ValueError:
                raise UnprovableRewrite(f"the attached QEMU's -blockdev '{text}' is not "
                                        "valid JSON") from None
            if not isinstance(tree, dict):
                raise UnprovableRewrite(f"the attached QEMU's -blockdev '{text}' is not a "
                                        "JSON object")
            return cls(index, tree, True)
        tree = {}
        for key, value in split_options(text):
            node = tree
            *parents, last = key.split(".")
            for part in parents:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise UnprovableRewrite(f"the attached QEMU's -blockdev '{text}' gives "
                                            f"'{part}' both a value and options")
                node = child
            if isinstance(node.get(last), dict):
                raise UnprovableRewrite(f"the attached QEMU's -blockdev '{text}' gives "
                                        f"'{key}' both a value and options")
            node[last] = value
        return cls(index, tree, False)

    def text(self) -> str:
        if self.is_json:
            return json.dumps(self.tree)
        flat: list[tuple[str, str | None]] = []

        def flatten(node: dict[str, Any], prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    flatten(value, f"{prefix}{key}.")
                else:
                    flat.append((prefix + key, value))

        flatten(self.tree, "")
        return join_options(flat)


class _Rewrite:
    """The renames of one relaunch, and which attach-time images were found."""

    def __init__(self, renames: dict[str, DiskImage]) -> None:
        self.renames = renames
        self.found: set[str] = set()

    def drive(self, value: str) -> str:
        """A ``-drive``: ``file=`` or ``file.filename=`` renamed, ``format=`` (or
        ``driver=``) set to the new format, backing options dropped."""
        options = split_options(value)
        hit: tuple[str, DiskImage] | None = None
        for index, (key, text) in enumerate(options):
            if key in ("file", "file.filename") and text is not None and text in self.renames:
                hit = text, self.renames[text]
                options[index] = (key, hit[1].path)
        if hit is None:
            return value
        old, image = hit
        self.found.add(old)
        keys = [k for k, _ in options]
        format_key = "driver" if "driver" in keys and "format" not in keys else "format"
        old_format = dict(options).get(format_key)
        if old_format is not None and old_format != image.format:
            if old_format not in _FORMATS:
                raise UnprovableRewrite(
                    f"image '{old}' is opened by a -drive of format '{old_format}', which "
                    f"qsnap cannot turn into a {image.format} image: register a relaunch "
                    "hook")
            own = sorted(k for k in keys if k.split(".")[0] in _FORMAT_OWN_DRIVE_KEYS)
            if own:
                raise UnprovableRewrite(
                    f"image '{old}' is opened by a -drive with {old_format} option(s) "
                    f"{', '.join(own)}, which a {image.format} image does not take: register "
                    "a relaunch hook")
        options = [(k, v) for k, v in options if k.split(".")[0] != "backing"]
        if format_key in keys:
            options = [(k, image.format if k == format_key else v) for k, v in options]
        else:
            options.append(("format", image.format))
        return join_options(options)

    def blockdevs(self, args: list[_BlockdevArg]) -> None:
        """Every ``-blockdev`` node (nested ones too) whose ``filename`` is renamed, and the
        format node on top of it, nested (``file: {...}``) or by name (``file=NODE``)."""
        nodes: list[tuple[dict[str, Any], dict[str, Any] | None]] = []  # (node, its parent)
        for arg in args:
            stack: list[tuple[dict[str, Any], dict[str, Any] | None]] = [(arg.tree, None)]
            while stack:
                node, parent = stack.pop()
                nodes.append((node, parent))
                stack.extend((child, node) for key, child in node.items()
                             if isinstance(child, dict) and key in ("file", "backing"))
        for node, parent in nodes:
            old = node.get("filename")
            if not isinstance(old, str) or old not in self.renames:
                continue
            image = self.renames[old]
            self.found.add(old)
            node["filename"] = image.path
            above = [parent] if parent is not None and parent.get("file") is node else []
            name = node.get("node-name")
            above += [n for n, _ in nodes if name is not None and n.get("file") == name]
            if len(above) > 1:
                raise UnprovableRewrite(
                    f"image '{old}' is the file of {len(above)} block nodes on the attached "
                    "QEMU's command line: register a relaunch hook")
            if not above:
                if image.format != "raw":
                    raise UnprovableRewrite(
                        f"image '{old}' is opened by a protocol node ('{name or '?'}') with "
                        f"no format node on it, so its new {image.format} image would reach "
                        "the guest as raw bytes: register a relaunch hook, or give the disk a "
                        "format node")
                continue
            self._follow(above[0], old, image)

    @staticmethod
    def _follow(node: dict[str, Any], old: str, image: DiskImage) -> None:
        """The format node *node* above renamed image *old* takes the new image's format,
        and drops the backing the command line gave the old image."""
        driver = node.get("driver")
        if driver != image.format:
            if driver not in _FORMATS:
                raise UnprovableRewrite(
                    f"image '{old}' is opened through a '{driver}' node, which qsnap cannot "
                    f"turn into a {image.format} node: register a relaunch hook")
            own = sorted(set(node) - _ANY_FORMAT_KEYS)
            if own:
                raise UnprovableRewrite(
                    f"image '{old}' is opened by a {driver} node with option(s) "
                    f"{', '.join(own)}, which a {image.format} node does not take: register "
                    "a relaunch hook")
            node["driver"] = image.format
        # The chain under the new image is in its header; a backing node the command line
        # gave the old image may stay defined (QEMU leaves it unused).
        node.pop("backing", None)
