"""Package attributes imported on first use (PEP 562).

``import qsnap`` (and every subpackage) used to import the whole engine: asyncio, qemu.qmp and
lxml, about 120 ms before a command could even look at its arguments. Packages now name their
exports here and import each module when one of its names is first asked for, so a command
loads only the modules it uses. Type checkers see the real imports (under ``TYPE_CHECKING``
in each package).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for *package*, whose name ``N`` lives in the module
    ``exports[N]``. A loaded name is kept in the package, so it is looked up once."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
