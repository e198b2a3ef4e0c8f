"""commit: a container's changes become a new layer and a new image.

The driver's diff (an uncompressed tar) is compressed once into a blob
temp file (gzip through ISA-L, zstd through ``zstandard``, or kept as is)
while its sha256 (the new diff ID) is taken in the same pass; the blob is
published and kept (DESIGN.md: "commit keeps the compressed blob it made"),
and the layer is stored from it like any loaded layer, which records its
tar-split.  The new config is the image's with one more ``diff_id``, a
``history`` entry and ``created``; the manifest is an OCI one whose layer
descriptors are the image's own where their blobs are kept.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import cast

from lamina import oci
from lamina._ids import Digest
from lamina.errors import InvalidArgumentError
from lamina.store._layers import LayerSource, child_chain, store_layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lamina.store._db import Row
    from lamina.store._store import Store
    from lamina.store._values import Image

__all__ = ["commit"]

_COMPRESSIONS = ("gzip", "zstd", "none")


def _created() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def commit(
    store: Store,
    row: Row,
    ref: str | None,
    compression: str,
    message: str | None,
    author: str | None,
) -> Image:
    if compression not in _COMPRESSIONS:
        raise InvalidArgumentError(f"compression must be one of {', '.join(_COMPRESSIONS)}")
    name = None
    if ref is not None:
        name = store._normalise(ref)
        if name is None or "@" in name:
            raise InvalidArgumentError(f"{ref!r} is not a name:tag reference")
    image_row = store._db.image_row(str(row["image_id"]))
    assert image_row is not None
    driver, layer_id, parent_id = store._container_driver(row)
    parent_chain = None if row["parent"] is None else str(row["parent"])
    windows = image_row["os"] == "windows"
    intent = store._db.begin_intent("load", f"commit {row['id']}")
    try:
        temp = store._blobs.temp()
        try:
            hasher = hashlib.sha256()
            with driver.diff(layer_id, parent_id) as tar:
                sink = _compressor(temp, compression)
                while chunk := tar.read(1 << 20):
                    hasher.update(chunk)
                    sink.write(chunk)
                sink.close()
            digest, size = store._blobs.publish(temp)
        finally:
            temp.discard()
        diff_id = Digest(f"sha256:{hasher.hexdigest()}")
        media = oci.layer_media_type(compression)
        chain = child_chain(parent_chain, diff_id)
        store_layer(
            store,
            parent=parent_chain,
            diff_id=diff_id,
            windows=windows,
            lease=intent,
            source=LayerSource(lambda: store._blobs.open(digest), digest, size, media, kept=True),
        )
        if store._db.blob(digest) is None:  # the layer existed already, from another blob
            store._db.add_blob(digest, size, media)
        base = oci.ImageConfig.parse(bytes(image_row["config"]))
        created = _created()
        config = base.with_layer(
            diff_id,
            created=created,
            created_by="lamina commit",
            author=author,
            comment=message,
        )
        config_bytes = config.to_bytes()
        chains = [*store._db.image_layers(str(image_row["id"])), str(chain)]
        descriptors = _descriptors(store, image_row, chains[:-1])
        descriptors.append(oci.Descriptor(media, digest, size))
        config_desc = oci.Descriptor(oci.OCI_CONFIG, oci.digest_of(config_bytes), len(config_bytes))
        manifest = oci.Manifest(config_desc, descriptors).to_bytes()
        image_id = store._add_image(config_bytes, manifest, chains, [name] if name else [], intent)
    except BaseException:
        from lamina.store._transfer import _abandon

        _abandon(store, intent)
        raise
    return store.image(image_id)


def _descriptors(store: Store, image_row: Row, chains: list[str]) -> list[oci.Descriptor]:
    """The base image's layer descriptors, in OCI media types (same bytes)."""
    if image_row["manifest"] is not None:
        manifest = oci.Manifest.parse(bytes(image_row["manifest"]))
        if all(store._blobs.exists(d.digest) for d in manifest.layers):
            return [
                oci.Descriptor(
                    oci.layer_media_type(oci.layer_compression(d.media_type) or "none"),
                    d.digest,
                    d.size,
                )
                for d in manifest.layers
            ]
    result = []
    for chain in chains:
        lrow = store._db.layer(chain)
        assert lrow is not None
        if lrow["digest"] is not None and store._blobs.exists(lrow["digest"]):
            kind = oci.layer_compression(lrow["media_type"] or "") or _sniff(store, lrow["digest"])
            result.append(
                oci.Descriptor(
                    oci.layer_media_type(kind), lrow["digest"], int(lrow["compressed_size"])
                )
            )
        else:
            result.append(oci.Descriptor(oci.OCI_LAYER, lrow["diff_id"], int(lrow["tar_size"])))
    return result


def _sniff(store: Store, digest: str) -> str:
    from lamina import archive

    with store._blobs.open(digest) as f:
        kind = archive.detect_compression(f.read(16)).value
    return kind if kind in ("gzip", "zstd") else "none"


class _Plain:
    def __init__(self, out: object) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data)  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        return None


def _compressor(out: object, compression: str) -> _Plain:
    if compression == "gzip":
        from isal import igzip

        return cast("_Plain", igzip.IGzipFile(fileobj=out, mode="wb", mtime=0))  # type: ignore[no-untyped-call]
    if compression == "zstd":
        import zstandard

        return cast("_Plain", zstandard.ZstdCompressor().stream_writer(out, closefd=False))  # type: ignore[arg-type]
    return _Plain(out)
