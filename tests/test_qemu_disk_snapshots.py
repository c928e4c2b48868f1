"""Disk snapshots with real QEMU and the tiny guest: running (one QMP transaction) and stopped
(qemu-img), the metadata they leave, and every bad input leaving guest, images and store alone.

The guest writes ``qsnap-counter N`` to the start of every disk a few times a second, so an
image's counter says which moment it holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import conformance_dir, tree_picture
from lxml import etree
from qemu_guest import assert_one_moment, guest_module, require_qemu, wait_for_counter

import qsnap
from qsnap import CreateFlags, Engine, snapshot_xml_from_args
from qsnap.model.snapshot import parse_snapshot
from qsnap.monitor import Monitor, MonitorClosedError
from qsnap.monitor.agent import GuestAgent, GuestAgentError

GUEST = guest_module()


@dataclass
class Guest:
    engine: Engine
    name: str
    dir: Path
    xml: Path

    @property
    def serial(self) -> Path:
        return self.dir / "serial.log"

    def image(self, target: str, suffix: str = "qcow2") -> Path:
        return self.dir / f"{self.name}-{target}.{suffix}"

    def counter(self, image: Path) -> int | None:
        return GUEST.read_disk_counter(image)

    async def sources(self) -> list[str | None]:
        domain = qsnap.model.domain.parse_domain(await self.engine.domain_xml(self.name))
        return [d.source for d in domain.disks]

    async def live_files(self) -> dict[str, str]:
        """The file each disk writes to now, as QEMU itself reports it."""
        info = self.engine._runtime(self.name)[1]
        assert info is not None, "guest is not running"
        async with await Monitor.connect(info.qmp) as monitor:
            blocks = await monitor.execute("query-block")
        return {b["qdev"].split("/peripheral/")[1].split("/")[0]: b["inserted"]["file"]
                for b in blocks if b.get("inserted")}


async def make_guest(tmp_path: Path, disks: int = 3, start: bool = True) -> Guest:
    require_qemu()
    engine = Engine(tmp_path / "state")
    xml = GUEST.make_guest("g", disks, 128, tmp_path / "g")
    await engine.define(xml.read_text())
    guest = Guest(engine, "g", tmp_path / "g", xml)
    if start:
        await engine.start("g")
        await wait_for_counter(guest.serial, 10)
    return guest


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Guest]:
    guest = await make_guest(tmp_path)
    yield guest
    if await guest.engine.domstate("g") != "shut off":
        await guest.engine.destroy("g")


@pytest.fixture
async def stopped(tmp_path: Path) -> Guest:
    return await make_guest(tmp_path, start=False)


DISK_ONLY = CreateFlags(disk_only=True)


async def test_external_snapshot_of_three_running_disks(running: Guest) -> None:
    g = running
    before = await g.sources()
    name = await g.engine.create("g", snapshot_xml_from_args("s1", "first"), DISK_ONLY)
    assert name == "s1"

    # One transaction: every old image stopped at the same moment.
    frozen = [g.counter(g.image(t)) for t in ("vda", "vdb", "vdc")]
    moment = assert_one_moment(frozen)

    # The guest keeps writing, now into the overlays; the old images stay as they were.
    now = await wait_for_counter(g.serial, moment + 25)
    await wait_for_counter(g.serial, now + 10)
    for target, old in zip(("vda", "vdb", "vdc"), frozen, strict=True):
        assert g.counter(g.image(target, "s1")) > moment
        assert g.counter(g.image(target)) == old
    assert await g.live_files() == {t: str(g.image(t, "s1")) for t in ("vda", "vdb", "vdc")}

    chain = json.loads(subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(g.image("vda", "s1"))],
        check=True, capture_output=True, text=True).stdout)
    assert [c["filename"] for c in chain] == [str(g.image("vda", "s1")), str(g.image("vda"))]
    assert chain[0]["backing-filename-format"] == "qcow2"

    # Metadata shaped like the documentation's example; the definition now shows the overlays.
    snap = parse_snapshot(await g.engine.get_xml("g", "s1"), redefine=True)
    assert (snap.state, snap.memory, snap.description, snap.parent) == \
        ("disk-snapshot", "no", "first", None)
    assert [(d.name, d.snapshot, d.driver_type, d.source.file) for d in snap.disks] == \
        [(t, "external", "qcow2", str(g.image(t, "s1"))) for t in ("vda", "vdb", "vdc")]
    embedded = qsnap.model.domain.parse_domain_element(snap.domain)
    assert [d.source for d in embedded.disks] == before
    assert await g.sources() == [str(g.image(t, "s1")) for t in ("vda", "vdb", "vdc")]
    assert await g.engine.current("g") == "s1"

    # A second snapshot stacks on the first and names it as parent.
    await g.engine.create("g", snapshot_xml_from_args("s2"), DISK_ONLY)
    assert (await g.engine.info("g", "s2")).parent == "s1"
    chain = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json",
                            str(g.image("vda", "s2"))], check=True, capture_output=True,
                           text=True).stdout
    assert len(json.loads(chain)) == 3


async def test_snapshot_metadata_validates_against_libvirt_schema(running: Guest) -> None:
    rng = etree.RelaxNG(etree.parse(str(conformance_dir() / "schemas" / "domainsnapshot.rng")))
    await running.engine.create("g", None, CreateFlags(disk_only=True))
    name = await running.engine.current("g")
    assert name is not None and name.isdigit()  # default name: the creation time
    xml = await running.engine.get_xml("g", name)
    assert rng.validate(etree.fromstring(xml.encode())), rng.error_log


async def _refused(g: Guest, xml: str, flags: CreateFlags, message: str) -> None:
    """The request fails with *message*; guest, images, metadata and folder are untouched."""
    files = sorted(os.listdir(g.dir))
    store = tree_picture(g.engine.state_dir / "domains")
    live = await g.live_files()
    with pytest.raises(qsnap.QsnapError) as info:
        await g.engine.create("g", xml, flags)
    assert message in str(info.value)
    assert sorted(os.listdir(g.dir)) == files
    assert tree_picture(g.engine.state_dir / "domains") == store
    assert await g.live_files() == live
    assert await g.engine.domstate("g") == "running"


async def test_bad_requests_change_nothing(running: Guest, tmp_path: Path) -> None:
    g = running
    vda = str(g.image("vda"))
    cases = [
        (snapshot_xml_from_args("x", diskspecs=["vdz"]), DISK_ONLY, "no disk named 'vdz'"),
        (snapshot_xml_from_args("x", diskspecs=["vda", vda]), DISK_ONLY,
         f"disk '{vda}' specified twice"),
        (snapshot_xml_from_args("x", diskspecs=["vda,snapshot=internal"]), DISK_ONLY,
         "active qemu domains require external disk snapshots; disk vda requested internal"),
        (snapshot_xml_from_args("x", memspec="snapshot=no"), CreateFlags(),
         "internal snapshot of a running VM must include the memory state"),
        (snapshot_xml_from_args("x", memspec=f"file={g.xml},snapshot=external"), CreateFlags(),
         f"refusing to overwrite existing file '{g.xml}'"),
        (snapshot_xml_from_args("x", memspec="file=/nonexistent/m.mem"), CreateFlags(),
         "cannot create '/nonexistent/m.mem'"),
        (snapshot_xml_from_args("x", diskspecs=["vda,file=/nonexistent/o.qcow2"]), DISK_ONLY,
         "folder '/nonexistent' does not exist or is not writable"),
        (snapshot_xml_from_args("x", diskspecs=[f"vda,file={g.xml}"]), DISK_ONLY,
         f"external snapshot file for disk vda already exists and is not a block device: {g.xml}"),
        (snapshot_xml_from_args("x", diskspecs=["vda,driver=raw,file=/tmp/o.raw"]), DISK_ONLY,
         "external snapshot format for disk vda is unsupported: raw"),
        (snapshot_xml_from_args("x", diskspecs=["vda,file=" + str(tmp_path / "no.qcow2")]),
         CreateFlags(disk_only=True, reuse_external=True), "missing existing file for disk vda"),
        (snapshot_xml_from_args("x", diskspecs=[f"vda,file={g.image('vdb')}"]), DISK_ONLY,
         "is an image the domain already uses"),
        (snapshot_xml_from_args("a/b"), DISK_ONLY, "invalid snapshot name 'a/b'"),
        # /sys passes the access() check even for root, but nothing can be created there:
        # the overlay's file (made 0600 before QEMU's transaction) is refused, and nothing
        # switches.
        (snapshot_xml_from_args("x", diskspecs=["vda,file=/sys/qsnap-o.qcow2"]), DISK_ONLY,
         "cannot create the overlay '/sys/qsnap-o.qcow2': Permission denied"),
        (snapshot_xml_from_args("x"), CreateFlags(disk_only=True, live=True),
         "live snapshot creation is supported only during full system snapshots"),
    ]
    for xml, flags, message in cases:
        await _refused(g, xml, flags, message)
    await g.engine.create("g", snapshot_xml_from_args("taken"), DISK_ONLY)
    await _refused(g, snapshot_xml_from_args("taken"), DISK_ONLY,
                   "domain 'g' already has a snapshot named 'taken'")


async def test_one_overlay_failing_switches_none(running: Guest) -> None:
    """A directory where vdc's overlay should go makes QEMU fail that disk: the transaction
    aborts, the overlays QEMU already made for vda and vdb are removed, no node is left open,
    and the guest writes on."""
    g = running
    (g.dir / "g-vdc.s1").mkdir()
    files = sorted(os.listdir(g.dir))
    store = tree_picture(g.engine.state_dir / "domains")
    nodes = await _node_names(g)
    with pytest.raises(qsnap.QsnapError, match=f"Could not create '{g.dir}/g-vdc.s1'"):
        await g.engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
    assert sorted(os.listdir(g.dir)) == files
    assert tree_picture(g.engine.state_dir / "domains") == store
    assert await g.live_files() == {t: str(g.image(t)) for t in ("vda", "vdb", "vdc")}
    assert await _node_names(g) == nodes
    seen = g.counter(g.image("vda")) or 0
    await wait_for_counter(g.serial, seen + 20)
    assert (g.counter(g.image("vda")) or 0) > seen


async def _node_names(g: Guest) -> set[str]:
    info = g.engine._runtime("g")[1]
    assert info is not None
    async with await Monitor.connect(info.qmp) as monitor:
        return {n["node-name"] for n in
                await monitor.execute("query-named-block-nodes", {"flat": True})}


async def test_qemu_dying_before_the_switch(running: Guest,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU killed (for real) between reading the disks and switching them: a clear error, no
    snapshot, no overlay, the definition unchanged, and the domain seen as shut off."""
    g = running
    original = Monitor.block_devices
    info = g.engine._runtime("g")[1]
    assert info is not None

    async def devices_then_kill(self: Monitor) -> dict[str, dict]:
        devices = await original(self)
        os.kill(info.pid, signal.SIGKILL)
        return devices

    monkeypatch.setattr(Monitor, "block_devices", devices_then_kill)
    files = sorted(os.listdir(g.dir))
    store = tree_picture(g.engine.state_dir / "domains")
    with pytest.raises(MonitorClosedError, match="QEMU closed its monitor during transaction"):
        await g.engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
    assert sorted(os.listdir(g.dir)) == files
    assert tree_picture(g.engine.state_dir / "domains") == store
    assert await g.engine.domstate("g") == "shut off"


async def test_a_definition_that_no_longer_matches_qemu_is_refused(running: Guest) -> None:
    """Redefining a running guest with its original XML makes the definition name the base
    images while QEMU writes to overlays. A snapshot then would record images that do not hold
    its state, so it is refused, naming both files; nothing changes."""
    g = running
    await g.engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
    await g.engine.define(g.xml.read_text())
    files = sorted(os.listdir(g.dir))
    store = tree_picture(g.engine.state_dir / "domains")
    full = snapshot_xml_from_args("s3", memspec=f"file={g.dir / 's3.mem'}")
    for xml, flags in ((snapshot_xml_from_args("s2"), DISK_ONLY), (full, CreateFlags())):
        with pytest.raises(qsnap.QsnapError) as refused:
            await g.engine.create("g", xml, flags)
        assert str(refused.value) == (
            f"the running QEMU's disk 'vda' writes to '{g.image('vda', 's1')}', but the domain "
            f"definition names '{g.image('vda')}'; refusing to snapshot from a definition "
            "that does not match the guest")
    assert sorted(os.listdir(g.dir)) == files
    assert tree_picture(g.engine.state_dir / "domains") == store
    assert await g.live_files() == {t: str(g.image(t, "s1")) for t in ("vda", "vdb", "vdc")}


async def test_halt_and_no_metadata(running: Guest) -> None:
    g = running
    await g.engine.create("g", snapshot_xml_from_args("ghost"),
                          CreateFlags(disk_only=True, no_metadata=True))
    assert await g.engine.snapshots("g") == []
    assert (await g.sources())[0] == str(g.image("vda", "ghost"))
    await g.engine.create("g", snapshot_xml_from_args("last"),
                          CreateFlags(disk_only=True, halt=True))
    assert await g.engine.domstate("g") == "shut off"
    assert [s.name for s in await g.engine.snapshots("g")] == ["last"]


async def test_reuse_external(running: Guest) -> None:
    g = running
    prepared = g.dir / "prepared.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(g.image("vda")), str(prepared)], check=True)
    wrong = g.dir / "wrong.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(g.image("vdb")), str(wrong)], check=True)
    reuse = CreateFlags(disk_only=True, reuse_external=True)
    await _refused(g, snapshot_xml_from_args("r", diskspecs=[f"vda,file={wrong}",
                                                             "vdb,snapshot=no",
                                                             "vdc,snapshot=no"]),
                   reuse, f"has backing file '{g.image('vdb')}', not '{g.image('vda')}'")
    await g.engine.create("g", snapshot_xml_from_args(
        "r", diskspecs=[f"vda,file={prepared}", "vdb,snapshot=no", "vdc,snapshot=no"]), reuse)
    assert (await g.live_files())["vda"] == str(prepared)
    assert (await g.live_files())["vdb"] == str(g.image("vdb"))


async def test_stopped_guest_external_and_internal(stopped: Guest) -> None:
    g = stopped
    await g.engine.create("g", snapshot_xml_from_args("ext"), DISK_ONLY)
    assert (await g.engine.info("g", "ext")).state == "shutoff"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      str(g.image("vda", "ext"))],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["full-backing-filename"] == str(g.image("vda"))
    await g.engine.create("g", snapshot_xml_from_args("int"), CreateFlags())
    snap = parse_snapshot(await g.engine.get_xml("g", "int"), redefine=True)
    assert (snap.state, snap.memory, [d.snapshot for d in snap.disks]) == \
        ("shutoff", "no", ["internal"] * 3)
    listing = subprocess.run(["qemu-img", "snapshot", "-l", str(g.image("vda", "ext"))],
                             check=True, capture_output=True, text=True).stdout
    assert " int " in listing
    assert (await g.engine.info("g", "int")).parent == "ext"
    # The guest boots from the new overlays.
    await g.engine.start("g")
    try:
        await wait_for_counter(g.serial, 5)
    finally:
        await g.engine.destroy("g")


async def test_stopped_guest_bad_requests(stopped: Guest, tmp_path: Path) -> None:
    g = stopped
    store = tree_picture(g.engine.state_dir / "domains")
    files = sorted(os.listdir(g.dir))
    raw = tmp_path / "raw.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "1M"], check=True)
    cases = [
        (snapshot_xml_from_args("m", diskspecs=["vda,snapshot=internal",
                                                "vdb,snapshot=external"]), CreateFlags(),
         "mixing internal and external targets for a snapshot is not yet supported"),
        (snapshot_xml_from_args("x", memspec="/tmp/m.mem"), CreateFlags(),
         "memory state cannot be saved with offline or disk-only snapshot"),
        (snapshot_xml_from_args("x", diskspecs=["vdz"]), CreateFlags(), "no disk named 'vdz'"),
        (snapshot_xml_from_args("x", diskspecs=["vda,file=/sys/qsnap-o.qcow2"]), DISK_ONLY,
         "cannot create the overlay '/sys/qsnap-o.qcow2'"),
        (snapshot_xml_from_args("x", diskspecs=[f"vda,file={tmp_path}/o.qcow2",
                                                "vdb,file=/sys/qsnap-o.qcow2"]), DISK_ONLY,
         "cannot create the overlay '/sys/qsnap-o.qcow2'"),
    ]
    for xml, flags, message in cases:
        with pytest.raises(qsnap.QsnapError) as info:
            await g.engine.create("g", xml, flags)
        assert message in str(info.value)
    assert tree_picture(g.engine.state_dir / "domains") == store
    assert sorted(os.listdir(g.dir)) == files
    assert not (tmp_path / "o.qcow2").exists(), "the overlay made before the failure stayed"

    domain = (f"<domain type='qemu'><name>r</name><memory unit='MiB'>64</memory><devices>"
              f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
              f"<source file='{raw}'/><target dev='vda' bus='virtio'/></disk></devices></domain>")
    await g.engine.define(domain)
    with pytest.raises(qsnap.NotSupportedError,
                       match="internal snapshot for disk vda unsupported for storage type raw"):
        await g.engine.create("r", snapshot_xml_from_args("i"), CreateFlags())
    assert await g.engine.snapshots("r") == []


async def test_dead_qemu_is_detected_not_waited_on(running: Guest) -> None:
    g = running
    info = g.engine._runtime("g")[1]
    assert info is not None
    with pytest.raises(qsnap.OperationInvalidError, match="already running"):
        await g.engine.start("g")
    os.kill(info.pid, signal.SIGKILL)
    assert await g.engine.domstate("g") == "shut off"
    assert [(d.name, d.state) for d in await g.engine.domains()] == [("g", "shut off")]
    with pytest.raises(qsnap.OperationInvalidError, match="domain 'g' is not running"):
        await g.engine.destroy("g")
    await g.engine.start("g")
    assert await g.engine.domstate("g") == "running"


async def test_quiesce_freezes_and_thaws_through_the_real_guest_agent(
        running: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    g = running
    sent: list[str] = []
    original = GuestAgent.execute

    async def record(self: GuestAgent, command: str, *args: object, **kw: object) -> object:
        sent.append(command)
        return await original(self, command, *args, **kw)

    monkeypatch.setattr(GuestAgent, "execute", record)
    quiesce = CreateFlags(disk_only=True, quiesce=True)
    await g.engine.create("g", snapshot_xml_from_args("q1"), quiesce)
    assert sent == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]

    # QEMU refusing the switch still thaws the guest.
    (g.dir / "g-vdc.q2").mkdir()
    sent.clear()
    with pytest.raises(qsnap.QsnapError, match="QEMU refused transaction"):
        await g.engine.create("g", snapshot_xml_from_args("q2"), quiesce)
    assert sent == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]

    # A check that fails before the transaction (a definition that no longer matches QEMU)
    # does not freeze the guest at all.
    await g.engine.define(g.xml.read_text())
    sent.clear()
    with pytest.raises(qsnap.QsnapError, match="refusing to snapshot from a definition"):
        await g.engine.create("g", snapshot_xml_from_args("q3"), quiesce)
    assert sent == []
    paths = g.engine._runtime("g")[0]
    async with await GuestAgent.connect(str(paths.agent)) as agent:
        assert await agent.execute("guest-fsfreeze-status") == "thawed"


async def test_quiesce_without_an_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_qemu()
    monkeypatch.setenv("QSNAP_QMP_TIMEOUT", "3")
    engine = Engine(tmp_path / "state")
    text = GUEST.make_guest("g", 1, 128, tmp_path / "g").read_text()
    no_channel = text[:text.index("    <channel")] + text[text.index("    <serial"):]
    silent = GUEST.make_guest("s", 1, 128, tmp_path / "s").read_text().replace(
        "panic=-1", "panic=-1 qsnap.agent=0")
    await engine.define(no_channel)
    await engine.define(silent)
    quiesce = CreateFlags(disk_only=True, quiesce=True)
    with pytest.raises(qsnap.InvalidArgumentError, match="--quiesce needs a running guest"):
        await engine.create("g", snapshot_xml_from_args("q"), quiesce)
    try:
        for name in ("g", "s"):
            await engine.start(name)
        await wait_for_counter(tmp_path / "g" / "serial.log", 5)
        store = tree_picture(engine.state_dir / "domains")
        files = sorted(os.listdir(tmp_path / "g"))
        with pytest.raises(qsnap.InvalidArgumentError,
                           match="QEMU guest agent is not configured: domain 'g' has no"):
            await engine.create("g", snapshot_xml_from_args("q"), quiesce)
        with pytest.raises(GuestAgentError, match="guest agent is not responding"):
            await engine.create("s", snapshot_xml_from_args("q"), quiesce)
        assert tree_picture(engine.state_dir / "domains") == store
        assert sorted(os.listdir(tmp_path / "g")) == files
        assert await engine.domstate("s") == "running"
    finally:
        for name in ("g", "s"):
            if await engine.domstate(name) != "shut off":
                await engine.destroy(name)


async def test_domain_disk_marked_no_is_left_alone(tmp_path: Path) -> None:
    require_qemu()
    xml = GUEST.make_guest("g", 2, 128, tmp_path / "g").read_text()
    second = xml.index("<disk type='file' device='disk'>", xml.index("<disk ") + 1)
    xml = xml[:second] + "<disk type='file' device='disk' snapshot='no'>" + \
        xml[second + len("<disk type='file' device='disk'>"):]
    engine = Engine(tmp_path / "state")
    await engine.define(xml)
    g = Guest(engine, "g", tmp_path / "g", tmp_path / "g" / "g.xml")
    await engine.start("g")
    try:
        await wait_for_counter(g.serial, 5)
        await engine.create("g", snapshot_xml_from_args("s1"), DISK_ONLY)
        assert await g.live_files() == {"vda": str(g.image("vda", "s1")),
                                        "vdb": str(g.image("vdb"))}
        snap = parse_snapshot(await engine.get_xml("g", "s1"), redefine=True)
        assert [(d.name, d.snapshot) for d in snap.disks] == [("vda", "external"), ("vdb", "no")]
        assert not g.image("vdb", "s1").exists()
    finally:
        await engine.destroy("g")


async def test_monitor_runs_generic_jobs_through_events(running: Guest) -> None:
    """blockdev-create is a generic QMP job: awaited through JOB_STATUS_CHANGE, then dismissed;
    a failing one raises QEMU's own error and is dismissed too."""
    g = running
    info = g.engine._runtime("g")[1]
    assert info is not None
    target = g.dir / "job.qcow2"
    target.touch()
    async with await Monitor.connect(info.qmp) as monitor:
        await monitor.execute("blockdev-add", {"driver": "file", "filename": str(target),
                                               "node-name": "job-file"})
        await monitor.jobs.run("blockdev-create", {"options": {
            "driver": "qcow2", "file": "job-file", "size": 1 << 20}},
            monitor.jobs.unique_id("create"))
        assert await monitor.execute("query-jobs") == []
        # Accepted as a command; the job itself concludes with this error.
        with pytest.raises(qsnap.QsnapError, match="QEMU refused blockdev-create: Image size "
                                                   "must be a multiple of 512 bytes"):
            await monitor.jobs.run("blockdev-create", {"options": {
                "driver": "qcow2", "file": "job-file", "size": 1000,
                "cluster-size": 3}}, monitor.jobs.unique_id("bad"))
        assert await monitor.execute("query-jobs") == []
        await monitor.execute("blockdev-del", {"node-name": "job-file"})
    details = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(target)],
                                        check=True, capture_output=True, text=True).stdout)
    assert (details["format"], details["virtual-size"]) == ("qcow2", 1 << 20)
