"""Package attributes imported on first use (PEP 562).

``import qsnap`` (and every subpackage) used to import the whole engine: asyncio, qemu.qmp and
lxml, about 120 ms before a command could even look at its arguments. Packages now import each
module when one of its names is first asked for, so a command loads only the modules it uses.
Each package names its exports once, as the imports type checkers see (under
``TYPE_CHECKING``), and :func:`lazy_exports` reads them from there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, init_file: str) -> tuple[
        Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for *package*, whose ``__init__.py`` is
    *init_file*. Its exports are named once, in its ``if TYPE_CHECKING:`` block, one per
    line as ``from MODULE import NAME as NAME`` (the form type checkers read as a
    re-export); this reads those lines (no parser: a package import costs a file read), and
    imports ``MODULE`` when ``NAME`` is first asked for. A loaded name is kept in the
    package, so it is looked up once."""
    exports: dict[str, str] = {}
    with open(init_file, encoding="utf-8") as source:
        for line in source:
            words = line.split()
            if line.startswith("    from ") and len(words) == 6 and words[2] == "import" \
                    and words[4] == "as" and words[3] == words[5]:
                exports[words[3]] = words[1]

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__, sorted(exports)
