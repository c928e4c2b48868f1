"""The guests virt-install 4.1 writes (fixtures/virt-install/: debian12, ubuntu24.04,
fedora40, centos-stream9, win10, win11 and generic, BIOS and UEFI, SPICE, VNC and no
graphics; scripts/virt_install_guests.py made them), defined and started as written.

virt-install gives every one ``<cpu mode='host-passthrough'/>`` and ``<domain type='kvm'>``.
KVM guests do not run on this machine kind (nested), so as written each starts under KVM or,
under TCG, is refused naming the CPU mode; with that one line made a named model (and the
type ``qemu``), each starts under TCG, with the device model libvirt 11's ``domxml-to-native``
builds for the same XML.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from libvirt_daemon import Libvirt
from libvirt_domain_cases import _define_facts, differences, guest_of
from qemu_guest import require_qemu

from qsnap import Engine, NotSupportedError
from qsnap.launcher.command import qemu_command
from qsnap.launcher.machines import machine_aliases
from qsnap.launcher.runtime import RuntimePaths
from qsnap.model.domain import parse_domain, parse_domain_element
from qsnap.plan.domain_define import resolve_definition

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "virt-install"
GUESTS = sorted(p.stem for p in FIXTURES.glob("*.xml"))
PLACEHOLDER = "/var/lib/qsnap-guests/"
EMULATOR = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


def test_every_os_variant_boot_and_graphics_is_there() -> None:
    assert len(GUESTS) == 7 * 2 * 3, GUESTS


def as_written(name: str, images: Path | None = None) -> str:
    """The guest as virt-install wrote it, but for the QEMU it names (the suite's own: each
    suite runs another QEMU) and, given *images*, the folder of its disk."""
    text = (FIXTURES / f"{name}.xml").read_text().replace(
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>", f"<emulator>{EMULATOR}</emulator>")
    return text.replace(PLACEHOLDER, f"{images}/") if images is not None else text


def for_tcg(name: str, images: Path | None = None) -> str:
    """The guest as written but for the CPU line (a named model instead of the host's) and
    the domain type."""
    text = as_written(name, images)
    assert text.count('<cpu mode="host-passthrough"/>') == 1
    return text.replace('<cpu mode="host-passthrough"/>',
                        '<cpu mode="custom"><model>qemu64</model></cpu>').replace(
        '<domain type="kvm">', '<domain type="qemu">')


def _argv(xml: str, accel: str) -> list[str]:
    domain = parse_domain(xml)
    facts = dataclasses.replace(_define_facts(domain.name),
                                machine_aliases=machine_aliases(EMULATOR))
    domain = parse_domain_element(resolve_definition(domain.element, facts))
    return qemu_command(domain, RuntimePaths(Path("/run/qsnap/case")), accel)


@pytest.mark.parametrize("name", GUESTS)
def test_as_written_it_builds_or_names_the_cpu_mode(name: str) -> None:
    require_qemu()
    with pytest.raises(NotSupportedError, match=r"<cpu mode='host-passthrough'> needs KVM"):
        _argv(as_written(name), "tcg")
    assert "-cpu" in _argv(as_written(name), "kvm")


@pytest.mark.parametrize("name", GUESTS)
def test_the_device_model_is_libvirts(name: str, tmp_path: Path, libvirt_11: Libvirt) -> None:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(for_tcg(name))
    native = libvirt_11.virsh("domxml-to-native", "qemu-argv", str(xml))
    assert native.returncode == 0, native.stderr
    words = shlex.split(native.stdout.strip())
    theirs = words[next(i for i, w in enumerate(words) if w.endswith("qemu-system-x86_64")) + 1:]
    ours = _argv(xml.read_text(), "tcg")[1:]
    assert differences(guest_of(theirs), guest_of(ours)) == []
    assert sum(1 for a in ours if a == "-device") >= 8


async def test_each_starts_under_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_qemu()
    monkeypatch.setenv("QSNAP_ACCEL", "tcg")
    engine = Engine(tmp_path / "state")
    for name in GUESTS:
        disk = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"],
                       check=True)
        await engine.define(for_tcg(name, tmp_path))
        await engine.start(name)
        try:
            assert await engine.domstate(name) == "running", name
            pid = (await engine.guest_info(name)).pid
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            if "spice" in name:
                assert '"qxl-vga"' in cmdline or '"virtio-vga"' in cmdline, name
                assert "spicevmc" in cmdline and re.search(r"-spice\0port=59\d\d", cmdline)
        finally:
            await engine.destroy(name)
    assert os.listdir(tmp_path / "state" / "domains")
