"""virsh's domain commands: define, start, save and restore, state and block device listings,
power, recover."""

from __future__ import annotations

import os

from qsnap.cli import output as cli_output
from qsnap.cli.args import UsageError
from qsnap.cli.runner import Args, Output, Runner, exclusive, read_file, reading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.engine import Engine


async def cmd_define(engine: Engine, args: Args, out: Output) -> None:
    name = await engine.define(read_file(args.file))
    out.extra(f"Domain '{name}' defined from {args.file}\n")


async def cmd_undefine(engine: Engine, args: Args, out: Output) -> None:
    await engine.undefine(args.domain, snapshots_metadata=args.snapshots_metadata)
    out.extra(f"Domain '{args.domain}' has been undefined\n")


@reading
def cmd_dumpxml(run: Runner, args: Args, out: Output) -> None:
    out.print(run.reader.domain_xml(args.domain, secure=args.security_info))


async def cmd_start(engine: Engine, args: Args, out: Output) -> None:
    await engine.start(args.domain, reset_nvram=args.reset_nvram, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain '{args.domain}' started\n")


async def cmd_destroy(engine: Engine, args: Args, out: Output) -> None:
    await engine.destroy(args.domain)
    out.extra(f"Domain '{args.domain}' destroyed\n")


async def cmd_attach(engine: Engine, args: Args, out: Output) -> None:
    info = await engine.attach(args.domain, args.qmp)
    out.extra(f"Domain '{args.domain}' attached (QEMU pid {info.pid}, accelerator: "
              f"{info.accel})\n")


def _run_state(args: Args) -> bool | None:
    """virsh's {--running | --paused}: None keeps the state recorded in the image."""
    exclusive(args, ("running", "paused"))
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


async def cmd_save(engine: Engine, args: Args, out: Output) -> None:
    xml = read_file(args.xml) if args.xml else None
    await engine.save(args.domain, os.path.abspath(args.file), running=_run_state(args), xml=xml,
                      image_format=args.image_format, parallel_channels=_channels(args),
                      progress=out.progress)
    out.end_progress()
    out.extra(f"\nDomain '{args.domain}' saved to {args.file}\n")


async def cmd_restore(engine: Engine, args: Args, out: Output) -> None:
    xml = read_file(args.xml) if args.xml else None
    await engine.restore(os.path.abspath(args.file), running=_run_state(args), xml=xml,
                         parallel_channels=_channels(args), progress=out.progress)
    out.end_progress()
    out.extra(f"Domain restored from {args.file}\n")


async def cmd_managedsave(engine: Engine, args: Args, out: Output) -> None:
    await engine.managedsave(args.domain, running=_run_state(args),
                             image_format=args.image_format,
                             parallel_channels=_channels(args), progress=out.progress)
    out.end_progress()
    out.extra(f"\nDomain '{args.domain}' state saved by qsnap\n")


async def cmd_managedsave_remove(engine: Engine, args: Args, out: Output) -> None:
    if await engine.managedsave_remove(args.domain):
        out.print(f"Removed managedsave image for domain '{args.domain}'\n")
    else:
        out.print(f"Domain '{args.domain}' has no manage save image; removal skipped\n")


async def cmd_save_image_dumpxml(engine: Engine, args: Args, out: Output) -> None:
    out.print(await engine.save_image_xml(os.path.abspath(args.file), secure=args.security_info))


async def cmd_shutdown(engine: Engine, args: Args, out: Output) -> None:
    await engine.shutdown(args.domain)
    out.extra(f"Domain '{args.domain}' is being shutdown\n")


@reading
def cmd_domstate(run: Runner, args: Args, out: Output) -> None:
    out.print(run.reader.domstate(args.domain, reason=args.reason) + "\n")


@reading
def cmd_list(run: Runner, args: Args, out: Output) -> None:
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


@reading
def cmd_domblklist(run: Runner, args: Args, out: Output) -> None:
    disks = run.reader.disks(args.domain)
    if args.details:
        rows = [[d.type, d.device, d.target, d.source or "-"] for d in disks]
        out.print(cli_output.table(["Type", "Device", "Target", "Source"], rows,
                                   header=not out.quiet))
    else:
        rows = [[d.target, d.source or "-"] for d in disks]
        out.print(cli_output.table(["Target", "Source"], rows, header=not out.quiet))


@reading
def cmd_domblkinfo(run: Runner, args: Args, out: Output) -> None:
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


@reading
def cmd_dominfo(run: Runner, args: Args, out: Output) -> None:
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


async def cmd_suspend(engine: Engine, args: Args, out: Output) -> None:
    await engine.suspend(args.domain)
    out.extra(f"Domain '{args.domain}' suspended\n")


async def cmd_resume(engine: Engine, args: Args, out: Output) -> None:
    await engine.resume(args.domain)
    out.extra(f"Domain '{args.domain}' resumed\n")


async def cmd_reboot(engine: Engine, args: Args, out: Output) -> None:
    await engine.reboot(args.domain, mode=args.mode)
    out.extra(f"Domain '{args.domain}' is being rebooted\n")


async def cmd_reset(engine: Engine, args: Args, out: Output) -> None:
    await engine.reboot(args.domain, mode="reset")
    out.extra(f"Domain '{args.domain}' was reset\n")


async def cmd_recover(engine: Engine, args: Args, out: Output) -> None:
    lines = await engine.recover(args.domain)
    out.extra("".join(f"{line}\n" for line in lines) if lines
              else f"Domain {args.domain}: nothing to recover\n")


