"""virsh's snapshot commands."""

from __future__ import annotations

import os

from qsnap.cli import output as cli_output
from qsnap.cli.args import (
    UsageError,
    attribute_of,
)
from qsnap.cli.runner import Args, Output, Runner, exclusive, read_file, reading, snapshot_arg
from qsnap.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NoSnapshotError,
    OperationFailedError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.engine import Engine
    from qsnap.plan.flags import CreateFlags, ListFilter


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


async def cmd_snapshot_create(engine: Engine, args: Args, out: Output) -> None:
    path = args.xmlfile
    flags = _create_flags(args, redefine=args.redefine, current=args.current)
    xml = read_file(path) if path else None
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


async def cmd_snapshot_create_as(engine: Engine, args: Args, out: Output) -> None:
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
    exclusive(args, ("tree", "name"), ("parent", "roots"), ("parent", "tree"),
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


@reading
def cmd_snapshot_list(run: Runner, args: Args, out: Output) -> None:
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


@reading
def cmd_snapshot_info(run: Runner, args: Args, out: Output) -> None:
    info = run.reader.info(args.domain, snapshot_arg(args))
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


@reading
def cmd_snapshot_dumpxml(run: Runner, args: Args, out: Output) -> None:
    out.print(run.reader.get_xml(args.domain, args.snapshotname, secure=args.security_info))


@reading
def cmd_snapshot_current(run: Runner, args: Args, out: Output) -> None:
    if args.snapshotname is not None:
        exclusive(args, ("name", "snapshotname"))
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


@reading
def cmd_snapshot_parent(run: Runner, args: Args, out: Output) -> None:
    snapshot = snapshot_arg(args)
    parent = run.reader.parent(args.domain, snapshot)
    if parent is None:
        name = snapshot if snapshot is not None else run.reader.current(args.domain)
        raise UsageError(f"snapshot '{name}' has no parent")
    out.print(parent)


async def cmd_snapshot_revert(engine: Engine, args: Args, out: Output) -> None:
    snapshot = snapshot_arg(args)
    from qsnap.plan.flags import RevertFlags
    flags = RevertFlags(running=args.running, paused=args.paused, force=args.force,
                        reset_nvram=args.reset_nvram)
    name = await engine.revert(args.domain, snapshot, flags, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {name} reverted\n")


async def cmd_snapshot_delete(engine: Engine, args: Args, out: Output) -> None:
    from qsnap.plan.flags import DeleteFlags
    flags = DeleteFlags(children=args.children, children_only=args.children_only,
                        metadata_only=args.metadata)
    plan = await engine.delete(args.domain, snapshot_arg(args), flags, progress=out.progress)
    out.end_progress()
    out.extra(f"Domain snapshot {plan.target} children deleted\n" if flags.children_only
              else f"Domain snapshot {plan.target} deleted\n")


async def cmd_snapshot_edit(engine: Engine, args: Args, out: Output) -> None:
    exclusive(args, ("rename", "clone"))
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


