"""The devices of a desktop guest, as virt-install and virt-manager write them: SPICE graphics
and its agent channel and USB redirection, sound cards, QXL and the other video models, virtio
input, and watchdogs.

Each builds what libvirt's ``qemu_command.c`` builds for the same XML (libvirt 10.7's
``qemuxmlconf`` cases are the oracle, tests/test_libvirt_domain_cases.py); what has no rule here
is refused by name.
"""

from __future__ import annotations

import json
import socket

from lxml import etree

from qsnap.errors import NotSupportedError
from qsnap.launcher.devices import (
    DeviceArgs,
    device_arg,
    placement,
    refuse_unknown_parts,
    virtio_options,
)
from qsnap.model.options import escape_commas


def _refuse(what: str, why: str) -> NotSupportedError:
    return NotSupportedError(f"{what}: {why}; qsnap keeps it in the definition but cannot start "
                             "it (docs/domain-xml.md lists what starts)")


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


def spice_args(node: etree._Element, out: DeviceArgs) -> None:
    """``-spice`` for ``<graphics type='spice'>``: a plain TCP listener (TLS and passwords are
    refused by name), with libvirt's compression, streaming and agent options."""
    if node.get("tlsPort") not in (None, "-1"):
        raise _refuse("<graphics type='spice' tlsPort=>", "TLS is not supported by qsnap's "
                      "launcher (tlsPort='-1' with autoport, virt-install's, asks for none)")
    for attribute in ("passwd", "keymap", "defaultMode"):
        if node.get(attribute) is not None:
            raise _refuse(f"<graphics type='spice' {attribute}=>", "not supported by qsnap's "
                          "launcher")
    refuse_unknown_parts(node, "<graphics type='spice'>",
                         {"listen", "image", "jpeg", "zlib", "playback", "streaming",
                          "clipboard", "filetransfer", "mouse"},
                         {"port", "autoport", "listen", "tlsPort"})
    listen = node.find("listen")
    if listen is not None and listen.get("type", "address") != "address":
        raise _refuse(f"<graphics type='spice'><listen type='{listen.get('type')}'>",
                      "only type='address' is supported")
    host = ((listen.get("address") if listen is not None else None) or node.get("listen")
            or "127.0.0.1")
    port = int(node.get("port", "-1"))
    if port < 0 or node.get("autoport") == "yes":
        port = out.free_port(host)
    options = [f"port={port}", f"addr={escape_commas(host)}"]
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


def spice_channel_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<channel type='spicevmc'>``: the SPICE agent's virtio-serial port."""
    target = node.find("target")
    name = (target.get("name") if target is not None else None) or "com.redhat.spice.0"
    address = node.find("address")
    port = int(address.get("port", "1")) if address is not None else 1
    controller = address.get("controller", "0") if address is not None else "0"
    out.add("-chardev", f"spicevmc,id=charchannel{index},name=vdagent")
    out.add(*device_arg({"driver": "virtserialport", "bus": f"virtio-serial{controller}.0",
                         "nr": port, "chardev": f"charchannel{index}", "id": f"channel{index}",
                         "name": name}))


def pty_channel_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<channel type='pty'>`` with a virtio target: a virtio-serial port on a host pty."""
    target = node.find("target")
    if target is None or target.get("type") != "virtio" or not target.get("name"):
        raise _refuse("<channel type='pty'>", "only a named virtio target is supported")
    address = node.find("address")
    port = int(address.get("port", "1")) if address is not None else 1
    controller = address.get("controller", "0") if address is not None else "0"
    out.add("-chardev", f"pty,id=charchannel{index}")
    out.add(*device_arg({"driver": "virtserialport", "bus": f"virtio-serial{controller}.0",
                         "nr": port, "chardev": f"charchannel{index}", "id": f"channel{index}",
                         "name": target.get("name", "")}))


def redirdev_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    """``<redirdev bus='usb' type='spicevmc'>``: a USB port the SPICE client can fill."""
    if node.get("type") != "spicevmc" or node.get("bus", "usb") != "usb":
        raise _refuse(f"<redirdev type='{node.get('type')}'>", "only type='spicevmc' on USB "
                      "is supported")
    refuse_unknown_parts(node, "<redirdev>", {"address"}, {"bus"})
    out.add("-chardev", f"spicevmc,id=charredir{index},name=usbredir")
    out.add(*device_arg({"driver": "usb-redir", "chardev": f"charredir{index}",
                         "id": f"redir{index}", **_usb_port(node)}))


def _usb_port(node: etree._Element) -> dict[str, object]:
    address = node.find("address")
    placed: dict[str, object] = {"bus": f"usb.{address.get('bus', '0')}"
                                 if address is not None else "usb.0"}
    if address is not None and address.get("port"):
        placed["port"] = address.get("port", "")
    return placed


_HDA_CODECS = {"duplex": "hda-duplex", "micro": "hda-micro", "output": "hda-output"}
_SOUND_DEVICES = {"ich6": "intel-hda", "ich9": "ich9-intel-hda", "ac97": "AC97",
                  "es1370": "ES1370", "sb16": "sb16", "usb": "usb-audio"}


def sound_args(index: int, node: etree._Element, audio: str | None, out: DeviceArgs) -> None:
    """``<sound model=...>``: the card, and for HDA cards their codecs (``hda-duplex`` when
    none is listed), each playing through the domain's audio backend."""
    model = node.get("model", "")
    driver = _SOUND_DEVICES.get(model)
    if driver is None:
        raise _refuse(f"<sound model='{model}'>", "not supported by qsnap's launcher")
    refuse_unknown_parts(node, f"<sound model='{model}'>", {"codec", "address", "audio"},
                         {"model", "multichannel"})
    device: dict[str, object] = {"driver": driver, "id": f"sound{index}"}
    hda = model in ("ich6", "ich9")
    if not hda and audio:
        device["audiodev"] = audio
    if model == "usb":
        if node.get("multichannel") == "yes":
            device["multi"] = True
        out.add(*device_arg({**device, **_usb_port(node)}))
        return
    out.add(*device_arg({**device, **placement(node, out.family)}))
    if not hda:
        return
    codecs = [c.get("type", "duplex") for c in node.findall("codec")] or ["duplex"]
    for cad, codec in enumerate(codecs):
        if codec not in _HDA_CODECS:
            raise _refuse(f"<sound><codec type='{codec}'>", "not supported")
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
        raise _refuse(f"<watchdog action='{action}'>", "libvirt takes the dump itself, which "
                      "qsnap does not; use reset, shutdown, poweroff, pause, none or "
                      "inject-nmi")
    refuse_unknown_parts(node, f"<watchdog model='{model}'>", {"address"}, {"model", "action"})
    if model == "itco":
        if out.family != "q35":
            raise _refuse("<watchdog model='itco'>", "only on a q35 machine")
        out.add("-global", "ICH9-LPC.noreboot=off")
    elif model == "i6300esb":
        out.add(*device_arg({"driver": "i6300esb", "id": f"watchdog{index}",
                             **placement(node, out.family)}))
    elif model == "ib700":
        out.add(*device_arg({"driver": "ib700", "id": f"watchdog{index}"}))
    else:
        raise _refuse(f"<watchdog model='{model}'>", "not supported by qsnap's launcher")
    return _WATCHDOG_ACTIONS[action]


_INPUT_DEVICES = {"keyboard": "virtio-keyboard-pci", "mouse": "virtio-mouse-pci",
                  "tablet": "virtio-tablet-pci"}


def virtio_input_args(index: int, node: etree._Element, out: DeviceArgs) -> None:
    kind = node.get("type", "")
    if kind not in _INPUT_DEVICES:
        raise _refuse(f"<input type='{kind}' bus='virtio'>", "not supported")
    refuse_unknown_parts(node, f"<input type='{kind}' bus='virtio'>", {"address", "driver"},
                         {"bus"})
    out.add(*device_arg({"driver": _INPUT_DEVICES[kind], "id": f"input{index}",
                         **virtio_options(node), **placement(node, out.family)}))


def audio_backend(node: etree._Element, out: DeviceArgs) -> str:
    """``<audio type='none'|'spice'>`` as ``-audiodev`` (its id for the cards)."""
    kind = node.get("type", "none")
    if kind not in ("none", "spice"):
        raise _refuse(f"<audio type='{kind}'>", "only type='none' or 'spice' is supported")
    audio = f"audio{node.get('id', '1')}"
    out.add("-audiodev", json.dumps({"id": audio, "driver": kind}))
    return audio
