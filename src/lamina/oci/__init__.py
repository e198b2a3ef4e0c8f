"""lamina.oci: images as data (pure: no disk but what it is handed, no HTTP).

Everything the image store and the registry client agree on about what an
image *is*, with no opinion on where it lives:

* digests, diff IDs and chain IDs (:class:`Digest`, :func:`chain_id`), and
  streams that verify size and digest as they pass (:class:`HashingReader`,
  :class:`HashingWriter`; a mismatch is :class:`lamina.errors.IntegrityError`);
* image references with Docker's normalisation (:func:`parse_reference`);
* media types (OCI and Docker schema 2), platforms and platform selection;
* descriptors, manifests, indexes and image configs (:class:`Manifest` …):
  strict parsing of received bytes, canonical bytes for written ones;
* the OCI image layout and the ``docker save`` archive as data: their index
  files parsed and produced, and the member-path rule
  (:func:`safe_member_path`) that keeps an archive's paths inside it.

Input errors: bad documents from an archive or a registry are
:class:`lamina.errors.InvalidArchiveError` (unsafe paths
:class:`lamina.errors.UnsafeArchiveError`, documents over their size limit
:class:`lamina.errors.ArchiveTooLargeError`); bad arguments in code, such as
a reference or platform string, are :class:`lamina.errors.InvalidArgumentError`.

Values are immutable :class:`lamina._frozen.Frozen` classes (equality, hash,
pickling), except :class:`Digest`, a validated ``str`` so that it goes into
JSON, SQLite and paths unchanged.  The digest code lives one floor down, in
:mod:`lamina._ids`, so that ``_fs`` and ``archive`` can verify content without
importing image documents; it is re-exported here.

Names load on first use (PEP 562), like every lamina package face.
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lamina._ids import (
        ALGORITHMS,
        Digest,
        HashingReader,
        HashingWriter,
        chain_id,
        chain_ids,
        diff_id,
        digest_of,
        digest_stream,
    )
    from lamina.oci._docker_archive import (
        MANIFEST_FILE,
        REPOSITORIES_FILE,
        DockerArchiveImage,
        docker_archive_image,
        docker_archive_manifest,
        docker_repositories,
        parse_docker_manifest,
        parse_repositories,
    )
    from lamina.oci._documents import (
        Descriptor,
        History,
        ImageConfig,
        Index,
        Manifest,
        parse_manifest_or_index,
    )
    from lamina.oci._json import (
        MAX_DEPTH,
        MAX_DOCUMENT_SIZE,
        MAX_INDEX_FILE_SIZE,
        canonical_json,
    )
    from lamina.oci._layout import (
        ANNOTATION_IMAGE_NAME,
        ANNOTATION_REF_NAME,
        BLOBS_DIR,
        INDEX_FILE,
        LAYOUT_FILE,
        LAYOUT_VERSION,
        blob_path,
        digest_from_blob_path,
        image_name,
        layout_images,
        oci_index,
        oci_layout_file,
        parse_oci_index,
        parse_oci_layout,
        safe_member_path,
    )
    from lamina.oci._media import (
        CONFIG_TYPES,
        DOCKER_CONFIG,
        DOCKER_FOREIGN_LAYER,
        DOCKER_FOREIGN_LAYER_TAR,
        DOCKER_LAYER,
        DOCKER_LAYER_TAR,
        DOCKER_LAYER_ZSTD,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
        INDEX_TYPES,
        LAYER_TYPES,
        MANIFEST_TYPES,
        OCI_CONFIG,
        OCI_EMPTY,
        OCI_INDEX,
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        OCI_LAYER_ZSTD,
        OCI_MANIFEST,
        is_config,
        is_index,
        is_layer,
        is_manifest,
        is_nondistributable,
        layer_compression,
        layer_media_type,
    )
    from lamina.oci._platform import (
        Platform,
        host_platform,
        parse_platform,
        select_platform,
    )
    from lamina.oci._reference import (
        DEFAULT_DOMAIN,
        DEFAULT_TAG,
        Reference,
        parse_reference,
    )

__all__ = [
    "ALGORITHMS",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "BLOBS_DIR",
    "CONFIG_TYPES",
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_FOREIGN_LAYER_TAR",
    "DOCKER_LAYER",
    "DOCKER_LAYER_TAR",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_FILE",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MANIFEST_FILE",
    "MANIFEST_TYPES",
    "MAX_DEPTH",
    "MAX_DOCUMENT_SIZE",
    "MAX_INDEX_FILE_SIZE",
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
    "REPOSITORIES_FILE",
    "Descriptor",
    "Digest",
    "DockerArchiveImage",
    "HashingReader",
    "HashingWriter",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "Reference",
    "blob_path",
    "canonical_json",
    "chain_id",
    "chain_ids",
    "diff_id",
    "digest_from_blob_path",
    "digest_of",
    "digest_stream",
    "docker_archive_image",
    "docker_archive_manifest",
    "docker_repositories",
    "host_platform",
    "image_name",
    "is_config",
    "is_index",
    "is_layer",
    "is_manifest",
    "is_nondistributable",
    "layer_compression",
    "layer_media_type",
    "layout_images",
    "oci_index",
    "oci_layout_file",
    "parse_docker_manifest",
    "parse_manifest_or_index",
    "parse_oci_index",
    "parse_oci_layout",
    "parse_platform",
    "parse_reference",
    "parse_repositories",
    "safe_member_path",
    "select_platform",
]

# public name -> the module that defines it
_LAZY = {
    "ALGORITHMS": "lamina._ids",
    "Digest": "lamina._ids",
    "HashingReader": "lamina._ids",
    "HashingWriter": "lamina._ids",
    "chain_id": "lamina._ids",
    "chain_ids": "lamina._ids",
    "diff_id": "lamina._ids",
    "digest_of": "lamina._ids",
    "digest_stream": "lamina._ids",
    "MANIFEST_FILE": "lamina.oci._docker_archive",
    "REPOSITORIES_FILE": "lamina.oci._docker_archive",
    "DockerArchiveImage": "lamina.oci._docker_archive",
    "docker_archive_image": "lamina.oci._docker_archive",
    "docker_archive_manifest": "lamina.oci._docker_archive",
    "docker_repositories": "lamina.oci._docker_archive",
    "parse_docker_manifest": "lamina.oci._docker_archive",
    "parse_repositories": "lamina.oci._docker_archive",
    "Descriptor": "lamina.oci._documents",
    "History": "lamina.oci._documents",
    "ImageConfig": "lamina.oci._documents",
    "Index": "lamina.oci._documents",
    "Manifest": "lamina.oci._documents",
    "parse_manifest_or_index": "lamina.oci._documents",
    "MAX_DEPTH": "lamina.oci._json",
    "MAX_DOCUMENT_SIZE": "lamina.oci._json",
    "MAX_INDEX_FILE_SIZE": "lamina.oci._json",
    "canonical_json": "lamina.oci._json",
    "ANNOTATION_IMAGE_NAME": "lamina.oci._layout",
    "ANNOTATION_REF_NAME": "lamina.oci._layout",
    "BLOBS_DIR": "lamina.oci._layout",
    "INDEX_FILE": "lamina.oci._layout",
    "LAYOUT_FILE": "lamina.oci._layout",
    "LAYOUT_VERSION": "lamina.oci._layout",
    "blob_path": "lamina.oci._layout",
    "digest_from_blob_path": "lamina.oci._layout",
    "image_name": "lamina.oci._layout",
    "layout_images": "lamina.oci._layout",
    "oci_index": "lamina.oci._layout",
    "oci_layout_file": "lamina.oci._layout",
    "parse_oci_index": "lamina.oci._layout",
    "parse_oci_layout": "lamina.oci._layout",
    "safe_member_path": "lamina.oci._layout",
    "CONFIG_TYPES": "lamina.oci._media",
    "DOCKER_CONFIG": "lamina.oci._media",
    "DOCKER_FOREIGN_LAYER": "lamina.oci._media",
    "DOCKER_FOREIGN_LAYER_TAR": "lamina.oci._media",
    "DOCKER_LAYER": "lamina.oci._media",
    "DOCKER_LAYER_TAR": "lamina.oci._media",
    "DOCKER_LAYER_ZSTD": "lamina.oci._media",
    "DOCKER_MANIFEST": "lamina.oci._media",
    "DOCKER_MANIFEST_LIST": "lamina.oci._media",
    "INDEX_TYPES": "lamina.oci._media",
    "LAYER_TYPES": "lamina.oci._media",
    "MANIFEST_TYPES": "lamina.oci._media",
    "OCI_CONFIG": "lamina.oci._media",
    "OCI_EMPTY": "lamina.oci._media",
    "OCI_INDEX": "lamina.oci._media",
    "OCI_LAYER": "lamina.oci._media",
    "OCI_LAYER_GZIP": "lamina.oci._media",
    "OCI_LAYER_NONDISTRIBUTABLE": "lamina.oci._media",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP": "lamina.oci._media",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD": "lamina.oci._media",
    "OCI_LAYER_ZSTD": "lamina.oci._media",
    "OCI_MANIFEST": "lamina.oci._media",
    "is_config": "lamina.oci._media",
    "is_index": "lamina.oci._media",
    "is_layer": "lamina.oci._media",
    "is_manifest": "lamina.oci._media",
    "is_nondistributable": "lamina.oci._media",
    "layer_compression": "lamina.oci._media",
    "layer_media_type": "lamina.oci._media",
    "Platform": "lamina.oci._platform",
    "host_platform": "lamina.oci._platform",
    "parse_platform": "lamina.oci._platform",
    "select_platform": "lamina.oci._platform",
    "DEFAULT_DOMAIN": "lamina.oci._reference",
    "DEFAULT_TAG": "lamina.oci._reference",
    "Reference": "lamina.oci._reference",
    "parse_reference": "lamina.oci._reference",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
