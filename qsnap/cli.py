"""``qsnap``: a virsh-style command line over :class:`qsnap.engine.Engine`.

Command names, argument order and flags are virsh's, so habits carry over. Errors print
``error: <message>`` on stderr and exit 1; no traceback reaches a user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import NoReturn

from qsnap import (
    CreateFlags,
    DeleteFlags,
    Engine,
    InvalidArgumentError,
    ListFilter,
    NoSnapshotError,
    Progress,
    QsnapError,
    RevertFlags,
    cli_output,
    format_snapshot,
    parse_snapshot,
    snapshot_xml_from_args,
)

MAX_XML_FILE = 10 * 1024 * 1024  # virsh's limit for XML files


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes the way every other qsnap error is reported."""

    def error(self, message: str) -> NoReturn:
        raise InvalidArgumentError(f"{message} (see 'qsnap {self.prog.split()[-1]} --help')"
                                   if " " in self.prog else message)


class _Output:
    def __init__(self, quiet: bool, progress_json: bool = False) -> None:
        self.quiet = quiet
        self.progress_json = progress_json
        self._progress_shown = False

    def progress(self, report: Progress) -> None:
        """With --progress-json, one JSON object per report on stderr (for automation);
        else one line on stderr, redrawn in place, only on a terminal and without --quiet."""
        if self.progress_json:
            sys.stderr.write(cli_output.progress_event(report) + "\n")
            sys.stderr.flush()
            return
        if self.quiet or not sys.stderr.isatty():
            return
        line = cli_output.progress_line(report.operation, report.done, report.total, report.rate,
                             report.remaining)
        sys.stderr.write(f"\r\x1b[K{line}")
        sys.stderr.flush()
        self._progress_shown = True

    def end_progress(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\n")
            self._progress_shown = False

    def print(self, text: str) -> None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")

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


def _snapshot_arg(args: argparse.Namespace, option: str = "snapshotname") -> str | None:
    """virsh's {SNAPSHOT | --current}: the name, or None for the current snapshot."""
    name = getattr(args, option)
    if name is not None and args.current:
        raise InvalidArgumentError(f"--{option} and --current are mutually exclusive")
    if name is None and not args.current:
        raise InvalidArgumentError(f"--{option} or --current is required")
    return name


# -- commands ------------------------------------------------------------------------------------


async def cmd_define(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    name = await engine.define(_read_file(args.file))
    out.extra(f"Domain '{name}' defined from {args.file}")


async def cmd_undefine(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    await engine.undefine(args.domain, snapshots_metadata=args.snapshots_metadata)
    out.extra(f"Domain '{args.domain}' has been undefined")


async def cmd_dumpxml(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    out.print(await engine.domain_xml(args.domain, secure=args.security_info))


async def cmd_start(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    info = await engine.start(args.domain, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain '{args.domain}' started (accelerator: {info.accel})")


async def cmd_destroy(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    await engine.destroy(args.domain)
    out.extra(f"Domain '{args.domain}' destroyed")


async def cmd_attach(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    info = await engine.attach(args.domain, args.qmp)
    out.extra(f"Domain '{args.domain}' attached (QEMU pid {info.pid}, accelerator: {info.accel})")


def _run_state(args: argparse.Namespace) -> bool | None:
    """virsh's {--running | --paused}: None keeps the state recorded in the image."""
    if args.running and args.paused:
        raise InvalidArgumentError("--running and --paused are mutually exclusive")
    return True if args.running else False if args.paused else None


async def cmd_save(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    xml = _read_file(args.xml) if args.xml else None
    await engine.save(args.domain, args.file, running=_run_state(args), xml=xml,
                      progress=out.progress)
    out.end_progress()
    out.extra(f"Domain '{args.domain}' saved to {args.file}")


async def cmd_restore(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    xml = _read_file(args.xml) if args.xml else None
    await engine.restore(args.file, running=_run_state(args), xml=xml, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain restored from {args.file}")


async def cmd_managedsave(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    await engine.managedsave(args.domain, running=_run_state(args), progress=out.progress)
    out.end_progress()
    out.extra(f"Domain '{args.domain}' state saved by qsnap")


async def cmd_save_image_dumpxml(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    out.print(await engine.save_image_xml(args.file, secure=args.security_info))


async def cmd_shutdown(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    await engine.shutdown(args.domain)
    out.extra(f"Domain '{args.domain}' is being shutdown")


async def cmd_domstate(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    out.print(await engine.domstate(args.domain))


async def cmd_list(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    domains = [d for d in await engine.domains()
               if args.all or (d.state == "shut off") == args.inactive]
    if args.json:
        out.print(json.dumps([asdict(d) for d in domains], indent=2))
    elif args.name:
        out.print("".join(f"{d.name}\n" for d in domains))
    else:
        rows = [["-", d.name, d.state] for d in domains]
        out.print(cli_output.table(["Id", "Name", "State"], rows, header=not out.quiet))


def _create_flags(args: argparse.Namespace, redefine: bool = False,
                  current: bool = False) -> CreateFlags:
    return CreateFlags(redefine=redefine, current=current, no_metadata=args.no_metadata,
                       halt=args.halt, disk_only=args.disk_only,
                       reuse_external=args.reuse_external, quiesce=args.quiesce,
                       atomic=args.atomic, live=args.live, validate=args.validate).check()


async def cmd_snapshot_create(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    if args.xmlfile and args.xmlfile_opt:
        raise InvalidArgumentError("give the XML file once, as an argument or with --xmlfile")
    path = args.xmlfile or args.xmlfile_opt
    flags = _create_flags(args, redefine=args.redefine, current=args.current)
    xml = _read_file(path) if path else None
    if args.print_xml:
        snap = parse_snapshot(xml or "<domainsnapshot/>", redefine=flags.redefine,
                              validate=flags.validate)
        out.print(format_snapshot(snap))
        return
    name = await engine.create(args.domain, xml, flags, live_strategy=args.live_strategy,
                               progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {name} created from '{path}'" if path
              else f"Domain snapshot {name} created")


async def cmd_snapshot_create_as(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    name = args.name_opt if args.name_opt is not None else args.name
    description = args.description_opt if args.description_opt is not None else args.description
    if args.name_opt is not None and args.name is not None:
        raise InvalidArgumentError("give the snapshot name once, as an argument or with --name")
    flags = _create_flags(args)
    xml = snapshot_xml_from_args(name, description, args.memspec, args.diskspec,
                                 disk_only=args.disk_only)
    if args.print_xml:
        out.print(xml)
        return
    created = await engine.create(args.domain, xml, flags, live_strategy=args.live_strategy,
                                  progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {created} created")


def _list_filter(args: argparse.Namespace) -> ListFilter:
    exclusive = [("tree", args.tree, "name", args.name),
                 ("parent", args.parent, "roots", args.roots),
                 ("parent", args.parent, "tree", args.tree),
                 ("roots", args.roots, "tree", args.tree)]
    for first, a, second, b in exclusive:
        if a and b:
            raise InvalidArgumentError(f"--{first} and --{second} are mutually exclusive")
    filters = ("leaves", "no_leaves", "inactive", "active", "disk_only", "internal", "external")
    for option in filters:
        if getattr(args, option) and args.tree:
            raise InvalidArgumentError(
                f"--{option.replace('_', '-')} and --tree are mutually exclusive")
    return ListFilter(
        roots=args.roots, leaves=args.leaves, no_leaves=args.no_leaves, metadata=args.metadata,
        no_metadata=args.no_metadata, inactive=args.inactive, active=args.active,
        disk_only=args.disk_only, internal=args.internal, external=args.external,
        topological=args.topological, start=args.from_, from_current=args.current,
        descendants=args.descendants or (args.tree and (args.from_ or args.current)),
    ).check()


async def cmd_snapshot_list(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    flt = _list_filter(args)
    if args.tree:
        tree = await engine.tree(args.domain)
        start = args.from_ or (tree.current if args.current else None)
        if args.current and start is None:
            raise NoSnapshotError(f"domain '{args.domain}' has no current snapshot")
        roots = [tree.get(start).name] if start is not None else tree.roots()
        out.print(cli_output.tree(roots, tree.children))
        return
    snapshots = await engine.list(args.domain, flt)
    if args.json:
        current = await engine.current(args.domain)
        out.print(json.dumps([{**asdict(s), "location": s.location, "current": s.name == current}
                              for s in snapshots], indent=2))
    elif args.name:
        out.print("".join(f"{s.name}\t{s.parent or ''}\n" if args.parent else f"{s.name}\n"
                          for s in snapshots))
    else:
        headers = ["Name", "Creation Time", "State"] + (["Parent"] if args.parent else [])
        rows = [[s.name, cli_output.local_time(s.creation_time), s.state]
                + ([s.parent or ""] if args.parent else []) for s in snapshots]
        out.print(cli_output.table(headers, rows, header=not out.quiet))


async def cmd_snapshot_info(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    info = await engine.info(args.domain, _snapshot_arg(args))
    if args.json:
        out.print(json.dumps(asdict(info), indent=2))
        return
    out.print(cli_output.key_values([
        ("Name", info.name), ("Domain", info.domain), ("Current", "yes" if info.current else "no"),
        ("State", info.state), ("Location", info.location), ("Parent", info.parent or "-"),
        ("Children", info.children), ("Descendants", info.descendants),
        ("Metadata", "yes" if info.metadata else "no"),
        *([("Memory capture", info.memory_capture)] if info.memory_capture else []),
    ]))


async def cmd_snapshot_dumpxml(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    out.print(await engine.get_xml(args.domain, args.snapshotname, secure=args.security_info))


async def cmd_snapshot_current(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    if args.snapshotname is not None:
        if args.name:
            raise InvalidArgumentError("--name and --snapshotname are mutually exclusive")
        await engine.set_current(args.domain, args.snapshotname)
        out.extra(f"Snapshot {args.snapshotname} set as current")
        return
    current = await engine.current(args.domain)
    if current is None:
        raise NoSnapshotError(f"domain '{args.domain}' has no current snapshot")
    if args.name:
        out.print(current)
    else:
        out.print(await engine.get_xml(args.domain, current, secure=args.security_info))


async def cmd_snapshot_parent(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    snapshot = _snapshot_arg(args)
    parent = await engine.parent(args.domain, snapshot)
    if parent is None:
        name = snapshot if snapshot is not None else await engine.current(args.domain)
        raise NoSnapshotError(f"snapshot '{name}' has no parent")
    out.print(parent)


async def cmd_snapshot_revert(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    snapshot = _snapshot_arg(args)
    flags = RevertFlags(running=args.running, paused=args.paused, force=args.force,
                        reset_nvram=args.reset_nvram).check()
    name = await engine.revert(args.domain, snapshot, flags, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {name} reverted")


async def cmd_snapshot_delete(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    flags = DeleteFlags(children=args.children, children_only=args.children_only,
                        metadata_only=args.metadata).check()
    plan = await engine.delete(args.domain, _snapshot_arg(args), flags, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {plan.target} children deleted" if flags.children_only
              else f"Domain snapshot {plan.target} deleted")


async def cmd_recover(engine: Engine, args: argparse.Namespace, out: _Output) -> None:
    lines = await engine.recover(args.domain)
    out.extra("\n".join(lines) if lines else f"Domain {args.domain}: nothing to recover")


# -- argument parsing ----------------------------------------------------------------------------


def _flag(parser: argparse.ArgumentParser, *names: str, help: str) -> None:
    parser.add_argument(*names, action="store_true", help=help)


def _create_options(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--no-metadata", help="take snapshot but create no metadata")
    _flag(parser, "--halt", help="halt domain after snapshot is created")
    _flag(parser, "--disk-only", help="capture disk state but not vm state")
    _flag(parser, "--reuse-external", help="reuse any existing external files")
    _flag(parser, "--quiesce", help="quiesce guest's file systems")
    _flag(parser, "--atomic", help="require atomic operation")
    _flag(parser, "--live", help="take a live snapshot")
    parser.add_argument("--live-strategy", choices=("background", "precopy", "paused"),
                        help="how to capture memory (default: background where QEMU offers "
                             "it with --live, else precopy; paused without --live)")
    _flag(parser, "--validate", help="validate the XML strictly against qsnap's schema rules")
    _flag(parser, "--print-xml", help="print XML document rather than create")


def _snapshot_ref(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("snapshotname", nargs="?", help="snapshot name")
    _flag(parser, "--current", help=f"{what} the current snapshot")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qsnap", description="Snapshots of QEMU guests, the way virsh does them.")
    parser.add_argument("--state-dir", help="where metadata lives (default: $QSNAP_STATE_DIR, "
                                            "else $XDG_STATE_HOME/qsnap)")
    _flag(parser, "-q", "--quiet", help="quiet mode: no informational messages or headers")
    _flag(parser, "--progress-json", help="report the progress of long operations (memory "
                                          "save and load, merges) as one JSON object per line "
                                          "on stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, handler: object, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("define", cmd_define, "define a domain from an XML file")
    sub.add_argument("file")
    sub = command("undefine", cmd_undefine, "undefine a domain")
    sub.add_argument("domain")
    _flag(sub, "--snapshots-metadata", help="remove all snapshot metadata too")
    sub = command("dumpxml", cmd_dumpxml, "domain information in XML")
    sub.add_argument("domain")
    _flag(sub, "--security-info", help="include security sensitive information in XML dump")
    sub = command("start", cmd_start, "start a (previously defined) inactive domain")
    sub.add_argument("domain")
    sub = command("destroy", cmd_destroy, "stop a domain at once (its QEMU is ended)")
    sub.add_argument("domain")
    sub = command("attach", cmd_attach, "adopt a QEMU launched by someone else, via its QMP socket")
    sub.add_argument("domain")
    sub.add_argument("--qmp", required=True, metavar="SOCKET", help="path of its QMP unix socket")
    for name, handler, text in (
            ("save", cmd_save, "save a domain's state to a file, and stop it"),
            ("restore", cmd_restore, "restore a domain from a saved state file"),
            ("managedsave", cmd_managedsave, "save a domain's state so 'start' resumes it")):
        sub = command(name, handler, text)
        if name == "restore":
            sub.add_argument("file")
        else:
            sub.add_argument("domain")
        if name == "save":
            sub.add_argument("file")
        if name != "managedsave":
            sub.add_argument("--xml", metavar="FILE", help="domain XML to store/use instead")
        _flag(sub, "--running", help="run the guest after restore")
        _flag(sub, "--paused", help="leave the guest paused after restore")
        _flag(sub, "--bypass-cache", help="accepted for virsh compatibility; no effect yet")
        _flag(sub, "--verbose", help="accepted for virsh compatibility; no effect yet")
    sub = command("save-image-dumpxml", cmd_save_image_dumpxml,
                  "the domain XML inside a saved state file")
    sub.add_argument("file")
    _flag(sub, "--security-info", help="include security sensitive information in XML dump")
    sub = command("shutdown", cmd_shutdown, "gracefully shutdown a domain (ACPI power button)")
    sub.add_argument("domain")
    sub = command("domstate", cmd_domstate, "domain state")
    sub.add_argument("domain")
    sub = command("list", cmd_list, "list domains")
    _flag(sub, "--all", help="list inactive and active domains")
    _flag(sub, "--inactive", help="list inactive domains")
    _flag(sub, "--name", help="list domain names only")
    _flag(sub, "--json", help="machine-readable output")

    sub = command("snapshot-create", cmd_snapshot_create, "create a snapshot from XML")
    sub.add_argument("domain")
    sub.add_argument("xmlfile", nargs="?", help="domain snapshot XML")
    sub.add_argument("--xmlfile", dest="xmlfile_opt", metavar="FILE", help="domain snapshot XML")
    _flag(sub, "--redefine", help="redefine metadata for existing snapshot")
    _flag(sub, "--current", help="with redefine, set current snapshot")
    _create_options(sub)

    sub = command("snapshot-create-as", cmd_snapshot_create_as,
                  "create a snapshot from a set of args")
    sub.add_argument("domain")
    sub.add_argument("name", nargs="?", help="name of snapshot")
    sub.add_argument("description", nargs="?", help="description of snapshot")
    sub.add_argument("--name", dest="name_opt", metavar="NAME", help="name of snapshot")
    sub.add_argument("--description", dest="description_opt", metavar="TEXT",
                     help="description of snapshot")
    sub.add_argument("--memspec", help="memory attributes: [file=]name[,snapshot=type]")
    sub.add_argument("--diskspec", action="append", metavar="SPEC",
                     help="disk attributes: disk[,snapshot=type][,driver=type][,stype=type]"
                          "[,file=name]")
    _create_options(sub)

    sub = command("snapshot-list", cmd_snapshot_list, "list snapshots for a domain")
    sub.add_argument("domain")
    sub.add_argument("from_", nargs="?", metavar="from", help="limit list to children of this")
    sub.add_argument("--from", dest="from_opt", metavar="SNAPSHOT",
                     help="limit list to children of given snapshot")
    for option, text in (
            ("--parent", "add a column showing parent snapshot"),
            ("--roots", "list only snapshots without parents"),
            ("--leaves", "list only snapshots without children"),
            ("--no-leaves", "list only snapshots that are not leaves (with children)"),
            ("--metadata", "list only snapshots that have metadata that would prevent undefine"),
            ("--no-metadata", "list only snapshots that have no metadata managed by qsnap"),
            ("--inactive", "filter by snapshots taken while inactive"),
            ("--active", "filter by snapshots taken while active (full system snapshots)"),
            ("--disk-only", "filter by disk-only snapshots"),
            ("--internal", "filter by internal snapshots"),
            ("--external", "filter by external snapshots"),
            ("--tree", "list snapshots in a tree"),
            ("--current", "limit list to children of current snapshot"),
            ("--descendants", "with --from, list all descendants"),
            ("--name", "list snapshot names only"),
            ("--topological", "sort list topologically rather than by name"),
            ("--json", "machine-readable output")):
        _flag(sub, option, help=text)

    sub = command("snapshot-info", cmd_snapshot_info, "snapshot information")
    sub.add_argument("domain")
    _snapshot_ref(sub, "info on")
    _flag(sub, "--json", help="machine-readable output")
    sub = command("snapshot-dumpxml", cmd_snapshot_dumpxml, "dump XML for a domain snapshot")
    sub.add_argument("domain")
    sub.add_argument("snapshotname")
    _flag(sub, "--security-info", help="include security sensitive information in XML dump")
    sub = command("snapshot-current", cmd_snapshot_current, "get or set the current snapshot")
    sub.add_argument("domain")
    sub.add_argument("snapshotname", nargs="?", help="name of existing snapshot to make current")
    _flag(sub, "--name", help="list the name, rather than the full xml")
    _flag(sub, "--security-info", help="include security sensitive information in XML dump")
    sub = command("snapshot-parent", cmd_snapshot_parent, "get the name of a snapshot's parent")
    sub.add_argument("domain")
    _snapshot_ref(sub, "find parent of")
    sub = command("snapshot-revert", cmd_snapshot_revert, "revert a domain to a snapshot")
    sub.add_argument("domain")
    _snapshot_ref(sub, "revert to")
    _flag(sub, "--running", help="after reverting, change state to running")
    _flag(sub, "--paused", help="after reverting, change state to paused")
    _flag(sub, "--force", help="try harder on risky reverts")
    _flag(sub, "--reset-nvram", help="re-initialize NVRAM from its pristine template")
    sub = command("recover", cmd_recover, "finish what a crash left half-done on a domain")
    sub.add_argument("domain")
    sub = command("snapshot-delete", cmd_snapshot_delete, "delete a domain snapshot")
    sub.add_argument("domain")
    _snapshot_ref(sub, "delete")
    _flag(sub, "--children", help="delete snapshot and all children")
    _flag(sub, "--children-only", help="delete children but not snapshot")
    _flag(sub, "--metadata", help="delete only qsnap metadata, leaving snapshot contents behind")
    return parser


def _normalise(args: argparse.Namespace) -> argparse.Namespace:
    if args.command == "snapshot-list":
        if args.from_ is not None and args.from_opt is not None:
            raise InvalidArgumentError("give the starting snapshot once, as an argument or "
                                       "with --from")
        args.from_ = args.from_ if args.from_ is not None else args.from_opt
    return args


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"warning: {record.getMessage()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qsnap`` command; returns the exit status."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())
    logger = logging.getLogger("qsnap")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        args = _normalise(build_parser().parse_args(argv))
        engine = Engine(args.state_dir)
        asyncio.run(args.handler(engine, args, _Output(args.quiet, args.progress_json)))
        return 0
    except QsnapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still no traceback for the user, but say what it was
        print(f"error: internal error in qsnap ({type(exc).__name__}: {exc}); "
              "please report it", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
