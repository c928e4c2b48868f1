"""``qsnap``: a virsh-style command line over :class:`qsnap.engine.Engine`.

Command names, options, argument forms (:mod:`qsnap.cli_args`), output layouts and error
texts are virsh's, byte for byte where libvirt reports the same thing, so that scripts written
against virsh keep working. Errors print ``error: <message>`` on stderr and exit 1; no
traceback reaches a user.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace

from qsnap import cli_output
from qsnap.cli_args import (
    CommandSpec,
    Kind,
    Opt,
    UsageError,
    attribute_of,
    flag,
    parse_command,
    split_global,
    value,
)
from qsnap.engine.reader import NeedsSettling, Reader
from qsnap.errors import (
    AlreadyExistsError,
    DomainNotRunningError,
    DomainRunningError,
    InvalidArgumentError,
    NoDomainError,
    NoSnapshotError,
    NotSupportedError,
    OperationAbortedError,
    OperationFailedError,
    OperationIncompleteError,
    OperationInvalidError,
    QsnapError,
    XMLError,
)
from qsnap.store import StateDir, resolve_state_dir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from qsnap.engine import Engine
    from qsnap.plan.flags import CreateFlags, ListFilter
    from qsnap.progress import Progress

    T = TypeVar("T")

# Commands that only read metadata (``list``, ``snapshot-list``, ``snapshot-current``, ...) run
# synchronously through :class:`~qsnap.engine.reader.Reader`: they start without asyncio,
# qemu.qmp or the engine's modules, which are imported below only by the commands that use
# them. A read that finds an operation a crash interrupted has the engine settle it first.

MAX_XML_FILE = 10 * 1024 * 1024  # virsh's limit for XML files

Args = SimpleNamespace


class _Output:
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


def _read_file(path: str) -> str:
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


def _exclusive(args: Args, *pairs: tuple[str, str]) -> None:
    """virsh's VSH_EXCLUSIVE_OPTIONS: its own message, no libvirt prefix."""
    for first, second in pairs:
        if getattr(args, attribute_of(first)) and getattr(args, attribute_of(second)):
            raise UsageError(f"Options --{first} and --{second} are mutually exclusive")


def _snapshot_arg(args: Args, option: str = "snapshotname") -> str | None:
    """virsh's {SNAPSHOT | --current}: the name, or None for the current snapshot."""
    name = getattr(args, option)
    if name is not None and args.current:
        raise UsageError(f"--{option} and --current are mutually exclusive")
    if name is None and not args.current:
        raise UsageError(f"--{option} or --current is required")
    return str(name) if name is not None else None


class _Runner:
    """What a command runs on: the synchronous reader, or the engine (imported, with asyncio,
    only by the commands that need it)."""

    def __init__(self, state_dir: str | None) -> None:
        self.state = StateDir(resolve_state_dir(state_dir))
        self.reader = Reader(self.state, warn=_warn)

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
            return await call(Engine(self.state.root))

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(WarningFormatter())
        logger = logging.getLogger("qsnap")
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        try:
            return asyncio.run(main())
        finally:
            logger.removeHandler(handler)

    def read(self, handler: Callable[[_Runner, Args, _Output], None], args: Args,
             out: _Output) -> None:
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
                    _warn(f"domain '{domain}': an interrupted operation could not be finished: "
                          f"{exc}")
                self.reader.settled.add(domain)


_READING: set[Callable[..., None]] = set()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _reading(handler: Callable[[_Runner, Args, _Output], None]
             ) -> Callable[[_Runner, Args, _Output], None]:
    """Mark a command that only reads: it runs on the reader, without an event loop."""
    _READING.add(handler)
    return handler


# -- commands ------------------------------------------------------------------------------------


async def cmd_define(engine: Engine, args: Args, out: _Output) -> None:
    name = await engine.define(_read_file(args.file))
    out.extra(f"Domain '{name}' defined from {args.file}\n")


async def cmd_undefine(engine: Engine, args: Args, out: _Output) -> None:
    await engine.undefine(args.domain, snapshots_metadata=args.snapshots_metadata)
    out.extra(f"Domain '{args.domain}' has been undefined\n")


@_reading
def cmd_dumpxml(run: _Runner, args: Args, out: _Output) -> None:
    out.print(run.reader.domain_xml(args.domain, secure=args.security_info))


async def cmd_start(engine: Engine, args: Args, out: _Output) -> None:
    await engine.start(args.domain, reset_nvram=args.reset_nvram, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain '{args.domain}' started\n")


async def cmd_destroy(engine: Engine, args: Args, out: _Output) -> None:
    await engine.destroy(args.domain)
    out.extra(f"Domain '{args.domain}' destroyed\n")


async def cmd_attach(engine: Engine, args: Args, out: _Output) -> None:
    info = await engine.attach(args.domain, args.qmp)
    out.extra(f"Domain '{args.domain}' attached (QEMU pid {info.pid}, accelerator: "
              f"{info.accel})\n")


def _run_state(args: Args) -> bool | None:
    """virsh's {--running | --paused}: None keeps the state recorded in the image."""
    _exclusive(args, ("running", "paused"))
    return True if args.running else False if args.paused else None


def _channels(args: Args) -> int | None:
    """virsh's --parallel-channels N (a number; the engine checks its range)."""
    if args.parallel_channels is None:
        return None
    try:
        return int(args.parallel_channels)
    except ValueError:
        raise UsageError(f"Numeric value '{args.parallel_channels}' for <parallel-channels> "
                         "option is malformed or out of range") from None


async def cmd_save(engine: Engine, args: Args, out: _Output) -> None:
    xml = _read_file(args.xml) if args.xml else None
    await engine.save(args.domain, os.path.abspath(args.file), running=_run_state(args), xml=xml,
                      image_format=args.image_format, parallel_channels=_channels(args),
                      progress=out.progress)
    out.end_progress()
    out.extra(f"\nDomain '{args.domain}' saved to {args.file}\n")


async def cmd_restore(engine: Engine, args: Args, out: _Output) -> None:
    xml = _read_file(args.xml) if args.xml else None
    await engine.restore(os.path.abspath(args.file), running=_run_state(args), xml=xml,
                         parallel_channels=_channels(args), progress=out.progress)
    out.end_progress()
    out.extra(f"Domain restored from {args.file}\n")


async def cmd_managedsave(engine: Engine, args: Args, out: _Output) -> None:
    await engine.managedsave(args.domain, running=_run_state(args),
                             image_format=args.image_format,
                             parallel_channels=_channels(args), progress=out.progress)
    out.end_progress()
    out.extra(f"\nDomain '{args.domain}' state saved by qsnap\n")


async def cmd_managedsave_remove(engine: Engine, args: Args, out: _Output) -> None:
    if await engine.managedsave_remove(args.domain):
        out.print(f"Removed managedsave image for domain '{args.domain}'\n")
    else:
        out.print(f"Domain '{args.domain}' has no manage save image; removal skipped\n")


async def cmd_save_image_dumpxml(engine: Engine, args: Args, out: _Output) -> None:
    out.print(await engine.save_image_xml(os.path.abspath(args.file), secure=args.security_info))


async def cmd_shutdown(engine: Engine, args: Args, out: _Output) -> None:
    await engine.shutdown(args.domain)
    out.extra(f"Domain '{args.domain}' is being shutdown\n")


@_reading
def cmd_domstate(run: _Runner, args: Args, out: _Output) -> None:
    out.print(run.reader.domstate(args.domain, reason=args.reason) + "\n")


@_reading
def cmd_list(run: _Runner, args: Args, out: _Output) -> None:
    def shown(state: str) -> bool:
        return bool(args.all or (state == "shut off") == args.inactive)

    if args.json:
        out.print(cli_output.json_text([d for d in run.reader.domains() if shown(d.state)]))
        return
    domains = [(name, state) for name, state in run.reader.domain_states() if shown(state)]
    if args.name:
        out.print("".join(f"{name}\n" for name, _ in domains))
    else:
        rows = [["-", name, state] for name, state in domains]
        out.print(cli_output.table(["Id", "Name", "State"], rows, header=not out.quiet))


def _create_flags(args: Args, redefine: bool = False, current: bool = False) -> CreateFlags:
    from qsnap.model.capture import LIVE_STRATEGIES
    from qsnap.plan.flags import CreateFlags

    if args.live_strategy is not None and args.live_strategy not in LIVE_STRATEGIES:
        raise UsageError(f"invalid --live-strategy '{args.live_strategy}': expected "
                         f"{', '.join(LIVE_STRATEGIES[:-1])} or {LIVE_STRATEGIES[-1]}")
    return CreateFlags(redefine=redefine, current=current, no_metadata=args.no_metadata,
                       halt=args.halt, disk_only=args.disk_only,
                       reuse_external=args.reuse_external, quiesce=args.quiesce,
                       atomic=args.atomic, live=args.live, validate=args.validate,
                       crash_consistent=args.crash_consistent)


async def cmd_snapshot_create(engine: Engine, args: Args, out: _Output) -> None:
    path = args.xmlfile
    flags = _create_flags(args, redefine=args.redefine, current=args.current)
    xml = _read_file(path) if path else None
    if args.print_xml:
        from qsnap.model.snapshot import format_snapshot, parse_snapshot

        snap = parse_snapshot(xml or "<domainsnapshot/>", redefine=flags.redefine,
                              validate=flags.validate)
        out.print(format_snapshot(snap) + "\n")
        return
    name = await engine.create(args.domain, xml, flags, live_strategy=args.live_strategy,
                               progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {name} created from '{path}'" if path
              else f"Domain snapshot {name} created")


async def cmd_snapshot_create_as(engine: Engine, args: Args, out: _Output) -> None:
    from qsnap.plan.create_as import snapshot_xml_from_args

    flags = _create_flags(args)
    xml = snapshot_xml_from_args(args.name, args.description, args.memspec, args.diskspec,
                                 disk_only=args.disk_only)
    if args.print_xml:
        out.print(xml if xml.endswith("\n") else xml + "\n")
        out.print("\n")
        return
    created = await engine.create(args.domain, xml, flags, live_strategy=args.live_strategy,
                                  progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {created} created")


def _list_filter(args: Args) -> ListFilter:
    from qsnap.plan.flags import ListFilter

    _exclusive(args, ("tree", "name"), ("parent", "roots"), ("parent", "tree"),
               ("roots", "tree"), ("roots", "from"), ("roots", "current"))
    for option in ("leaves", "no-leaves", "inactive", "active", "disk-only", "internal",
                   "external"):
        if getattr(args, attribute_of(option)) and args.tree:
            raise UsageError(f"--{option} and --tree are mutually exclusive")
    if args.descendants and not (args.from_ or args.current):
        raise UsageError("--descendants requires either --from or --current")
    return ListFilter(
        roots=args.roots, leaves=args.leaves, no_leaves=args.no_leaves, metadata=args.metadata,
        no_metadata=args.no_metadata, inactive=args.inactive, active=args.active,
        disk_only=args.disk_only, internal=args.internal, external=args.external,
        topological=args.topological, start=args.from_, from_current=args.current,
        descendants=args.descendants or (args.tree and bool(args.from_ or args.current)),
    )


@_reading
def cmd_snapshot_list(run: _Runner, args: Args, out: _Output) -> None:
    flt = _list_filter(args)
    if args.tree:
        tree = run.reader.tree(args.domain)
        start = args.from_ or (tree.current if args.current else None)
        if args.current and start is None:
            raise NoSnapshotError(f"domain '{args.domain}' has no current snapshot",
                                  domain=args.domain)
        roots = [tree.get(start).name] if start is not None else tree.roots()
        out.print(cli_output.tree(roots, tree.children))
        return
    snapshots = run.reader.snapshots(args.domain, flt)
    if args.json:
        current = run.reader.current(args.domain)
        out.print(cli_output.json_text(snapshots, lambda s: {
            "location": s.location, "current": s.name == current}))
    elif args.name:  # virsh prints the names alone, --parent or not
        out.print("".join(f"{s.name}\n" for s in snapshots))
    else:
        headers = ["Name", "Creation Time", "State"] + (["Parent"] if args.parent else [])
        rows = [[s.name, cli_output.local_time(s.creation_time), s.state]
                + ([s.parent or ""] if args.parent else []) for s in snapshots]
        out.print(cli_output.table(headers, rows, header=not out.quiet))


@_reading
def cmd_snapshot_info(run: _Runner, args: Args, out: _Output) -> None:
    info = run.reader.info(args.domain, _snapshot_arg(args))
    if args.json:
        out.print(cli_output.json_text(info))
        return
    out.print(cli_output.key_values([
        ("Name", info.name), ("Domain", info.domain), ("Current", "yes" if info.current else "no"),
        ("State", info.state), ("Location", info.location), ("Parent", info.parent or "-"),
        ("Children", info.children), ("Descendants", info.descendants),
        ("Metadata", "yes" if info.metadata else "no"),
        *([("Memory capture", info.memory_capture)] if info.memory_capture else []),
    ]))


@_reading
def cmd_snapshot_dumpxml(run: _Runner, args: Args, out: _Output) -> None:
    out.print(run.reader.get_xml(args.domain, args.snapshotname, secure=args.security_info))


@_reading
def cmd_snapshot_current(run: _Runner, args: Args, out: _Output) -> None:
    if args.snapshotname is not None:
        _exclusive(args, ("name", "snapshotname"))
        run.engine(lambda engine: engine.set_current(args.domain, args.snapshotname))
        out.extra(f"Snapshot {args.snapshotname} set as current")
        return
    current = run.reader.current(args.domain)
    if current is None:  # virsh's own check, in its own words
        raise UsageError(f"domain '{args.domain}' has no current snapshot")
    if args.name:
        out.print(current)
    else:
        out.print(run.reader.get_xml(args.domain, current, secure=args.security_info))


@_reading
def cmd_snapshot_parent(run: _Runner, args: Args, out: _Output) -> None:
    snapshot = _snapshot_arg(args)
    parent = run.reader.parent(args.domain, snapshot)
    if parent is None:
        name = snapshot if snapshot is not None else run.reader.current(args.domain)
        raise UsageError(f"snapshot '{name}' has no parent")
    out.print(parent)


async def cmd_snapshot_revert(engine: Engine, args: Args, out: _Output) -> None:
    snapshot = _snapshot_arg(args)
    from qsnap.plan.flags import RevertFlags

    flags = RevertFlags(running=args.running, paused=args.paused, force=args.force,
                        reset_nvram=args.reset_nvram)
    name = await engine.revert(args.domain, snapshot, flags, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {name} reverted\n")


async def cmd_snapshot_delete(engine: Engine, args: Args, out: _Output) -> None:
    from qsnap.plan.flags import DeleteFlags

    flags = DeleteFlags(children=args.children, children_only=args.children_only,
                        metadata_only=args.metadata)
    plan = await engine.delete(args.domain, _snapshot_arg(args), flags, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {plan.target} children deleted\n" if flags.children_only
              else f"Domain snapshot {plan.target} deleted\n")


@_reading
def cmd_domblklist(run: _Runner, args: Args, out: _Output) -> None:
    disks = run.reader.disks(args.domain)
    if args.details:
        rows = [[d.type, d.device, d.target, d.source or "-"] for d in disks]
        out.print(cli_output.table(["Type", "Device", "Target", "Source"], rows,
                                   header=not out.quiet))
    else:
        rows = [[d.target, d.source or "-"] for d in disks]
        out.print(cli_output.table(["Target", "Source"], rows, header=not out.quiet))


@_reading
def cmd_domblkinfo(run: _Runner, args: Args, out: _Output) -> None:
    if args.all == (args.device is not None):
        raise UsageError("one of --device or --all is required" if not args.all
                         else "Options --all and --device are mutually exclusive")
    infos = run.reader.block_info(args.domain, args.device)

    def size(count: int) -> str:
        return cli_output.pretty_size(count) if args.human else str(count)

    if args.all:
        rows = [[i.target, size(i.capacity), size(i.allocation), size(i.physical)]
                for i in infos]
        out.print(cli_output.table(["Target", "Capacity", "Allocation", "Physical"], rows,
                                   header=not out.quiet))
        return
    info = infos[0]
    out.print(cli_output.key_values([("Capacity", size(info.capacity)),
                                     ("Allocation", size(info.allocation)),
                                     ("Physical", size(info.physical))]))


@_reading
def cmd_dominfo(run: _Runner, args: Args, out: _Output) -> None:
    info = run.reader.details(args.domain)
    out.print(cli_output.key_values([
        ("Id", "-"), ("Name", info.name), ("UUID", info.uuid or ""), ("OS Type", info.os_type),
        ("State", info.state), ("CPU(s)", info.vcpus),
        *([("CPU time", f"{info.cpu_time:.1f}s")] if info.cpu_time is not None else []),
        ("Max memory", f"{info.max_memory_kib} KiB"),
        ("Used memory", f"{info.used_memory_kib} KiB"),
        ("Persistent", "yes" if info.persistent else "no"), ("Autostart", "disable"),
        ("Managed save", "yes" if info.managed_save else "no"), ("Security model", "none"),
        ("Security DOI", "0")]))


async def cmd_suspend(engine: Engine, args: Args, out: _Output) -> None:
    await engine.suspend(args.domain)
    out.extra(f"Domain '{args.domain}' suspended\n")


async def cmd_resume(engine: Engine, args: Args, out: _Output) -> None:
    await engine.resume(args.domain)
    out.extra(f"Domain '{args.domain}' resumed\n")


async def cmd_reboot(engine: Engine, args: Args, out: _Output) -> None:
    await engine.reboot(args.domain, mode=args.mode)
    out.extra(f"Domain '{args.domain}' is being rebooted\n")


async def cmd_reset(engine: Engine, args: Args, out: _Output) -> None:
    await engine.reboot(args.domain, mode="reset")
    out.extra(f"Domain '{args.domain}' was reset\n")


def _wait_timeout(args: Args) -> float | None:
    if args.timeout is None:
        return None
    try:
        seconds = int(args.timeout)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise UsageError(f"Numeric value '{args.timeout}' for <timeout> option is malformed "
                         "or out of range")
    return float(seconds)


def _bandwidth(args: Args) -> int:
    """virsh's --bandwidth (MiB/s; bytes/s with --bytes) in bytes per second."""
    if args.bandwidth is None:
        return 0
    try:
        number = int(args.bandwidth)
    except ValueError:
        number = -1
    if number < 0:
        raise UsageError(f"Numeric value '{args.bandwidth}' for <bandwidth> option is "
                         "malformed or out of range")
    return number if args.bytes else number << 20


def _job_meter(out: _Output, label: str, verbose: bool) -> Callable[[Progress], None] | None:
    """virsh's ``--verbose`` progress: ``\\rLABEL: [ NN %]`` on stderr."""
    if not verbose:
        return None
    return lambda report: out.job_progress(label, report.done, report.total)


class _Aborted(OperationFailedError):
    """A --timeout passed and the job was cancelled, as virsh does (which exits 1)."""


async def cmd_blockcommit(engine: Engine, args: Args, out: _Output) -> None:
    _exclusive(args, ("pivot", "keep-overlay"))
    timeout = _wait_timeout(args)
    blocking = args.wait or args.pivot or args.keep_overlay or timeout is not None
    if not blocking and args.verbose:
        raise UsageError("--verbose requires at least one of --timeout, --wait, --pivot, or "
                         "--keep-overlay")
    active = args.active or args.pivot or args.keep_overlay
    outcome = await engine.block_commit(
        args.domain, args.path, base=args.base, top=args.top, active=active,
        shallow=args.shallow, delete=args.delete, wait=blocking, pivot=args.pivot,
        keep_overlay=args.keep_overlay, wait_timeout=timeout, bandwidth=_bandwidth(args),
        progress=_job_meter(out, "Block commit", args.verbose))
    out.extra({"started": "Active Block Commit started" if active else "Block Commit started",
               "synchronized": "\nNow in synchronized phase",
               "pivoted": "\nSuccessfully pivoted",
               "kept": "\nCommit complete, overlay image kept",
               "committed": "\nCommit complete", "aborted": "\nCommit aborted"}[outcome])
    if outcome == "aborted":
        raise _Aborted(f"the block commit did not finish within {args.timeout} s, so it was "
                       "cancelled; nothing changed")


async def cmd_blockpull(engine: Engine, args: Args, out: _Output) -> None:
    timeout = _wait_timeout(args)
    if args.verbose and not args.wait:
        raise UsageError("Option --wait is required by option --verbose")
    outcome = await engine.block_pull(args.domain, args.path, base=args.base,
                                      wait=args.wait, wait_timeout=timeout,
                                      bandwidth=_bandwidth(args),
                                      progress=_job_meter(out, "Block Pull", args.verbose))
    out.extra({"started": "Block Pull started", "pulled": "\nPull complete",
               "aborted": "\nPull aborted"}[outcome])
    if outcome == "aborted":
        raise _Aborted(f"the block pull did not finish within {args.timeout} s, so it was "
                       "cancelled")


@_reading
def cmd_blockjob(run: _Runner, args: Args, out: _Output) -> None:
    """A block job that a waiting ``blockcommit``/``blockpull`` runs holds the domain's lock
    and its QMP connection: it is read (``--info``) and stopped (``--abort``) through the
    job board, as domjobinfo and domjobabort do; everything else goes to the engine."""
    _exclusive(args, ("abort", "pivot"), ("info", "abort"), ("info", "pivot"))
    action = "abort" if args.abort else "pivot" if args.pivot else "info"
    waited = None
    with contextlib.suppress(DomainNotRunningError):
        waited = run.reader.job(args.domain)
    if waited is not None and waited.get("disk") == args.path and action != "pivot":
        if action == "abort":
            run.reader.abort_job(args.domain)
            return
        out.job_progress(str(waited["kind"]), int(str(waited.get("processed", 0))),
                         int(str(waited.get("total", 0))))
        out.print("\n")
        return
    info = run.engine(lambda engine: engine.block_job(args.domain, args.path, action))
    if action != "info":
        return
    if info is None:
        out.extra(f"No current block job for {args.path}")
        return
    out.job_progress(info.kind, info.done, info.total)
    out.print("\n")


async def cmd_snapshot_edit(engine: Engine, args: Args, out: _Output) -> None:
    _exclusive(args, ("rename", "clone"))
    name = args.snapshotname
    if name is None and not args.current:
        raise UsageError("--snapshotname or --current is required")
    from qsnap.model.snapshot import parse_snapshot

    original = await engine.get_xml(args.domain, name, secure=True)
    old = parse_snapshot(original, redefine=True)
    edited = _edit_text(original, f"{args.domain}-{old.name}")
    if edited == original:
        out.extra(f"Snapshot {old.name} XML configuration not changed.\n")
        return
    new = parse_snapshot(edited, redefine=True)
    if new.name != old.name and not (args.rename or args.clone):
        raise InvalidArgumentError(f"cannot change the name of snapshot '{old.name}' to "
                                   f"'{new.name}' without --rename or --clone")
    if new.name != old.name and new.name in [s.name for s in await engine.snapshots(
            args.domain)]:
        raise AlreadyExistsError(f"snapshot '{new.name}' already exists", snapshot=new.name)
    # One locked, journaled change, refused if the snapshot changed while the editor was
    # open. A rename's children follow the new name (virsh's rename leaves them to the old
    # one's parent, as deleting its metadata does).
    await engine.redefine(args.domain, edited, current=bool(args.current and name is not None),
                          edited_from=old.name, expected=original,
                          rename=bool(args.rename))
    out.extra(f"Snapshot {new.name} edited.\n")


def _edit_text(text: str, label: str) -> str:
    """Open *text* in the user's editor ($VISUAL, else $EDITOR, else vi); the text saved."""
    import shlex
    import subprocess
    import tempfile

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", prefix=f"qsnap-{label}-", suffix=".xml",
                                     encoding="utf-8", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        if subprocess.run([*shlex.split(editor), path]).returncode != 0:
            raise OperationFailedError(f"the editor '{editor}' failed; nothing changed")
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    finally:
        os.unlink(path)


@_reading
def cmd_domjobinfo(run: _Runner, args: Args, out: _Output) -> None:
    job = run.reader.job(args.domain, completed=args.completed)
    out.print(cli_output.job_info(job))


@_reading
def cmd_domjobabort(run: _Runner, args: Args, out: _Output) -> None:
    run.reader.abort_job(args.domain)


async def cmd_recover(engine: Engine, args: Args, out: _Output) -> None:
    lines = await engine.recover(args.domain)
    out.extra("".join(f"{line}\n" for line in lines) if lines
              else f"Domain {args.domain}: nothing to recover\n")


# -- the command table ---------------------------------------------------------------------------

_DOMAIN = value("domain", "domain name", required=True)
_SNAPSHOT = value("snapshotname", "snapshot name")
_SECURITY = flag("security-info", "include security sensitive information in XML dump")
_IMAGE_FORMAT = value("image-format", "format of the save image: raw, sparse or zstd (by "
                      "default raw)", positional=False)
_CHANNELS = value("parallel-channels", "multifd channels of a sparse save image",
                  positional=False, metavar="number")
_RUN_STATE = (flag("running", "run the guest after restore"),
              flag("paused", "leave the guest paused after restore"))


_DISK_PATH = value("path", "fully-qualified path of disk", required=True)
_BANDWIDTH = value("bandwidth", "bandwidth limit in MiB/s", metavar="number")
_BYTES = flag("bytes", "the bandwidth limit is in bytes/s rather than MiB/s")
_VERBOSE = flag("verbose", "with --wait, display the progress")


def _current(what: str) -> Opt:
    return flag("current", f"{what} the current snapshot")


_CREATE_FLAGS = (
    flag("no-metadata", "take snapshot but create no metadata"),
    flag("halt", "halt domain after snapshot is created"),
    flag("disk-only", "capture disk state but not vm state"),
    flag("reuse-external", "reuse any existing external files"),
    flag("quiesce", "quiesce guest's file systems"),
    flag("atomic", "require atomic operation"),
    flag("live", "take a live snapshot"),
    flag("crash-consistent", "take a disk snapshot of a guest whose QEMU crashed (its disks "
         "hold what it had half-written)"),
)
_CREATE_EXTRAS = (
    value("live-strategy", "how to capture memory: background, precopy or paused (default: "
          "background where QEMU offers it with --live, else precopy; paused without --live)",
          positional=False),
    flag("validate", "validate the XML strictly against qsnap's schema rules"),
)

COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in (
    CommandSpec("define", "define a domain from an XML file", (
        value("file", "file containing an XML domain description", required=True),),
        cmd_define),
    CommandSpec("undefine", "undefine a domain", (
        _DOMAIN, flag("snapshots-metadata", "remove all snapshot metadata too")),
        cmd_undefine),
    CommandSpec("dumpxml", "domain information in XML", (_DOMAIN, _SECURITY), cmd_dumpxml),
    CommandSpec("start", "start a (previously defined) inactive domain",
                (_DOMAIN, flag("reset-nvram", "re-initialize NVRAM from its pristine template")),
                cmd_start),
    CommandSpec("destroy", "stop a domain at once (its QEMU is ended)", (_DOMAIN,),
                cmd_destroy),
    CommandSpec("shutdown", "gracefully shutdown a domain (ACPI power button)", (_DOMAIN,),
                cmd_shutdown),
    CommandSpec("domstate", "domain state", (
        _DOMAIN, flag("reason", "also print reason for the state")), cmd_domstate),
    CommandSpec("attach", "adopt a QEMU launched by someone else, via its QMP socket", (
        _DOMAIN, value("qmp", "path of its QMP unix socket", required=True, positional=False,
                       metavar="socket")), cmd_attach),
    CommandSpec("save", "save a domain's state to a file, and stop it", (
        _DOMAIN, value("file", "where to save the data", required=True),
        flag("bypass-cache", "accepted for virsh compatibility; saves bypass the cache"),
        value("xml", "file holding the domain XML to store in the image instead"),
        *_RUN_STATE, flag("verbose", "accepted for virsh compatibility"), _IMAGE_FORMAT,
        _CHANNELS), cmd_save),
    CommandSpec("restore", "restore a domain from a saved state file", (
        value("file", "the state to restore", required=True),
        flag("bypass-cache", "accepted for virsh compatibility"),
        value("xml", "file holding the domain XML to use instead"), *_RUN_STATE, _CHANNELS),
        cmd_restore),
    CommandSpec("managedsave", "save a domain's state so 'start' resumes it", (
        _DOMAIN, flag("bypass-cache", "accepted for virsh compatibility"), *_RUN_STATE,
        flag("verbose", "accepted for virsh compatibility"), _IMAGE_FORMAT, _CHANNELS),
        cmd_managedsave),
    CommandSpec("managedsave-remove", "remove the managed save image of a domain", (
        _DOMAIN,), cmd_managedsave_remove),
    CommandSpec("save-image-dumpxml", "the domain XML inside a saved state file", (
        value("file", "saved state file to read", required=True), _SECURITY),
        cmd_save_image_dumpxml),
    CommandSpec("list", "list domains", (
        flag("all", "list inactive and active domains"),
        flag("inactive", "list inactive domains"), flag("name", "list domain names only"),
        flag("json", "machine-readable output")), cmd_list),
    CommandSpec("snapshot-create", "create a snapshot from XML", (
        _DOMAIN, value("xmlfile", "domain snapshot XML"),
        flag("redefine", "redefine metadata for existing snapshot"),
        flag("current", "with redefine, set current snapshot"), *_CREATE_FLAGS,
        *_CREATE_EXTRAS, flag("print-xml", "print XML document rather than create")),
        cmd_snapshot_create),
    CommandSpec("snapshot-create-as", "create a snapshot from a set of args", (
        _DOMAIN, value("name", "name of snapshot"),
        value("description", "description of snapshot"),
        flag("print-xml", "print XML document rather than create"), *_CREATE_FLAGS,
        value("memspec", "memory attributes: [file=]name[,snapshot=type]", positional=False,
              metavar="memspec"),
        Opt("diskspec", Kind.REST, "disk attributes: disk[,snapshot=type][,driver=type]"
            "[,stype=type][,file=name]", metavar="diskspec"),
        *_CREATE_EXTRAS), cmd_snapshot_create_as),
    CommandSpec("snapshot-list", "list snapshots for a domain", (
        _DOMAIN,
        flag("parent", "add a column showing parent snapshot"),
        flag("roots", "list only snapshots without parents"),
        flag("leaves", "list only snapshots without children"),
        flag("no-leaves", "list only snapshots that are not leaves (with children)"),
        flag("metadata", "list only snapshots that have metadata that would prevent undefine"),
        flag("no-metadata", "list only snapshots that have no metadata managed by qsnap"),
        flag("inactive", "filter by snapshots taken while inactive"),
        flag("active", "filter by snapshots taken while active (full system snapshots)"),
        flag("disk-only", "filter by disk-only snapshots"),
        flag("internal", "filter by internal snapshots"),
        flag("external", "filter by external snapshots"),
        flag("tree", "list snapshots in a tree"),
        value("from", "limit list to children of given snapshot"),
        _current("limit list to children of"),
        flag("descendants", "with --from, list all descendants"),
        flag("name", "list snapshot names only"),
        flag("topological", "sort list topologically rather than by name"),
        flag("json", "machine-readable output")), cmd_snapshot_list),
    CommandSpec("snapshot-info", "snapshot information", (
        _DOMAIN, _SNAPSHOT, _current("info on"), flag("json", "machine-readable output")),
        cmd_snapshot_info),
    CommandSpec("snapshot-dumpxml", "dump XML for a domain snapshot", (
        _DOMAIN, value("snapshotname", "snapshot name", required=True), _SECURITY),
        cmd_snapshot_dumpxml),
    CommandSpec("snapshot-current", "get or set the current snapshot", (
        _DOMAIN, flag("name", "list the name, rather than the full xml"), _SECURITY,
        value("snapshotname", "name of existing snapshot to make current")),
        cmd_snapshot_current),
    CommandSpec("snapshot-parent", "get the name of the parent of a snapshot", (
        _DOMAIN, value("snapshotname", "find parent of snapshot name"),
        _current("find parent of")), cmd_snapshot_parent),
    CommandSpec("snapshot-revert", "revert a domain to a snapshot", (
        _DOMAIN, _SNAPSHOT, _current("revert to"),
        flag("running", "after reverting, change state to running"),
        flag("paused", "after reverting, change state to paused"),
        flag("force", "try harder on risky reverts"),
        flag("reset-nvram", "re-initialize NVRAM from its pristine template")),
        cmd_snapshot_revert),
    CommandSpec("snapshot-delete", "delete a domain snapshot", (
        _DOMAIN, _SNAPSHOT, _current("delete"),
        flag("children", "delete snapshot and all children"),
        flag("children-only", "delete children but not snapshot"),
        flag("metadata", "delete only qsnap metadata, leaving snapshot contents behind")),
        cmd_snapshot_delete),
    CommandSpec("recover", "finish what a crash left half-done on a domain", (_DOMAIN,),
                cmd_recover),
    CommandSpec("domblklist", "list all domain blocks", (
        _DOMAIN, flag("inactive", "get inactive rather than running configuration"),
        flag("details", "additionally display the type and device value")), cmd_domblklist),
    CommandSpec("domblkinfo", "domain block device size information", (
        _DOMAIN, value("device", "block device"),
        flag("human", "Human readable output"),
        flag("all", "display all block devices info")), cmd_domblkinfo),
    CommandSpec("dominfo", "domain information", (_DOMAIN,), cmd_dominfo),
    CommandSpec("suspend", "suspend a domain", (_DOMAIN,), cmd_suspend),
    CommandSpec("resume", "resume a domain", (_DOMAIN,), cmd_resume),
    CommandSpec("reboot", "reboot a domain", (
        _DOMAIN, value("mode", "shutdown mode: agent (the default with a guest agent "
                       "channel), acpi (the default otherwise) or reset",
                       positional=False)), cmd_reboot),
    CommandSpec("reset", "reset a domain", (_DOMAIN,), cmd_reset),
    CommandSpec("blockcommit", "Start a block commit operation.", (
        _DOMAIN, _DISK_PATH, _BANDWIDTH,
        value("base", "path of base file to commit into (default bottom of chain)"),
        flag("shallow", "use backing file of top as base"),
        value("top", "path of top file to commit from (default top of chain)"),
        flag("active", "trigger two-stage active commit of top file"),
        flag("delete", "delete files that were successfully committed"),
        flag("wait", "wait for job to complete (with --active, wait for job to sync)"),
        _VERBOSE,
        value("timeout", "implies --wait, abort if copy exceeds timeout (in seconds)",
              metavar="number"),
        flag("pivot", "implies --active --wait, pivot when commit is synced"),
        flag("keep-overlay", "implies --active --wait, quit when commit is synced"),
        _BYTES), cmd_blockcommit),
    CommandSpec("blockpull", "Populate a disk from its backing image.", (
        _DOMAIN, _DISK_PATH, _BANDWIDTH,
        value("base", "path of backing file in chain for a partial pull"),
        flag("wait", "wait for job to finish"), _VERBOSE,
        value("timeout", "with --wait, abort if pull exceeds timeout (in seconds)",
              metavar="number"), _BYTES), cmd_blockpull),
    CommandSpec("blockjob", "Manage active block operations", (
        _DOMAIN, _DISK_PATH,
        flag("abort", "abort the active job on the specified disk"),
        flag("info", "get active job information for the specified disk"),
        flag("pivot", "conclude and pivot a copy or commit job")), cmd_blockjob),
    CommandSpec("domjobinfo", "domain job information", (
        _DOMAIN, flag("completed", "return statistics of a recently completed job")),
        cmd_domjobinfo),
    CommandSpec("domjobabort", "abort active domain job", (_DOMAIN,), cmd_domjobabort),
    CommandSpec("snapshot-edit", "edit XML for a snapshot", (
        _DOMAIN, _SNAPSHOT, _current("also set edited snapshot as"),
        flag("rename", "allow renaming an existing snapshot"),
        flag("clone", "allow cloning to new name")), cmd_snapshot_edit),
)}


def usage() -> str:
    """``qsnap --help``: the global options and every command, virsh's way."""
    width = max(len(name) for name in COMMANDS)
    lines = ["qsnap [--state-dir DIR] [-q] [--progress-json] COMMAND [OPTIONS]...",
             "", "Snapshots of QEMU guests, the way virsh does them.", "",
             "  --state-dir DIR    where metadata lives (default: $QSNAP_STATE_DIR, else "
             "$XDG_STATE_HOME/qsnap)",
             "  -q, --quiet        quiet mode: no informational messages or headers",
             "  --progress-json    report the progress of long operations as one JSON "
             "object per line on stderr", "", " Commands (qsnap COMMAND --help for one):"]
    lines += [f"    {name:<{width}}  {spec.help}" for name, spec in COMMANDS.items()]
    return "\n".join(lines) + "\n"


# -- errors in libvirt's words ---------------------------------------------------------------------

#: libvirt's prefix for an error of each kind (its error code's text), so that scripts
#: written against virsh's messages keep working.
_LIBVIRT_PREFIX: tuple[tuple[type[QsnapError], str], ...] = (
    (OperationAbortedError, "operation aborted: "),
    (AlreadyExistsError, "operation failed: "),
    (OperationIncompleteError, "operation failed: "),
    (OperationFailedError, "operation failed: "),
    (InvalidArgumentError, "invalid argument: "),
    (OperationInvalidError, "Requested operation is not valid: "),
    (NotSupportedError, "Operation not supported: "),
    (XMLError, "XML error: "),
)


#: virsh's first error line when a domain operation fails (before libvirt's own reason).
_FAILED_TO = {
    "define": "Failed to define domain from {file}",
    "undefine": "Failed to undefine domain '{domain}'",
    "shutdown": "Failed to shutdown domain '{domain}'",
    "destroy": "Failed to destroy domain '{domain}'",
    "save": "Failed to save domain '{domain}' to {file}",
    "restore": "Failed to restore domain from {file}",
    "managedsave": "Failed to save domain '{domain}' state",
    "start": "Failed to start domain '{domain}'",
    "suspend": "Failed to suspend domain '{domain}'",
    "resume": "Failed to resume domain '{domain}'",
    "reboot": "Failed to reboot domain '{domain}'",
}


def virsh_message(exc: QsnapError, command: str | None = None,
                  args: Args | None = None) -> str:
    """What virsh prints after ``error:`` for the same condition (one or two lines); qsnap's
    own text (under libvirt's prefix for its kind) where libvirt has none."""
    if isinstance(exc, UsageError):
        return str(exc)
    if isinstance(exc, NoDomainError) and exc.domain:
        return f"failed to get domain '{exc.domain}'"
    if isinstance(exc, DomainRunningError) and command == "start":
        return "Domain is already active"  # virsh's own check
    reason = _libvirt_reason(exc)
    if command in _FAILED_TO and args is not None:
        return _FAILED_TO[command].format(**vars(args)) + "\nerror: " + reason
    return reason


def _libvirt_reason(exc: QsnapError) -> str:
    if isinstance(exc, DomainNotRunningError):
        return "Requested operation is not valid: domain is not running"
    if isinstance(exc, NoSnapshotError):
        if exc.snapshot is None:  # --current without one
            return "Domain snapshot not found: the domain does not have a current snapshot"
        return ("Domain snapshot not found: no domain snapshot with matching name "
                f"'{exc.snapshot}'")
    if isinstance(exc, AlreadyExistsError) and exc.snapshot:
        return f"operation failed: domain moment {exc.snapshot} already exists"
    for kind, prefix in _LIBVIRT_PREFIX:
        if isinstance(exc, kind):
            return prefix + str(exc)
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qsnap`` command; returns the exit status.

    As virsh: a command's output is followed by one newline (none with ``-q``), also when
    it fails at run time, with the error on stderr; a command line that cannot be parsed
    prints only the error. Exit status 1 on any error."""
    out: _Output | None = None
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
        out = _Output(options.quiet, options.progress_json)
        run = _Runner(options.state_dir)
        command: Any = spec.handler
        if command in _READING:
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


def _failed(out: _Output | None, message: str) -> None:
    """virsh's way: a command that ran ends its output with a newline even when it fails
    (the error goes to stderr); one that could not be parsed prints nothing on stdout."""
    if out is not None:
        out.end_progress()
        out.extra("\n")
        sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
