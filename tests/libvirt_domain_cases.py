"""libvirt's own domain-XML → QEMU command-line cases as an oracle for qsnap's launcher.

Each case of ``../shared/conformance/libvirt/qemuxmlconf/`` (libvirt 10.7.0, QEMU 9.1 "latest"
capabilities) is run through what ``qsnap define`` fixes (:func:`resolve_definition`) and the
launcher's command-line builder (:func:`qemu_command`), without QEMU, and sorted into:

- ``equal``: the same guest: machine type and its guest-visible options, ``-cpu``, memory,
  ``-smp``, ``-rtc``, the ``-global``s, and every ``-device`` (driver, bus, address and every
  property the guest sees; ids, and the host back-ends a device names, are not compared);
- ``refused``: qsnap refuses it, with a message naming an element (``<...>``) or a disk;
- ``different``: accepted, but another machine than libvirt's (the reason lists what differs).

What is compared is the README's list ("what defines the guest"). Host-side options (QMP,
sandbox, fds, paths, display back-ends, chardev and netdev back-ends) are not.
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import _DEFAULT_CONFORMANCE
from lxml import etree

from qsnap.errors import QsnapError
from qsnap.launcher.command import qemu_command
from qsnap.launcher.firmware import read_descriptors
from qsnap.launcher.host_memory import HostMemory
from qsnap.launcher.runtime import RuntimePaths
from qsnap.model.domain import parse_domain, parse_domain_element
from qsnap.plan.domain_define import DefineFacts, resolve_definition
from qsnap.plan.machine import complete_machine

#: In the conformance folder (``QSNAP_CONFORMANCE_DIR``, as tests/helpers.py finds it).
CASES = Path(os.environ.get("QSNAP_CONFORMANCE_DIR", _DEFAULT_CONFORMANCE)) / "qemuxmlconf"

# Command-line options that choose nothing the guest sees (host back-ends, monitor, process).
_HOST_OPTIONS = {
    "-name", "-S", "-object", "-accel", "-overcommit", "-uuid", "-no-user-config", "-nodefaults",
    "-chardev", "-mon", "-no-shutdown", "-sandbox", "-msg", "-blockdev", "-netdev", "-display",
    "-vnc", "-spice", "-qmp", "-pidfile", "-daemonize", "-compat", "-add-fd",
    "-incoming", "-drive", "-kernel", "-initrd", "-append", "-k",
    "-run-with", "-runas", "-enable-kvm", "-no-acpi", "-action", "-bios", "-mem-prealloc",
    "-mem-path", "-device-cdrom", "-monitor", "-serial", "-parallel", "-loadvm", "-sdl",
    "-nographic", "-vga", "-iscsi", "-set", "-throttle", "-fsdev",
}
# -machine options that are host-side only.
_HOST_MACHINE_OPTIONS = {"dump-guest-core", "memory-backend", "mem-merge", "accel",
                         "kernel_irqchip", "usb"}
# -device properties naming host back-ends, or only qsnap's/libvirt's bookkeeping.
_HOST_DEVICE_PROPERTIES = {"id", "drive", "netdev", "chardev", "audiodev", "rng", "memdev",
                           "iothread", "fd", "vhostfd", "vhostfds", "fds", "write-cache",
                           "share-rw", "tx", "iommu_platform"}


#: The moment libvirt's test harness fixes as "now" (its clock-variable cases count from it);
#: its time zone is TZ=VIR00:30 (set by the test module).
LIBVIRT_TEST_NOW = 1234567890
LIBVIRT_TEST_TZ = "VIR00:30"
#: The host libvirt's harness mocks: hugetlbfs of 2 MiB (the default) and 1 GiB pages, and
#: four NUMA nodes.
LIBVIRT_TEST_HOST = HostMemory({2048: "/dev/hugepages2M", 1048576: "/dev/hugepages1G"}, 2048,
                               frozenset({0, 1, 2, 3}))
#: The GUID its mocked random source gives an empty <genid/>.
LIBVIRT_TEST_GUID = "00010203-0405-4607-8809-0a0b0c0d0e0f"


@dataclass(frozen=True)
class Verdict:
    name: str
    verdict: str  # equal | refused | different
    reason: str = ""

    def line(self) -> str:
        return f"{self.name}\t{self.verdict}\t{self.reason}"


def case_names() -> list[str]:
    return sorted(p.name[:-len(".x86_64-latest.args")] for p in CASES.glob("*.x86_64-latest.args"))


def _split_args(text: str) -> list[str]:
    lines = [line.rstrip("\\").strip() for line in text.splitlines()]
    words = shlex.split(" ".join(lines))
    # Drop the environment assignments and the emulator.
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)
    return words[1:]


def _options(argv: list[str]) -> list[tuple[str, str]]:
    """``[(option, value)]``; an option with no value has "" (values never start with '-')."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        option = argv[i]
        value = ""
        if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
            i += 1
        out.append((option, value))
        i += 1
    return out


def _keyvals(text: str, first_key: str | None = None) -> dict[str, str]:
    """``a=1,b=2`` (commas doubled inside values); a leading bare word is *first_key*'s."""
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        if text[i] == "," and text[i + 1:i + 2] == ",":
            current += ","
            i += 2
            continue
        if text[i] == ",":
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    result: dict[str, str] = {}
    for index, part in enumerate(parts):
        if "=" in part:
            key, value = part.split("=", 1)
            result[key] = value
        elif index == 0 and first_key:
            result[first_key] = part
        else:
            result[part] = "on"
    return result


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _number(text: str) -> str:
    """Addresses and numbers spelt either way (``0x1`` and ``1``) as one."""
    try:
        return str(int(text, 0))
    except ValueError:
        return text


def _addr(text: str) -> str:
    slot, _, function = text.partition(".")
    return f"{int(slot, 16)}.{int(function or '0', 16)}"


def _device(value: str) -> dict[str, str]:
    raw = json.loads(value) if value.startswith("{") else _keyvals(value, "driver")
    device = {k: _value(v) for k, v in raw.items() if k not in _HOST_DEVICE_PROPERTIES}
    if "addr" in device:
        device["addr"] = _addr(device["addr"])
    for key in ("port", "chassis", "index", "nr", "lun", "scsi-id", "channel", "unit", "cad",
                "bootindex", "max_outputs", "ram_size", "vram_size", "vgamem_mb"):
        if key in device:
            device[key] = _number(device[key])
    if device.get("driver") in ("pcie-root-port",) and "port" in device:
        device["port"] = _number(device["port"])
    return device


def _kib(text: str) -> int:
    units = {"k": 1, "K": 1, "M": 1024, "G": 1024 * 1024}
    if text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) * 1024


def _memory(value: str) -> dict[str, int]:
    """``-m``: size and maxmem in KiB, slots."""
    parts = _keyvals(value, "size")
    memory = {"size": _kib(parts.get("size", "128M"))}
    if "maxmem" in parts:
        memory["maxmem"] = _kib(parts["maxmem"])
    if "slots" in parts:
        memory["slots"] = int(parts["slots"])
    return memory


@dataclass
class Guest:
    """What defines the guest, from one command line."""

    machine: dict[str, str]
    cpu: str
    memory: dict[str, int]
    smp: dict[str, str]
    rtc: dict[str, str]
    globals_: set[str]
    devices: list[dict[str, str]]
    other: list[tuple[str, str]]
    boot: dict[str, str]
    #: Host-side, but compared: a backend built wrong would fail the start.
    audio: list[str]


def guest_of(argv: list[str]) -> Guest:
    machine: dict[str, str] = {}
    cpu = ""
    memory = {"size": 128 * 1024}
    smp: dict[str, str] = {"cpus": "1"}
    rtc: dict[str, str] = {}
    globals_: set[str] = set()
    devices: list[dict[str, str]] = []
    other: list[tuple[str, str]] = []
    hpet_off = False
    boot: dict[str, str] = {}
    audio: list[str] = []
    for option, value in _options(argv):
        if option == "-machine":
            machine = {k: v for k, v in _keyvals(value, "type").items()
                       if k not in _HOST_MACHINE_OPTIONS and not k.startswith("pflash")}
        elif option == "-cpu":
            cpu = value
        elif option == "-m":
            memory = _memory(value)
        elif option == "-smp":
            smp = _keyvals(value, "cpus")
        elif option == "-rtc":
            rtc = _keyvals(value)
        elif option == "-audiodev":
            backend = json.loads(value) if value.startswith("{") else _keyvals(value)
            audio.append(json.dumps({k: v for k, v in backend.items() if k != "id"},
                                    sort_keys=True))
        elif option == "-boot":
            boot = _keyvals(value)
        elif option == "-global":
            globals_.add(_global(value))
        elif option == "-device":
            devices.append(_device(value))
        elif option == "-no-hpet":
            hpet_off = True  # libvirt's spelling for QEMUs before machine property hpet=
        elif option not in _HOST_OPTIONS:
            other.append((option, value))
    if hpet_off:
        machine["hpet"] = "off"
    rtc.setdefault("base", "utc")
    if smp.get("clusters") == "1":
        del smp["clusters"]
    if not cpu or cpu.split(",")[0] == "":
        cpu = "486" if machine.get("type") == "isapc" else "qemu64"  # QEMU's default model
    model, *flags = cpu.split(",")
    cpu = ",".join([model, *sorted(flags)])  # the order of distinct flags changes nothing
    if "driftfix" in rtc and rtc["driftfix"] == "none":
        del rtc["driftfix"]
    smp.setdefault("dies", "1")
    machine.setdefault("acpi", "on")
    return Guest(machine, cpu, memory, smp, rtc, globals_, devices, other, boot, sorted(audio))


def _global(value: str) -> str:
    if value.startswith("driver="):
        parts = _keyvals(value)
        return f"{parts['driver']}.{parts['property']}={parts['value']}"
    return value


def _device_key(device: dict[str, str]) -> str:
    return json.dumps(device, sort_keys=True)


def differences(libvirt: Guest, qsnap: Guest) -> list[str]:
    found: list[str] = []
    for what in ("machine", "cpu", "memory", "smp", "rtc", "boot", "audio"):
        a, b = getattr(libvirt, what), getattr(qsnap, what)
        if a != b:
            found.append(f"{what}: libvirt {a} qsnap {b}")
    if libvirt.globals_ != qsnap.globals_:
        found.append(f"globals: libvirt only {sorted(libvirt.globals_ - qsnap.globals_)} "
                     f"qsnap only {sorted(qsnap.globals_ - libvirt.globals_)}")
    theirs = sorted(_device_key(d) for d in libvirt.devices)
    ours = sorted(_device_key(d) for d in qsnap.devices)
    if theirs != ours:
        only_theirs = [d for d in theirs if d not in ours]
        only_ours = [d for d in ours if d not in theirs]
        found.append(f"devices: libvirt only {only_theirs} qsnap only {only_ours}")
    if sorted(libvirt.other) != sorted(qsnap.other):
        found.append(f"other options: libvirt {sorted(libvirt.other)} qsnap "
                     f"{sorted(qsnap.other)}")
    return found


def _define_facts(name: str) -> DefineFacts:
    counter = iter(range(1 << 20))
    return DefineFacts(machine_aliases={}, firmware=read_descriptors(),
                       nvram_path=f"/var/lib/qsnap/{name}/VARS.fd",
                       new_mac=lambda: f"52:54:00:00:00:{next(counter):02x}",
                       new_guid=lambda: LIBVIRT_TEST_GUID)


def qsnap_argv(xml: bytes) -> list[str]:
    """What qsnap's define + start would run for *xml* (no QEMU asked: aliases unknown, so a
    bare ``pc``/``q35`` stays as written, as in libvirt's test)."""
    domain = parse_domain(xml)
    domain = parse_domain_element(resolve_definition(domain.element,
                                                     _define_facts(domain.name)))
    runtime = RuntimePaths(Path("/run/qsnap/case"))
    argv = qemu_command(domain, runtime, "kvm" if domain.type == "kvm" else "tcg",
                        now=LIBVIRT_TEST_NOW, host_memory=LIBVIRT_TEST_HOST)
    return argv[1:]


#: Cases whose libvirt test runs with capabilities removed that QEMU 9.1 has, or with
#: qemu.conf settings other than libvirt's defaults, so that libvirt builds another machine
#: than it builds on a real QEMU 9.1 with a default configuration.
HARNESS_ONLY = {
    "usb-controller-automatic-unavailable-q35": "the test removes QEMU's xHCI controllers "
    "from the capabilities, so libvirt adds no USB controller",
    "audio-default-nographics": "the test turns on qemu.conf's nographics_allow_host_audio, "
    "so libvirt picks the host's backend (alsa) where its default is none",
    "audio-default-vnc": "the test turns on qemu.conf's vnc_allow_host_audio, so libvirt "
    "picks the host's backend (alsa) where its default is none",
    "migrate-numa-unaligned": "the test starts an incoming migration (-incoming fd:7), for "
    "which libvirt keeps the source's unaligned NUMA cell sizes; a start aligns them",
}


def _device_name(node: etree._Element, counts: dict[str, int]) -> str:
    if node.tag == "controller":
        model = f" {node.get('model')}" if node.get("type") == "usb" else ""
        return f"controller {node.get('type')} {node.get('index')}{model}"
    if node.tag == "disk":
        target = node.find("target")
        return f"disk {target.get('dev') if target is not None else '?'}"
    counts[node.tag] = counts.get(node.tag, 0) + 1
    return f"{node.tag} #{counts[node.tag]}"


#: Attributes an address of each type has as 0 when the XML leaves them out.
_ADDRESS_DEFAULTS = {"pci": ("bus", "slot", "function"),
                     "drive": ("controller", "bus", "target", "unit"),
                     "virtio-serial": ("controller", "bus"), "usb": ("bus",)}


def addresses(root: etree._Element) -> dict[str, str]:
    """Every device's PCI, drive, USB and virtio-serial address, by a name both sides give it
    (controllers by type and index, disks by target, others by position)."""
    found: dict[str, str] = {}
    counts: dict[str, int] = {}
    devices = root.find("devices")
    for node in devices if devices is not None else ():
        if not isinstance(node.tag, str):
            continue
        name = _device_name(node, counts)
        address = node.find("address")
        if address is None:
            continue
        kind = address.get("type", "")
        attrs = {k: "0" for k in _ADDRESS_DEFAULTS.get(kind, ())}
        attrs.update({str(k): _number(str(v)) if k != "type" else str(v)
                      for k, v in address.attrib.items() if k != "domain"})
        if attrs.get("multifunction") == "off":
            del attrs["multifunction"]
        found[name] = json.dumps(attrs, sort_keys=True)
    return found


def completion_differences(name: str, xml: bytes) -> list[str]:
    """What qsnap's completed definition (``dumpxml`` of a running guest) places elsewhere
    than libvirt's completed XML: addresses of every device and the controllers listed."""
    domain = parse_domain(xml)
    ours = complete_machine(parse_domain_element(
        resolve_definition(domain.element, _define_facts(domain.name))).element)
    theirs = etree.parse(str(CASES / f"{name}.x86_64-latest.xml")).getroot()
    found = []
    a, b = addresses(theirs), addresses(ours)
    for key in sorted(set(a) | set(b)):
        if key not in a and '"usb"' in b.get(key, ""):
            continue  # libvirt 10.7 keeps USB ports out of the XML (the args compare them)
        if a.get(key) != b.get(key):
            found.append(f"{key}: libvirt {a.get(key)} qsnap {b.get(key)}")
    kinds = sorted((c.get("type", ""), c.get("index", ""), c.get("model", ""))
                   for c in theirs.iterfind("devices/controller"))
    our_kinds = sorted((c.get("type", ""), c.get("index", ""), c.get("model", ""))
                       for c in ours.iterfind("devices/controller"))
    if kinds != our_kinds:
        found.append(f"controllers: libvirt {kinds} qsnap {our_kinds}")
    return found


def classify(name: str) -> Verdict:
    if name in HARNESS_ONLY:
        return Verdict(name, "excluded", HARNESS_ONLY[name])
    xml = (CASES / f"{name}.xml").read_bytes()
    expected = (CASES / f"{name}.x86_64-latest.args").read_text()
    try:
        ours = qsnap_argv(xml)
    except QsnapError as exc:
        message = str(exc).splitlines()[0]
        if "<" in message or "disk '" in message:
            return Verdict(name, "refused", message)
        return Verdict(name, "different", f"refused without naming an element: {message}")
    found = differences(guest_of(_split_args(expected)), guest_of(ours))
    found += [f"completed XML: {d}" for d in completion_differences(name, xml)]
    if found:
        return Verdict(name, "different", " | ".join(found))
    return Verdict(name, "equal")


def completed_xml(name: str) -> etree._Element:
    return etree.parse(str(CASES / f"{name}.x86_64-latest.xml")).getroot()


BASELINE = Path(__file__).with_name("libvirt_domain_cases.tsv")
_RANK = {"different": 0, "refused": 1, "excluded": 1, "equal": 2}


def classify_all() -> list[Verdict]:
    """Every case's verdict, with libvirt's test harness's time zone in effect."""

    old = os.environ.get("TZ")
    os.environ["TZ"] = LIBVIRT_TEST_TZ
    time.tzset()
    try:
        return [classify(name) for name in case_names()]
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def read_baseline() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in BASELINE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, verdict, reason = [*line.split("\t"), ""][:3]
            rows[name] = (verdict, reason)
    return rows


def write_baseline(verdicts: list[Verdict]) -> None:
    header = ("# libvirt 10.7's x86_64 domain-XML cases, as qsnap's launcher builds them: case, "
              "verdict (equal, refused, different, excluded), reason.\n# Written by "
              "`python tests/libvirt_domain_cases.py --write`; tests/"
              "test_libvirt_domain_cases.py fails on any case that gets worse.\n")
    BASELINE.write_text(header + "".join(v.line() + "\n" for v in verdicts))


if __name__ == "__main__":
    results = classify_all()
    print(dict(collections.Counter(v.verdict for v in results)))
    if "--write" in sys.argv:
        write_baseline(results)
