"""Driver registry and selection, like Docker's ``graphdriver.New``.

A driver's home is ``<root>/<name>``.  ``new_driver(None, root)`` first looks
for a driver that already has state under ``root`` (so layers never silently
"disappear" behind a newly preferred driver), then tries the priority list,
skipping drivers that raise :class:`~lamina.errors.NotSupportedError`.

Unlike Docker, vfs state counts as prior state too: a root that only holds
vfs layers keeps using vfs rather than switching to overlay and hiding them.
``windowsfilter`` is never picked automatically on Linux; ask for it by name.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from lamina._lazy import lazy_names
from lamina.errors import InvalidArgumentError, NotSupportedError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from lamina.drivers._base import Driver, FileGetter, StorageOpts, validate_id

__all__ = [
    "PRIORITY",
    "Driver",
    "DriverFactory",
    "FileGetter",
    "StorageOpts",
    "available",
    "new_driver",
    "register",
    "validate_id",
]

DriverFactory = Callable[[Path, Mapping[str, str]], "Driver"]

# The base class loads with the first driver (or on first access): the registry
# itself needs none of it, and the base class pulls in the mount machinery.
_LAZY = {
    "Driver": "lamina.drivers._base",
    "FileGetter": "lamina.drivers._base",
    "StorageOpts": "lamina.drivers._base",
    "validate_id": "lamina.drivers._base",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)


#: Automatic selection order on Linux.
PRIORITY: tuple[str, ...] = ("overlay", "vfs")

_lock = threading.Lock()
_factories: dict[str, DriverFactory] = {}


def register(name: str, factory: DriverFactory) -> None:
    """Make a driver available under ``name``; a name can be registered once."""
    with _lock:
        if name in _factories:
            raise InvalidArgumentError(f"driver name already registered: {name}")
        _factories[name] = factory


def available() -> list[str]:
    """Registered driver names, in selection priority order first."""
    with _lock:
        names = list(_factories)
    return sorted(names, key=lambda n: (PRIORITY.index(n) if n in PRIORITY else len(PRIORITY), n))


def _factory(name: str) -> DriverFactory:
    with _lock:
        factory = _factories.get(name)
    if factory is None:
        raise NotSupportedError(f"driver not supported: no driver named {name!r}")
    return factory


def _start(name: str, root: Path, options: dict[str, str]) -> Driver:
    driver = _factory(name)(root / name, options)
    driver.name = name  # the name it was registered under, whatever its class says
    return driver


def _has_state(home: Path) -> bool:
    try:
        with os.scandir(home) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable counts as state, as Docker's isEmptyDir does


def new_driver(
    name: str | None, root: str | os.PathLike[str], options: Mapping[str, str] | None = None
) -> Driver:
    """Start the driver ``name`` (or pick one) with its home at ``<root>/<name>``."""
    root = Path(root)
    opts = dict(options or {})
    if name:
        return _start(name, root, opts)
    names = available()
    prior = [n for n in names if _has_state(root / n)]
    if len(prior) > 1:
        raise InvalidArgumentError(
            f"{root} contains several drivers' state: {', '.join(prior)}; choose one explicitly"
        )
    if prior:
        return _start(prior[0], root, opts)
    reasons = []
    for candidate in (n for n in names if n in PRIORITY):
        try:
            return _start(candidate, root, opts)
        except NotSupportedError as exc:
            reasons.append(f"{candidate}: {exc}")
    raise NotSupportedError("no supported storage driver found (" + "; ".join(reasons) + ")")


def _lazy(module: str, cls: str) -> DriverFactory:
    def factory(home: Path, options: Mapping[str, str]) -> Driver:
        try:
            __import__(module)
            driver_cls = getattr(sys.modules[module], cls)
        except ImportError as exc:
            raise NotSupportedError(f"driver module {module} cannot be loaded: {exc}") from exc
        driver: Driver = driver_cls(home, options)
        return driver

    return factory


register("vfs", _lazy("lamina.drivers.vfs", "VfsDriver"))
register("overlay", _lazy("lamina.drivers.overlay", "OverlayDriver"))
register("windowsfilter", _lazy("lamina.drivers.windowsfilter", "WindowsFilterDriver"))
