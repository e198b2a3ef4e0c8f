"""The ``docker save`` archive (docker-archive) as data.

A docker-archive is a tar whose ``manifest.json`` lists its images::

    [{"Config": "<path>", "RepoTags": ["debian:12"], "Layers": ["<path>", …],
      "Parent": "<id>"?, "LayerSources": {"<diff id>": <descriptor>}?}, …]

The paths are member paths in the same tar.  Two generations are in use:

* Docker < 25 (and skopeo's ``docker-archive:``): ``<hex>.json`` configs and
  legacy per-layer directories ``<id>/layer.tar`` (with ``<id>/json`` and
  ``<id>/VERSION`` beside them, which nothing needs), plus an optional
  ``repositories`` file ``{"debian": {"12": "<top layer id>"}}``.
* Docker ≥ 25: the archive is also an OCI image layout
  (:mod:`lamina.oci._layout`) and ``manifest.json`` points into it:
  ``blobs/sha256/<hex>`` for the config and every layer.

Both read the same way: follow the paths.  Every path is checked with
:func:`lamina.oci._layout.safe_member_path` first, so ``../../etc/passwd`` in
``manifest.json`` is :class:`lamina.errors.UnsafeArchiveError` before anything
is opened.  ``RepoTags`` are Docker's familiar names (``debian:12``) and are
normalised (``docker.io/library/debian:12``); a tag that does not parse is
:class:`lamina.errors.InvalidArchiveError` (Docker's load refuses it too).

Writing produces the Docker ≥ 25 form only (``blobs/sha256`` paths, which
every ``docker load`` since 1.10 accepts, since it just follows the paths);
lamina does not write legacy layer directories, whose v1 ids would have to
be invented.
"""

from __future__ import annotations

from types import MappingProxyType

from lamina._frozen import Frozen
from lamina._ids import Digest
from lamina.errors import InvalidArchiveError, InvalidArgumentError
from lamina.oci._documents import Descriptor
from lamina.oci._json import (
    MAX_INDEX_FILE_SIZE,
    canonical_json,
    get_list,
    get_object,
    get_str,
    load_json,
    load_object,
)
from lamina.oci._layout import blob_path, safe_member_path
from lamina.oci._reference import Reference, parse_reference

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "MANIFEST_FILE",
    "REPOSITORIES_FILE",
    "DockerArchiveImage",
    "docker_archive_image",
    "docker_archive_manifest",
    "docker_repositories",
    "parse_docker_manifest",
    "parse_repositories",
]

MANIFEST_FILE = "manifest.json"
REPOSITORIES_FILE = "repositories"


class DockerArchiveImage(Frozen):
    """One entry of ``manifest.json``: member paths of the config and layers, and names."""

    __slots__ = ("config", "layer_sources", "layers", "parent", "repo_tags")
    __match_args__ = _fields = ("config", "layers", "repo_tags", "parent", "layer_sources")

    config: str
    layers: tuple[str, ...]
    repo_tags: tuple[Reference, ...]
    parent: str | None
    layer_sources: Mapping[Digest, Descriptor]

    def __init__(
        self,
        config: str,
        layers: Iterable[str],
        repo_tags: Iterable[Reference] = (),
        parent: str | None = None,
        layer_sources: Mapping[str, Descriptor] | None = None,
    ) -> None:
        object.__setattr__(self, "config", safe_member_path(config))
        object.__setattr__(self, "layers", tuple(safe_member_path(p) for p in layers))
        object.__setattr__(self, "repo_tags", tuple(repo_tags))
        object.__setattr__(self, "parent", parent)
        sources = {Digest(k): v for k, v in (layer_sources or {}).items()}
        object.__setattr__(self, "layer_sources", MappingProxyType(sources))

    def __hash__(self) -> int:
        return hash((self.config, self.layers, self.repo_tags, self.parent))

    def __reduce__(self) -> tuple[type[DockerArchiveImage], tuple[object, ...]]:
        return (
            DockerArchiveImage,
            (self.config, self.layers, self.repo_tags, self.parent, dict(self.layer_sources)),
        )

    def to_dict(self) -> dict[str, object]:
        """The ``manifest.json`` entry, names in Docker's familiar form."""
        tags = []
        for ref in self.repo_tags:
            if ref.tag is None or ref.digest is not None:
                raise InvalidArgumentError(
                    f"RepoTags holds name:tag only, not {str(ref)!r} (a digest or no tag)"
                )
            tags.append(ref.familiar)
        data: dict[str, object] = {
            "Config": self.config,
            "RepoTags": tags,
            "Layers": list(self.layers),
        }
        if self.parent is not None:
            data["Parent"] = self.parent
        if self.layer_sources:
            data["LayerSources"] = {str(k): v.to_dict() for k, v in self.layer_sources.items()}
        return data


def docker_archive_image(
    config_digest: str,
    layer_digests: Iterable[str],
    repo_tags: Iterable[Reference] = (),
    layer_sources: Mapping[str, Descriptor] | None = None,
) -> DockerArchiveImage:
    """The entry Docker ≥ 25 writes: config and layers as ``blobs/<alg>/<hex>`` members.

    ``layer_digests`` are the digests of the layer blobs as written into the
    archive (Docker writes uncompressed layers, whose digest is the diff ID).
    """
    return DockerArchiveImage(
        blob_path(config_digest),
        [blob_path(d) for d in layer_digests],
        repo_tags,
        None,
        layer_sources,
    )


def _entry(item: object, position: int) -> DockerArchiveImage:
    what = f"{MANIFEST_FILE}[{position}]"
    if not isinstance(item, dict):
        raise InvalidArchiveError(f"{what} is not an object")
    config = get_str(item, "Config", what, required=True)
    layers = get_list(item, "Layers", what, required=True)
    assert config is not None and layers is not None
    if not all(isinstance(layer, str) for layer in layers):
        raise InvalidArchiveError(f"{what}: Layers must be strings")
    tags = []
    for text in get_list(item, "RepoTags", what) or []:
        if not isinstance(text, str):
            raise InvalidArchiveError(f"{what}: RepoTags must be strings")
        try:
            tags.append(parse_reference(text))
        except InvalidArgumentError as exc:
            raise InvalidArchiveError(f"{what}: bad RepoTag: {exc}") from None
    sources: dict[str, Descriptor] = {}
    for key, value in (get_object(item, "LayerSources", what) or {}).items():
        if not isinstance(value, dict):
            raise InvalidArchiveError(f"{what}: LayerSources[{key!r}] is not an object")
        try:
            sources[str(Digest(key))] = Descriptor.from_dict(value, f"{what} LayerSources")
        except InvalidArgumentError as exc:
            raise InvalidArchiveError(f"{what}: LayerSources key: {exc}") from None
    # paths are made safe (or refused with UnsafeArchiveError) by the constructor
    return DockerArchiveImage(
        config,
        [str(layer) for layer in layers],
        tags,
        get_str(item, "Parent", what),
        sources,
    )


def parse_docker_manifest(data: bytes) -> list[DockerArchiveImage]:
    """Validate a ``manifest.json``; every member path is checked (UnsafeArchiveError)."""
    document = load_json(data, MANIFEST_FILE, MAX_INDEX_FILE_SIZE)
    if not isinstance(document, list):
        raise InvalidArchiveError(f"{MANIFEST_FILE} is not a JSON array")
    return [_entry(item, position) for position, item in enumerate(document)]


def docker_archive_manifest(images: Iterable[DockerArchiveImage]) -> bytes:
    """The bytes of a ``manifest.json`` listing ``images``."""
    return canonical_json([image.to_dict() for image in images])


def parse_repositories(data: bytes) -> dict[str, dict[str, str]]:
    """Validate a legacy ``repositories`` file: ``{name: {tag: layer id}}``."""
    document = load_object(data, REPOSITORIES_FILE, MAX_INDEX_FILE_SIZE)
    result: dict[str, dict[str, str]] = {}
    for name, tags in document.items():
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise InvalidArchiveError(f"{REPOSITORIES_FILE}: {name!r} must map tags to ids")
        result[name] = {str(k): str(v) for k, v in tags.items()}
    return result


def docker_repositories(images: Iterable[tuple[Iterable[Reference], str]]) -> bytes:
    """A legacy ``repositories`` file: each tagged name → its image's top layer id (hex)."""
    result: dict[str, dict[str, str]] = {}
    for refs, top_layer in images:
        for ref in refs:
            if ref.tag is None:
                continue
            result.setdefault(ref.familiar_name, {})[ref.tag] = top_layer
    return canonical_json(result)
