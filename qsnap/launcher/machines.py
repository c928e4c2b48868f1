"""Facts a QEMU binary gives about itself without starting a guest."""

from __future__ import annotations

import functools
import re
import subprocess

_ALIAS_RE = re.compile(r"^(\S+)\s.*\(alias of (\S+)\)\s*$", re.M)


@functools.lru_cache(maxsize=8)
def machine_aliases(emulator: str) -> dict[str, str]:
    """``{'pc': 'pc-i440fx-7.2', 'q35': 'pc-q35-7.2'}`` from ``-machine help``; empty when the
    binary cannot be run (a definition is then kept as written)."""
    try:
        result = subprocess.run([emulator, "-machine", "help"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(_ALIAS_RE.findall(result.stdout)) if result.returncode == 0 else {}
