"""The metadata store: atomic durable writes, crash recovery, per-domain locks, corrupt files.

Crash tests run ``qsnap`` as a real process and kill it (``os._exit``, no cleanup) at every step
boundary an operation passes, then check that the next command sees exactly the old state or
exactly the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tree_picture

from qsnap.errors import CorruptMetadataError
from qsnap.faults import CRASH_EXIT
from qsnap.model.domain import parse_domain
from qsnap.model.snapshot import parse_snapshot
from qsnap.store import StateDir
from qsnap.store.atomic import atomic_write, unlink_if_present
from qsnap.store.folder import DomainFolder
from qsnap.store.journal import JOURNAL_NAME, Batch, commit, replay

UUID = "9d37b878-a7cc-9f9a-b78f-49b3abad25a8"
DOMAIN_XML = f"""<domain type='qemu'><name>dom</name><uuid>{UUID}</uuid><memory>65536</memory>
<devices><disk type='file'><driver type='qcow2'/><source file='/nonexistent/a.qcow2'/>
<target dev='vda'/></disk></devices></domain>"""


def snapshot_xml(name: str, parent: str | None = None, state: str = "shutoff") -> str:
    parent_xml = f"<parent><name>{parent}</name></parent>" if parent else ""
    return (f"<domainsnapshot><name>{name}</name><state>{state}</state>{parent_xml}"
            f"<creationTime>{1700000000 + len(name)}</creationTime></domainsnapshot>")


def qsnap(state: Path, *args: str, env: dict[str, str] | None = None,
          input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qsnap.cli", "--state-dir", str(state), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          input=input_text, timeout=60)


def build(state: Path, tmp: Path, tree: list[tuple[str, str | None]], current: str) -> None:
    (tmp / "dom.xml").write_text(DOMAIN_XML)
    assert qsnap(state, "define", str(tmp / "dom.xml")).returncode == 0
    for name, parent in tree:
        path = tmp / f"{name}.in.xml"
        path.write_text(snapshot_xml(name, parent))
        flags = ["--current"] if name == current else []
        result = qsnap(state, "snapshot-create", "dom", str(path), "--redefine", *flags)
        assert result.returncode == 0, result.stderr


# -- atomic writes and the journal -----------------------------------------------------------

def test_atomic_write_replaces_whole_and_private(tmp_path: Path) -> None:
    target = tmp_path / "f.xml"
    atomic_write(target, b"old")
    atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["f.xml"]


def test_journal_replay_finishes_a_change(tmp_path: Path) -> None:
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "gone.xml").write_text("x")
    batch = Batch()
    batch.write("snapshots/a.xml", b"A")
    batch.write("current", b"a\n")
    batch.remove("snapshots/gone.xml")
    atomic_write(tmp_path / JOURNAL_NAME,  # as if the process died right after the commit point
                 b'{"writes": {"snapshots/a.xml": "A", "current": "a\\n"}, '
                 b'"removals": ["snapshots/gone.xml"]}')
    assert replay(tmp_path) is True
    assert (tmp_path / "snapshots" / "a.xml").read_text() == "A"
    assert not (tmp_path / "snapshots" / "gone.xml").exists()
    assert not (tmp_path / JOURNAL_NAME).exists()
    assert replay(tmp_path) is False
    commit(tmp_path, batch)  # applying the same change again is harmless
    assert (tmp_path / "current").read_text() == "a\n"


def test_journal_refuses_paths_outside_its_folder() -> None:
    with pytest.raises(ValueError, match="inside its folder"):
        Batch().write("../escape", b"x")
    with pytest.raises(ValueError, match="inside its folder"):
        Batch().remove("/etc/passwd")


def test_corrupt_journal_is_named(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).write_text("{half")
    with pytest.raises(CorruptMetadataError, match=r"journal\.json' is corrupt"):
        replay(tmp_path)


@pytest.mark.parametrize("content", ['{"writes": [], "removals": []}',
                                     '{"writes": {"a": 1}, "removals": []}',
                                     '{"writes": {}}', '["writes"]'])
def test_journal_of_the_wrong_shape_is_named(tmp_path: Path, content: str) -> None:
    (tmp_path / JOURNAL_NAME).write_text(content)
    with pytest.raises(CorruptMetadataError, match=r"journal\.json' is corrupt"):
        replay(tmp_path)
    assert (tmp_path / JOURNAL_NAME).read_text() == content


def test_a_change_covered_by_a_record_stores_the_same_files_without_a_journal(
        tmp_path: Path) -> None:
    """What a create does: plan the change, keep it in its intent record (here: as JSON),
    apply it later. The files match what one journaled ``save`` writes."""
    definition = parse_domain(DOMAIN_XML)
    root = parse_snapshot(snapshot_xml("root"), redefine=True)
    child = parse_snapshot(snapshot_xml("child", "root"), redefine=True)
    results = []
    for way in ("save", "covered"):
        folder = DomainFolder(tmp_path / way, "dom")
        folder.write_definition(definition)
        folder.save(put=[root], current="root")
        if way == "save":
            folder.save(put=[child], current="child", definition=definition)
        else:
            record = json.loads(json.dumps(folder.plan_save(
                put=[child], current="child", definition=definition).to_record()))
            assert not folder.needs_recovery()
            folder.apply_covered(Batch.from_record(record))
        assert sorted(os.listdir(folder.path)) == ["current", "domain.xml", "snapshots"]
        assert not folder.needs_recovery()
        results.append({p.relative_to(folder.path): p.read_bytes()
                        for p in folder.path.rglob("*") if p.is_file()})
    assert results[0] == results[1]
    assert b"<active>0</active>" in results[1][Path("snapshots/root.xml")]
    assert b"<active>1</active>" in results[1][Path("snapshots/child.xml")]


def test_needs_recovery_sees_a_journal_or_a_temporary_file(tmp_path: Path) -> None:
    folder = DomainFolder(tmp_path, "dom")
    assert not folder.needs_recovery()
    (tmp_path / ".tmp-1234-current").write_text("x")
    assert folder.needs_recovery()
    assert folder.recover() == ["domain 'dom': removed unfinished write .tmp-1234-current"]
    assert not folder.needs_recovery()
    (tmp_path / JOURNAL_NAME).write_text('{"writes": {"current": "a\\n"}, "removals": []}')
    assert folder.needs_recovery()
    folder.recover()
    assert not folder.needs_recovery() and (tmp_path / "current").read_text() == "a\n"


# -- crashing at every step ------------------------------------------------------------------

TREE = [("root", None), ("a", "root"), ("b", "a"), ("c", "a")]

OPERATIONS = {
    "redefine --current": ["snapshot-create", "dom", "{tmp}/new.xml", "--redefine", "--current"],
    "set current": ["snapshot-current", "dom", "root"],
    "delete with children re-parented": ["snapshot-delete", "dom", "a", "--metadata"],
    "delete --children": ["snapshot-delete", "dom", "a", "--children", "--metadata"],
    "define (update)": ["define", "{tmp}/dom2.xml"],
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_crash_at_every_step_leaves_old_or_new_state(tmp_path: Path, operation: str) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, TREE, current="b")
    (tmp_path / "new.xml").write_text(snapshot_xml("new", "c"))
    (tmp_path / "dom2.xml").write_text(DOMAIN_XML.replace("65536", "131072"))
    argv = [a.format(tmp=tmp_path) for a in OPERATIONS[operation]]
    domains = state / "domains"

    old = tree_picture(domains)
    after = tmp_path / "after"
    shutil.copytree(state, after)
    trace = tmp_path / "trace"
    done = qsnap(after, *argv, env={"QSNAP_CRASH_TRACE": str(trace)})
    assert done.returncode == 0, done.stderr
    new = tree_picture(after / "domains")
    assert new != old
    points = trace.read_text().splitlines()
    assert len(points) >= 3, points

    for k in range(1, len(points) + 1):
        crashed = tmp_path / f"crash{k}"
        shutil.copytree(state, crashed)
        result = qsnap(crashed, *argv, env={"QSNAP_CRASH_AT": str(k)})
        assert result.returncode == CRASH_EXIT, (k, points[k - 1], result.stderr)
        listing = qsnap(crashed, "snapshot-list", "dom", "--name")  # recovers first
        assert listing.returncode == 0, (k, points[k - 1], listing.stderr)
        picture = tree_picture(crashed / "domains")
        assert picture in (old, new), f"crash at {points[k - 1]!r} left a third state"
        current = qsnap(crashed, "snapshot-current", "dom", "--name")
        active = [p for p, (_, data) in picture.items() if b"<active>1</active>" in data]
        assert active == [f"dom/snapshots/{current.stdout.strip()}.xml"]
        shutil.rmtree(crashed)


def test_recovery_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, TREE, current="b")
    crashed = qsnap(state, "snapshot-delete", "dom", "a", "--metadata",
                    env={"QSNAP_CRASH_AT": "5"})
    assert crashed.returncode == CRASH_EXIT
    listing = qsnap(state, "snapshot-list", "dom", "--name")
    assert "warning: recovered: domain 'dom':" in listing.stderr
    assert listing.stdout.split() == ["b", "c", "root"]


# -- locks -----------------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from qsnap.model.domain import parse_domain
from qsnap.model.snapshot import parse_snapshot
from qsnap.store import StateDir
from qsnap.store.folder import DomainFolder
with StateDir(Path(sys.argv[1])).locked(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_same_domain_waits_other_domains_do_not(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, TREE, current="b")
    (tmp_path / "other.xml").write_text(DOMAIN_XML.replace("<name>dom</name>", "<name>other</name>")
                                        .replace(UUID, "0" * 32))
    assert qsnap(state, "define", str(tmp_path / "other.xml")).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), "dom"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Another domain is not held up by the lock on 'dom'.
        assert qsnap(state, "snapshot-list", "other").returncode == 0
        # The same domain waits, and says who holds it when it gives up.
        busy = qsnap(state, "snapshot-list", "dom", env={"QSNAP_LOCK_TIMEOUT": "0.3"})
        assert busy.returncode == 1
        assert f"domain 'dom' is busy: qsnap process {holder.pid} has held it" in busy.stderr
        waiter = subprocess.Popen(
            [sys.executable, "-m", "qsnap.cli", "--state-dir", str(state), "snapshot-list",
             "dom", "--name"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert waiter.poll() is None, "a second process got in while the lock was held"
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert out.split() == ["a", "b", "c", "root"]
    finally:
        holder.kill()
        holder.wait()


def test_concurrent_processes_on_one_domain_serialise(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, [("root", None)], current="root")
    procs = []
    for i in range(8):
        path = tmp_path / f"p{i}.xml"
        path.write_text(snapshot_xml(f"p{i}", "root"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "qsnap.cli", "--state-dir", str(state), "snapshot-create",
             "dom", str(path), "--redefine", "--current"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    names = qsnap(state, "snapshot-list", "dom", "--name").stdout.split()
    assert names == ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "root"]
    folder = StateDir(state).folder("dom")
    actives = [n for n in folder.snapshot_names() if folder.read_snapshot(n).active]
    assert actives == [folder.read_current()]


# -- corrupt files -----------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    ("<domainsnapshot><name>a", "is not well-formed XML"),
    ("<domainsnapshot><name>zz</name><state>shutoff</state><creationTime>1</creationTime>"
     "<active>0</active></domainsnapshot>", "describes snapshot 'zz', not 'a'"),
    ("<domainsnapshot><name>a</name><state>shutoff</state><creationTime>1</creationTime>"
     "</domainsnapshot>", "Could not find 'active' element"),
    ("", "is empty"),
])
def test_corrupt_snapshot_file_is_named_and_left_alone(tmp_path: Path, content: str,
                                                       message: str) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, TREE, current="b")
    bad = state / "domains" / "dom" / "snapshots" / "a.xml"
    bad.write_text(content)
    before = tree_picture(state / "domains")
    for argv in (["snapshot-list", "dom"], ["snapshot-delete", "dom", "c", "--metadata"],
                 ["snapshot-info", "dom", "a"]):
        result = qsnap(state, *argv)
        assert result.returncode == 1
        assert f"error: snapshot metadata file '{bad}' is corrupt" in result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert "or delete just this snapshot's metadata (a metadata-only delete: " \
            "'snapshot-delete dom a --metadata'" in result.stderr
    assert tree_picture(state / "domains") == before
    # The way out the message names: the unreadable file goes, its children become roots.
    removed = qsnap(state, "snapshot-delete", "dom", "a", "--metadata")
    assert removed.returncode == 0, removed.stderr
    assert not bad.exists()
    listed = qsnap(state, "snapshot-list", "dom", "--roots", "--name")
    assert listed.stdout.split() == ["b", "c", "root"]
    assert qsnap(state, "snapshot-current", "dom", "--name").stdout.strip() == "b"


def test_corrupt_definition_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, [("root", None)], current="root")
    definition = state / "domains" / "dom" / "domain.xml"
    definition.write_text("<domain>")
    result = qsnap(state, "snapshot-list", "dom")
    assert result.returncode == 1
    assert f"error: domain definition file '{definition}' is corrupt" in result.stderr


def test_a_definition_edited_into_garbage_is_named_after_it_was_read_fine(
        tmp_path: Path) -> None:
    """Reads skip parsing a definition that parsed before (the file's identity is noted in
    definition.checked); a hand edit changes that identity, so it is parsed and named."""
    state = tmp_path / "state"
    build(state, tmp_path, [("root", None)], current="root")
    assert qsnap(state, "snapshot-current", "dom", "--name").stdout.strip() == "root"
    folder = state / "domains" / "dom"
    assert (folder / "definition.checked").is_file()
    definition = folder / "domain.xml"
    definition.write_text("<domain>")
    for command in (["snapshot-current", "dom", "--name"], ["snapshot-list", "dom"],
                    ["domstate", "dom"]):
        result = qsnap(state, *command)
        assert result.returncode == 1, command
        assert f"error: domain definition file '{definition}' is corrupt" in result.stderr, \
            command


#: What a command that touches no guest must not import: the engine's machinery (event loop,
#: QMP library, logging) never; the XML library and the dataclasses/typing modules not where
#: the command needs no parsed XML and no snapshot tree.
ENGINE = ("asyncio", "qemu.qmp", "logging", "qsnap.engine.engine")
LIGHTEST = (*ENGINE, "lxml.etree", "dataclasses", "typing")
READING_COMMANDS = (
    (["list", "--all"], LIGHTEST), (["list", "--name"], LIGHTEST),
    (["domstate", "dom"], LIGHTEST), (["snapshot-current", "dom", "--name"], LIGHTEST),
    (["snapshot-list", "dom"], (*ENGINE, "lxml.etree")),
    (["snapshot-list", "dom", "--tree"], (*ENGINE, "lxml.etree")),
    (["snapshot-parent", "dom", "leaf"], ENGINE))


@pytest.mark.parametrize(("command", "unwanted"), READING_COMMANDS,
                         ids=[" ".join(c) for c, _ in READING_COMMANDS])
def test_commands_that_only_read_start_without_the_engine(
        tmp_path: Path, command: list[str], unwanted: tuple[str, ...]) -> None:
    """Each module costs milliseconds of every such command's start (issue 19)."""
    state = tmp_path / "state"
    build(state, tmp_path, [("root", None), ("leaf", "root")], current="leaf")
    assert qsnap(state, *command).returncode == 0  # the first read notes what it checked
    probe = ("import sys\nfrom qsnap.cli import main\n"
             f"status = main(['--state-dir', {str(state)!r}, *{command!r}])\n"
             f"heavy = set({unwanted!r})\n"
             "print('LOADED', sorted(heavy & set(sys.modules)), status, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert "LOADED [] 0" in result.stderr, result.stderr


def test_state_dir_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build(state, tmp_path, [("root", None)], current="root")
    for path in (state, state / "domains", state / "domains" / "dom",
                 state / "domains" / "dom" / "snapshots"):
        assert path.stat().st_mode & 0o077 == 0, path
    assert qsnap(state, "snapshot-list", "dom").returncode == 0  # writes the listing cache
    files = [p for p in state.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert any(p.name == "summaries.json" for p in files)
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, path


def test_a_snapshot_name_of_the_longest_length_is_stored_and_listed(tmp_path: Path) -> None:
    """251 bytes is the longest valid name (with '.xml', a full file name): its temporary
    file during the atomic write must fit too (it used not to: 'File name too long')."""
    state = tmp_path / "state"
    longest = "é" * 125 + "x"  # 251 bytes in UTF-8
    build(state, tmp_path, [], current="")
    (tmp_path / "in.xml").write_text(snapshot_xml(longest))
    made = qsnap(state, "snapshot-create", "dom", str(tmp_path / "in.xml"), "--redefine",
                 "--current")
    assert made.returncode == 0, made.stderr
    listed = qsnap(state, "snapshot-list", "dom", "--name")
    assert listed.stdout.split("\n")[0] == longest


def test_unlinking_a_name_too_long_to_exist_is_not_an_error(tmp_path: Path) -> None:
    assert unlink_if_present(tmp_path / ("x" * 300)) is False
    assert unlink_if_present(tmp_path / "absent") is False
    (tmp_path / "there").write_text("")
    assert unlink_if_present(tmp_path / "there") is True
