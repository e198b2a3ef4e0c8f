"""The store's value classes: what its public calls return (immutable records).

Field names are DESIGN.md's ("The image store"); ids are full digests
(``sha256:…``), so a value can be passed back to any call that names an
image, a layer or a container.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from lamina._frozen import Frozen

__all__ = ["CheckReport", "Container", "DiskUsage", "GcReport", "Image", "Layer", "Problem"]


def _thaw(value: Any) -> Any:
    if isinstance(value, MappingProxyType | dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


class Image(Frozen):
    """An image in the store: ``id`` is ``"sha256:"`` + its config digest."""

    __slots__ = (
        "architecture",
        "config",
        "created",
        "digest",
        "id",
        "layers",
        "names",
        "os",
        "os_version",
        "size",
        "variant",
    )
    __match_args__ = _fields = (
        "id",
        "digest",
        "names",
        "os",
        "architecture",
        "variant",
        "os_version",
        "created",
        "config",
        "layers",
        "size",
    )

    id: str
    digest: str | None
    names: tuple[str, ...]
    os: str
    architecture: str
    variant: str | None
    os_version: str | None
    created: str | None
    config: dict[
        str, Any
    ]  # the config JSON as a dict (a private copy: changing it changes nothing)
    layers: tuple[str, ...]  # chain IDs, base first
    size: int

    def __init__(
        self,
        id: str,
        digest: str | None,
        names: tuple[str, ...] | list[str],
        os: str,
        architecture: str,
        variant: str | None,
        os_version: str | None,
        created: str | None,
        config: Any,
        layers: tuple[str, ...] | list[str],
        size: int,
    ) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "os", os)
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "variant", variant)
        object.__setattr__(self, "os_version", os_version)
        object.__setattr__(self, "created", created)
        object.__setattr__(self, "config", _thaw(config))
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "size", size)

    def __hash__(self) -> int:  # the config dict is not hashable; the id stands for it
        return hash((self.id, self.digest, self.names, self.layers))

    def __reduce__(self) -> tuple[type[Image], tuple[object, ...]]:
        return (Image, self._values())


class Layer(Frozen):
    """A read-only layer, stored once by its chain ID."""

    __slots__ = (
        "chain_id",
        "compressed_size",
        "diff_id",
        "digest",
        "driver",
        "media_type",
        "parent",
        "size",
    )
    __match_args__ = _fields = (
        "chain_id",
        "diff_id",
        "digest",
        "media_type",
        "compressed_size",
        "size",
        "parent",
        "driver",
    )

    chain_id: str
    diff_id: str
    digest: str | None
    media_type: str | None
    compressed_size: int | None
    size: int
    parent: str | None
    driver: str

    def __init__(
        self,
        chain_id: str,
        diff_id: str,
        digest: str | None,
        media_type: str | None,
        compressed_size: int | None,
        size: int,
        parent: str | None,
        driver: str,
    ) -> None:
        for name, value in zip(
            self._fields,
            (chain_id, diff_id, digest, media_type, compressed_size, size, parent, driver),
            strict=True,
        ):
            object.__setattr__(self, name, value)


class Container(Frozen):
    """A container: a read-write layer (``layer_id`` in the driver) on an image."""

    __slots__ = ("created", "id", "image_id", "layer_id", "name")
    __match_args__ = _fields = ("id", "name", "image_id", "layer_id", "created")

    id: str
    name: str
    image_id: str
    layer_id: str
    created: str

    def __init__(self, id: str, name: str, image_id: str, layer_id: str, created: str) -> None:
        for field, value in zip(self._fields, (id, name, image_id, layer_id, created), strict=True):
            object.__setattr__(self, field, value)


class Problem(Frozen):
    """One finding of :meth:`Store.check`: its ``kind``, the full id of its ``subject``."""

    __slots__ = ("detail", "kind", "subject")
    __match_args__ = _fields = ("kind", "subject", "detail")

    kind: str
    subject: str
    detail: str

    def __init__(self, kind: str, subject: str, detail: str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "detail", detail)


class CheckReport(Frozen):
    """The result of :meth:`Store.check`: ``ok`` exactly when there are no problems."""

    __slots__ = ("ok", "problems")
    __match_args__ = _fields = ("ok", "problems")

    ok: bool
    problems: tuple[Problem, ...]

    def __init__(self, ok: bool, problems: tuple[Problem, ...] | list[Problem]) -> None:
        object.__setattr__(self, "ok", ok)
        object.__setattr__(self, "problems", tuple(problems))


class GcReport(Frozen):
    """What :meth:`Store.gc` removed (ids and digests) and the bytes it gave back."""

    __slots__ = ("reclaimed_bytes", "removed")
    __match_args__ = _fields = ("removed", "reclaimed_bytes")

    removed: tuple[str, ...]
    reclaimed_bytes: int

    def __init__(self, removed: tuple[str, ...] | list[str], reclaimed_bytes: int) -> None:
        object.__setattr__(self, "removed", tuple(removed))
        object.__setattr__(self, "reclaimed_bytes", reclaimed_bytes)


class DiskUsage(Frozen):
    """Bytes used, like ``docker system df``: by images, containers, layers; reclaimable."""

    __slots__ = ("containers", "images", "layers", "reclaimable")
    __match_args__ = _fields = ("images", "containers", "layers", "reclaimable")

    images: int
    containers: int
    layers: int
    reclaimable: int

    def __init__(self, images: int, containers: int, layers: int, reclaimable: int) -> None:
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "containers", containers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "reclaimable", reclaimable)
