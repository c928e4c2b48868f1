"""``qsnap``: a virsh-style command line over :class:`qsnap.engine.Engine`.

Command names, options, argument forms (:mod:`qsnap.cli.args`), output layouts and error
texts are virsh's, byte for byte where libvirt reports the same thing, so that scripts written
against virsh keep working. Errors print ``error: <message>`` on stderr and exit 1; no
traceback reaches a user.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qsnap.cli.args import (
    CommandSpec,
    UsageError,
    parse_command,
    split_global,
)
from qsnap.cli.dialect import virsh_message
from qsnap.cli.runner import READING, Args, Output, Runner
from qsnap.cli.table import COMMANDS, usage
from qsnap.errors import QsnapError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qsnap`` command; returns the exit status.

    As virsh: a command's output is followed by one newline (none with ``-q``), also when
    it fails at run time, with the error on stderr; a command line that cannot be parsed
    prints only the error. Exit status 1 on any error."""
    out: Output | None = None
    spec: CommandSpec | None = None
    args: Args | None = None
    try:
        options, words = split_global(list(sys.argv[1:] if argv is None else argv))
        if options.help or not words or words[0] == "help":
            return _help(words[1:] if words[:1] == ["help"] else [], asked=bool(
                options.help or words))
        spec = COMMANDS.get(words[0])
        if spec is None:
            raise UsageError(f"unknown command: '{words[0]}'")
        if "--help" in words[1:words.index("--") if "--" in words else None]:
            return _help([spec.name], asked=True)
        args = parse_command(spec, words[1:])
        out = Output(options.quiet, options.progress_json)
        run = Runner(options.state_dir)
        command: Any = spec.handler
        if command in READING:
            run.read(command, args, out)
        else:
            run.engine(lambda engine: command(engine, args, out))
        out.end_progress()
        out.extra("\n")
        return 0
    except QsnapError as exc:
        ran = spec.name if out is not None and spec is not None else None
        _failed(out, virsh_message(exc, ran, args))
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _failed(out, f"{exc.strerror or exc}{where}")
        return 1
    except KeyboardInterrupt:
        _failed(out, "interrupted")
        return 130
    except Exception as exc:  # a bug: still no traceback for the user, but say what it was
        _failed(out, f"internal error in qsnap ({type(exc).__name__}: {exc}); please report it")
        return 1


def _help(topic: list[str], *, asked: bool) -> int:
    """``--help``, ``help [COMMAND]``, or no command at all (the usage, and status 1)."""
    if topic and topic[0] not in COMMANDS:
        raise UsageError(f"command or command group '{topic[0]}' doesn't exist")
    sys.stdout.write(COMMANDS[topic[0]].help_text() if topic else usage())
    return 0 if asked else 1


def _failed(out: Output | None, message: str) -> None:
    """virsh's way: a command that ran ends its output with a newline even when it fails
    (the error goes to stderr); one that could not be parsed prints nothing on stdout."""
    if out is not None:
        out.end_progress()
        out.extra("\n")
        sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr)
