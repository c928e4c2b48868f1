"""Choosing UEFI firmware from QEMU's firmware descriptors, as libvirt chooses it.

QEMU's ``docs/interop/firmware.json`` descriptors (Debian's ``ovmf`` installs them in
``/usr/share/qemu/firmware``) say what each firmware build is for. For ``<os firmware='efi'>``
libvirt takes the first descriptor, in file-name order, whose interface is UEFI, whose targets
include the guest's architecture and machine type, whose features agree with every
``<firmware><feature enabled= name=>`` the definition sets, and that does not need SMM where
the definition turns SMM off; with no feature asked for, that is Debian's first file, the
Secure Boot build with Microsoft's keys enrolled. What it chooses is recorded in the
definition (``<loader>``, ``<nvram>``), so the choice never changes under a defined guest.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from qsnap.errors import NotSupportedError

#: The features a definition may ask for by name, and how a descriptor spells them.
REQUESTABLE = ("enrolled-keys", "secure-boot")


@dataclass(frozen=True)
class FirmwareDescriptor:
    """One firmware descriptor file: a flash firmware build and its NVRAM template."""

    name: str  # the file's name: the order libvirt tries them in
    interfaces: tuple[str, ...]
    executable: str
    executable_format: str
    nvram_template: str | None
    nvram_format: str
    targets: tuple[tuple[str, tuple[str, ...]], ...]
    features: frozenset[str]
    device: str

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> FirmwareDescriptor:
        mapping = data.get("mapping", {})
        executable = mapping.get("executable", {})
        template = mapping.get("nvram-template") or {}
        return cls(name=name, interfaces=tuple(data.get("interface-types", ())),
                   executable=executable.get("filename", ""),
                   executable_format=executable.get("format", "raw"),
                   nvram_template=template.get("filename"),
                   nvram_format=template.get("format", "raw"),
                   targets=tuple((t.get("architecture", ""), tuple(t.get("machines", ())))
                                 for t in data.get("targets", ())),
                   features=frozenset(data.get("features", ())),
                   device=mapping.get("device", ""))

    def serves(self, arch: str, machine: str) -> bool:
        return any(target_arch == arch and any(fnmatch.fnmatch(machine, glob) for glob in globs)
                   for target_arch, globs in self.targets)

    @property
    def secure(self) -> bool:
        """Its flash must be writable only from SMM (``-global cfi.pflash01.secure=on``)."""
        return "requires-smm" in self.features


def choose_firmware(descriptors: list[FirmwareDescriptor], *, arch: str, machine: str,
                    wanted: dict[str, bool], smm: bool | None,
                    secure: bool | None = None) -> FirmwareDescriptor:
    """The firmware libvirt would pick (see the module docstring); an error says what was
    asked and what the descriptors offer when none fits. *secure* is ``<loader secure=>``:
    whether the firmware must (or must not) be the SMM-protected build."""
    for name in wanted:
        if name not in REQUESTABLE:
            raise NotSupportedError(f"<firmware><feature name='{name}'> is not supported "
                                    f"(qsnap chooses by {', '.join(REQUESTABLE)})")
    for descriptor in sorted(descriptors, key=lambda d: d.name):
        if "uefi" not in descriptor.interfaces or descriptor.device != "flash":
            continue
        if not descriptor.serves(arch, machine):
            continue
        if any((name in descriptor.features) != enabled for name, enabled in wanted.items()):
            continue
        if descriptor.secure and smm is False:
            continue
        if secure is not None and descriptor.secure != secure:
            continue
        if descriptor.nvram_template is None:
            continue
        return descriptor
    asked = ", ".join(f"{n}={'yes' if on else 'no'}" for n, on in wanted.items()) or "nothing"
    offered = ", ".join(d.name for d in descriptors) or "no descriptors at all"
    raise NotSupportedError(f"no UEFI firmware for {arch} machine '{machine}' with {asked} "
                            f"(smm {'off' if smm is False else 'allowed'}); QEMU's firmware "
                            f"descriptors here: {offered} (Debian's ovmf package installs "
                            "them)")
