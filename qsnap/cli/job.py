"""virsh's job commands: domjobinfo and domjobabort, on an operation running in any process."""

from __future__ import annotations

from qsnap.cli import output as cli_output
from qsnap.cli.runner import Args, Output, Runner, reading


@reading
def cmd_domjobinfo(run: Runner, args: Args, out: Output) -> None:
    job = run.reader.job(args.domain, completed=args.completed)
    out.print(cli_output.job_info(job))


@reading
def cmd_domjobabort(run: Runner, args: Args, out: Output) -> None:
    run.reader.abort_job(args.domain)


