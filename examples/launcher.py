"""A small VM launcher that embeds qsnap: it starts its own QEMU, hands qsnap the QMP socket,
and starts the machine again its own way whenever qsnap needs a new QEMU (a revert, a
restore).

    python3 examples/launcher.py --workdir DIR --kernel K --initrd I --disk IMAGE.qcow2

The contract, in full:

1. The launcher starts QEMU however it likes, with a QMP socket.
2. ``engine.attach(name, socket, relaunch=hook)`` adopts it and returns a ``qsnap.Guest``.
3. Snapshots, reverts, saves and deletes go through that handle. When one needs a new QEMU
   (every revert, a restore), qsnap stops the old one and awaits ``hook(request)``: a
   ``qsnap.RelaunchRequest`` naming each disk's image as it must now be (by the device id
   QEMU reported), and whether to start paused (``-S``) or waiting for a saved state
   (``-incoming defer``). The hook starts the machine and returns its QMP socket path.
4. Without a hook, qsnap runs the attached QEMU's own command line again, with only the disk
   images and the start mode changed.

tests/test_examples.py runs this file against the real QEMU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import signal
import sys
from pathlib import Path

import qsnap


class Launcher:
    """Starts one machine: a kernel, an initrd and one disk, with the device id ``system``."""

    def __init__(self, workdir: Path, kernel: str, initrd: str) -> None:
        self.workdir = workdir
        self.kernel = kernel
        self.initrd = initrd
        self.socket = workdir / "qmp.sock"
        self.serial = workdir / "serial.log"
        self.pidfiles: list[Path] = []

    async def start(self, disk: str, *, paused: bool = False, incoming: bool = False) -> str:
        """Start QEMU on *disk* (a qcow2 image); return its QMP socket once it listens.

        QEMU daemonizes: its first process exits once the machine is set up and its QMP
        socket listens, and the machine itself is not this process's child. (A child QEMU
        that qsnap quits was seen, once in CI, reaped before asyncio's child watcher got to
        it, which then logged "Unknown child process".)"""
        self.socket.unlink(missing_ok=True)
        pidfile = self.workdir / f"qemu-{len(self.pidfiles)}.pid"
        argv = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "128",
                "-nodefaults", "-display", "none",
                "-kernel", self.kernel, "-initrd", self.initrd,
                "-append", "console=ttyS0 quiet panic=-1",
                "-blockdev", f"driver=file,node-name=system-file,filename={disk}",
                "-blockdev", "driver=qcow2,node-name=system-disk,file=system-file",
                "-device", "virtio-blk-pci,drive=system-disk,id=system",
                "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,id=nic0",
                "-chardev", f"file,id=log,path={self.serial},append=on",
                "-serial", "chardev:log",
                "-qmp", f"unix:{self.socket},server=on,wait=off",
                "-daemonize", "-pidfile", str(pidfile)]
        if os.environ.get("QSNAP_QEMU_COMPAT"):  # the test suite's policy for every QEMU
            argv += ["-compat", os.environ["QSNAP_QEMU_COMPAT"]]
        if paused or incoming:
            argv.append("-S")
        if incoming:
            argv += ["-incoming", "defer"]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
        self.pidfiles.append(pidfile)
        status = await process.wait()
        if status != 0:
            raise RuntimeError(f"QEMU exited with status {status}")
        return str(self.socket)

    async def relaunch(self, request: qsnap.RelaunchRequest) -> str:
        """qsnap's relaunch hook: the same machine, on the disk image qsnap names."""
        return await self.start(request.disks["system"].path, paused=request.paused,
                                incoming=request.incoming)

    async def close(self) -> None:
        """Kill every QEMU this launcher started that still runs."""
        for pidfile in self.pidfiles:
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)

    def counter(self) -> int:
        """The guest's latest counter (the test guest prints one about 40 times a second)."""
        found = re.findall(rb"qsnap-counter (\d+)", self.serial.read_bytes())
        return int(found[-1]) if found else 0

    async def resumed_after(self, mark: int) -> int:
        """The counter a reverted guest went on from: the first after byte *mark* of the
        serial log that does not continue the count (the old QEMU may print a few more
        before qsnap stops it)."""
        for _ in range(600):
            data = self.serial.read_bytes()
            values = [int(c) for c in re.findall(rb"qsnap-counter (\d+)\s", data[:mark])][-1:]
            values += [int(c) for c in re.findall(rb"qsnap-counter (\d+)\s", data[mark:])]
            jumps = [b for a, b in itertools.pairwise(values) if b != a + 1]
            if jumps:
                return jumps[0]
            await asyncio.sleep(0.05)
        raise RuntimeError("the guest's counter did not go back")

    async def counter_above(self, value: int) -> int:
        for _ in range(600):
            if self.counter() > value:
                return self.counter()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the guest's counter did not pass {value}")


async def main(workdir: Path, kernel: str, initrd: str, disk: str) -> None:
    launcher = Launcher(workdir, kernel, initrd)
    engine = qsnap.Engine(workdir / "state")
    try:
        guest = await engine.attach("lab", await launcher.start(disk),
                                    relaunch=launcher.relaunch)
        print(f"attached: QEMU pid {guest.pid}")
        await launcher.counter_above(20)

        memory = workdir / "before.mem"
        first = launcher.counter()
        await guest.snapshot(qsnap.snapshot_xml_from_args("before", memspec=f"file={memory}"))
        await asyncio.sleep(1)  # the serial log lags the guest's own count under load
        last = launcher.counter()
        print(f"snapshot 'before' between counters {first} and {last}")
        await launcher.counter_above(last + 40)

        mark = launcher.serial.stat().st_size
        await guest.revert("before")
        info = await guest.info()
        resumed = await launcher.resumed_after(mark)
        print(f"reverted to 'before': QEMU pid {info.pid}, {info.state}, "
              f"counter {resumed}")

        await guest.save(workdir / "lab.save")
        print(f"saved: {await guest.state()}")
        restored = await engine.restore(workdir / "lab.save")
        print(f"restored: QEMU pid {restored.pid}, {await restored.state()}")

        await guest.delete("before")
        print(f"snapshots left: {len(await guest.snapshots())}")
        await guest.destroy()
    finally:
        await launcher.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--initrd", required=True)
    parser.add_argument("--disk", required=True, help="a qcow2 image, used as it is")
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(options.workdir.absolute(), options.kernel, options.initrd,
                     str(Path(options.disk).absolute())))
    sys.exit(0)
