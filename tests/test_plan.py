"""Plans: libvirt's rules and messages, checked without QEMU or files."""

from __future__ import annotations

import pytest

from qsnap.errors import InvalidArgumentError, NoSnapshotError, NotSupportedError
from qsnap.model.capabilities import StreamSupport
from qsnap.model.domain import parse_domain
from qsnap.model.names import check_snapshot_name
from qsnap.model.snapshot import parse_snapshot
from qsnap.model.tree import SnapshotSummary, SnapshotTree
from qsnap.plan.create_as import snapshot_xml_from_args, split_spec
from qsnap.plan.delete import plan_delete_metadata
from qsnap.plan.disks import align_disks, default_overlay_path
from qsnap.plan.flags import CreateFlags, DeleteFlags, ListFilter, RevertFlags
from qsnap.plan.listing import select_snapshots
from qsnap.plan.redefine import plan_redefine
from qsnap.plan.save import choose_image_format

UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
DOMAIN = parse_domain(f"""<domain type='qemu'><name>g</name><uuid>{UUID}</uuid>
  <memory>1024</memory><devices>
  <disk type='file'><driver type='qcow2'/><source file='/img/a.qcow2'/><target dev='vda'/></disk>
  <disk type='file' snapshot='no'><driver type='raw'/><source file='/img/b.raw'/>
    <target dev='vdb'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc'/></disk>
  </devices></domain>""")


# -- names and flags -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "message"), [
    ("", "can't be empty"), (None, "can't be empty"), ("a/b", "can't contain '/'"),
    (".", "can't start with '.'"), ("..", "can't start with '.'"), (".hidden", "start with '.'"),
    ("a\0b", "can't contain NUL"), ("x" * 252, "too long for a file name"),
    ("é" * 126, "too long for a file name"),
])
def test_bad_snapshot_names(name: str | None, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        check_snapshot_name(name)


@pytest.mark.parametrize("name", ["a", "my snap name", "1386166249", "x" * 251, "snap.1"])
def test_good_snapshot_names(name: str) -> None:
    assert check_snapshot_name(name) == name


@pytest.mark.parametrize(("kind", "fields", "message"), [
    (CreateFlags, dict(current=True), "--current requires --redefine"),
    (CreateFlags, dict(redefine=True, no_metadata=True), "--redefine and --no-metadata are"),
    (CreateFlags, dict(redefine=True, halt=True), "--redefine and --halt are mutually exclusive"),
    (CreateFlags, dict(redefine=True, live=True), "--redefine and --live are mutually exclusive"),
    (CreateFlags, dict(quiesce=True), "--quiesce requires --disk-only"),
    (DeleteFlags, dict(children=True, children_only=True), "--children and --children-only"),
    (RevertFlags, dict(running=True, paused=True), "--running and --paused are mutually exclusive"),
    (ListFilter, dict(descendants=True), "--descendants requires either --from or --current"),
    (ListFilter, dict(roots=True, start="a"), "--roots and --from are mutually exclusive"),
    (ListFilter, dict(start="a", from_current=True), "--from and --current are mutually exclusive"),
])
def test_flag_rules(kind: type[CreateFlags | DeleteFlags | RevertFlags | ListFilter],
                    fields: dict[str, object], message: str) -> None:
    """Refused when made, so that no code can hold (or forget to check) a bad set."""
    with pytest.raises(InvalidArgumentError, match=message):
        kind(**fields)  # type: ignore[arg-type]


# -- aligning disks ----------------------------------------------------------------------------

def test_default_overlay_path() -> None:
    assert default_overlay_path("/img/vm.qcow2", "s1") == "/img/vm.s1"
    assert default_overlay_path("/img.d/vm", "s1") == "/img.d/vm.s1"


def test_align_fills_every_disk_in_domain_order() -> None:
    snap = parse_snapshot("<domainsnapshot><name>s1</name><disks><disk name='/img/a.qcow2'/>"
                          "</disks></domainsnapshot>")
    disks = align_disks(snap, DOMAIN, "external", uniform_internal=True,
                        regular_files={"/img/a.qcow2"})
    assert [(d.name, d.snapshot, d.source.path) for d in disks] == [
        ("vda", "external", "/img/a.s1"), ("vdb", "no", None), ("hdc", "no", None)]


@pytest.mark.parametrize(("disks", "location", "files", "error", "message"), [
    ("<disk name='vdz'/>", "external", (), InvalidArgumentError, "no disk named 'vdz'"),
    ("<disk name='vda'/><disk name='/img/a.qcow2'/>", "external", (), InvalidArgumentError,
     "disk '/img/a.qcow2' specified twice"),
    ("<disk name='vda'/><disk name='vdb'/><disk name='hdc'/><disk name='vdq'/>", "external", (),
     InvalidArgumentError, "too many disk snapshot requests for domain"),
    ("<disk name='vda' snapshot='external'/>", "internal", (), InvalidArgumentError,
     "disk 'vda' must use snapshot mode 'internal'"),
    ("<disk name='vda' snapshot='no'><source file='/n'/></disk>", "external", (),
     InvalidArgumentError, "file '/n' for disk 'vda' requires use of external snapshot mode"),
    ("<disk name='vda'/>", "external", (), NotSupportedError,
     "source for disk 'vda' is not a regular file"),
    ("<disk name='vda' type='block'/>", "external", (), NotSupportedError,
     "cannot generate external snapshot name for disk 'vda' on a 'block' device"),
])
def test_align_errors(disks: str, location: str, files: tuple, error: type,
                      message: str) -> None:
    snap = parse_snapshot(f"<domainsnapshot><name>s1</name><disks>{disks}</disks>"
                          "</domainsnapshot>")
    with pytest.raises(error, match=message):
        align_disks(snap, DOMAIN, location, uniform_internal=True, regular_files=files)


# -- redefine --------------------------------------------------------------------------------

def tree_of(links: dict[str, str | None], current: str | None = None,
            states: dict[str, str] | None = None) -> SnapshotTree:
    states = states or {}
    return SnapshotTree([SnapshotSummary(n, p, 1, states.get(n, "shutoff"), False)
                         for n, p in links.items()], current, domain="g")


def redefined(name: str, parent: str | None = None, state: str = "shutoff",
              uuid: str = UUID, extra: str = "") -> object:
    parent_xml = f"<parent><name>{parent}</name></parent>" if parent else ""
    return parse_snapshot(f"<domainsnapshot><name>{name}</name><state>{state}</state>"
                          f"<creationTime>7</creationTime>{parent_xml}<domain><uuid>{uuid}"
                          f"</uuid></domain>{extra}</domainsnapshot>", redefine=True)


REDEFINE = CreateFlags(redefine=True)


@pytest.mark.parametrize(("snap", "links", "flags", "message"), [
    (lambda: redefined("a", parent="a"), {}, REDEFINE, "cannot set moment a as its own parent"),
    (lambda: redefined("a", parent="ghost"), {}, REDEFINE, "parent ghost for moment a not found"),
    (lambda: redefined("a", parent="c"), {"a": None, "b": "a", "c": "b"}, REDEFINE,
     "parent c would create cycle to a"),
    (lambda: redefined("a", uuid="9d37b878-a7cc-9f9a-b78f-49b3abad25a8"), {}, REDEFINE,
     f"definition for snapshot a must use uuid {UUID}"),
    (lambda: redefined("a"), {}, CreateFlags(redefine=True, disk_only=True),
     "disk-only flag for snapshot a requires disk-snapshot state"),
    (lambda: redefined("a/b"), {}, REDEFINE, "name can't contain '/'"),
])
def test_redefine_rules(snap, links: dict, flags: CreateFlags, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        plan_redefine(snap(), DOMAIN, tree_of(links), None, flags)


def test_redefine_replacing_keeps_online_offline_and_disk_only_apart() -> None:
    existing = redefined("a", state="running")
    with pytest.raises(InvalidArgumentError, match="between online and offline"):
        plan_redefine(redefined("a", state="shutoff"), DOMAIN, tree_of({"a": None}), existing,
                      REDEFINE)
    with pytest.raises(InvalidArgumentError, match="between disk only and full system"):
        plan_redefine(redefined("a", state="disk-snapshot"), DOMAIN, tree_of({"a": None}),
                      redefined("a", state="shutoff"), REDEFINE)


def test_redefine_current_rules() -> None:
    tree = tree_of({"a": None, "b": "a"}, current="b")
    assert plan_redefine(redefined("c", "b"), DOMAIN, tree, None, REDEFINE).make_current is False
    assert plan_redefine(redefined("c", "b"), DOMAIN, tree, None,
                         CreateFlags(redefine=True, current=True)).make_current is True
    replaced = plan_redefine(redefined("b", "a"), DOMAIN, tree, redefined("b", "a"), REDEFINE)
    assert replaced.make_current and replaced.replaces
    assert replaced.snapshot.active is None


def test_redefine_aligns_disks_of_an_embedded_domain() -> None:
    domain_xml = DOMAIN.to_xml()
    snap = parse_snapshot(f"<domainsnapshot><name>s</name><state>disk-snapshot</state>"
                          f"<creationTime>3</creationTime><disks><disk name='vda'>"
                          f"<source file='/img/a.s'/></disk></disks>{domain_xml}"
                          "</domainsnapshot>", redefine=True)
    plan = plan_redefine(snap, DOMAIN, tree_of({}), None, REDEFINE)
    assert [(d.name, d.snapshot) for d in plan.snapshot.disks] == \
        [("vda", "external"), ("vdb", "no"), ("hdc", "no")]


# -- delete ----------------------------------------------------------------------------------

#  r ── a ── a1
#  │    └─── a2
#  └─── b
LINKS = {"r": None, "a": "r", "a1": "a", "a2": "a", "b": "r"}


def test_delete_reparents_children_to_the_parent() -> None:
    plan = plan_delete_metadata(tree_of(LINKS, current="b"), "a", DeleteFlags(metadata_only=True))
    assert plan.remove == ["a"] and plan.reparent == {"a1": "r", "a2": "r"}
    assert not plan.current_changes


def test_deleting_the_current_snapshot_makes_its_parent_current() -> None:
    plan = plan_delete_metadata(tree_of(LINKS, current="a"), "a", DeleteFlags())
    assert plan.current_changes and plan.current == "r"
    root = plan_delete_metadata(tree_of(LINKS, current="r"), "r", DeleteFlags())
    assert root.current_changes and root.current is None
    assert root.reparent == {"a": None, "b": None}


def test_delete_children_and_children_only() -> None:
    tree = tree_of(LINKS, current="a1")
    with_children = plan_delete_metadata(tree, "a", DeleteFlags(children=True))
    assert sorted(with_children.remove) == ["a", "a1", "a2"] and with_children.remove[-1] == "a"
    assert with_children.reparent == {} and with_children.current == "r"
    only = plan_delete_metadata(tree, "a", DeleteFlags(children_only=True))
    assert sorted(only.remove) == ["a1", "a2"] and only.current == "a"


def test_delete_unknown_snapshot() -> None:
    with pytest.raises(NoSnapshotError, match="no snapshot named 'zz'"):
        plan_delete_metadata(tree_of(LINKS), "zz", DeleteFlags())


# -- listing ---------------------------------------------------------------------------------

STATES = {"r": "shutoff", "a": "running", "a1": "disk-snapshot", "a2": "paused", "b": "shutoff"}


def listing(flt: ListFilter, current: str | None = "a") -> list[str]:
    tree = SnapshotTree([SnapshotSummary(n, p, 1, STATES[n], n in ("a1", "b"))
                         for n, p in LINKS.items()], current, domain="g")
    return [s.name for s in select_snapshots(tree, flt)]


@pytest.mark.parametrize(("flt", "expected"), [
    (ListFilter(), ["a", "a1", "a2", "b", "r"]),
    (ListFilter(roots=True), ["r"]),
    (ListFilter(leaves=True), ["a1", "a2", "b"]),
    (ListFilter(no_leaves=True), ["a", "r"]),
    (ListFilter(leaves=True, no_leaves=True), ["a", "a1", "a2", "b", "r"]),
    (ListFilter(metadata=True), ["a", "a1", "a2", "b", "r"]),
    (ListFilter(no_metadata=True), []),
    (ListFilter(inactive=True), ["b", "r"]),
    (ListFilter(active=True), ["a", "a2"]),
    (ListFilter(disk_only=True), ["a1"]),
    (ListFilter(active=True, disk_only=True), ["a", "a1", "a2"]),
    (ListFilter(internal=True), ["a", "a2", "r"]),
    (ListFilter(external=True), ["a1", "b"]),
    (ListFilter(external=True, inactive=True), ["b"]),
    (ListFilter(start="r"), ["a", "b"]),
    (ListFilter(start="r", descendants=True), ["a", "a1", "a2", "b"]),
    (ListFilter(from_current=True), ["a1", "a2"]),
    (ListFilter(topological=True), ["r", "a", "a1", "a2", "b"]),
])
def test_list_filters(flt: ListFilter, expected: list[str]) -> None:
    assert listing(flt) == expected


def test_list_from_current_without_current() -> None:
    with pytest.raises(NoSnapshotError, match="domain 'g' has no current snapshot"):
        listing(ListFilter(from_current=True), current=None)


# -- snapshot-create-as ------------------------------------------------------------------------

def test_split_spec_escapes_commas() -> None:
    assert split_spec("vda,snapshot=external,file=/path/to,,new") == \
        ["vda", "snapshot=external", "file=/path/to,new"]


def test_create_as_builds_virsh_xml() -> None:
    xml = snapshot_xml_from_args("s", "d&d", "/m,snapshot=external",
                                 ["vda,snapshot=external,file=/path/to,,new", "vdb,snapshot=no",
                                  "vdc,stype=block,file=/dev/x,driver=qcow2"])
    assert xml == ("<domainsnapshot>\n  <name>s</name>\n  <description>d&amp;d</description>\n"
                   "  <memory snapshot='external' file='/m'/>\n  <disks>\n"
                   "    <disk name='vda' snapshot='external'>\n"
                   "      <source file='/path/to,new'/>\n    </disk>\n"
                   "    <disk name='vdb' snapshot='no'/>\n"
                   "    <disk name='vdc' type='block'>\n      <driver type='qcow2'/>\n"
                   "      <source dev='/dev/x'/>\n    </disk>\n  </disks>\n</domainsnapshot>\n")
    assert parse_snapshot(xml, validate=True).disks[0].source.file == "/path/to,new"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memspec": "snapshot=external,bogus=1"}, "unable to parse memspec"),
    ({"memspec": "relative"}, "unable to parse memspec: relative"),
    ({"diskspecs": [""]}, "unable to parse diskspec"),
    ({"diskspecs": ["vda,colour=red"]}, "unable to parse diskspec: vda,colour=red"),
    ({"diskspecs": ["vda,stype=network"]}, "Unknown storage type: 'network'"),
    ({"memspec": "/m", "disk_only": True}, "--memspec and --disk-only are mutually exclusive"),
])
def test_create_as_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        snapshot_xml_from_args(**kwargs)


# -- create requests -------------------------------------------------------------------------

def test_create_request_refuses_taken_and_bad_names() -> None:
    from qsnap.errors import AlreadyExistsError
    from qsnap.plan.create import check_create_request
    snap = parse_snapshot("<domainsnapshot><name>s1</name></domainsnapshot>")
    with pytest.raises(AlreadyExistsError, match="domain 'g' already has a snapshot named 's1'"):
        check_create_request(snap, CreateFlags(), "g", name_taken=True)
    check_create_request(snap, CreateFlags(no_metadata=True), "g", name_taken=True)
    with pytest.raises(InvalidArgumentError, match=r"can't start with '\.'"):
        check_create_request(parse_snapshot("<domainsnapshot><name>.x</name></domainsnapshot>"),
                             CreateFlags(), "g", name_taken=False)


def test_redefine_checks_work_on_the_lazy_store_view(tmp_path) -> None:
    """The store's file-by-file view gives plan_redefine the same answers as the full tree."""
    from qsnap.store import StateDir
    state = StateDir(tmp_path)
    with state.locked("g") as (folder, _):
        folder.write_definition(DOMAIN)
        folder.save(put=[redefined("a"), redefined("b", "a"), redefined("c", "b")], current="c")
        lazy = folder.lazy_tree()
        assert "b" in lazy and "zz" not in lazy and lazy.current == "c"
        assert lazy.ancestors("c") == ["b", "a"] == folder.load_tree().ancestors("c")
        with pytest.raises(InvalidArgumentError, match="parent c would create cycle to a"):
            plan_redefine(redefined("a", "c"), DOMAIN, lazy, redefined("a"), REDEFINE)


def test_a_source_path_shared_by_two_disks_is_ambiguous() -> None:
    from qsnap.errors import XMLError
    shared = parse_domain("""<domain type='qemu'><name>g</name><memory>1024</memory><devices>
      <disk type='file'><source file='/img/s.qcow2'/><target dev='vda'/></disk>
      <disk type='file'><readonly/><source file='/img/s.qcow2'/><target dev='vdb'/></disk>
      </devices></domain>""")
    snap = parse_snapshot("<domainsnapshot><name>s</name><disks><disk name='/img/s.qcow2'/>"
                          "</disks></domainsnapshot>")
    with pytest.raises(XMLError, match=r"disk name ./img/s\.qcow2. is ambiguous: it is the "
                                       "source of disks vda, vdb"):
        align_disks(snap, shared, "external", uniform_internal=True, regular_files=())


# -- how memory is captured -----------------------------------------------------------------

@pytest.mark.parametrize(("kw", "expected"), [
    ({"live": True}, "background"),
    ({"live": True, "background_refusal": "QEMU 5.2 has none"}, "precopy"),
    ({"live": True, "requested": "precopy"}, "precopy"),
    ({"live": True, "requested": "paused"}, "paused"),
    ({"live": True, "running": False}, "paused"),
    ({}, "paused"),
    ({"requested": "paused"}, "paused"),
    ({"external": False}, "internal"),
])
def test_capture_strategy(kw: dict, expected: str) -> None:
    from qsnap.plan.full_snapshot import background_wanted, choose_capture
    args = {"external": True, "live": False, "requested": None, "running": True,
            "background_refusal": None, **kw}
    assert choose_capture(**args) == expected
    if expected == "background":  # the engine asks QEMU exactly when it may be chosen
        assert background_wanted(external=args["external"], live=args["live"],
                                 requested=args["requested"])


@pytest.mark.parametrize(("kw", "error", "message"), [
    ({"requested": "background"}, InvalidArgumentError, "'background' requires --live"),
    ({"live": True, "requested": "warp"}, InvalidArgumentError, "unknown live strategy 'warp'"),
    ({"live": True, "requested": "background", "background_refusal": "no uffd"},
     NotSupportedError, "background snapshots are not available here: no uffd"),
    ({"external": False, "requested": "paused"}, InvalidArgumentError, "external memory"),
])
def test_capture_strategy_refusals(kw: dict, error: type, message: str) -> None:
    from qsnap.plan.full_snapshot import choose_capture
    args = {"external": True, "live": False, "requested": None, "running": True,
            "background_refusal": None, **kw}
    with pytest.raises(error, match=message):
        choose_capture(**args)


def test_capture_note_lives_in_the_cookie_beside_libvirts() -> None:
    from lxml import etree

    from qsnap.model.capture import Capture, capture_of, with_capture
    cookie = etree.fromstring("<cookie><cpu mode='custom'/></cookie>")
    noted = with_capture(with_capture(cookie, Capture("precopy", 0.5)),
                         Capture("background", 0.0042))
    assert [c.tag for c in noted] == ["cpu", "qsnapCapture"]
    assert capture_of(noted) == Capture("background", 0.0042)
    assert capture_of(cookie) is None and capture_of(None) is None
    assert capture_of(etree.fromstring(
        "<cookie><qsnapCapture strategy='fast' pauseMicroseconds='1'/></cookie>")) is None



def test_dropping_an_unreadable_snapshot_makes_its_children_roots() -> None:
    from qsnap.plan.delete import plan_drop_unreadable
    plan = plan_drop_unreadable("b", {"a": None, "c": "b", "d": "b", "e": "c"}, current="b")
    assert (plan.remove, plan.reparent) == (["b"], {"c": None, "d": None})
    assert (plan.current, plan.current_changes) == (None, True)
    assert not plan_drop_unreadable("b", {"a": None}, current="a").current_changes


# -- manual disks ------------------------------------------------------------------------------

def test_manual_disks_are_left_to_the_user_and_the_guest_paused() -> None:
    from qsnap.plan.disk_snapshot import plan_disk_snapshot
    from qsnap.plan.full_snapshot import plan_full_snapshot
    request = parse_snapshot("<domainsnapshot><name>s</name><disks><disk name='vda' "
                             "snapshot='manual'/></disks></domainsnapshot>")
    plan = plan_disk_snapshot(request, DOMAIN, CreateFlags(disk_only=True), active=True,
                              current=None, now=1, regular_files={"/img/a.qcow2"})
    assert (plan.overlays, plan.leave_paused, plan.domain_after) == ([], True, DOMAIN)
    offline = plan_disk_snapshot(request, DOMAIN, CreateFlags(disk_only=True), active=False,
                                 current=None, now=1, regular_files={"/img/a.qcow2"})
    assert not offline.leave_paused
    full = parse_snapshot("<domainsnapshot><name>s</name><memory snapshot='external' "
                          "file='/m'/><disks><disk name='vda' snapshot='manual'/></disks>"
                          "</domainsnapshot>")
    assert plan_full_snapshot(full, DOMAIN, CreateFlags(), state="running", current=None,
                              now=1, regular_files=set()).leave_paused
    with pytest.raises(InvalidArgumentError, match="--live cannot be used with 'manual'"):
        plan_full_snapshot(full, DOMAIN, CreateFlags(live=True), state="running",
                           current=None, now=1, regular_files=set())


QEMU_7 = StreamSupport(background=True)
QEMU_10 = StreamSupport(mapped_ram=True, direct_io=True, background=True)


@pytest.mark.parametrize(("asked", "channels", "support", "chosen"), [
    (None, None, QEMU_7, "raw"),
    (None, None, QEMU_10, "raw"),  # measured faster for the save (plan.save)
    (None, 4, QEMU_10, "sparse"),  # --parallel-channels alone asks for sparse
    ("sparse", None, QEMU_10, "sparse"),
    ("zstd", None, QEMU_7, "zstd"),
    ("raw", None, QEMU_10, "raw"),
])
def test_save_image_format_choice(asked: str | None, channels: int | None,
                                  support: StreamSupport, chosen: str) -> None:
    assert choose_image_format(asked, channels, support) == chosen


@pytest.mark.parametrize(("asked", "channels", "support", "error", "message"), [
    ("sparse", None, QEMU_7, NotSupportedError, "needs QEMU's mapped-ram"),
    (None, 2, QEMU_7, NotSupportedError, "needs QEMU's mapped-ram"),
    ("lz4", None, QEMU_10, InvalidArgumentError, "unknown save image format 'lz4'"),
    ("xz", None, QEMU_10, NotSupportedError, "reads 'xz' save images but writes only"),
    ("zstd", 2, QEMU_10, InvalidArgumentError, "needs the sparse save image format, not zstd"),
    ("sparse", 0, QEMU_10, InvalidArgumentError, "must be at least 1, not 0"),
])
def test_save_image_format_refusals(asked: str | None, channels: int | None,
                                    support: StreamSupport, error: type[Exception],
                                    message: str) -> None:
    with pytest.raises(error, match=message):
        choose_image_format(asked, channels, support)
