"""What every command runs on: the output (virsh's layouts, quiet mode), the synchronous
reader or an engine in an event loop of its own, and the small helpers of argument handling."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

from qsnap.cli import output as cli_output
from qsnap.cli.args import (
    UsageError,
    attribute_of,
)
from qsnap.engine.reader import NeedsSettling, Reader
from qsnap.errors import (
    InvalidArgumentError,
    QsnapError,
)
from qsnap.store import StateDir, resolve_state_dir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import TypeVar

    from qsnap.engine import Engine
    from qsnap.progress import Progress
    T = TypeVar("T")

MAX_XML_FILE = 10 * 1024 * 1024  # virsh's limit for XML files

Args = SimpleNamespace


class Output:
    """stdout as virsh writes it: ``print`` always (vshPrint), ``extra`` unless ``-q``
    (vshPrintExtra); text goes out exactly as given, newlines included."""

    def __init__(self, quiet: bool, progress_json: bool = False) -> None:
        self.quiet = quiet
        self.progress_json = progress_json
        self._progress_shown = False
        self._job_line = ""

    def progress(self, report: Progress) -> None:
        """With --progress-json, one JSON object per report on stderr (for automation);
        else one line on stderr, redrawn in place, only on a terminal and without --quiet."""
        if self.progress_json:
            sys.stderr.write(cli_output.progress_event(report) + "\n")
            sys.stderr.flush()
            return
        if self.quiet or not sys.stderr.isatty():
            return
        line = cli_output.progress_line(report.operation, report.done, report.total,
                                        report.rate, report.remaining)
        sys.stderr.write(f"\r\x1b[K{line}")
        sys.stderr.flush()
        self._progress_shown = True

    def end_progress(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\n")
            self._progress_shown = False

    def job_progress(self, label: str, done: int, total: int) -> None:
        """virsh's block job progress line on stderr: ``\\rLABEL: [ NN %]`` (100 only once
        the job is done)."""
        line = f"\r{label}: [{cli_output.job_percent(done, total):3d} %]"
        if line != self._job_line:  # virsh prints a line when the job's progress moved
            self._job_line = line
            sys.stdout.flush()
            sys.stderr.write(line)
            sys.stderr.flush()

    def print(self, text: str) -> None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped reading (``| head``): the rest of the output has nowhere to
            # go, but the operation itself is not undone, and its exit status stands.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def extra(self, text: str) -> None:
        """Informational messages (virsh's vshPrintExtra), silenced by ``--quiet``."""
        if not self.quiet:
            self.print(text)


def read_file(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_XML_FILE + 1)
    except OSError as exc:
        raise InvalidArgumentError(f"failed to read '{path}': {exc.strerror}") from None
    if len(data) > MAX_XML_FILE:
        raise InvalidArgumentError(f"file '{path}' is larger than {MAX_XML_FILE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"file '{path}' is not UTF-8 text: {exc}") from None


def exclusive(args: Args, *pairs: tuple[str, str]) -> None:
    """virsh's VSH_EXCLUSIVE_OPTIONS: its own message, no libvirt prefix."""
    for first, second in pairs:
        if getattr(args, attribute_of(first)) and getattr(args, attribute_of(second)):
            raise UsageError(f"Options --{first} and --{second} are mutually exclusive")


def snapshot_arg(args: Args, option: str = "snapshotname") -> str | None:
    """virsh's {SNAPSHOT | --current}: the name, or None for the current snapshot."""
    name = getattr(args, option)
    if name is not None and args.current:
        raise UsageError(f"--{option} and --current are mutually exclusive")
    if name is None and not args.current:
        raise UsageError(f"--{option} or --current is required")
    return str(name) if name is not None else None


class Runner:
    """What a command runs on: the synchronous reader, or the engine (imported, with asyncio,
    only by the commands that need it)."""

    def __init__(self, state_dir: str | None) -> None:
        self.state = StateDir(resolve_state_dir(state_dir))
        self.reader = Reader(self.state, warn=warn)

    def engine(self, call: Callable[[Engine], Awaitable[T]]) -> T:
        """Run *call* on a new engine, in an event loop of its own; the engine's warnings
        (the ``qsnap`` logger) go to stderr meanwhile."""
        import asyncio
        import logging

        from qsnap.engine import Engine

        class WarningFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return f"warning: {record.getMessage()}"

        async def main() -> T:
            return await call(Engine(self.state.root, preload=False))

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(WarningFormatter())
        logger = logging.getLogger("qsnap")
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        try:
            return asyncio.run(main())
        finally:
            logger.removeHandler(handler)

    def read(self, handler: Callable[[Runner, Args, Output], None], args: Args,
             out: Output) -> None:
        """Run a reading command. A domain with an operation a crash interrupted is settled
        by the engine first (as every command does); where that fails, the read goes on with
        a warning, as the engine's own reads do."""
        while True:
            try:
                return handler(self, args, out)
            except NeedsSettling as pending:
                domain = pending.domain
                try:
                    self.engine(lambda engine, d=domain: engine.recover(d))  # type: ignore[misc]
                except QsnapError as exc:
                    warn(f"domain '{domain}': an interrupted operation could not be finished: "
                          f"{exc}")
                self.reader.settled.add(domain)


READING: set[Callable[..., None]] = set()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def reading(handler: Callable[[Runner, Args, Output], None]
             ) -> Callable[[Runner, Args, Output], None]:
    """Mark a command that only reads: it runs on the reader, without an event loop."""
    READING.add(handler)
    return handler


