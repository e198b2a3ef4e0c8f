"""The image documents: descriptors, manifests, indexes and image configs.

Each class is an immutable value (:class:`lamina._frozen.Frozen`) with three
doors:

* ``X.parse(data: bytes)``: validate a received document.  Errors are
  :class:`lamina.errors.InvalidArchiveError` for every kind of bad input (not
  JSON, wrong ``schemaVersion``, a missing or mistyped field, a malformed
  digest, a manifest where an index was expected): these bytes come from an
  archive or a registry, and the store reports a bad one exactly as it
  reports a bad archive.  The registry client re-raises it as its own error
  where the registry is to blame.  Documents over ``limit`` bytes
  (:data:`lamina.oci._json.MAX_DOCUMENT_SIZE`, 4 MiB, by default) are
  :class:`lamina.errors.ArchiveTooLargeError` before any parsing.
* ``X(...)``: build one in code.  Bad *arguments* (a malformed digest
  string, a negative size) are :class:`lamina.errors.InvalidArgumentError`.
* ``x.to_dict()`` / ``x.to_bytes()``: the JSON form, and its canonical bytes
  (:func:`lamina.oci._json.canonical_json`) for documents lamina writes.
  ``X.parse(x.to_bytes()) == x``.

Unknown fields.  An image config routinely carries fields outside the OCI
spec (``container_config``, ``docker_version``, ``container``); a commit
that rewrites a config must keep them, so :class:`ImageConfig` keeps every
unknown top-level field in :attr:`ImageConfig.extra` and writes it back.
Manifests, indexes and descriptors keep only the fields they define: lamina
writes those itself and stores received ones as the bytes they came as.

Mappings (annotations, ``config``) are read-only views of private copies,
so a value cannot change under a dict key; equality compares them by
content, and hashing and pickling go through the canonical JSON.
"""

from __future__ import annotations

from types import MappingProxyType

from lamina._frozen import Frozen
from lamina._ids import Digest
from lamina.errors import InvalidArchiveError, InvalidArgumentError
from lamina.oci import _media
from lamina.oci._json import (
    MAX_DOCUMENT_SIZE,
    canonical_json,
    get_int,
    get_list,
    get_object,
    get_str,
    get_str_map,
    load_object,
)
from lamina.oci._platform import Platform

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, Self

__all__ = [
    "Descriptor",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "parse_manifest_or_index",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not value:
        return _EMPTY
    return MappingProxyType(dict(value))


class _Document(Frozen):
    """Hashing and pickling through the JSON form (fields hold read-only mappings)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, object]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Canonical JSON: the bytes to write and to take the digest of."""
        return canonical_json(self.to_dict())

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __reduce__(self) -> tuple[Any, tuple[object, ...]]:
        return (type(self).from_dict, (self.to_dict(),))


def _digest(value: str | None, what: str) -> Digest:
    try:
        return Digest(value or "")
    except InvalidArgumentError as exc:
        raise InvalidArchiveError(f"{what}: {exc}") from None


class Descriptor(_Document):
    """What points at a blob: media type, digest, size (and optional extras)."""

    __slots__ = ("annotations", "artifact_type", "digest", "media_type", "platform", "size", "urls")
    __match_args__ = _fields = (
        "media_type",
        "digest",
        "size",
        "annotations",
        "platform",
        "urls",
        "artifact_type",
    )

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str]
    platform: Platform | None
    urls: tuple[str, ...]
    artifact_type: str | None

    def __init__(
        self,
        media_type: str,
        digest: str,
        size: int,
        annotations: Mapping[str, str] | None = None,
        platform: Platform | None = None,
        urls: Iterable[str] = (),
        artifact_type: str | None = None,
    ) -> None:
        if not media_type:
            raise InvalidArgumentError("a descriptor needs a media type")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgumentError(f"invalid descriptor size {size!r}")
        object.__setattr__(self, "media_type", media_type)
        object.__setattr__(self, "digest", Digest(digest))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "annotations", _frozen_map(annotations))
        object.__setattr__(self, "platform", platform)
        object.__setattr__(self, "urls", tuple(urls))
        object.__setattr__(self, "artifact_type", artifact_type)

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        """The same descriptor with ``annotations`` (replacing any it had)."""
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            annotations,
            self.platform,
            self.urls,
            self.artifact_type,
        )

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        if self.platform is not None:
            data["platform"] = self.platform.to_dict()
        if self.urls:
            data["urls"] = list(self.urls)
        if self.artifact_type is not None:
            data["artifactType"] = self.artifact_type
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str = "descriptor") -> Descriptor:
        """Validate a descriptor object (part of a larger document)."""
        media_type = get_str(data, "mediaType", what, required=True)
        digest = _digest(get_str(data, "digest", what, required=True), what)
        size = get_int(data, "size", what, required=True)
        assert media_type is not None and size is not None
        if not media_type:
            raise InvalidArchiveError(f"{what}: empty mediaType")
        if size < 0:
            raise InvalidArchiveError(f"{what}: negative size {size}")
        platform_data = get_object(data, "platform", what)
        platform = None
        if platform_data is not None:
            try:
                platform = Platform.from_dict(platform_data)
            except InvalidArgumentError as exc:
                raise InvalidArchiveError(f"{what}: {exc}") from None
        urls = get_list(data, "urls", what) or []
        if not all(isinstance(url, str) for url in urls):
            raise InvalidArchiveError(f"{what}: urls must be strings")
        return cls(
            media_type,
            digest,
            size,
            get_str_map(data, "annotations", what),
            platform,
            [str(url) for url in urls],
            get_str(data, "artifactType", what),
        )


def _schema_version(data: Mapping[str, object], what: str) -> None:
    version = get_int(data, "schemaVersion", what, required=True)
    if version == 1:
        raise InvalidArchiveError(f"{what}: Docker schema 1 manifests are not supported")
    if version != 2:
        raise InvalidArchiveError(f"{what}: schemaVersion {version}, want 2")


def _descriptors(data: Mapping[str, object], key: str, what: str) -> list[Descriptor]:
    items = get_list(data, key, what, required=True)
    assert items is not None
    result = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidArchiveError(f"{what}: {key}[{position}] is not an object")
        result.append(Descriptor.from_dict(item, f"{what} {key}[{position}]"))
    return result


def _optional_descriptor(data: Mapping[str, object], key: str, what: str) -> Descriptor | None:
    item = get_object(data, key, what)
    return None if item is None else Descriptor.from_dict(item, f"{what} {key}")


class Manifest(_Document):
    """An image manifest (OCI or Docker schema 2): one config and its layers, base first."""

    __slots__ = ("annotations", "artifact_type", "config", "layers", "media_type", "subject")
    __match_args__ = _fields = (
        "config",
        "layers",
        "media_type",
        "annotations",
        "subject",
        "artifact_type",
    )

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None
    annotations: Mapping[str, str]
    subject: Descriptor | None
    artifact_type: str | None

    def __init__(
        self,
        config: Descriptor,
        layers: Iterable[Descriptor],
        media_type: str | None = _media.OCI_MANIFEST,
        annotations: Mapping[str, str] | None = None,
        subject: Descriptor | None = None,
        artifact_type: str | None = None,
    ) -> None:
        if media_type is not None and not _media.is_manifest(media_type):
            raise InvalidArgumentError(f"{media_type!r} is not a manifest media type")
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "media_type", media_type)
        object.__setattr__(self, "annotations", _frozen_map(annotations))
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "artifact_type", artifact_type)

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "schemaVersion": 2,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return _with_optional_fields(data, self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str = "image manifest") -> Manifest:
        _schema_version(data, what)
        media_type = get_str(data, "mediaType", what)
        if media_type is not None and not _media.is_manifest(media_type):
            kind = "an index" if _media.is_index(media_type) else f"of type {media_type!r}"
            raise InvalidArchiveError(f"{what}: expected an image manifest, got {kind}")
        if "manifests" in data:
            raise InvalidArchiveError(f"{what}: has 'manifests': an index, not a manifest")
        config = get_object(data, "config", what, required=True)
        assert config is not None
        return cls(
            Descriptor.from_dict(config, f"{what} config"),
            _descriptors(data, "layers", what),
            media_type,
            get_str_map(data, "annotations", what),
            _optional_descriptor(data, "subject", what),
            get_str(data, "artifactType", what),
        )

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        what: str = "image manifest",
        *,
        limit: int = MAX_DOCUMENT_SIZE,
    ) -> Manifest:
        """Validate manifest bytes (the caller has checked their digest)."""
        return cls.from_dict(load_object(data, what, limit), what)


class Index(_Document):
    """An image index (OCI) or manifest list (Docker): one manifest per platform."""

    __slots__ = ("annotations", "artifact_type", "manifests", "media_type", "subject")
    __match_args__ = _fields = (
        "manifests",
        "media_type",
        "annotations",
        "subject",
        "artifact_type",
    )

    manifests: tuple[Descriptor, ...]
    media_type: str | None
    annotations: Mapping[str, str]
    subject: Descriptor | None
    artifact_type: str | None

    def __init__(
        self,
        manifests: Iterable[Descriptor],
        media_type: str | None = _media.OCI_INDEX,
        annotations: Mapping[str, str] | None = None,
        subject: Descriptor | None = None,
        artifact_type: str | None = None,
    ) -> None:
        if media_type is not None and not _media.is_index(media_type):
            raise InvalidArgumentError(f"{media_type!r} is not an index media type")
        object.__setattr__(self, "manifests", tuple(manifests))
        object.__setattr__(self, "media_type", media_type)
        object.__setattr__(self, "annotations", _frozen_map(annotations))
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "artifact_type", artifact_type)

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "schemaVersion": 2,
            "manifests": [item.to_dict() for item in self.manifests],
        }
        return _with_optional_fields(data, self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str = "image index") -> Index:
        _schema_version(data, what)
        media_type = get_str(data, "mediaType", what)
        if media_type is not None and not _media.is_index(media_type):
            kind = "a manifest" if _media.is_manifest(media_type) else f"of type {media_type!r}"
            raise InvalidArchiveError(f"{what}: expected an image index, got {kind}")
        if "config" in data or "layers" in data:
            raise InvalidArchiveError(f"{what}: has 'config'/'layers': a manifest, not an index")
        return cls(
            _descriptors(data, "manifests", what),
            media_type,
            get_str_map(data, "annotations", what),
            _optional_descriptor(data, "subject", what),
            get_str(data, "artifactType", what),
        )

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        what: str = "image index",
        *,
        limit: int = MAX_DOCUMENT_SIZE,
    ) -> Index:
        """Validate index bytes (the caller has checked their digest)."""
        return cls.from_dict(load_object(data, what, limit), what)

    def platforms(self) -> list[Platform | None]:
        """Each entry's platform (``None`` where the entry names none), in order."""
        return [item.platform for item in self.manifests]


def parse_manifest_or_index(
    data: bytes | bytearray | memoryview,
    media_type: str | None = None,
    what: str = "manifest",
    *,
    limit: int = MAX_DOCUMENT_SIZE,
) -> Manifest | Index:
    """An index or a manifest, told apart by ``media_type`` (a descriptor's or
    an HTTP ``Content-Type``), else by the document's own ``mediaType``, else by
    its shape (``manifests`` versus ``config``), as the OCI spec allows.

    A document whose own ``mediaType`` contradicts ``media_type`` is refused
    (distribution-spec: a client rejects that mismatch).
    """
    document = load_object(data, what, limit)
    own = get_str(document, "mediaType", what)
    if media_type is not None and own is not None and own != media_type.partition(";")[0].strip():
        raise InvalidArchiveError(f"{what}: mediaType {own!r} does not match {media_type!r}")
    kind = media_type or own
    if kind is not None:
        if _media.is_index(kind):
            return Index.from_dict(document, what)
        if _media.is_manifest(kind):
            return Manifest.from_dict(document, what)
        raise InvalidArchiveError(f"{what}: unsupported media type {kind!r}")
    if "manifests" in document:
        return Index.from_dict(document, what)
    return Manifest.from_dict(document, what)


class History(_Document):
    """One entry of a config's ``history``: how one step of the build made its layer."""

    __slots__ = ("author", "comment", "created", "created_by", "empty_layer")
    __match_args__ = _fields = ("created", "created_by", "author", "comment", "empty_layer")

    created: str | None
    created_by: str | None
    author: str | None
    comment: str | None
    empty_layer: bool

    def __init__(
        self,
        created: str | None = None,
        created_by: str | None = None,
        author: str | None = None,
        comment: str | None = None,
        empty_layer: bool = False,
    ) -> None:
        object.__setattr__(self, "created", created)
        object.__setattr__(self, "created_by", created_by)
        object.__setattr__(self, "author", author)
        object.__setattr__(self, "comment", comment)
        object.__setattr__(self, "empty_layer", bool(empty_layer))

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {}
        for key in ("created", "created_by", "author", "comment"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.empty_layer:
            data["empty_layer"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str = "history entry") -> History:
        empty = data.get("empty_layer", False)
        if not isinstance(empty, bool):
            raise InvalidArchiveError(f"{what}: empty_layer must be a boolean")
        return cls(
            get_str(data, "created", what),
            get_str(data, "created_by", what),
            get_str(data, "author", what),
            get_str(data, "comment", what),
            empty,
        )


# the fields ImageConfig owns; everything else at the top level is kept in ``extra``
_CONFIG_FIELDS = frozenset(
    {
        "architecture",
        "os",
        "variant",
        "os.version",
        "os.features",
        "created",
        "author",
        "config",
        "rootfs",
        "history",
    }
)


class ImageConfig(_Document):
    """An image config: platform, run-time defaults, the layers' diff IDs and history.

    The image id is the digest of the config's *bytes*
    (:func:`lamina._ids.digest_of` of what was received or written), never of
    a re-serialisation.
    """

    __slots__ = (
        "architecture",
        "author",
        "config",
        "created",
        "diff_ids",
        "extra",
        "history",
        "os",
        "os_features",
        "os_version",
        "variant",
    )
    __match_args__ = _fields = (
        "architecture",
        "os",
        "diff_ids",
        "variant",
        "os_version",
        "os_features",
        "created",
        "author",
        "config",
        "history",
        "extra",
    )

    architecture: str
    os: str
    diff_ids: tuple[Digest, ...]
    variant: str | None
    os_version: str | None
    os_features: tuple[str, ...]
    created: str | None
    author: str | None
    config: Mapping[str, Any] | None
    history: tuple[History, ...]
    extra: Mapping[str, Any]

    def __init__(
        self,
        architecture: str,
        os: str,
        diff_ids: Iterable[str],
        variant: str | None = None,
        os_version: str | None = None,
        os_features: Iterable[str] = (),
        created: str | None = None,
        author: str | None = None,
        config: Mapping[str, Any] | None = None,
        history: Iterable[History] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if not architecture or not os:
            raise InvalidArgumentError("an image config needs an architecture and an os")
        clash = set(extra or ()) & _CONFIG_FIELDS
        if clash:
            raise InvalidArgumentError(f"extra fields {sorted(clash)} are ImageConfig's own")
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "os", os)
        object.__setattr__(self, "diff_ids", tuple(Digest(d) for d in diff_ids))
        object.__setattr__(self, "variant", variant)
        object.__setattr__(self, "os_version", os_version)
        object.__setattr__(self, "os_features", tuple(os_features))
        object.__setattr__(self, "created", created)
        object.__setattr__(self, "author", author)
        object.__setattr__(self, "config", None if config is None else _frozen_map(config))
        object.__setattr__(self, "history", tuple(history))
        object.__setattr__(self, "extra", _frozen_map(extra))

    @property
    def platform(self) -> Platform:
        """The image's platform, normalised (``x86_64`` reads as ``amd64``)."""
        return Platform(
            self.os, self.architecture, self.variant or "", self.os_version or "", self.os_features
        )

    def with_layer(
        self,
        diff_id: str,
        *,
        created: str | None = None,
        created_by: str | None = None,
        author: str | None = None,
        comment: str | None = None,
    ) -> ImageConfig:
        """This config with one more layer on top and its history entry (a commit).

        ``created`` becomes the config's ``created`` too; every other field,
        unknown ones included, is kept.
        """
        entry = History(created, created_by, author, comment)
        return ImageConfig(
            self.architecture,
            self.os,
            (*self.diff_ids, diff_id),
            self.variant,
            self.os_version,
            self.os_features,
            created if created is not None else self.created,
            author if author is not None else self.author,
            self.config,
            (*self.history, entry),
            self.extra,
        )

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = dict(self.extra)
        data["architecture"] = self.architecture
        data["os"] = self.os
        data["rootfs"] = {"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]}
        optional: dict[str, object | None] = {
            "variant": self.variant,
            "os.version": self.os_version,
            "os.features": list(self.os_features) or None,
            "created": self.created,
            "author": self.author,
            "config": None if self.config is None else _plain(self.config),
            "history": [h.to_dict() for h in self.history] or None,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object], what: str = "image config") -> ImageConfig:
        architecture = get_str(data, "architecture", what, required=True)
        os_name = get_str(data, "os", what, required=True)
        if not architecture or not os_name:
            raise InvalidArchiveError(f"{what}: empty architecture or os")
        rootfs = get_object(data, "rootfs", what, required=True)
        assert rootfs is not None
        if get_str(rootfs, "type", f"{what} rootfs", required=True) != "layers":
            raise InvalidArchiveError(f"{what}: rootfs.type must be 'layers'")
        raw_ids = get_list(rootfs, "diff_ids", f"{what} rootfs") or []
        diff_ids = []
        for position, item in enumerate(raw_ids):
            if not isinstance(item, str):
                raise InvalidArchiveError(f"{what}: rootfs.diff_ids[{position}] is not a string")
            diff_ids.append(_digest(item, f"{what} rootfs.diff_ids[{position}]"))
        features = get_list(data, "os.features", what) or []
        if not all(isinstance(f, str) for f in features):
            raise InvalidArchiveError(f"{what}: os.features must be strings")
        history = []
        for position, item in enumerate(get_list(data, "history", what) or []):
            if not isinstance(item, dict):
                raise InvalidArchiveError(f"{what}: history[{position}] is not an object")
            history.append(History.from_dict(item, f"{what} history[{position}]"))
        return cls(
            architecture,
            os_name,
            diff_ids,
            get_str(data, "variant", what),
            get_str(data, "os.version", what),
            [str(f) for f in features],
            get_str(data, "created", what),
            get_str(data, "author", what),
            get_object(data, "config", what),
            history,
            {k: v for k, v in data.items() if k not in _CONFIG_FIELDS},
        )

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        what: str = "image config",
        *,
        limit: int = MAX_DOCUMENT_SIZE,
    ) -> ImageConfig:
        """Validate config bytes (the caller has checked their digest: the image id)."""
        return cls.from_dict(load_object(data, what, limit), what)


def _plain(value: Any) -> Any:
    """A JSON-ready deep copy (read-only views become dicts)."""
    if isinstance(value, MappingProxyType | dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _with_optional_fields(data: dict[str, object], doc: Manifest | Index) -> dict[str, object]:
    """Add the fields a manifest and an index share, where set (their JSON order)."""
    if doc.media_type is not None:
        data["mediaType"] = doc.media_type
    if doc.annotations:
        data["annotations"] = dict(doc.annotations)
    if doc.subject is not None:
        data["subject"] = doc.subject.to_dict()
    if doc.artifact_type is not None:
        data["artifactType"] = doc.artifact_type
    return data
