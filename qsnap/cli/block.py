"""virsh's block-job commands: blockcommit, blockpull, blockjob."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from qsnap.cli.args import UsageError
from qsnap.cli.runner import Args, Output, Runner, exclusive, reading
from qsnap.errors import (
    DomainNotRunningError,
    OperationFailedError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.engine import Engine
    from qsnap.progress import Progress


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


def _job_meter(out: Output, label: str, verbose: bool) -> Callable[[Progress], None] | None:
    """virsh's ``--verbose`` progress: ``\\rLABEL: [ NN %]`` on stderr."""
    if not verbose:
        return None
    return lambda report: out.job_progress(label, report.done, report.total)


class _Aborted(OperationFailedError):
    """A --timeout passed and the job was cancelled, as virsh does (which exits 1)."""


async def cmd_blockcommit(engine: Engine, args: Args, out: Output) -> None:
    exclusive(args, ("pivot", "keep-overlay"))
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


async def cmd_blockpull(engine: Engine, args: Args, out: Output) -> None:
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


@reading
def cmd_blockjob(run: Runner, args: Args, out: Output) -> None:
    """A block job that a waiting ``blockcommit``/``blockpull`` runs holds the domain's lock
    and its QMP connection: it is read (``--info``) and stopped (``--abort``) through the
    job board, as domjobinfo and domjobabort do; everything else goes to the engine."""
    exclusive(args, ("abort", "pivot"), ("info", "abort"), ("info", "pivot"))
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


