"""lamina: a storage engine for container image layers.

The public API is Docker's graph-driver contract (:mod:`lamina.drivers`),
the archive engine that applies and exports layers (:mod:`lamina.archive`),
the image formats as data (:mod:`lamina.oci`: references, digests, manifests,
configs, OCI layouts and ``docker save`` archives) and one exception tree
(:mod:`lamina.errors`).

Every lamina command is a short process, so the package loads its parts on
first use (PEP 562): ``from lamina import archive`` never pays for the
drivers, the mount code or the command line.
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (and re) at start-up
if TYPE_CHECKING:
    from lamina import archive, drivers, errors, oci, store
    from lamina._change import Change, ChangeKind
    from lamina.store import Store

__all__ = [
    "Change",
    "ChangeKind",
    "Store",
    "__version__",
    "archive",
    "drivers",
    "errors",
    "oci",
    "store",
]

__version__ = "0.1.0"

# public name -> module that defines it (a submodule when the name is the module)
_LAZY = {
    "Change": "lamina._change",
    "ChangeKind": "lamina._change",
    "archive": "lamina.archive",
    "drivers": "lamina.drivers",
    "errors": "lamina.errors",
    "oci": "lamina.oci",
    "Store": "lamina.store._store",
    "store": "lamina.store",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
