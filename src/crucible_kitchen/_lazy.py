"""Public names loaded on first use, so that importing a package stays light.

Like :mod:`crucible_kitchen.errors`, a bottom-level module: it imports nothing from
crucible-kitchen, and every layer may import it.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ("lazy_exports",)


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` whose ``exports`` (public name
    -> the private submodule that defines it, e.g. ``"_model"``) load on first access::

        __getattr__, __dir__ = lazy_exports(__name__, {"Model": "_model"})

    A loaded name is stored in the package, so later accesses skip ``__getattr__``. An unknown
    name raises ``AttributeError`` as a plain module does; ``__dir__`` lists the package's
    globals and its ``__all__``.
    """

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        namespace = vars(sys.modules[package])
        return sorted((*namespace, *namespace.get("__all__", ())))

    return __getattr__, __dir__
