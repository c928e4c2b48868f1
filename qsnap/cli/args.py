"""virsh's command-line grammar, so that a line typed for virsh means the same to qsnap.

virsh does not take options and operands the way argparse does. Each command declares its
options in order; an option is a flag (``--children``), takes a value (``--name s1``,
``--name=s1``), or collects the remaining words (``--diskspec``). A word that is not an
option fills the first option, in declared order, that is still empty and may be given by
position, so ``snapshot-delete DOM --children-only SNAP``, ``snapshot-delete --domain DOM
SNAP`` and ``snapshot-delete SNAP --domain DOM`` are one request. ``--`` ends the options.
Mistakes get virsh's own words, and the command does not run.
"""

from __future__ import annotations

from enum import Enum
from types import SimpleNamespace

from qsnap.errors import UsageError as UsageError  # raised here; callers import it from either


class Kind(Enum):
    FLAG = "flag"
    VALUE = "value"
    REST = "rest"  # every remaining operand, and each --NAME VALUE (virsh's VSH_OT_ARGV)


class Opt:
    """One option. ``positional``: a value option a bare word may fill (virsh: every value
    option but those it marks "option only"); ``required``: virsh's ``<name>`` options.

    The classes here are plain (no dataclasses): every ``qsnap`` command builds them, and
    the dataclasses module alone costs several milliseconds of start-up."""

    __slots__ = ("help", "kind", "metavar", "name", "positional", "required")

    def __init__(self, name: str, kind: Kind = Kind.FLAG, help: str = "", *,
                 required: bool = False, positional: bool = True,
                 metavar: str = "string") -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.required = required
        self.positional = positional
        self.metavar = metavar

    @property
    def attribute(self) -> str:
        return attribute_of(self.name)


def attribute_of(option: str) -> str:
    """The handler's name for an option: dashes become underscores, and ``from`` ``from_``."""
    name = option.replace("-", "_")
    return f"{name}_" if name == "from" else name


def flag(name: str, help: str) -> Opt:
    return Opt(name, Kind.FLAG, help)


def value(name: str, help: str, *, required: bool = False, positional: bool = True,
          metavar: str = "string") -> Opt:
    return Opt(name, Kind.VALUE, help, required=required, positional=positional,
               metavar=metavar)


class CommandSpec:
    """A command: its name, help line, options and the function that runs it."""

    __slots__ = ("handler", "help", "name", "opts")

    def __init__(self, name: str, help: str, opts: tuple[Opt, ...],
                 handler: object = None) -> None:
        self.name = name
        self.help = help
        self.opts = opts
        self.handler = handler

    def find(self, name: str) -> Opt | None:
        return next((o for o in self.opts if o.name == name), None)

    def synopsis(self) -> str:
        """virsh's SYNOPSIS line: ``<x>`` required, ``[<x>]`` optional operand."""
        parts = [self.name]
        for opt in self.opts:
            if opt.kind is Kind.FLAG:
                parts.append(f"[--{opt.name}]")
            elif opt.kind is Kind.REST:
                parts.append(f"[--{opt.name}] <{opt.metavar}>...")
            elif opt.required:
                parts.append(f"<{opt.name}>" if opt.positional else
                             f"--{opt.name} <{opt.metavar}>")
            else:
                parts.append(f"[<{opt.name}>]" if opt.positional else
                             f"[--{opt.name} <{opt.metavar}>]")
        return " ".join(parts)

    def help_text(self) -> str:
        lines = ["  NAME", f"    {self.name} - {self.help}", "", "  SYNOPSIS",
                 f"    {self.synopsis()}", ""]
        if self.opts:
            lines.append("  OPTIONS")
            for opt in self.opts:
                if opt.kind is Kind.FLAG:
                    left = f"--{opt.name}"
                elif opt.positional:
                    left = f"[--{opt.name}] <{opt.metavar}>"
                else:
                    left = f"--{opt.name} <{opt.metavar}>"
                lines.append(f"    {left:<16} {opt.help}")
            lines.append("")
        return "\n".join(lines) + "\n"


def parse_command(spec: CommandSpec, words: list[str]) -> SimpleNamespace:
    """The options of one command line after the command's name, as attributes named by
    :attr:`Opt.attribute` (a flag not given is False, a value None, a list option [])."""
    given: dict[str, object] = {}
    operands_only = False
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not operands_only and word == "--":
            operands_only = True
            continue
        if not operands_only and word.startswith("--"):
            name, has_value, inline = word[2:].partition("=")
            opt = spec.find(name)
            if opt is None:
                raise UsageError(f"command '{spec.name}' doesn't support option --{name}")
            if opt.kind is Kind.FLAG:
                if has_value:
                    raise UsageError(f"invalid '=' after option --{name}")
                if name in given:
                    raise UsageError(f"option --{name} already seen")
                given[name] = True
                continue
            if not has_value:
                if index >= len(words):
                    raise UsageError(f"expected syntax: --{name} <{opt.metavar}>")
                inline = words[index]
                index += 1
            _store(given, opt, inline)
            continue
        opt = next((o for o in spec.opts if o.positional and o.kind is not Kind.FLAG
                    and (o.name not in given or o.kind is Kind.REST)), None)
        if opt is None:
            raise UsageError(f"unexpected data '{word}'")
        _store(given, opt, word)
    for opt in spec.opts:
        if opt.required and opt.name not in given:
            raise UsageError(f"command '{spec.name}' requires <{opt.name}> option")
    values = {}
    for opt in spec.opts:
        default: object = False if opt.kind is Kind.FLAG else [] if opt.kind is Kind.REST \
            else None
        values[opt.attribute] = given.get(opt.name, default)
    return SimpleNamespace(**values)


def _store(given: dict[str, object], opt: Opt, text: str) -> None:
    if opt.kind is Kind.REST:
        items = given.setdefault(opt.name, [])
        assert isinstance(items, list)
        items.append(text)
        return
    if opt.name in given:
        raise UsageError(f"option --{opt.name} already seen")
    given[opt.name] = text


class GlobalOptions:
    """qsnap's own options before the command (virsh has ``-q`` and ``-c`` there)."""

    def __init__(self) -> None:
        self.state_dir: str | None = None
        self.quiet = False
        self.progress_json = False
        self.help = False


def split_global(argv: list[str]) -> tuple[GlobalOptions, list[str]]:
    """The options before the command's name, and the command line from its name on."""
    options = GlobalOptions()
    index = 0
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "-":
        word = argv[index]
        index += 1
        name, has_value, inline = word.partition("=")
        if name in ("-q", "--quiet"):
            options.quiet = True
        elif name == "--progress-json":
            options.progress_json = True
        elif name in ("-h", "--help"):
            options.help = True
        elif name == "--state-dir":
            if not has_value:
                if index >= len(argv):
                    raise UsageError(f"expected syntax: {name} <directory>")
                inline = argv[index]
                index += 1
            options.state_dir = inline
        else:
            raise UsageError(f"unsupported option '{word}'. See --help.")
    return options, argv[index:]
