"""An embedder's event loop keeps running while qsnap works (issue 16): no step of any
operation holds the loop longer than 10 ms. A heartbeat on the loop and a watchdog thread
that takes the loop thread's stack when the heartbeat is late (tests/loop_watch.py) name the
code that held it: it found fsyncs, qemu-img's fork/exec and a read-ahead request on the loop.
Real QEMU, every kind of operation on images.

A stall counts when the loop thread was running qsnap's code (a qsnap frame on its stack)
and the loop was late by more than the limit. Lateness with no qsnap frame is not qsnap's:
the loop waiting in select(), or in asyncio's own callbacks, while the process was not
scheduled (the guest's QEMU shares the 2 CPUs). The executor's worker threads are started
before (asyncio's own cost, paid once by a long-running embedder).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from loop_watch import LoopWatch
from qemu_guest import require_qemu, started_guest

import qsnap
from qsnap import CreateFlags, DeleteFlags, snapshot_xml_from_args

#: The longest a step of qsnap's may hold the loop.
LIMIT = 0.010


async def test_no_operation_blocks_the_event_loop(tmp_path: Path) -> None:
    engine, _folder = await started_guest(tmp_path, 2)
    assert isinstance(engine, qsnap.Engine)
    await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.05) for _ in range(8)))
    try:
        async with LoopWatch(LIMIT) as watch:
            await engine.create("g", snapshot_xml_from_args("disks"),
                                CreateFlags(disk_only=True))
            await engine.create("g", snapshot_xml_from_args(
                "full", memspec=f"file={tmp_path / 'full.mem'}"))
            await engine.create("g", snapshot_xml_from_args("internal"))
            await engine.revert("g", "full")
            await engine.revert("g", "internal")
            await engine.save("g", tmp_path / "g.save")
            await engine.restore(tmp_path / "g.save")
            await engine.delete("g", "internal", DeleteFlags())
            await engine.delete("g", "disks", DeleteFlags(children=True))
            assert await engine.snapshots("g") == []
    finally:
        await engine.destroy("g")
    report = "\n".join(f"{s.length * 1000:.1f} ms at {s.where()}" for s in watch.stalls)
    print(report)
    assert not [s for s in watch.stalls if s.in_qsnap and s.length > LIMIT], report


def test_only_frames_of_the_qsnap_package_count_as_qsnap() -> None:
    """A checkout cloned into a folder named qsnap (git's default) puts "/qsnap/" in the path
    of the venv's site-packages and of asyncio's own select(): those frames are not qsnap's,
    and a stall in them (the loop idle while the process waited for a CPU) is not qsnap's."""
    from loop_watch import QSNAP_FILES, Stall, is_qsnap_frame

    package = QSNAP_FILES.removeprefix('File "')
    idle = ['  File "/home/u/qsnap/.venv/lib/python3.11/site-packages/qemu/qmp/x.py", '
            'line 1, in run\n',
            '  File "/usr/lib/python3.11/asyncio/base_events.py", line 1, in _run_once\n',
            '  File "/home/u/qsnap/tests/test_x.py", line 1, in test\n']
    assert not Stall(0.02, idle).in_qsnap
    ours = f'  File "{package}engine/create.py", line 9, in run\n'
    assert is_qsnap_frame(ours) and Stall(0.02, [*idle, ours]).in_qsnap


#: Run in a fresh interpreter, so that nothing of qsnap's but its package is imported yet.
_FIRST_USE = '''
import asyncio, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from loop_watch import LoopWatch
import guest
import qsnap

async def main(folder: Path) -> None:
    xml = guest.make_guest("g", 2, 128, folder / "g").read_text()
    await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.05) for _ in range(8)))
    engine = qsnap.Engine(folder / "state")  # imports the engine's module, as `import` would
    async with LoopWatch(0.010) as watch:
        await engine.define(xml)
        await engine.start("g")
        try:
            await asyncio.sleep(2)
            await engine.create("g", qsnap.snapshot_xml_from_args("disks"),
                                qsnap.CreateFlags(disk_only=True))
            await engine.create("g", qsnap.snapshot_xml_from_args(
                "full", memspec=f"file={folder / 'full.mem'}"))
            await engine.revert("g", "full")
            await engine.save("g", folder / "g.save")
            await engine.restore(folder / "g.save")
            await engine.delete("g", "disks", qsnap.DeleteFlags(children=True))
        finally:
            await engine.destroy("g")
    for stall in watch.stalls:
        if stall.in_qsnap and stall.length > 0.010:
            importing = any("importlib._bootstrap" in line for line in stall.stack)
            print(f"{'import' if importing else 'other'}: {stall.length * 1000:.1f} ms at "
                  f"{stall.where()}")

asyncio.run(main(Path(sys.argv[1])))
'''


def test_no_first_use_of_an_operation_blocks_the_event_loop(tmp_path: Path) -> None:
    """Issue 30: each operation's first use in a process imported its code on the loop (a
    first create held it 116 ms, a revert 36, a save 27). Engine.ready imports it in a worker
    thread, and every operation awaits it first: from a fresh interpreter, no first define,
    start, snapshot, revert, save, restore or delete holds the loop over 10 ms to import.
    (Other stalls are test_no_operation_blocks_the_event_loop's; they are printed here, not
    counted twice: this test's guest starts inside the watch, where the other's is warm.)"""
    require_qemu()
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", _FIRST_USE, str(tmp_path), str(tests),
                           str(tests.parent / "fixtures")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert [line for line in done.stdout.splitlines() if line.startswith("import:")] == []
