"""Lazy public names for package ``__init__`` modules (PEP 562).

A package re-exports its public API, but importing every submodule up front
costs each process tens of milliseconds (``lamina apply`` does not need the
drivers; ``lamina mount`` does not need the exporter).  A package lists which
submodule defines each name and loads it on first access.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def lazy_names(
    package: str, where: dict[str, str], public: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``where`` maps a name to its module.

    A name that is the submodule itself (``lamina.archive`` for ``archive``)
    gives the module; any other is taken from its module.  The value is then
    stored in the package, so later accesses are plain attribute lookups.
    """
    names = set(public)

    def get_attribute(name: str) -> object:
        module_name = where.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        __import__(module_name)
        module = sys.modules[module_name]
        value: object = module if module_name == f"{package}.{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def list_names() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | names)

    return get_attribute, list_names
