"""lamina.store: images, containers and layers on any driver, metadata in SQLite.

:class:`Store` is the API of DESIGN.md ("The image store"): load and save
docker-archive and OCI archives, images by name or id, containers
(read-write layers) with mount, changes, commit and export, byte-exact
layer tars, crash recovery on open, check/repair, gc and disk usage.  The
on-disk layout is drawn in :mod:`lamina.store._db`.

Names load on first use (PEP 562): ``import lamina`` does not load SQLite.
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lamina.store._store import Store
    from lamina.store._values import (
        CheckReport,
        Container,
        DiskUsage,
        GcReport,
        Image,
        Layer,
        Problem,
    )

__all__ = [
    "CheckReport",
    "Container",
    "DiskUsage",
    "GcReport",
    "Image",
    "Layer",
    "Problem",
    "Store",
]

_LAZY = {
    "Store": "lamina.store._store",
    "CheckReport": "lamina.store._values",
    "Container": "lamina.store._values",
    "DiskUsage": "lamina.store._values",
    "GcReport": "lamina.store._values",
    "Image": "lamina.store._values",
    "Layer": "lamina.store._values",
    "Problem": "lamina.store._values",
}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
