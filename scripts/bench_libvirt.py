"""The reference: the same operations through libvirt's ``virsh`` and through ``qsnap``.

Run by ``scripts/bench --with-libvirt``, once against each libvirt the machine has: the
system's (9.0 on Debian 12) and, where that is older than 11.2, the 11.3 that
``scripts/setup.sh`` unpacks from Debian's backports. Both sides get the same tiny guest from
the fixture (same XML, same RAM, half of it kept dirty), and every operation is one
command-line process on each side (``virsh ...`` against the venv's ``qsnap ...``), so
process start-up counts on both. Each row is a median of repeats in this one run, the two
sides alternating: wall time on both sides, their ratio, and the largest gap in each guest's
own counter during the operation (the pause the guest saw). The versions printed are the ones
``virsh version`` reported (library, daemon, and the QEMU it runs).

libvirt runs here without systemd, as the performance issue describes: when no libvirtd answers
on ``qemu:///system``, this creates the groups, user, folders and ``qemu.conf`` settings it needs
(only those missing), starts ``virtlogd -d`` and ``libvirtd -d``, and at the end stops the
daemons it started, by their PIDs. It never needs libvirt to pass: where it cannot run, it says
why and the benchmark carries on.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_qemu import GUEST, CounterWatch
from libvirt_daemon import (
    Libvirt,
    LibvirtUnavailable,
    libvirt_11_running,
    system_libvirt,
    system_libvirt_version,
)

#: The ``qsnap`` command a user types: the venv's script beside this interpreter.
QSNAP = str(Path(sys.executable).with_name("qsnap"))
#: Snapshots in the metadata-only listing row.
MANY = 10_000


class Side:
    """One guest driven by one tool; ``run`` times a command and watches the guest's counter."""

    def __init__(self, tool: str, base: Path, name: str, state: Path,
                 libvirt: Libvirt) -> None:
        self.tool = tool
        self.libvirt = libvirt
        self.name = name
        self.folder = base / tool
        self.state = state
        self.xml = GUEST.make_guest(name, 1, 256, self.folder, dirty=128)
        self.serial = self.folder / "serial.log"
        self.watch = CounterWatch(self.serial)
        self.n = 0
        self.internal_left = 0
        self.last_full = ""
        self.image = Path()

    def command(self, *args: str) -> list[str]:
        if self.tool == "libvirt":
            return [*self.libvirt.virsh_argv, "-q", "-c", self.libvirt.uri, *args]
        return [QSNAP, "--state-dir", str(self.state), "-q", *args]

    def environment(self) -> dict[str, str]:
        return self.libvirt.environment() if self.tool == "libvirt" else dict(os.environ)

    def run(self, *args: str, stdin: str | None = None) -> tuple[float, float]:
        """Wall time of one command, and the guest's largest counter gap during it."""
        env = self.environment()
        with self.watch.watching() as watch:
            start = time.perf_counter()
            result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                    timeout=600, env=env, input=stdin)
            wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{self.tool} {' '.join(args)}: {result.stderr.strip()}")
        return wall, watch.pause()

    def setup(self) -> None:
        for args in (("define", str(self.xml)), ("start", self.name)):
            subprocess.run(self.command(*args), check=True, capture_output=True, timeout=120,
                           env=self.environment())
        self.wait_running()
        deadline = time.monotonic() + 300  # memory compared before it is dirty is mostly zeros
        while not GUEST.dirty_ready(self.serial):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.tool}: the guest did not dirty its memory in 300 s")
            time.sleep(0.2)

    def wait_running(self) -> None:
        deadline = time.monotonic() + 60
        mark = GUEST.last_serial_counter(self.serial) or 0
        while (GUEST.last_serial_counter(self.serial) or 0) < mark + 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.tool}: the guest does not count")
            time.sleep(0.1)

    def teardown(self) -> None:
        for args in (("destroy", self.name),
                     ("undefine", self.name, "--snapshots-metadata", "--managed-save")
                     if self.tool == "libvirt" else ("undefine", self.name,
                                                     "--snapshots-metadata")):
            subprocess.run(self.command(*args), capture_output=True, timeout=120,
                           env=self.environment())

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


Operation = Callable[[Side], tuple[float, float]]


def operations(repeat: int) -> list[tuple[str, Operation]]:
    """The operations both tools are asked to do, in order, each taking one Side."""

    def internal_create(side: Side) -> tuple[float, float]:
        side.internal_left += 1
        return side.run("snapshot-create-as", side.name, f"i{side.internal_left}")

    def current_name(side: Side) -> tuple[float, float]:
        return side.run("snapshot-current", side.name, "--name")

    def internal_revert(side: Side) -> tuple[float, float]:
        result = side.run("snapshot-revert", side.name, "i1")
        side.wait_running()
        return result

    def internal_delete(side: Side) -> tuple[float, float]:
        """The internal snapshots, newest first (after the revert, i1 is current)."""
        side.internal_left -= 1
        return side.run("snapshot-delete", side.name, f"i{side.internal_left + 1}")

    def startup(side: Side) -> tuple[float, float]:
        return side.run("list", "--all")

    def disk_only(side: Side) -> tuple[float, float]:
        return side.run("snapshot-create-as", side.name, side.next("d"), "--disk-only",
                        "--atomic")

    def external_delete(side: Side) -> tuple[float, float]:
        return side.run("snapshot-delete", side.name, "--current")

    def full(live: bool) -> Operation:
        def take(side: Side) -> tuple[float, float]:
            name = side.next("f")
            side.last_full = name
            return side.run("snapshot-create-as", side.name, name, "--memspec",
                            f"file={side.folder / (name + '.mem')}",
                            *(["--live"] if live else []))
        return take

    def external_revert(side: Side) -> tuple[float, float]:
        result = side.run("snapshot-revert", side.name, side.last_full)
        side.wait_running()
        return result

    def save(side: Side) -> tuple[float, float]:
        side.image = side.folder / f"{side.next('s')}.save"
        return side.run("save", side.name, str(side.image))

    def restore(side: Side) -> tuple[float, float]:
        result = side.run("restore", str(side.image))
        side.wait_running()
        side.image.unlink()
        return result

    ops: list[tuple[str, Operation]] = []
    ops += [("a command that does nothing (list --all)", startup)] * repeat
    ops += [("internal full-system snapshot", internal_create)] * repeat
    ops += [("snapshot-current --name", current_name)] * repeat
    ops += [("revert to internal snapshot", internal_revert)] * repeat
    ops += [("delete internal snapshot", internal_delete)] * repeat
    ops += [("disk-only snapshot, 1 disk", disk_only), ("delete it (active commit)",
                                                        external_delete)] * repeat
    ops += [("external full-system snapshot (paused)", full(False)),
            ("revert to external full-system snapshot", external_revert)] * repeat
    ops += [("external full-system snapshot --live", full(True))] * repeat
    ops += [("save (256 MiB guest)", save), ("restore", restore)] * repeat
    return ops


@contextlib.contextmanager
def references() -> Iterator[Iterator[Libvirt]]:
    """Each libvirt to compare with, started in turn: the system's, then (where it is older
    than 11.2) the unpacked 11.3."""
    def each() -> Iterator[Libvirt]:
        starters = [system_libvirt]
        if system_libvirt_version() < (11, 2):
            starters.append(libvirt_11_running)
        for start in starters:
            try:
                with start() as libvirt:
                    yield libvirt
            except LibvirtUnavailable as exc:
                print(f"\na libvirt was not measured: {exc}")
    yield each()


def run(base: Path, repeat: int) -> None:
    with references() as libvirts:
        for libvirt in libvirts:
            print(f"\nlibvirt side by side (virsh vs qsnap command lines, same guest: 256 MiB, "
                  f"128 MiB kept dirty; medians of {repeat})")
            print(f"libvirt {libvirt.version}: {libvirt.how}")
            shown = libvirt.virsh("version")
            for line in shown.stdout.splitlines():
                if line.strip():
                    print(f"  virsh version: {line.strip()}")
            _compare(base / f"libvirt-{libvirt.version}", repeat, libvirt)
            _many_snapshots(base / f"many-{libvirt.version}", libvirt)
            virt_install_starts(base / f"starts-{libvirt.version}", repeat, libvirt)


def _compare(base: Path, repeat: int, libvirt: Libvirt) -> None:
    name = f"qsnap-bench-{os.getpid()}"
    sides = {tool: Side(tool, base / "side-by-side", name, base / "side-by-side" / "state",
                        libvirt) for tool in ("qsnap", "libvirt")}
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    failures: dict[str, str] = {}
    order: list[str] = []
    try:
        for side in sides.values():
            side.setup()
        for label, operation in operations(repeat):
            if label not in order:
                order.append(label)
            for tool, side in sides.items():  # alternate, so drift hits both alike
                results.setdefault(label, {}).setdefault(tool, [])
                if (label, tool) in failures:
                    continue
                try:
                    results[label][tool].append(operation(side))
                except RuntimeError as exc:
                    failures[(label, tool)] = str(exc)
    finally:
        for side in sides.values():
            side.teardown()
    interpreter = _median_ms([sys.executable, "-c", "pass"])
    width = max(len(label) for label in order) + 2
    print(f"{'operation':<{width}} {'qsnap':>10} {'libvirt':>10}  {'ratio':>6}   "
          "guest counter gap qsnap / libvirt")
    for label in order:
        q, v = results[label].get("qsnap", []), results[label].get("libvirt", [])
        if not q or not v:
            print(f"{label:<{width}} {_ms(q):>10} {_ms(v):>10}  {'-':>6}   "
                  + "; ".join(f"{tool}: {why}" for (row, tool), why in failures.items()
                              if row == label))
            continue
        qw, vw = statistics.median(w for w, _ in q), statistics.median(w for w, _ in v)
        qg, vg = statistics.median(g for _, g in q), statistics.median(g for _, g in v)
        print(f"{label:<{width}} {qw * 1e3:>8.0f}ms {vw * 1e3:>8.0f}ms  {qw / vw:>5.2f}x   "
              f"{qg * 1e3:.0f} ms / {vg * 1e3:.0f} ms")
        if label.startswith("a command that does nothing"):
            print(f"{'  interpreter start (python -c pass)':<{width}} {interpreter:>8.0f}ms "
                  f"{'':>10}  {qw * 1e3 / interpreter:>5.2f}x   (qsnap's no-op / the "
                  "interpreter's own start)")
    print("ratio = qsnap wall time / libvirt wall time (lower is better for qsnap); both include "
          "starting their command-line process (qsnap's is a Python start-up; virsh is C "
          "talking to a running daemon). 'nan': the guest printed nothing during the operation "
          "(it was stopped, or its QEMU was restarted). A row with '-' is one a side cannot do; "
          "its reason is printed.")


#: The guest of the start row: virt-install 4.1's Windows 11 (SPICE, QXL, sound, USB
#: redirection, Hyper-V, UEFI), as a user without KVM has it.
START_GUESTS = {"win11 (UEFI, SPICE)": "fixtures/demo/win11-virt-install.xml",
                "win11 (UEFI, SPICE, TPM 2.0)": "fixtures/demo/win11-virt-install.xml"}
#: virt-install's TPM for Windows 11 where libvirt has swtpm (the fixture was written against
#: libvirt's test driver, which has none): both tools then start an swtpm with the guest.
TPM = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"


def virt_install_starts(base: Path, repeat: int, libvirt: Libvirt) -> None:
    """``start`` of a guest exactly as virt-install wrote it, by each tool: wall time until
    the command returns with the guest running (its disk is empty: the firmware runs)."""
    repo = Path(__file__).resolve().parents[1]
    print(f"\nstart of virt-install's guests (medians of {repeat})")
    for label, fixture in START_GUESTS.items():
        folder = base / "guest"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"qsnap-start-{os.getpid()}"
        xml = (repo / fixture).read_text().replace("/var/lib/qsnap-guests/win11.qcow2",
                                                   str(folder / "disk.qcow2"))
        xml = xml.replace("<name>win11</name>", f"<name>{name}</name>")
        if "TPM" in label:
            xml = xml.replace("</devices>", f"{TPM}</devices>")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"),
                        "1G"], check=True)
        (folder / "guest.xml").write_text(xml)
        times: dict[str, list[float]] = {"qsnap": [], "libvirt": []}
        sides = {"qsnap": [QSNAP, "--state-dir", str(base / "state"), "-q"],
                 "libvirt": [*libvirt.virsh_argv, "-q", "-c", libvirt.uri]}
        environments = {"qsnap": dict(os.environ), "libvirt": libvirt.environment()}
        try:
            for tool, argv in sides.items():
                subprocess.run([*argv, "define", str(folder / "guest.xml")], check=True,
                               capture_output=True, env=environments[tool], timeout=120)
            for _ in range(repeat):
                for tool, argv in sides.items():  # alternate, so drift hits both alike
                    start = time.perf_counter()
                    subprocess.run([*argv, "start", name], check=True, capture_output=True,
                                   env=environments[tool], timeout=120)
                    times[tool].append(time.perf_counter() - start)
                    subprocess.run([*argv, "destroy", name], check=True, capture_output=True,
                                   env=environments[tool], timeout=120)
        finally:
            for tool, argv in sides.items():
                subprocess.run([*argv, "destroy", name], capture_output=True,
                               env=environments[tool], timeout=120)
                subprocess.run([*argv, "undefine", name,
                                *(["--nvram"] if tool == "libvirt" else [])],
                               capture_output=True, env=environments[tool], timeout=120)
        q, v = statistics.median(times["qsnap"]), statistics.median(times["libvirt"])
        print(f"{'start: ' + label:<44} {q * 1e3:>8.0f}ms {v * 1e3:>8.0f}ms  {q / v:>5.2f}x")


def _many_snapshots(base: Path, libvirt: Libvirt) -> None:
    """``snapshot-list`` of a domain with MANY snapshots (metadata only, a defined guest that
    is not running), on both sides; each side's tree is made by redefining, libvirt's in
    one virsh process."""
    name = f"qsnap-many-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    xml = GUEST.make_guest(name, 1, 64, base)
    state = base / "state"
    snapshots = base / "snapshots"
    snapshots.mkdir()
    qsnap = [QSNAP, "--state-dir", str(state), "-q"]
    virsh = [*libvirt.virsh_argv, "-q", "-c", libvirt.uri]
    env = libvirt.environment()
    defined = subprocess.run([*virsh, "define", str(xml)], capture_output=True, text=True,
                             env=env)
    subprocess.run([*qsnap, "define", str(xml)], check=True, capture_output=True)
    # libvirt refuses a redefined snapshot without its <domain>: both sides get libvirt's.
    domain = subprocess.run([*virsh, "dumpxml", name], capture_output=True, text=True,
                            env=env).stdout
    script = []
    for n in range(MANY):
        parent = f"<parent><name>m{n - 1}</name></parent>" if n else ""
        path = snapshots / f"m{n}.xml"
        path.write_text(f"<domainsnapshot><name>m{n}</name><state>shutoff</state>{parent}"
                        f"<creationTime>{1700000000 + n}</creationTime>{domain}"
                        "</domainsnapshot>")
        script.append(f"snapshot-create {name} {path} --redefine"
                      + (" --current" if n == MANY - 1 else ""))
    made = time.perf_counter()
    _redefine_many(state, name, snapshots)
    qsnap_made = time.perf_counter() - made
    made = time.perf_counter()
    try:
        if defined.returncode != 0:
            print(f"snapshot-list at {MANY}: libvirt could not define the domain: "
                  f"{defined.stderr.strip()}")
            return
        batch = subprocess.run(virsh, input="\n".join(script) + "\n", capture_output=True,
                               text=True, env=env, timeout=1800)
        libvirt_made = time.perf_counter() - made
        if batch.returncode != 0:
            print(f"snapshot-list at {MANY}: libvirt's redefines failed: "
                  f"{batch.stderr.strip()[-300:]}")
            return
        print(f"(made {MANY} snapshots by redefining: qsnap {qsnap_made:.1f} s through its "
              f"API, libvirt {libvirt_made:.1f} s in one virsh process)")
        for args in (["snapshot-list", name], ["snapshot-list", name, "--tree"],
                     ["snapshot-list", name, "--leaves"], ["snapshot-current", name, "--name"]):
            q = _median_ms([*qsnap, *args])
            v = _median_ms([*virsh, *args], env=env)
            label = " ".join(["snapshot-list" if args[0] == "snapshot-list" else args[0],
                              *args[2:]]) + f" at {MANY} snapshots"
            print(f"{label:<48} {q:>8.0f}ms {v:>8.0f}ms  {q / v:>5.2f}x")
    finally:
        subprocess.run([*virsh, "undefine", name, "--snapshots-metadata"], capture_output=True,
                       env=env)


def _redefine_many(state: Path, name: str, snapshots: Path) -> None:
    """qsnap's side of the big tree, through the API in one process (as libvirt's is one
    virsh process)."""
    import asyncio

    from qsnap import Engine

    async def make() -> None:
        engine = Engine(state)
        for n in range(MANY):
            await engine.redefine(name, (snapshots / f"m{n}.xml").read_text(),
                                  current=n == MANY - 1)

    asyncio.run(make())


def _median_ms(argv: list[str], env: dict[str, str] | None = None, runs: int = 11) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _ms(values: list[tuple[float, float]]) -> str:
    return f"{statistics.median(w for w, _ in values) * 1e3:.0f}ms" if values else "failed"
