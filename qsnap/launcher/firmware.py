"""Reading QEMU's firmware descriptors from the folders libvirt reads them from.

Later folders override a file of the same name in earlier ones, and an empty file hides it,
as in QEMU's ``docs/interop/firmware.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qsnap.plan.firmware import FirmwareDescriptor

SEARCH_PATH = ("/usr/share/qemu/firmware", "/etc/qemu/firmware")


def descriptor_folders() -> list[Path]:
    folders = [Path(p) for p in SEARCH_PATH]
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    folders.append(Path(config) / "qemu" / "firmware")
    return folders


def read_descriptors(folders: list[Path] | None = None) -> list[FirmwareDescriptor]:
    """Every descriptor that applies, by file name; unreadable files are skipped."""
    chosen: dict[str, Path] = {}
    for folder in folders if folders is not None else descriptor_folders():
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.endswith(".json"):
                chosen[name] = folder / name
    found = []
    for name, path in sorted(chosen.items()):
        try:
            text = path.read_text()
            if not text.strip():
                continue  # an empty file masks the one of that name
            found.append(FirmwareDescriptor.from_json(name, json.loads(text)))
        except (OSError, ValueError, AttributeError):
            continue
    return found
