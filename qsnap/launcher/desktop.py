"""The devices of a desktop guest, as virt-install and virt-manager write them: SPICE graphics
and its agent channel and USB redirection, sound cards, QXL and the other video models, virtio
input, and watchdogs.

Each builds what libvirt's ``qemu_command.c`` builds for the same XML (libvirt 10.7's
``qemuxmlconf`` cases are the oracle, tests/test_libvirt_domain_cases.py); what has no rule here
is refused by name.
"""

from __future__ import annotations

import json
import os
import socket

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.chardev import chardev
from qsnap.launcher.devices import (
    DeviceArgs,
    channel_chardev,
    device_arg,
    placement,
    virtio_options,
    virtserial_port,
)
from qsnap.launcher.refusal import refuse, refuse_unknown_parts
from qsnap.launcher.usb import usb_port
from qsnap.model.options import escape_commas


def free_tcp_port(host: str, start: int = 5900) -> int:
    """The first port from *start* nobody listens on at *host* (libvirt's autoport): QEMU's
    SPICE server, unlike its VNC server, cannot search for one itself."""
    for port in range(start, 65536):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise NotSupportedError(f"<graphics type='spice' autoport='yes'>: no free port on {host}")


_SPICE_COMPRESSION = {"image": "image-compression", "jpeg": "jpeg-wan-compression",
                      "zlib": "zlib-glz-wan-compression", "playback": "playback-compression"}


#: Where SPICE's TLS certificates are (ca-cert.pem, server-cert.pem, server-key.pem):
#: $QSNAP_SPICE_X509_DIR, else libvirt's default (qemu.conf's spice_tls_x509_cert_dir).
SPICE_X509_DEFAULT = "/etc/pki/libvirt-spice"
SPICE_X509_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")


def spice_x509_dir() -> str:
    return os.environ.get("QSNAP_SPICE_X509_DIR") or SPICE_X509_DEFAULT


def check_spice_certificates(root: etree._Element) -> None:
    """A SPICE TLS port needs its certificates where QEMU will read them: refused before
    anything starts when one is missing (QEMU would fail with "failed to load ...")."""
    wanted = [g for g in root.iterfind("devices/graphics[@type='spice']")
              if g.get("tlsPort") not in (None, "-1")]
    if not wanted:
        return
    folder = spice_x509_dir()
    missing = [name for name in SPICE_X509_FILES if not os.path.isfile(f"{folder}/{name}")]
    if missing:
        raise NotSupportedError(f"<graphics type='spice' tlsPort=>: SPICE's TLS needs "
                                f"{', '.join(missing)} in {folder} ($QSNAP_SPICE_X509_DIR, "
                                f"else libvirt's {SPICE_X509_DEFAULT})")


def spice_args(node: etree._Element, out: DeviceArgs) -> None:
    """``-spice`` for ``<graphics type='spice'>``: a TCP listener, with TLS on ``tlsPort``
    (certificates from :func:`spice_x509_dir`; which channels use it: ``<channel mode=>`` and
    ``defaultMode``), or a unix socket, or none; with libvirt's compression, streaming and
    agent options. Passwords are refused by name (libvirt sets them over QMP at start)."""
    for attribute in ("passwd", "keymap"):
        if node.get(attribute) is not None:
            raise refuse(f"<graphics type='spice' {attribute}=>", "not supported by qsnap's "
                         "launcher")
    refuse_unknown_parts(node, "<graphics type='spice'>",
                         {"listen", "image", "jpeg", "zlib", "playback", "streaming",
                          "clipboard", "filetransfer", "mouse", "channel"},
                         {"port", "autoport", "listen", "tlsPort", "defaultMode"})
    listen = node.find("listen")
    kind = listen.get("type", "address") if listen is not None else "address"
    if kind == "none":
        options = ["port=0"]  # no listener: a client comes in through QMP's add_client
    elif kind == "socket":
        assert listen is not None
        path = listen.get("socket") or f"{out.runtime_folder}/spice.sock"
        options = ["unix=on", f"addr={escape_commas(path)}"]
    elif kind == "address":
        host = ((listen.get("address") if listen is not None else None) or node.get("listen")
                or "127.0.0.1")
        port = int(node.get("port", "-1"))
        if port < 0 or node.get("autoport") == "yes":
            port = out.free_port(host)
        options = [f"port={port}"]
        tls = node.get("tlsPort")
        if tls not in (None, "-1"):  # -1 with autoport (virt-install's): none, as libvirt
            options.append(f"tls-port={int(tls or '0')}")
        options.append(f"addr={escape_commas(host)}")
        if tls not in (None, "-1"):
            options.append(f"x509-dir={escape_commas(spice_x509_dir())}")
            options += _spice_channel_modes(node)
    else:
        raise refuse(f"<graphics type='spice'><listen type='{kind}'>", "a libvirt network "
                     "needs libvirt's network driver; use type='address', 'socket' or 'none'")
    for tag, option in _SPICE_COMPRESSION.items():
        child = node.find(tag)
        if child is not None:
            options.append(f"{option}={child.get('compression')}")
    streaming = node.find("streaming")
    if streaming is not None:
        options.append(f"streaming-video={streaming.get('mode')}")
    mouse = node.find("mouse")
    if mouse is not None:
        options.append(f"agent-mouse={'on' if mouse.get('mode') == 'client' else 'off'}")
    clipboard = node.find("clipboard")
    if clipboard is not None and clipboard.get("copypaste") == "no":
        options.append("disable-copy-paste=on")
    transfer = node.find("filetransfer")
    if transfer is not None and transfer.get("enable") == "no":
        options.append("disable-agent-file-xfer=on")
    options.append("seamless-migration=on")
    out.add("-spice", ",".join(options))


def _spice_channel_modes(node: etree._Element) -> list[str]:
    """Which SPICE channels must use TLS and which may not: ``defaultMode`` (any) and each
    ``<channel name= mode=>``, as libvirt lists them."""
    modes = {"secure": "tls-channel", "insecure": "plaintext-channel"}
    options: list[str] = []
    default = node.get("defaultMode", "any")
    if default in modes:
        options.append(f"{modes[default]}=default")
    elif default != "any":
        raise refuse(f"<graphics type='spice' defaultMode='{default}'>", "use secure, "
                     "insecure or any")
    for channel in node.findall("channel"):
        mode = channel.get("mode", "any")
        if mode in modes:
            options.append(f"{modes[mode]}={channel.get('name')}")
        elif mode != "any":
            raise refuse(f"<graphics><channel mode='{mode}'>", "use secure, insecure or any")
    return options


def spice_channel_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<channel type='spicevmc'>``: the SPICE agent's virtio-serial port."""
    target = node.find("target")
    name = (target.get("name") if target is not None else None) or "com.redhat.spice.0"
    virtserial_port(index, node, f"spicevmc,id={channel_chardev(index)},name=vdagent", name,
                    out)


def redirdev_args(index: int, node: etree._Element, usb_filter: str | None,
                  out: DeviceArgs) -> None:
    """``<redirdev bus='usb'>``: a USB port the SPICE client (``spicevmc``), or a usbredir
    server on a socket, can fill; *usb_filter* is ``<redirfilter>``'s rule
    (:func:`redirect_filter`)."""
    if node.get("bus", "usb") != "usb":
        raise refuse(f"<redirdev bus='{node.get('bus')}'>", "only USB redirection exists")
    boot = node.find("boot")
    if node.get("type") == "spicevmc":
        refuse_unknown_parts(node, "<redirdev>", {"address", "boot"}, {"bus"})
        out.add("-chardev", f"spicevmc,id=charredir{index},name=usbredir")
    else:
        out.add("-chardev", chardev(node, f"charredir{index}", also=frozenset({"boot"})))
    device: dict[str, object] = {"driver": "usb-redir", "chardev": f"charredir{index}",
                                 "id": f"redir{index}"}
    if usb_filter is not None:
        device["filter"] = usb_filter
    if boot is not None:
        device["bootindex"] = int(boot.get("order", "0"))
    out.add(*device_arg({**device, **usb_port(node)}))


def _usb_version(text: str | None) -> str:
    """``1.10`` as the BCD that USB descriptors hold (0x0110); a one-digit minor is tenths."""
    if text is None or text == "-1":
        return "-1"
    major, _, minor = text.partition(".")
    minor = (minor + "0")[:2] if len(minor) < 2 else minor[:2]
    digits = f"{int(major):02d}{int(minor or '0'):02d}"
    return f"0x{digits}"


def redirect_filter(root: etree._Element) -> str | None:
    """``<redirfilter>``: usb-redir's filter rules, ``class:vendor:product:version:allow``
    joined by ``|``, as libvirt writes them (-1 for any)."""
    node = root.find("devices/redirfilter")
    if node is None:
        return None
    rules = []
    for rule in node:
        if not isinstance(rule.tag, str):
            continue
        if rule.tag != "usbdev":
            raise refuse(f"<redirfilter><{rule.tag}>", "not supported")
        refuse_unknown_parts(rule, "<redirfilter><usbdev>", set(),
                             {"class", "vendor", "product", "version", "allow"})
        kind, vendor, product = (rule.get(k, "-1") for k in ("class", "vendor", "product"))
        if kind != "-1":
            kind = f"0x{int(kind, 16):02X}"
        vendor, product = (f"0x{int(v, 16):04X}" if v != "-1" else "-1"
                           for v in (vendor, product))
        allow = "1" if rule.get("allow") == "yes" else "0"
        rules.append(f"{kind}:{vendor}:{product}:{_usb_version(rule.get('version'))}:{allow}")
    return "|".join(rules)


_HDA_CODECS = {"duplex": "hda-duplex", "micro": "hda-micro", "output": "hda-output"}
_SOUND_DEVICES = {"ich6": "intel-hda", "ich9": "ich9-intel-hda", "ac97": "AC97",
                  "es1370": "ES1370", "sb16": "sb16", "usb": "usb-audio"}


def sound_args(index: int, node: etree._Element, audio: str | None, out: DeviceArgs) -> None:
    """``<sound model=...>``: the card, and for HDA cards their codecs (``hda-duplex`` when
    none is listed), each playing through the domain's audio backend (or the one its
    ``<audio id=>`` names)."""
    model = node.get("model", "")
    chosen = node.find("audio")
    if chosen is not None and chosen.get("id"):
        audio = f"audio{chosen.get('id')}"
    driver = _SOUND_DEVICES.get(model)
    if driver is None:
        raise refuse(f"<sound model='{model}'>", "not supported by qsnap's launcher")
    refuse_unknown_parts(node, f"<sound model='{model}'>", {"codec", "address", "audio"},
                         {"model", "multichannel"})
    device: dict[str, object] = {"driver": driver, "id": f"sound{index}"}
    hda = model in ("ich6", "ich9")
    if not hda and audio:
        device["audiodev"] = audio
    if model == "usb":
        if node.get("multichannel") == "yes":
            device["multi"] = True
        out.add(*device_arg({**device, **usb_port(node)}))
        return
    out.add(*device_arg({**device, **placement(node, out.family)}))
    if not hda:
        return
    codecs = [c.get("type", "duplex") for c in node.findall("codec")] or ["duplex"]
    for cad, codec in enumerate(codecs):
        if codec not in _HDA_CODECS:
            raise refuse(f"<sound><codec type='{codec}'>", "not supported")
        codec_device: dict[str, object] = {"driver": _HDA_CODECS[codec],
                                           "id": f"sound{index}-codec{cad}",
                                           "bus": f"sound{index}.0", "cad": cad}
        if audio:
            codec_device["audiodev"] = audio
        out.add(*device_arg(codec_device))


_WATCHDOG_ACTIONS = {"reset": "reset", "shutdown": "shutdown", "poweroff": "poweroff",
                     "pause": "pause", "none": "none", "inject-nmi": "inject-nmi"}


def watchdog_args(index: int, node: etree._Element, out: DeviceArgs) -> str:
    """A ``<watchdog>``: the device (ICH9's own TCO watchdog needs only to be let reboot),
    and the action QEMU takes when it fires, returned for ``-watchdog-action``."""
    model = node.get("model")
    action = node.get("action", "reset")
    if action not in _WATCHDOG_ACTIONS:
        raise refuse(f"<watchdog action='{action}'>", "libvirt takes the dump itself, which "
                     "qsnap does not; use reset, shutdown, poweroff, pause, none or "
                     "inject-nmi")
    refuse_unknown_parts(node, f"<watchdog model='{model}'>", {"address"}, {"model", "action"})
    if model == "itco":
        if out.family != "q35":
            raise refuse("<watchdog model='itco'>", "only on a q35 machine")
        out.add("-global", "ICH9-LPC.noreboot=off")
    elif model == "i6300esb":
        out.add(*device_arg({"driver": "i6300esb", "id": f"watchdog{index}",
                             **placement(node, out.family)}))
    elif model == "ib700":
        out.add(*device_arg({"driver": "ib700", "id": f"watchdog{index}"}))
    else:
        raise refuse(f"<watchdog model='{model}'>", "not supported by qsnap's launcher")
    return _WATCHDOG_ACTIONS[action]


_INPUT_DEVICES = {"keyboard": "virtio-keyboard-pci", "mouse": "virtio-mouse-pci",
                  "tablet": "virtio-tablet-pci"}


def virtio_input_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    kind = node.get("type", "")
    if kind not in _INPUT_DEVICES:
        raise refuse(f"<input type='{kind}' bus='virtio'>", "not supported")
    refuse_unknown_parts(node, f"<input type='{kind}' bus='virtio'>", {"address", "driver"},
                         {"bus"})
    out.add(*device_arg({"driver": _INPUT_DEVICES[kind], "id": f"input{index}",
                         **virtio_options(node), **placement(node, out.family)}))


#: libvirt's ``<audio type>`` as QEMU's audiodev driver; each reads only its own options.
_AUDIO_DRIVERS = {"none": "none", "spice": "spice", "alsa": "alsa", "oss": "oss",
                  "pulseaudio": "pa", "pipewire": "pipewire", "sdl": "sdl", "jack": "jack",
                  "file": "wav", "dbus": "dbus"}


#: ``<audio>`` attributes by backend, as audiodev properties (pulseaudio's server is
#: ``server``; the rest are the attribute spelt in QEMU's kebab case). pipewire's
#: ``runtimeDir`` (libvirt sets QEMU's XDG_RUNTIME_DIR for it) and SDL's ``driver`` (its
#: SDL_AUDIODRIVER) are refused: qsnap gives QEMU no environment of the guest's.
_AUDIO_TOP = {"timerPeriod": "timer-period", "path": "path", "tryMMap": "try-mmap",
              "exclusive": "exclusive", "dspPolicy": "dsp-policy"}
_AUDIO_DIRECTION = {"mixingEngine": "mixing-engine", "fixedSettings": "fixed-settings",
                    "voices": "voices", "bufferLength": "buffer-length",
                    "bufferCount": "buffer-count", "dev": "dev", "name": "name",
                    "streamName": "stream-name", "latency": "latency", "tryPoll": "try-poll",
                    "serverName": "server-name", "clientName": "client-name",
                    "connectPorts": "connect-ports", "exactName": "exact-name"}
_AUDIO_SETTINGS = {"frequency": "frequency", "channels": "channels", "format": "format"}


def _audio_value(text: str) -> object:
    if text in ("yes", "no"):
        return text == "yes"
    return int(text) if text.isdigit() else text


def _audio_properties(attributes: dict[str, str], names: dict[str, str],
                      what: str) -> dict[str, object]:
    """XML *attributes* as audiodev properties by *names*; any other is refused by name."""
    found: dict[str, object] = {}
    for name, value in attributes.items():
        if name not in names:
            raise refuse(f"{what} {name}=", "not supported by qsnap's launcher")
        found[names[name]] = _audio_value(value)
    return found


def _attributes(node: etree._Element) -> dict[str, str]:
    return {str(k): str(v) for k, v in node.attrib.items()}


def audio_backend(node: etree._Element, out: DeviceArgs) -> str:
    """``<audio type=...>`` as ``-audiodev`` (its id for the cards), with its timer, its
    backend's own attributes and each direction's (``<input>``, ``<output>``) settings."""
    kind = node.get("type", "none")
    if kind not in _AUDIO_DRIVERS:
        raise refuse(f"<audio type='{kind}'>", "not a backend QEMU has on Linux")
    what = f"<audio type='{kind}'>"
    audio = f"audio{node.get('id', '1')}"
    backend: dict[str, object] = {"id": audio, "driver": _AUDIO_DRIVERS[kind]}
    top = {k: v for k, v in _attributes(node).items() if k not in ("id", "type")}
    if kind == "pulseaudio" and "serverName" in top:
        backend["server"] = top.pop("serverName")
    backend.update(_audio_properties(top, _AUDIO_TOP, what))
    for child in node:
        if not isinstance(child.tag, str):
            continue
        if child.tag not in ("input", "output"):
            raise refuse(f"{what}: <{child.tag}>", "not supported by qsnap's launcher")
        direction = _audio_properties(_attributes(child), _AUDIO_DIRECTION,
                                      f"{what}<{child.tag}>")
        for settings in child:
            if isinstance(settings.tag, str):
                if settings.tag != "settings":
                    raise refuse(f"{what}<{child.tag}><{settings.tag}>", "not supported")
                direction.update(_audio_properties(_attributes(settings), _AUDIO_SETTINGS,
                                                   f"{what}<{child.tag}><settings>"))
        backend["in" if child.tag == "input" else "out"] = direction
    out.add("-audiodev", json.dumps(backend))
    return audio
