"""Media types: what a descriptor says its blob is (OCI image spec and Docker schema 2).

Two vocabularies name the same four things, and images in the wild mix them
(a Docker manifest list pointing at OCI manifests is common enough), so each
kind has a set holding both names and code asks "is this a manifest?", never
"is this the OCI manifest type?".  The compatibility matrix is the spec's
``media-types.md``:

===========================  ===================================================
kind                         types
===========================  ===================================================
index (multi-platform)       OCI image index, Docker manifest list v2
manifest (one image)         OCI image manifest, Docker image manifest v2
config                       OCI image config, Docker container image v1
layer                        OCI ``tar``, ``tar+gzip``, ``tar+zstd`` (and their
                             deprecated non-distributable forms); Docker
                             ``rootfs.diff.tar[.gzip|.zstd]`` and the foreign
                             ``rootfs.foreign.diff.tar[.gzip]`` (containerd's
                             names for the forms Docker never registered)
===========================  ===================================================

Docker schema 1 manifests (signed, long deprecated, no config blob) are not
supported: :func:`is_manifest` says no and parsers refuse them.

A media type is a claim: tools have written plain tars under gzip names,
so a reader sniffs the bytes (:func:`lamina.archive.detect_compression`) and
uses :func:`layer_compression` only as what the descriptor *claims*.
"""

from __future__ import annotations

__all__ = [
    "CONFIG_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_FOREIGN_LAYER_TAR",
    "DOCKER_LAYER",
    "DOCKER_LAYER_TAR",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "is_config",
    "is_index",
    "is_layer",
    "is_manifest",
    "is_nondistributable",
    "layer_compression",
    "layer_media_type",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# layer media type -> the compression it declares
_LAYER_COMPRESSION = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDISTRIBUTABLE: "none",
    OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    DOCKER_LAYER: "gzip",
    DOCKER_LAYER_TAR: "none",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER: "gzip",
    DOCKER_FOREIGN_LAYER_TAR: "none",
}
LAYER_TYPES = frozenset(_LAYER_COMPRESSION)
_NONDISTRIBUTABLE = frozenset(
    {
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        DOCKER_FOREIGN_LAYER,
        DOCKER_FOREIGN_LAYER_TAR,
    }
)

# (compression, docker?) -> the media type to write
_LAYER_FOR = {
    ("none", False): OCI_LAYER,
    ("gzip", False): OCI_LAYER_GZIP,
    ("zstd", False): OCI_LAYER_ZSTD,
    ("none", True): DOCKER_LAYER_TAR,
    ("gzip", True): DOCKER_LAYER,
    ("zstd", True): DOCKER_LAYER_ZSTD,
}


def _base(media_type: str) -> str:
    """The type without parameters (``; charset=…``), as HTTP may send it."""
    return media_type.partition(";")[0].strip()


def is_index(media_type: str) -> bool:
    """An OCI image index or a Docker manifest list."""
    return _base(media_type) in INDEX_TYPES


def is_manifest(media_type: str) -> bool:
    """An OCI image manifest or a Docker schema 2 manifest (one platform)."""
    return _base(media_type) in MANIFEST_TYPES


def is_config(media_type: str) -> bool:
    """An OCI image config or a Docker container image config."""
    return _base(media_type) in CONFIG_TYPES


def is_layer(media_type: str) -> bool:
    """A layer type lamina can apply (any of :data:`LAYER_TYPES`)."""
    return _base(media_type) in LAYER_TYPES


def is_nondistributable(media_type: str) -> bool:
    """A foreign layer (Windows base layers): registries may refuse to store it."""
    return _base(media_type) in _NONDISTRIBUTABLE


def layer_compression(media_type: str) -> str | None:
    """``"none"``, ``"gzip"`` or ``"zstd"``: what the type declares; ``None`` if not a layer."""
    return _LAYER_COMPRESSION.get(_base(media_type))


def layer_media_type(compression: str, *, docker: bool = False) -> str:
    """The layer media type to write for ``compression`` (``"none"``, ``"gzip"``, ``"zstd"``).

    ``docker=True`` gives the Docker schema 2 family's name.  Anything else
    is :class:`lamina.errors.InvalidArgumentError`.
    """
    try:
        return _LAYER_FOR[(compression, docker)]
    except KeyError:
        from lamina.errors import InvalidArgumentError

        kind = "Docker schema 2" if docker else "OCI"
        raise InvalidArgumentError(f"no {kind} layer media type for {compression!r}") from None
