"""The platform around the devices: machine options, CPU model and flags, clock and timers,
boot options, power management, as libvirt puts them on QEMU's command line (guest RAM is
:mod:`qsnap.launcher.memory`'s).

Each rule follows libvirt's ``qemuBuildMachineCommandLine``, ``qemuBuildCpuCommandLine``,
``qemuBuildClockCommandLine`` and ``qemuBuildPMCommandLine`` (libvirt 10.7's test cases in
``qemuxmlconf`` are the oracle, tests/test_libvirt_domain_cases.py). Whatever of ``<cpu>``,
``<clock>``, ``<features>`` or ``<pm>`` has no rule here is refused by name, so a guest never
starts as another machine than libvirt's without a word.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.refusal import refuse

#: ``<features>`` children that start, and the machine option or flag each becomes.
_HYPERV_FLAGS = {"relaxed": "hv-relaxed", "vapic": "hv-vapic", "vpindex": "hv-vpindex",
                 "runtime": "hv-runtime", "synic": "hv-synic", "stimer": "hv-stimer",
                 "reset": "hv-reset", "frequencies": "hv-frequencies",
                 "reenlightenment": "hv-reenlightenment", "tlbflush": "hv-tlbflush",
                 "ipi": "hv-ipi", "evmcs": "hv-evmcs", "avic": "hv-avic",
                 "emsr_bitmap": "hv-emsr-bitmap", "xmm_input": "hv-xmm-input"}
#: libvirt's CPU feature names QEMU spells otherwise than with '-' for '_' (libvirt's CPU map).
_FEATURE_NAMES = {"pclmuldq": "pclmulqdq"}
#: Models whose libvirt definition differs from QEMU's of the same name, and how: libvirt turns
#: QEMU's extra features off on the command line (its qemuxmlconf case
#: cpu-Icelake-Server-pconfig: "-cpu Icelake-Server,intel-pt=off,mpx=off").
_MODELS_LIBVIRT_REDEFINES = {
    "Icelake-Server": "without pconfig, intel-pt or mpx",
}
# libvirt's <cpu><feature policy=> as QEMU's flag values.
_FEATURE_POLICIES = {"require": "on", "force": "on", "disable": "off", "forbid": "off"}



def _on(node: etree._Element, attribute: str = "state") -> bool:
    return node.get(attribute, "on") in ("on", "yes")


@dataclass
class Platform:
    """The arguments built from ``<cpu>``, ``<clock>``, ``<features>`` and ``<pm>``."""

    machine: list[str] = field(default_factory=list)
    cpu_flags: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)


def _hyperv(node: etree._Element, out: Platform) -> None:
    mode = node.get("mode", "custom")
    if mode == "passthrough":
        out.cpu_flags.append("hv-passthrough=on")
        return
    if mode != "custom":
        raise refuse(f"<hyperv mode='{mode}'>", "not a Hyper-V mode")
    for child in node:
        if not isinstance(child.tag, str):
            continue
        special = child.tag in ("spinlocks", "vendor_id", "stimer")
        if not special and (child.tag not in _HYPERV_FLAGS or len(child)):
            raise refuse(f"<hyperv><{child.tag}>", "this Hyper-V enlightenment is not "
                         "supported by qsnap's launcher")
        if not _on(child):
            continue  # libvirt passes only the enlightenments turned on
        if child.tag == "spinlocks":
            out.cpu_flags.append(f"hv-spinlocks={int(child.get('retries', '4095')):#x}")
            continue
        if child.tag == "vendor_id":
            out.cpu_flags.append(f"hv-vendor-id={child.get('value', '')}")
            continue
        if child.tag == "stimer":
            out.cpu_flags.append("hv-stimer=on")
            direct = child.find("direct")
            if direct is not None and _on(direct):
                out.cpu_flags.append("hv-stimer-direct=on")
            continue
        out.cpu_flags.append(f"{_HYPERV_FLAGS[child.tag]}=on")


_KVM_FLAGS = {"hint-dedicated": "kvm-hint-dedicated", "poll-control": "kvm-poll-control",
              "pv-ipi": "kvm-pv-ipi"}


def _kvm(node: etree._Element, out: Platform) -> None:
    """``<features><kvm>``: hiding KVM's signature, and its paravirtual hints."""
    for child in node:
        if not isinstance(child.tag, str):
            continue
        state = "on" if _on(child) else "off"
        if child.tag == "hidden":
            if state == "on":
                out.cpu_flags.append("kvm=off")
        elif child.tag in _KVM_FLAGS:
            out.cpu_flags.append(f"{_KVM_FLAGS[child.tag]}={state}")
        else:
            raise refuse(f"<features><kvm><{child.tag}>", "not supported by qsnap's launcher")


def _features(root: etree._Element, family: str, out: Platform) -> None:
    for feature in root.findall("features/*"):
        tag = feature.tag
        if tag in ("acpi", "pae"):
            continue
        if tag == "apic":
            if feature.get("eoi") is not None:
                out.cpu_flags.append(f"kvm-pv-eoi={feature.get('eoi')}")
            continue
        if tag == "vmport":
            out.machine.append(f"vmport={'on' if _on(feature) else 'off'}")
        elif tag == "smm":
            out.machine.append(f"smm={feature.get('state', 'on')}")
            tseg = feature.find("tseg")
            if tseg is not None:
                size = int((tseg.text or "0").strip())
                unit = tseg.get("unit", "MiB")
                scale = {"MiB": 1, "M": 1, "GiB": 1024, "G": 1024}.get(unit)
                if scale is None or family != "q35":
                    raise refuse("<smm><tseg>", "a TSEG size in MiB or GiB, on q35 only")
                out.args += ["-global", f"mch.extended-tseg-mbytes={size * scale}"]
        elif tag == "vmcoreinfo":
            if _on(feature):
                out.args += ["-device", '{"driver":"vmcoreinfo"}']
        elif tag == "hyperv":
            _hyperv(feature, out)
        elif tag == "pvspinlock":
            out.cpu_flags.append(f"kvm-pv-unhalt={'on' if _on(feature) else 'off'}")
        elif tag == "pmu":
            out.cpu_flags.append(f"pmu={'on' if _on(feature) else 'off'}")
        elif tag == "ps2":
            out.machine.append(f"i8042={'on' if _on(feature) else 'off'}")
        elif tag == "kvm":
            _kvm(feature, out)
        elif tag == "ioapic":
            # Whose I/O APIC: QEMU's own (split irqchip, which an IOMMU's interrupt
            # remapping needs) or KVM's; TCG has only QEMU's.
            driver = feature.get("driver", "kvm")
            if driver not in ("qemu", "kvm"):
                raise refuse(f"<features><ioapic driver='{driver}'>", "use qemu or kvm")
            out.machine.append("kernel_irqchip=" + ("split" if driver == "qemu" else "on"))
        else:
            raise refuse(f"<features><{tag}>", "not supported by qsnap's launcher")


def _clock_base(clock: etree._Element, now: float) -> str:
    offset = clock.get("offset", "utc")
    if offset in ("utc", "localtime") and clock.get("adjustment") is None:
        return offset
    if offset == "variable" or (offset in ("utc", "localtime") and clock.get("adjustment")):
        adjustment = int(clock.get("adjustment", "0"))
        basis = clock.get("basis", "utc" if offset != "localtime" else "localtime")
        moment = now + adjustment
        if basis == "localtime":
            moment += time.localtime(now).tm_gmtoff
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
    if offset == "absolute":
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(clock.get("start", "0"))))
    if offset == "timezone":
        timezone_of(clock)
        return "localtime"  # the local time of the zone QEMU runs in (qemu_environment)
    raise refuse(f"<clock offset='{offset}'>", "use utc, localtime, timezone, variable or "
                 "absolute")


def timezone_of(clock: etree._Element | None) -> str | None:
    """``<clock offset='timezone' timezone='Europe/Paris'>``'s zone, for QEMU's ``TZ``."""
    if clock is None or clock.get("offset") != "timezone":
        return None
    zone = clock.get("timezone", "")
    if not zone or zone.startswith("/") or ".." in zone.split("/") or \
            not all(part.replace("_", "").replace("-", "").replace("+", "").isalnum()
                    for part in zone.split("/")):
        raise NotSupportedError(f"<clock offset='timezone' timezone='{zone}'>: not a time "
                                "zone name (like Europe/Paris)")
    return zone


def _clock(root: etree._Element, out: Platform, now: float) -> None:
    clock = root.find("clock")
    if clock is None:
        out.args += ["-rtc", "base=utc"]
        return
    rtc = [f"base={_clock_base(clock, now)}"]
    for timer in clock:
        if not isinstance(timer.tag, str):
            continue
        if timer.tag != "timer":
            raise refuse(f"<clock><{timer.tag}>", "not supported")
        name = timer.get("name")
        what = f"<timer name='{name}'>"
        policy, present = timer.get("tickpolicy"), timer.get("present")
        if name == "rtc":
            track = timer.get("track")
            clocks = {"guest": "vm", "wall": "host", "realtime": "rt"}
            if track is not None:
                if track not in clocks:
                    raise refuse(f"{what} track='{track}'", "use boot, guest, wall or realtime")
                if track != "boot":
                    rtc.append(f"clock={clocks[track]}")
            if policy == "catchup":
                rtc.append("driftfix=slew")
            elif policy not in (None, "delay"):
                raise refuse(f"{what} tickpolicy='{policy}'", "use delay or catchup")
        elif name == "pit":
            policies = {"delay": "delay", "catchup": "slew", "discard": "discard"}
            if policy is not None:
                if policy not in policies:
                    raise refuse(f"{what} tickpolicy='{policy}'",
                                 "use delay, catchup or discard")
                out.args += ["-global", f"kvm-pit.lost_tick_policy={policies[policy]}"]
        elif name == "hpet":
            if present is not None:
                out.machine.append(f"hpet={'on' if present == 'yes' else 'off'}")
        elif name == "hypervclock" and present is not None:
            out.cpu_flags.append(f"hv-time={'on' if present == 'yes' else 'off'}")
        elif name == "kvmclock" and present is not None:
            out.cpu_flags.append(f"kvmclock={'on' if present == 'yes' else 'off'}")
        else:
            raise refuse(what, "this timer setting is not supported by qsnap's launcher")
        if policy is not None and name in ("hpet", "hypervclock", "kvmclock"):
            raise refuse(f"{what} tickpolicy=", "not supported")
    out.args += ["-rtc", ",".join(rtc)]


def _boot(root: etree._Element, out: Platform) -> None:
    """``-boot``: the firmware's boot menu and reboot timeout, and strict order (a guest that
    lists boot devices boots only from those), as libvirt always asks for it."""
    options = []
    menu = root.find("os/bootmenu")
    if menu is not None:
        enabled = menu.get("enable") == "yes"
        options.append(f"menu={'on' if enabled else 'off'}")
        if enabled and menu.get("timeout") is not None:
            options.append(f"splash-time={int(menu.get('timeout', '0'))}")
    bios = root.find("os/bios")
    if bios is not None:
        if bios.get("useserial") is not None:
            raise refuse("<os><bios useserial=>", "the serial graphics adapter is not "
                         "supported by qsnap's launcher")
        if bios.get("rebootTimeout") is not None:
            options.append(f"reboot-timeout={int(bios.get('rebootTimeout', '0'))}")
    out.args += ["-boot", ",".join([*options, "strict=on"])]


def _power_management(root: etree._Element, family: str, out: Platform) -> None:
    pm = root.find("pm")
    if pm is None:
        return
    device = "ICH9-LPC" if family == "q35" else "PIIX4_PM"
    for child in pm:
        if not isinstance(child.tag, str):
            continue
        which = {"suspend-to-mem": "disable_s3", "suspend-to-disk": "disable_s4"}.get(child.tag)
        if which is None:
            raise refuse(f"<pm><{child.tag}>", "not supported")
        enabled = child.get("enabled")
        if enabled is not None:
            out.args += ["-global", f"{device}.{which}={0 if enabled == 'yes' else 1}"]


def _model_and_features(root: etree._Element, accel: str, out: Platform) -> str | None:
    """The ``-cpu`` model (None: QEMU's default), with ``<feature>`` flags added to *out*."""
    cpu = root.find("cpu")
    if cpu is None:
        return None
    for child in cpu:
        if isinstance(child.tag, str) and child.tag not in ("model", "topology", "feature",
                                                             "numa", "cache", "maxphysaddr"):
            raise refuse(f"<cpu><{child.tag}>", "not supported by qsnap's launcher")
    mode = cpu.get("mode", "custom")
    out.cpu_flags += _cache_and_address_bits(cpu, mode)
    model_node = cpu.find("model")
    model = (model_node.text or "").strip() if model_node is not None else ""
    if model_node is not None and model_node.get("vendor_id"):
        raise refuse("<cpu><model vendor_id=>", "not supported")
    if mode == "host-passthrough" or (mode == "host-model" and accel == "kvm"):
        if accel != "kvm":
            raise NotSupportedError(f"<cpu mode='{mode}'> needs KVM (this guest runs under "
                                    f"{accel}); use <cpu mode='custom'><model>…</model>")
        if mode == "host-model":
            raise NotSupportedError("<cpu mode='host-model'>: libvirt expands it to a named "
                                    "model with the host's features from its CPU map, which "
                                    "qsnap does not have; use host-passthrough or "
                                    "<cpu mode='custom'><model>…</model></cpu>")
        if cpu.find("feature") is not None:
            raise refuse("<cpu mode='host-passthrough'><feature>", "not supported")
        out.cpu_flags.insert(0, f"migratable={cpu.get('migratable', 'on')}")
        return "host"
    if mode == "host-model":
        raise NotSupportedError("<cpu mode='host-model'> under TCG needs libvirt's CPU map "
                                "to name the host's model; use <cpu mode='custom'>"
                                "<model>…</model></cpu> or host-passthrough with KVM")
    if mode != "custom":
        raise refuse(f"<cpu mode='{mode}'>", "not supported")
    if cpu.get("match") not in (None, "exact", "strict"):
        raise refuse(f"<cpu match='{cpu.get('match')}'>", "libvirt makes this model from the "
                     "host's CPU and its CPU map, which qsnap does not have; use "
                     "match='exact'")
    if model in _MODELS_LIBVIRT_REDEFINES:
        raise refuse(f"<cpu><model>{model}</model>", "libvirt's CPU map defines this model "
                     f"otherwise than QEMU does ({_MODELS_LIBVIRT_REDEFINES[model]}), and "
                     "qsnap has no CPU map to build libvirt's version")
    flags = []
    for feature in cpu.findall("feature"):
        policy = feature.get("policy", "require")
        if policy not in _FEATURE_POLICIES:
            raise refuse(f"<cpu><feature policy='{policy}'>", "use require, force, disable "
                         "or forbid")
        name = feature.get("name", "")
        name = _FEATURE_NAMES.get(name, name.replace("_", "-"))
        flags.append(f"{name}={_FEATURE_POLICIES[policy]}")
    if flags and not model:
        raise refuse("<cpu><feature> without <model>", "name the model the features change")
    out.cpu_flags[:0] = flags
    return model or None


def _cache_and_address_bits(cpu: etree._Element, mode: str) -> list[str]:
    """``<cache>`` and ``<maxphysaddr>`` as libvirt's CPU flags (qemuBuildCpuModelArgStr)."""
    return _cache_flags(cpu, mode) + _address_bits(cpu, mode)


def _cache_flags(cpu: etree._Element, mode: str) -> list[str]:
    """An emulated L3 cache, the host's cache description, or neither."""
    flags: list[str] = []
    cache = cpu.find("cache")
    if cache is not None:
        cache_mode, level = cache.get("mode"), cache.get("level")
        host_off = l3_off = False
        if cache_mode == "emulate":
            if level != "3":
                raise NotSupportedError("<cpu><cache mode='emulate'> needs level='3' (QEMU "
                                        "emulates an L3 cache only)")
            flags.append("l3-cache=on")
            host_off = True
        elif cache_mode == "passthrough":
            if mode != "host-passthrough":
                raise NotSupportedError("<cpu><cache mode='passthrough'> needs <cpu "
                                        "mode='host-passthrough'>")
            flags.append("host-cache-info=on")
            l3_off = True
        elif cache_mode == "disable":
            host_off = l3_off = True
        else:
            raise refuse(f"<cpu><cache mode='{cache_mode}'>", "use emulate, passthrough or "
                         "disable")
        if host_off and mode == "host-passthrough":
            flags.append("host-cache-info=off")
        if l3_off:
            flags.append("l3-cache=off")
    return flags


def _address_bits(cpu: etree._Element, mode: str) -> list[str]:
    """The guest's physical address width: given, or the host's (with a limit)."""
    flags: list[str] = []
    phys = cpu.find("maxphysaddr")
    if phys is not None:
        if phys.get("mode") == "emulate":
            bits = phys.get("bits")
            flags.append(f"phys-bits={int(bits)}" if bits else "host-phys-bits=off")
        elif phys.get("mode") == "passthrough":
            if mode != "host-passthrough":
                raise NotSupportedError("<cpu><maxphysaddr mode='passthrough'> needs <cpu "
                                        "mode='host-passthrough'>")
            flags.append("host-phys-bits=on")
            if phys.get("limit"):
                flags.append(f"host-phys-bits-limit={int(phys.get('limit', '0'))}")
        else:
            raise refuse(f"<cpu><maxphysaddr mode='{phys.get('mode')}'>", "use emulate or "
                         "passthrough")
    return flags


def platform(root: etree._Element, family: str, accel: str,
             now: float | None = None) -> Platform:
    """Everything but the devices, for a completed definition: machine options, ``-cpu`` (in
    :attr:`Platform.args`), clock, timers and power management. *now* is the moment
    ``offset='variable'`` counts from (the current time by default)."""
    out = Platform()
    _features(root, family, out)
    if any(p.get("model") == "hyperv" for p in root.iterfind("devices/panic")):
        out.cpu_flags.append("hv-crash")  # Hyper-V's crash MSRs (libvirt's <panic model>)
    _clock(root, out, time.time() if now is None else now)
    _boot(root, out)
    _power_management(root, family, out)
    model = _model_and_features(root, accel, out)
    if model is None and out.cpu_flags:
        model = "qemu64"  # QEMU's default model on x86_64, which the flags then change
    if model is not None:
        out.args[:0] = ["-cpu", ",".join([model, *out.cpu_flags])]
    return out
