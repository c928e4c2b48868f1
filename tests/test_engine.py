"""The public asyncio API, as an embedder uses it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import qsnap
from qsnap import CreateFlags, DeleteFlags, Engine, ListFilter


def domain_xml(name: str, uuid: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory unit='MiB'>64</memory></domain>")


def snap_xml(name: str, parent: str | None = None) -> str:
    parent_xml = f"<parent><name>{parent}</name></parent>" if parent else ""
    return (f"<domainsnapshot><name>{name}</name><state>shutoff</state>{parent_xml}"
            "<creationTime>1700000000</creationTime></domainsnapshot>")


async def test_embedding_round_trip(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    assert await engine.define(domain_xml("vm", "1" * 32)) == "vm"
    await engine.create("vm", snap_xml("base"), CreateFlags(redefine=True, current=True))
    await engine.redefine("vm", snap_xml("next", "base"), current=True)
    assert [s.name for s in await engine.snapshots("vm")] == ["base", "next"]
    assert await engine.current("vm") == "next"
    info = await engine.info("vm", None)
    assert (info.name, info.parent, info.current) == ("next", "base", True)
    tree = await engine.tree("vm")
    assert tree.children("base") == ["next"]
    assert (await engine.get("vm", "next")).parent == "base"
    assert "<name>next</name>" in await engine.get_xml("vm", "next")
    plan = await engine.delete("vm", "base", DeleteFlags(metadata_only=True))
    assert plan.remove == ["base"] and plan.reparent == {"next": None}
    assert await engine.parent("vm", "next") is None
    with pytest.raises(qsnap.OperationInvalidError, match="lacks domain 'vm' rollback info"):
        await engine.revert("vm", "next")
    with pytest.raises(qsnap.NoDomainError):
        await engine.snapshots("missing")


async def test_define_without_uuid_gets_one_and_keeps_it(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    await engine.define("<domain type='qemu'><name>vm</name><memory>1024</memory></domain>")
    first = (await engine.domains())[0].uuid
    assert first is not None
    await engine.define("<domain type='qemu'><name>vm</name><memory>2048</memory></domain>")
    assert (await engine.domains())[0].uuid == first
    assert "<memory>2048</memory>" in await engine.domain_xml("vm")


async def test_concurrent_calls_on_one_domain_serialise(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    await engine.define(domain_xml("vm", "2" * 32))
    await engine.redefine("vm", snap_xml("root"), current=True)
    await asyncio.gather(*(engine.redefine("vm", snap_xml(f"c{i}", "root"), current=True)
                           for i in range(16)))
    listed = await engine.snapshots("vm", ListFilter(start="root"))
    assert len(listed) == 16
    current = await engine.current("vm")
    files = sorted((tmp_path / "domains" / "vm" / "snapshots").glob("*.xml"))
    assert [f.stem for f in files if "<active>1</active>" in f.read_text()] == [current]


async def test_different_domains_run_side_by_side(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    await asyncio.gather(*(engine.define(domain_xml(f"vm{i}", f"{i:032x}")) for i in range(8)))
    await asyncio.gather(*(engine.redefine(f"vm{i}", snap_xml("s"), current=True)
                           for i in range(8)))
    assert [d.name for d in await engine.domains()] == [f"vm{i}" for i in range(8)]
    assert [await engine.current(f"vm{i}") for i in range(8)] == ["s"] * 8


def _create_intent(engine: Engine, domain: str, metadata: object) -> Path:
    """An intent record as a create killed after its (here: no) image changes leaves it."""
    path = engine.state_dir / "domains" / domain / "intent.json"
    path.write_text(json.dumps({"kind": "create", "snapshot": "s", "metadata": metadata,
                                "where": "offline"}))
    return path


async def test_an_interrupted_create_is_finished_from_the_metadata_its_intent_holds(
        tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    await engine.define(domain_xml("vm", "3" * 32))
    await engine.redefine("vm", snap_xml("root"), current=True)
    folder = engine.state.folder("vm")
    change = folder.plan_save(put=[qsnap.parse_snapshot(snap_xml("s", "root"), redefine=True)],
                              current="s")
    intent = _create_intent(engine, "vm", change.to_record())
    assert [s.name for s in await engine.snapshots("vm")] == ["root", "s"]
    assert not intent.exists()
    assert await engine.current("vm") == "s"
    assert "<active>0</active>" in (folder.snapshots_dir / "root.xml").read_text()


@pytest.mark.parametrize("metadata", [{"writes": 5, "removals": []},
                                      {"writes": {"../x": "y"}, "removals": []}, None])
async def test_a_damaged_create_intent_is_named_and_kept(tmp_path: Path,
                                                         metadata: object) -> None:
    engine = Engine(tmp_path)
    await engine.define(domain_xml("vm", "4" * 32))
    await engine.redefine("vm", snap_xml("root"), current=True)
    intent = _create_intent(engine, "vm", metadata)
    before = intent.read_bytes()
    with pytest.raises(qsnap.OperationIncompleteError,
                       match=r"settling the interrupted create failed: .*(metadata change|"
                             r"inside its folder|create\.metadata: expected an object)"):
        await engine.redefine("vm", snap_xml("other"))
    assert intent.read_bytes() == before
    assert [s.name for s in await engine.snapshots("vm")] == ["root"]  # reads go on


async def test_an_unknown_blockjob_action_is_refused_by_name(tmp_path: Path) -> None:
    """blockjob's action is one of info, abort and pivot; anything else was read as abort
    (a recorded commit was cancelled). It is refused before any job or QEMU is looked at,
    and the domain's folder is as it was."""
    engine = Engine(tmp_path)
    await engine.define(domain_xml("vm", "5" * 32))
    folder = tmp_path / "domains" / "vm"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(qsnap.InvalidArgumentError,
                       match=r"unknown blockjob action 'cancel': use info, abort, pivot"):
        await engine.block_job("vm", "vda", "cancel")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
