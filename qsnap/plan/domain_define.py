"""What ``define`` fixes in a domain definition, as libvirt does: the facts that must not change
while the guest exists.

A memory image only loads into the same machine type, a guest keeps its MAC addresses and its
generation ID, and its firmware and NVRAM stay the files chosen the first time. So a bare
``pc``/``q35`` becomes the QEMU's versioned type, each ``<interface>`` without a ``<mac>`` gets
one (libvirt's ``52:54:00`` prefix), an empty ``<genid/>`` gets a GUID, and ``<os
firmware='efi'>`` becomes the ``<loader>`` and ``<nvram>`` :mod:`qsnap.plan.firmware` chooses
(with ``<smm state='on'/>`` where that firmware needs SMM).
Everything else stays as the user wrote it. Pure: the random values and QEMU's facts come in.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from qsnap.plan.firmware import FirmwareDescriptor, choose_firmware


@dataclass(frozen=True)
class DefineFacts:
    """What ``define`` needs from outside: QEMU's machine aliases (``{'q35': 'pc-q35-7.2'}``,
    empty when QEMU could not be asked), its firmware descriptors, where this domain's NVRAM
    goes, and sources of new MAC addresses and GUIDs."""

    machine_aliases: dict[str, str]
    firmware: list[FirmwareDescriptor]
    nvram_path: str
    new_mac: Callable[[], str]
    new_guid: Callable[[], str]


def new_mac_address() -> str:
    """A random MAC address with QEMU's and libvirt's locally administered prefix."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def _firmware(root: etree._Element, os_node: etree._Element, facts: DefineFacts,
              machine: str) -> None:
    loader = os_node.find("loader")
    nvram = os_node.find("nvram")
    if os_node.get("firmware") == "efi" and (loader is None or not (loader.text or "").strip()):
        wanted = {f.get("name", ""): f.get("enabled") == "yes"
                  for f in os_node.findall("firmware/feature")}
        smm_node = root.find("features/smm")
        smm = None if smm_node is None else smm_node.get("state", "on") == "on"
        os_type = os_node.find("type")
        arch = (os_type.get("arch") if os_type is not None else None) or "x86_64"
        secure = {"yes": True, "no": False}.get(loader.get("secure", "")) \
            if loader is not None else None
        if loader is not None and loader.get("stateless") == "yes":
            secure = False  # the SMM-protected builds keep their variables in the NVRAM
        chosen = choose_firmware(facts.firmware, arch=arch, machine=machine, wanted=wanted,
                                 smm=smm, secure=secure)
        # Recorded as the explicit pair both libvirt 9.0 and 11.x accept: 11.x keeps
        # firmware='efi' beside it, but 9.0 refuses a loader under autoselection, and a
        # save image or snapshot must load under either.
        del os_node.attrib["firmware"]
        firmware_node = os_node.find("firmware")
        if firmware_node is not None:
            os_node.remove(firmware_node)
        if loader is None:
            loader = etree.SubElement(os_node, "loader")
        loader.attrib.update({"readonly": "yes", "type": "pflash",
                              "format": chosen.executable_format})
        if chosen.secure:
            loader.set("secure", "yes")
            if smm_node is None:
                features = root.find("features")
                if features is None:
                    features = etree.Element("features")
                    os_node.addnext(features)
                etree.SubElement(features, "smm", state="on")
        loader.text = chosen.executable
        if nvram is None and loader.get("stateless") != "yes":
            nvram = etree.SubElement(os_node, "nvram")
        if nvram is not None and not nvram.get("template") and chosen.nvram_template:
            nvram.set("template", chosen.nvram_template)
            nvram.set("templateFormat", chosen.nvram_format)
    if loader is not None and loader.get("type", "pflash") == "pflash" and nvram is None \
            and loader.get("readonly") == "yes" and loader.get("stateless") != "yes":
        nvram = etree.SubElement(os_node, "nvram")
    if nvram is not None and not (nvram.text or "").strip():
        nvram.text = facts.nvram_path
        nvram.set("format", nvram.get("format", nvram.get("templateFormat", "raw")))


def resolve_definition(element: etree._Element, facts: DefineFacts) -> etree._Element:
    """A copy of *element* with the facts of the module docstring filled in."""
    root = copy.deepcopy(element)
    os_node = root.find("os")
    machine = ""
    if os_node is not None:
        os_type = os_node.find("type")
        if os_type is not None:
            machine = os_type.get("machine") or "pc"
            machine = facts.machine_aliases.get(machine, machine)
            if facts.machine_aliases:
                os_type.set("machine", machine)
        _firmware(root, os_node, facts, machine)
    for interface in root.iterfind("devices/interface"):
        mac = interface.find("mac")
        if mac is None or not mac.get("address"):
            if mac is None:
                mac = etree.Element("mac")
                interface.insert(0, mac)
            mac.set("address", facts.new_mac())
    genid = root.find("genid")
    if genid is not None and not (genid.text or "").strip():
        genid.text = facts.new_guid()
    return root
