"""The library's manners towards an embedder (issue 16), without QEMU: errors exported and
carrying what they concern, a NullHandler, py.typed, per-call timeouts, cancelled waits that
release their file descriptors, progress that ends at 100 %, one rule for file paths, and the
rewriting of an attached QEMU's command line."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import tree_picture

import qsnap
from qsnap.launcher.foreign import (
    DiskImage,
    ForeignCommand,
    UnprovableRewrite,
    join_options,
    relaunch_argv,
    split_options,
)
from qsnap.progress import Progress, ProgressMeter
from qsnap.store.lock import DomainLock

XML = "<domain type='qemu'><name>g</name><memory>131072</memory></domain>"


def test_every_error_class_is_exported_and_carries_its_subject() -> None:
    import qsnap.errors
    classes = [c for _, c in inspect.getmembers(qsnap.errors, inspect.isclass)
               if issubclass(c, qsnap.QsnapError)]
    assert len(classes) >= 20
    for cls in classes:
        assert getattr(qsnap, cls.__name__) is cls, cls
        assert cls.__name__ in qsnap.__all__
    error = qsnap.GuestExitedError("gone", domain="g", path="/x.save")
    assert isinstance(error, qsnap.OperationFailedError)
    assert (error.domain, error.snapshot, error.path) == ("g", None, "/x.save")
    assert not issubclass(qsnap.GuestExitedError, qsnap.XMLError)


def test_the_package_logs_nowhere_unless_asked() -> None:
    assert qsnap.Engine  # the engine's modules log (and import logging) when first used
    handlers = logging.getLogger("qsnap").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert (Path(qsnap.__file__).parent / "py.typed").exists()


def test_every_operation_takes_a_timeout() -> None:
    for name, method in inspect.getmembers(qsnap.Engine, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            assert "timeout" in inspect.signature(method).parameters, name
    assert not hasattr(qsnap.Engine, "list")  # it shadowed the builtin: snapshots()


@pytest.fixture
async def busy(tmp_path: Path) -> AsyncIterator[tuple[qsnap.Engine, DomainLock]]:
    """An engine whose domain 'g' someone else holds locked (until the test releases it)."""
    engine = qsnap.Engine(tmp_path)
    await engine.define(XML)
    holder = DomainLock(tmp_path / "locks" / "g.lock", "g", timeout=5)
    holder.acquire()
    try:
        yield engine, holder
    finally:
        holder.release()


async def test_a_timeout_bounds_the_wait_for_a_busy_domain(
        busy: tuple[qsnap.Engine, DomainLock]) -> None:
    """A busy domain is a DomainBusyError naming the holder (here this very process, not
    "another qsnap process"), and timeout= is honoured within tens of milliseconds, also by
    a call that waits twice (to settle a crash's leftovers, then for its work): timeout=0.2
    waited 0.53 s (issue 28)."""
    engine, _ = busy
    loop = asyncio.get_running_loop()
    (engine.state_dir / "domains" / "g" / "intent.json").write_text(
        '{"kind": "blockpull", "target": "vda", "job_id": "x"}')  # a wait to settle it first
    for call in (lambda: engine.domain_xml("g", timeout=0.2),
                 lambda: engine.set_current("g", "s", timeout=0.2)):
        started = loop.time()
        with pytest.raises(qsnap.DomainBusyError, match="domain 'g' is busy: another call in "
                                                        "this process has held it") as caught:
            await call()
        assert 0.2 <= loop.time() - started < 0.26, loop.time() - started
        assert caught.value.domain == "g" and caught.value.holder_pid == os.getpid()
        assert isinstance(caught.value, qsnap.OperationInvalidError)
    with pytest.raises(qsnap.InvalidArgumentError, match="positive"):
        await engine.domain_xml("g", timeout=0)


async def test_cancelled_waits_for_a_busy_domain_leave_no_descriptor(
        busy: tuple[qsnap.Engine, DomainLock]) -> None:
    engine, holder = busy
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        task = asyncio.create_task(engine.domain_xml("g"))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(os.listdir("/proc/self/fd")) == before
    holder.release()
    assert "<name>g</name>" in await engine.domain_xml("g")  # and the lock is free


def test_progress_ends_at_exactly_the_bytes_moved() -> None:
    heard: list[Progress] = []
    meter = ProgressMeter("save", heard.append)
    meter(10, 100)
    meter(49, 100)  # a guest's RAM size was the estimate; 49 bytes were really written
    meter.finish(49)
    assert (heard[-1].done, heard[-1].total) == (49, 49)
    meter.finish(49)
    assert len(heard) == 3  # said once
    silent = ProgressMeter("x", None)
    silent.finish(49)


async def test_every_file_argument_must_be_absolute(tmp_path: Path) -> None:
    engine = qsnap.Engine(tmp_path)
    await engine.define(XML)
    for call in (engine.save("g", "relative.save"), engine.restore("relative.save"),
                 engine.save_image_xml("relative.save")):
        with pytest.raises(qsnap.InvalidArgumentError, match="must be absolute") as caught:
            await call
        assert caught.value.path == "relative.save"
    with pytest.raises(qsnap.XMLError, match="must be absolute"):
        qsnap.parse_snapshot("<domainsnapshot><memory snapshot='external' "
                             "file='relative.mem'/></domainsnapshot>")


# -- an attached QEMU's command line, started again --------------------------------------------

def _command(argv: list[str], images: dict[str, str]) -> ForeignCommand:
    return ForeignCommand(argv, "/work", "/run/mon.sock", images)


def test_options_split_and_join_with_doubled_commas() -> None:
    text = "file=/a,,b.qcow2,format=qcow2,if=none,readonly"
    options = split_options(text)
    assert options == [("file", "/a,b.qcow2"), ("format", "qcow2"), ("if", "none"),
                       ("readonly", None)]
    assert join_options(options) == text


def test_a_drive_gets_the_new_image_and_its_format() -> None:
    argv = ["qemu", "-drive", "file=/img/base.raw,format=raw,if=none,id=hd0",
            "-device", "virtio-blk-pci,drive=hd0,id=system", "-S", "-daemonize",
            "-pidfile", "/theirs.pid", "-incoming", "tcp:0:4444", "-m", "128"]
    out = relaunch_argv(_command(argv, {"system": "/img/base.raw"}),
                        {"system": DiskImage("/img/base.raw.s1", "qcow2")},
                        incoming=True, paused=False, pidfile="/ours.pid")
    assert out == ["qemu", "-drive", "file=/img/base.raw.s1,format=qcow2,if=none,id=hd0",
                   "-device", "virtio-blk-pci,drive=hd0,id=system", "-m", "128",
                   "-daemonize", "-pidfile", "/ours.pid", "-S", "-incoming", "defer"]


def test_blockdev_forms_follow_the_new_image() -> None:
    argv = ["qemu",
            "-blockdev", "driver=file,node-name=f0,filename=/img/a.raw",
            "-blockdev", "driver=raw,node-name=d0,file=f0",
            "-blockdev", "driver=qcow2,node-name=d1,file.driver=file,"
                         "file.filename=/img/b.qcow2,backing=null",
            "-blockdev", json.dumps({"driver": "raw", "node-name": "d2", "file": {
                "driver": "file", "filename": "/img/c.raw"}})]
    images = {"a": "/img/a.raw", "b": "/img/b.qcow2", "c": "/img/c.raw"}
    out = relaunch_argv(_command(argv, images),
                        {t: DiskImage(p + ".new", "qcow2") for t, p in images.items()},
                        incoming=False, paused=True, pidfile="/p")
    assert out[2] == "driver=file,node-name=f0,filename=/img/a.raw.new"
    assert out[4] == "driver=qcow2,node-name=d0,file=f0"
    assert out[6] == "driver=qcow2,node-name=d1,file.driver=file,file.filename=/img/b.qcow2.new"
    assert json.loads(out[8]) == {"driver": "qcow2", "node-name": "d2", "file": {
        "driver": "file", "filename": "/img/c.raw.new"}}
    assert out[-4:] == ["-daemonize", "-pidfile", "/p", "-S"]


def test_unchanged_disks_keep_their_options_and_unknown_disks_are_refused() -> None:
    argv = ["qemu", "-hda", "/img/a.qcow2", "-drive", "file=/img/b.qcow2,if=virtio"]
    command = _command(argv, {"hda": "/img/a.qcow2", "vdb": "/img/b.qcow2"})
    out = relaunch_argv(command, {"hda": DiskImage("/img/a.ov", "qcow2"),
                                  "vdb": DiskImage("/img/b.qcow2", "qcow2")},
                        incoming=False, paused=False, pidfile="/p")
    assert out[:5] == ["qemu", "-hda", "/img/a.ov", "-drive", "file=/img/b.qcow2,if=virtio"]
    with pytest.raises(qsnap.InvalidArgumentError, match="disk vdc was not there"):
        relaunch_argv(command, {"vdc": DiskImage("/x", "qcow2")}, incoming=False,
                      paused=False, pidfile="/p")
    gone = _command(["qemu", "-m", "128"], {"hda": "/img/a.qcow2"})
    with pytest.raises(qsnap.InvalidArgumentError, match="does not name image"):
        relaunch_argv(gone, {"hda": DiskImage("/img/a.ov", "qcow2")}, incoming=False,
                      paused=False, pidfile="/p")


def _relaunched(argv: list[str], old: str, new: DiskImage) -> list[str]:
    return relaunch_argv(_command(["qemu", *argv], {"data": old}), {"data": new},
                         incoming=False, paused=True, pidfile="/p")[1:-4]


def test_a_json_protocol_node_under_a_key_value_format_node_follows_the_new_format() -> None:
    """The data loss of issue 28: a raw disk as a JSON protocol node and a key=value format
    node naming it (file=NODE). The overlay's name went into the protocol node and the
    format node stayed raw: the guest wrote over the overlay's qcow2 header."""
    argv = ["-blockdev", json.dumps({"driver": "file", "filename": "/img/data.img",
                                     "node-name": "data-proto"}),
            "-blockdev", "driver=raw,node-name=data-fmt,file=data-proto",
            "-device", "virtio-blk-pci,drive=data-fmt,id=data"]
    out = _relaunched(argv, "/img/data.img", DiskImage("/img/data.s1", "qcow2"))
    assert json.loads(out[1])["filename"] == "/img/data.s1"
    assert out[3] == "driver=qcow2,node-name=data-fmt,file=data-proto"
    # The other way round: a key=value protocol node under a JSON format node.
    argv = ["-blockdev", "driver=file,filename=/img/data.img,node-name=p",
            "-blockdev", json.dumps({"driver": "raw", "node-name": "f", "file": "p"})]
    out = _relaunched(argv, "/img/data.img", DiskImage("/img/data.s1", "qcow2"))
    assert out[1] == "driver=file,filename=/img/data.s1,node-name=p"
    assert json.loads(out[3]) == {"driver": "qcow2", "node-name": "f", "file": "p"}
    # Nested, with dotted keys, and a -drive naming its file by file.filename.
    out = _relaunched(["-drive", "file.filename=/img/data.img,format=raw,if=virtio"],
                      "/img/data.img", DiskImage("/img/data.s1", "qcow2"))
    assert out == ["-drive", "file.filename=/img/data.s1,format=qcow2,if=virtio"]
    out = _relaunched(["-drive", "file=/img/data.img,if=virtio,backing.file.filename=/b"],
                      "/img/data.img", DiskImage("/img/data.s1", "qcow2"))
    assert out == ["-drive", "file=/img/data.s1,if=virtio,format=qcow2"]


@pytest.mark.parametrize(("argv", "why"), [
    (["-blockdev", "driver=file,filename=/img/data.img,node-name=p",
      "-device", "virtio-blk-pci,drive=p"],
     r"opened by a protocol node \('p'\) with no format node on it, so its new qcow2 image "
     r"would reach the guest as raw bytes"),
    (["-blockdev", "driver=file,filename=/img/data.img,node-name=p",
      "-blockdev", "driver=raw,node-name=f,file=p,offset=512"],
     r"opened by a raw node with option\(s\) offset, which a qcow2 node does not take"),
    (["-blockdev", "driver=file,filename=/img/data.img,node-name=p",
      "-blockdev", "driver=luks,node-name=f,file=p,key-secret=s"],
     r"opened through a 'luks' node"),
    (["-blockdev", "driver=file,filename=/img/data.img,node-name=p",
      "-blockdev", "driver=raw,node-name=f1,file=p", "-blockdev", "driver=raw,node-name=f2,file=p"],
     r"is the file of 2 block nodes"),
    (["-drive", "file=/img/data.img,format=raw,if=virtio,size=1048576"],
     r"-drive with raw option\(s\) size"),
    (["-drive", "file=/img/data.img,format=vmdk,if=virtio"], r"-drive of format 'vmdk'"),
    (["-drive", "file=/img/data.img,format=raw,if=virtio",
      "-global", "some.property=/img/data.img"],
     r"names image '/img/data.img' in argument 4 \('some.property=/img/data.img'\)"),
    (["-blockdev", "driver=file,filename=/img/data.img,node-name=p",
      "-blockdev", "driver=raw,node-name=f,file=p", "-blockdev", "driver=raw,file.driver=file,"
      "file.filename=/img/data.img,file.filename.x=1"],
     r"gives 'filename' both a value and options"),
])
def test_a_rewrite_that_cannot_be_proven_right_is_refused(argv: list[str], why: str) -> None:
    with pytest.raises(UnprovableRewrite, match=why):
        _relaunched(argv, "/img/data.img", DiskImage("/img/data.s1", "qcow2"))


def test_a_recorded_command_reads_back() -> None:
    command = ForeignCommand(["qemu", "-m", "1"], "/w", "/s", {"vda": "/a"}, "kvm")
    assert ForeignCommand.from_json(command.to_json()) == command


async def test_a_damaged_launch_record_stops_only_a_start(tmp_path: Path) -> None:
    """An attached domain's launch.json edited into garbage: starting it is refused, naming
    the file and the way out, and nothing changes; reads go on."""
    engine = qsnap.Engine(tmp_path)
    await engine.define(XML)
    folder = tmp_path / "domains" / "g"
    (folder / "launch.json").write_text("{not json")
    before = tree_picture(folder)
    with pytest.raises(qsnap.CorruptMetadataError,
                       match=r"launch\.json' is corrupt .*'qsnap attach g --qmp SOCKET'") \
            as caught:
        await engine.start("g")
    assert caught.value.path == str(folder / "launch.json")
    assert tree_picture(folder) == before
    assert await engine.domstate("g") == "shut off"
    assert "<name>g</name>" in await engine.domain_xml("g")


async def test_a_busy_domain_names_the_process_and_operation_that_hold_it(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    engine = qsnap.Engine(tmp_path)
    await engine.define(XML)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from qsnap.store.lock import DomainLock\n"
         "from qsnap.timeouts import operation\n"
         "with operation('revert'), DomainLock(__import__('pathlib').Path(sys.argv[1]), 'g'):\n"
         "    print('held', flush=True); time.sleep(30)\n",
         str(tmp_path / "locks" / "g.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(qsnap.DomainBusyError,
                           match=rf"domain 'g' is busy: qsnap process {holder.pid} \(revert\) "
                                 r"has held it for over 0.1 s") as caught:
            await engine.snapshots("g", timeout=0.1)
        assert (caught.value.holder_pid, caught.value.operation) == (holder.pid, "revert")
    finally:
        holder.kill()
        holder.wait()


DISK_XML = """<domain type='qemu'><name>g</name><memory>131072</memory><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='{image}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


async def test_errors_name_their_domain_snapshot_and_path(tmp_path: Path) -> None:
    """An embedder branches on exc.domain, exc.snapshot and exc.path: 9 of 15 failure paths
    left them empty where they were known (issue 28). Each case here is one of them."""
    import subprocess

    engine = qsnap.Engine(tmp_path / "state")
    image = tmp_path / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    await engine.define(DISK_XML.format(image=image))
    taken = tmp_path / "taken"
    taken.write_text("not empty")
    garbage = tmp_path / "garbage.save"
    garbage.write_bytes(b"not a save image at all" * 10)
    missing_base = tmp_path / "gone.qcow2"
    external = (f"<domainsnapshot><name>ext</name><state>disk-snapshot</state>"
                f"<creationTime>1</creationTime>"
                f"<memory snapshot='no'/><disks><disk name='vda' snapshot='external'>"
                f"<source file='{tmp_path / 'overlay'}'/></disk></disks>"
                f"{DISK_XML.format(image=missing_base)}</domainsnapshot>")
    await engine.redefine("g", external)
    cases = [
        (engine.create("g", snapshot_xml("s1", [f"vda,file={taken}"]),
                       qsnap.CreateFlags(disk_only=True)),
         qsnap.InvalidArgumentError, ("g", None, str(taken))),
        (engine.create("g", "<domainsnapshot><name>s2</name><disks><disk name='vdz'/></disks>"
                            "</domainsnapshot>", qsnap.CreateFlags(disk_only=True)),
         qsnap.InvalidArgumentError, ("g", "s2", None)),
        (engine.create("g", "<domainsnapshot><nme>x</nme></domainsnapshot>"),
         qsnap.XMLError, ("g", None, None)),
        (engine.restore(garbage), qsnap.SaveImageError, (None, None, str(garbage))),
        (engine.attach("h", str(tmp_path / "no.sock")), qsnap.MonitorClosedError,
         ("h", None, str(tmp_path / "no.sock"))),
        (engine.delete("g", "ext"), qsnap.OperationInvalidError,
         ("g", "ext", str(missing_base))),
        (engine.delete("g", None), qsnap.NoSnapshotError, ("g", None, None)),
        (engine.revert("g", "nosuch"), qsnap.NoSnapshotError, ("g", "nosuch", None)),
    ]
    for call, kind, (domain, snapshot, path) in cases:
        with pytest.raises(kind) as caught:
            await call
        error = caught.value
        assert (error.domain, error.snapshot, error.path) == (domain, snapshot, path), error
        assert "--metadata" not in str(error), error  # an API caller has no such option


def snapshot_xml(name: str, diskspecs: list[str]) -> str:
    return qsnap.snapshot_xml_from_args(name, diskspecs=diskspecs)
