"""Which images an external delete merges, removes and renames: the graph rules, without files.

The lab below is a chain of five external snapshots of one disk, named as the engine names
them: ``base`` ← o1 ← o2 ← o3 ← o4 ← o5 (the guest's disk). Snapshot ``sN`` froze image
o(N-1) (``s1`` froze ``base``) and made ``oN``.
"""

from __future__ import annotations

import pytest

from qsnap.errors import NotSupportedError, OperationInvalidError
from qsnap.model.domain import DomainDef, parse_domain
from qsnap.model.image_graph import ImageFacts, ImageGraph
from qsnap.model.snapshot import SnapshotDef, parse_snapshot
from qsnap.plan.external_delete import (
    plan_external_delete,
    renamed_definition,
    renamed_snapshot,
)


def domain(source: str, fmt: str = "qcow2") -> DomainDef:
    return parse_domain(f"""<domain type='qemu'><name>g</name><memory>1024</memory><devices>
      <disk type='file'><driver type='{fmt}'/><source file='{source}'/><target dev='vda'/>
      </disk></devices></domain>""")


def snapshot(name: str, state: str, overlay: str, parent: str | None = None,
             memory: str | None = None) -> SnapshotDef:
    mem = f"<memory snapshot='external' file='{memory}'/>" if memory else \
        "<memory snapshot='no'/>"
    xml = f"""<domainsnapshot><name>{name}</name>{f'<parent><name>{parent}</name></parent>'
        if parent else ''}<state>{"running" if memory else "disk-snapshot"}</state>{mem}
      <creationTime>1</creationTime>
      <disks><disk name='vda' snapshot='external'><source file='{overlay}'/></disk></disks>
      {domain(state).to_xml()}</domainsnapshot>"""
    return parse_snapshot(xml, redefine=True)


def graph(*edges: tuple[str, str | None], tags: dict[str, frozenset[str]] | None = None
          ) -> ImageGraph:
    result = ImageGraph()
    for path, backing in edges:
        result.add(ImageFacts(path, "raw" if path == "/i/base" else "qcow2", backing,
                              tags=(tags or {}).get(path, frozenset())))
    return result


CHAIN = [("/i/base", None), ("/i/o1", "/i/base"), ("/i/o2", "/i/o1"), ("/i/o3", "/i/o2"),
         ("/i/o4", "/i/o3"), ("/i/o5", "/i/o4")]


def five() -> dict[str, SnapshotDef]:
    states = ["/i/base", "/i/o1", "/i/o2", "/i/o3", "/i/o4"]
    return {f"s{n}": snapshot(f"s{n}", states[n - 1], f"/i/o{n}",
                              f"s{n - 1}" if n > 1 else None) for n in range(1, 6)}


def test_middle_of_a_running_chain_is_an_intermediate_commit() -> None:
    running = {"vda": ["/i/o5", "/i/o4", "/i/o3", "/i/o2", "/i/o1", "/i/base"]}
    plan = plan_external_delete(five(), ["s3"], domain("/i/o5"), graph(*CHAIN), running)
    (merge,) = plan.merges
    assert (merge.top, merge.base, merge.between) == ("/i/o3", "/i/o2", ())
    assert merge.live and not merge.active and merge.rebase == ("/i/o4",)
    assert plan.remove_files == ("/i/o3",)
    assert plan.renames == {"/i/o3": ("/i/o2", "qcow2")}
    s4 = renamed_snapshot(five()["s4"], plan.renames)
    assert s4 is not None and "/i/o2" in s4.domain.find("devices/disk/source").get("file")
    assert renamed_snapshot(five()["s2"], plan.renames) is None


def test_current_snapshot_is_an_active_commit_and_renames_the_disk() -> None:
    running = {"vda": [p for p, _ in reversed(CHAIN)]}
    plan = plan_external_delete(five(), ["s5"], domain("/i/o5"), graph(*CHAIN), running)
    (merge,) = plan.merges
    assert (merge.top, merge.base, merge.live, merge.active) == ("/i/o5", "/i/o4", True, True)
    after = renamed_definition(domain("/i/o5"), plan.renames)
    assert after is not None and after.disks[0].source == "/i/o4"


def test_first_snapshot_merges_into_the_raw_base_offline() -> None:
    plan = plan_external_delete(five(), ["s1"], domain("/i/o5"), graph(*CHAIN), None)
    (merge,) = plan.merges
    assert (merge.top, merge.base, merge.base_format, merge.live) == \
        ("/i/o1", "/i/base", "raw", False)
    assert merge.rebase == ("/i/o2",)
    s2 = renamed_snapshot(five()["s2"], plan.renames)
    assert s2 is not None and s2.domain.find("devices/disk/driver").get("type") == "raw"


def test_a_subtree_collapses_in_one_commit() -> None:
    plan = plan_external_delete(five(), ["s5", "s4", "s3", "s2"], domain("/i/o5"),
                                graph(*CHAIN), None)
    (merge,) = plan.merges
    assert (merge.top, merge.base, merge.between) == ("/i/o5", "/i/o1", ("/i/o2", "/i/o3",
                                                                         "/i/o4"))
    assert plan.remove_files == ("/i/o2", "/i/o3", "/i/o4", "/i/o5")


def test_a_leaf_left_behind_by_a_revert_is_removed_without_merging() -> None:
    # Reverted to s3: the guest runs on a new overlay r over o2; s4 and s5 stay on the side.
    edges = [*CHAIN[:5], ("/i/r", "/i/o2")]  # o5 was discarded by the revert
    snaps = five()
    plan = plan_external_delete(snaps, ["s5"], domain("/i/r"), graph(*edges), None)
    assert plan.merges == () and plan.remove_files == ("/i/o4",)
    # s4 still needs o3; deleting s4 too leaves nothing on o3: o3 and o4 go.
    plan = plan_external_delete(snaps, ["s5", "s4"], domain("/i/r"), graph(*edges), None)
    assert plan.merges == () and plan.remove_files == ("/i/o3", "/i/o4")


def test_two_branches_on_one_image_are_refused() -> None:
    edges = [*CHAIN[:5], ("/i/r", "/i/o2")]
    with pytest.raises(OperationInvalidError,
                       match=r"multiple children snapshots not supported: image '/i/o2' of "
                             r"snapshot 's3' \(disk 'vda'\) is the base of 2 images"):
        plan_external_delete(five(), ["s3"], domain("/i/r"), graph(*edges), None)


def test_memory_files_go_and_orphans_above_a_merged_image_go() -> None:
    snaps = five()
    snaps["s5"] = snapshot("s5", "/i/o4", "/i/o5", "s4", memory="/m/s5.mem")
    edges = [*CHAIN, ("/i/stale", "/i/o4")]
    snaps["s5"].disks[0].source.file = "/i/stale"  # its recorded overlay was left behind
    plan = plan_external_delete(snaps, ["s5"], domain("/i/o5"), graph(*edges), None)
    assert plan.merges[0].top == "/i/o5"
    assert set(plan.remove_files) == {"/i/stale", "/i/o5", "/m/s5.mem"}


def test_internal_snapshots_in_a_merged_image_are_protected() -> None:
    with pytest.raises(OperationInvalidError, match=r"image '/i/o2' holds internal snapshot "
                                                    r"'keep', which merging it into '/i/o1'"):
        plan_external_delete(five(), ["s2"], domain("/i/o5"),
                             graph(*CHAIN, tags={"/i/o2": frozenset({"keep"})}), None)


def test_missing_images_and_missing_domains_are_clear() -> None:
    with pytest.raises(OperationInvalidError, match="image '/i/o2' of snapshot 's3'"):
        plan_external_delete(five(), ["s3"], domain("/i/o5"), graph(*CHAIN[:2]), None)
    bare = five()
    bare["s3"] = bare["s3"].copy(domain=None)
    with pytest.raises(NotSupportedError, match="records no domain definition"):
        plan_external_delete(bare, ["s3"], domain("/i/o5"), graph(*CHAIN), None)


def test_an_image_holding_an_internal_snapshot_may_take_the_merge() -> None:
    """s1 froze base, which also holds internal snapshot 'r': base must stay, but its current
    content is nobody's snapshot, so o1 may be merged into it (libvirt refuses this)."""
    snaps = five()
    snaps["r"] = parse_snapshot(f"""<domainsnapshot><name>r</name><state>running</state>
      <memory snapshot='internal'/><creationTime>1</creationTime>
      <disks><disk name='vda' snapshot='internal'/></disks>{domain('/i/base').to_xml()}
      </domainsnapshot>""", redefine=True)
    plan = plan_external_delete(snaps, ["s1"], domain("/i/o5"),
                                graph(*CHAIN, tags={"/i/base": frozenset({"r"})}), None)
    assert [(m.top, m.base) for m in plan.merges] == [("/i/o1", "/i/base")]


def test_an_image_removed_by_hand_stops_every_removal_below_it() -> None:
    """o2 was removed by hand: o3 still reads through it into whatever it was built on, which
    the graph cannot know. Deleting s1 (whose base looks unneeded once the chain stops at the
    hole) or s2 must remove and merge nothing (issue 15's data loss)."""
    holed = graph(*(edge for edge in CHAIN if edge[0] != "/i/o2"))
    snaps = {n: s for n, s in five().items() if n in ("s1", "s2", "s3")}
    for removing, match in ((["s1"], "'/i/o2' does not exist, but image '/i/o3'"),
                            (["s2"], "'/i/o1'.*'/i/o2'|'/i/o2' does not exist")):
        with pytest.raises(OperationInvalidError, match=match):
            plan_external_delete(snaps, removing, domain("/i/o3"), holed, None)


def test_an_image_removed_by_hand_off_every_needed_chain_does_not_block() -> None:
    """The overlay of a branch nobody needs any more (left by a revert) was removed by hand:
    no remaining snapshot or disk reads through it, so the delete goes on as before."""
    holed = graph(("/i/base", None), ("/i/o5", "/i/base"))
    snaps = {"s1": snapshot("s1", "/i/base", "/i/o1")}
    plan = plan_external_delete(snaps, ["s1"], domain("/i/o5"), holed, None)
    assert [(m.top, m.base) for m in plan.merges] == [("/i/o5", "/i/base")]


def test_a_backing_loop_made_by_hand_is_refused_naming_it() -> None:
    """base was rebased by hand onto o2, which is built on it: every chain through them
    loops. Nothing is merged or removed; the message shows the loop."""
    looped = graph(*CHAIN)
    looped.add(ImageFacts("/i/base", "qcow2", "/i/o2"))
    with pytest.raises(OperationInvalidError,
                       match="loops \\(/i/base → /i/o2 → /i/o1 → /i/base\\)"):
        plan_external_delete(five(), ["s1"], domain("/i/o5"), looped, None)


def test_an_overlay_rebased_by_hand_onto_another_file_keeps_the_frozen_image() -> None:
    """s1 froze base under o1, s2 froze o1 under o2 (stopped guest on o2). With o1 rebased by
    hand onto another file, base looked unneeded and deleting s1 removed it: the only copy
    of everything before s1 (issue 28). Refused, naming the overlay and what it stands on."""
    snaps = {"s1": snapshot("s1", "/i/base", "/i/o1"),
             "s2": snapshot("s2", "/i/o1", "/i/o2", "s1")}
    edges = [("/i/base", None), ("/i/other", None), ("/i/o1", "/i/other"),
             ("/i/o2", "/i/o1")]
    with pytest.raises(OperationInvalidError,
                       match=r"image '/i/o1' \(the overlay of snapshot 's1', disk 'vda'\) no "
                             r"longer stands on '/i/base', the image the snapshot froze, but "
                             r"on '/i/other'.*removes or merges nothing.*qemu-img rebase -u "
                             r"-b /i/base /i/o1"):
        plan_external_delete(snaps, ["s1"], domain("/i/o2"), graph(*edges), None)
    # Rebased back, the same delete merges o1 into base as usual.
    plan = plan_external_delete(snaps, ["s1"], domain("/i/o2"),
                                graph(*CHAIN[:3]), None)
    assert [(m.top, m.base) for m in plan.merges] == [("/i/o1", "/i/base")]


def test_an_overlay_pulled_by_a_block_job_does_not_stop_the_delete() -> None:
    """After blockpull, the overlay stands on nothing (a whole pull) or on an image below the
    frozen one (--base): the frozen image is no longer needed by it, which is no reason to
    refuse."""
    snaps = {"s1": snapshot("s1", "/i/base", "/i/o1"),
             "s2": snapshot("s2", "/i/o1", "/i/o2", "s1")}
    pulled = [("/i/base", None), ("/i/o1", "/i/base"), ("/i/o2", None)]
    plan = plan_external_delete(snaps, ["s2"], domain("/i/o2"), graph(*pulled), None)
    assert plan.merges == () and plan.remove_files == ("/i/o1",)
    partly = [("/i/base", None), ("/i/o1", "/i/base"), ("/i/o2", "/i/base")]
    plan = plan_external_delete(snaps, ["s2"], domain("/i/o2"), graph(*partly), None)
    assert plan.merges == () and plan.remove_files == ("/i/o1",)
