from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import REPO, conformance_dir

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_daemon

T = TypeVar("T")

#: QSNAP_QEMU_BIN names a folder with one QEMU's qemu-system-x86_64, qemu-img and qemu-io (the
#: wrappers scripts/setup.sh writes for the second QEMU): everything the tests and qsnap run by
#: name then comes from it, so one pytest run exercises exactly one QEMU.
_QEMU_BIN = os.environ.get("QSNAP_QEMU_BIN")
if _QEMU_BIN:
    os.environ["PATH"] = f"{_QEMU_BIN}{os.pathsep}{os.environ['PATH']}"

#: Every QEMU the suites start refuses deprecated QMP input and hides deprecated output
#: (qsnap's launcher reads this; tests that start QEMU by hand add QEMU_COMPAT): a command or
#: field deprecated in the QEMU under test (query-kvm in 11.0) fails the test that uses it.
QEMU_COMPAT = "deprecated-input=reject,deprecated-output=hide"
os.environ["QSNAP_QEMU_COMPAT"] = QEMU_COMPAT


#: Test modules that start QEMU (beside every tests/test_qemu_*.py).
_QEMU_MODULES = frozenset({"test_examples", "test_fixtures_and_demo",
                           "test_libvirt_block_commands", "test_libvirt_side_by_side"})
#: Modules of the kill-at-every-step walks.
_CRASH_MODULES = frozenset({"test_qemu_crashes", "test_qemu_delete_crashes"})
#: Fixtures that run libvirt (the reference): a test using one is marked ``libvirt``.
_LIBVIRT_FIXTURES = frozenset({"libvirtd", "libvirt_11"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs (pyproject.toml registers the markers), so that
    ``pytest -m "not qemu and not libvirt"`` is the quick inner loop: ``qemu`` starts QEMU,
    ``crash`` kills qsnap at every step boundary of an operation, ``libvirt`` runs libvirt
    (virsh or libvirtd)."""
    for item in items:
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        if module.startswith("test_qemu_") or module in _QEMU_MODULES:
            item.add_marker(pytest.mark.qemu)
        if module in _CRASH_MODULES or "killed" in item.name or "crash" in item.name:
            item.add_marker(pytest.mark.crash)
        if _LIBVIRT_FIXTURES & set(getattr(item, "fixturenames", ())) or \
                (module.startswith("test_libvirt_") and module != "test_libvirt_domain_cases") \
                or module == "test_virsh_syntax":
            item.add_marker(pytest.mark.libvirt)


def pytest_report_header(config: pytest.Config) -> str:
    import shutil
    import subprocess
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return "qemu: none installed"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return f"qemu: {binary}: {version.splitlines()[0] if version else '?'}"


@pytest.fixture
def conformance() -> Path:
    return conformance_dir()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("QSNAP_STATE_DIR", str(path))
    return path


def _qsnap_guests(under: Path) -> set[int]:
    """QEMU processes launched by qsnap for this test session: their command line names a path
    under pytest's temporary folder *under* (a guest's serial log). QEMUs of anything else on
    the machine (a soak, a benchmark, another suite) are never counted, nor killed."""
    marker = str(under).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and marker in cmdline:
            pids.add(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def no_leaked_guests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test must stop every guest it starts; any it leaves is killed here, and reported."""
    under = tmp_path_factory.getbasetemp()
    before = _qsnap_guests(under)
    yield
    leaked = _qsnap_guests(under) - before
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    if leaked:
        warnings.warn(f"test left {len(leaked)} QEMU guest(s) running; killed", stacklevel=1)


def _reference(name: str, running: Callable[[], AbstractContextManager[T]]) -> Iterator[T]:
    """What *running* starts, for the session. libvirt is the reference, so where it could
    run (as root, and in CI) failing to start it is a failure, not a skip; elsewhere the tests
    that need it skip and say why."""
    try:
        with running() as reference:
            yield reference
    except libvirt_daemon.LibvirtUnavailable as exc:
        if os.geteuid() == 0 or os.environ.get("CI"):
            pytest.fail(f"{name}, the reference these tests compare with, cannot run: {exc}")
        pytest.skip(f"{name} cannot run here: {exc}")


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    """A libvirtd with the QEMU driver on qemu:///system for the tests that compare with
    libvirt, started here when none runs (scripts/libvirt_daemon.py, as the benchmark does) and
    stopped at the end."""
    elsewhere = os.environ.get("QSNAP_LIBVIRT_ELSEWHERE")
    if elsewhere:
        pytest.skip(f"libvirt comparisons run in {elsewhere} (scripts/test): two suites side "
                    "by side would define the same domains in the one libvirt")
    yield from _reference("libvirt", libvirt_daemon.libvirt_running)


@pytest.fixture(scope="session")
def libvirt_11() -> Iterator[libvirt_daemon.Libvirt]:
    """A libvirt >= 11.2, the first with the sparse save format and ``--parallel-channels``:
    the system's where it is that new (Debian 13), else the 11.3 that scripts/setup.sh
    unpacked from Debian's backports, run in a mount namespace of its own (so it runs beside
    the system's 9.0 and beside the other suite's libvirt)."""
    yield from _reference("libvirt 11", libvirt_daemon.libvirt_11_running)
