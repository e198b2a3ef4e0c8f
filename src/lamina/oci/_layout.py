"""The OCI image layout (``image-layout.md``) as data, and the member-path rule.

A layout is a directory, or a tar of one (an "OCI archive")::

    oci-layout            {"imageLayoutVersion": "1.0.0"}
    index.json            an image index: the entry points, one per image and name
    blobs/
      sha256/<hex>        every blob (manifests, configs, layers), named by its digest
      sha512/<hex>

Docker ≥ 25's ``docker save`` writes this same layout and adds its own
``manifest.json`` beside it (:mod:`lamina.oci._docker_archive`); readers
must tolerate such unknown files, and do.

Names
    The spec's ``org.opencontainers.image.ref.name`` annotation is, by
    containerd's and Docker's convention, only the *tag* ("12"), with the full
    name in ``io.containerd.image.name`` ("docker.io/library/debian:12").
    Reading follows DESIGN.md: ``io.containerd.image.name`` if present, else
    ``ref.name`` read as a reference, so a bare ``full`` names
    ``docker.io/library/full:latest`` (skopeo's and umoci's layouts carry a
    ``ref.name`` alone).  A name that does not parse gives no name rather
    than refusing the whole layout; the image still loads, untagged.
    Writing puts both annotations on one index entry per name, as Docker
    does, and an unnamed image gets one entry without annotations.

Member paths
    Paths that come from inside an archive (``manifest.json`` entries, blob
    names) go through :func:`safe_member_path` before anything uses them: an
    absolute path, a ``..`` component, a backslash or a NUL byte is
    :class:`lamina.errors.UnsafeArchiveError`.  ``..`` is refused even where it
    would stay inside (``a/../b``): no honest writer produces it, and a rule
    without exceptions has no exceptions to get wrong.  ``.`` components and
    repeated slashes are folded, so ``./blobs//sha256/x`` and
    ``blobs/sha256/x`` are the same member (tar writers differ in this).
"""

from __future__ import annotations

from lamina._ids import ALGORITHMS, Digest
from lamina.errors import InvalidArchiveError, InvalidArgumentError, UnsafeArchiveError
from lamina.oci import _media
from lamina.oci._documents import Descriptor, Index
from lamina.oci._json import MAX_INDEX_FILE_SIZE, canonical_json, get_str, load_object
from lamina.oci._reference import Reference, parse_reference

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "BLOBS_DIR",
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "blob_path",
    "digest_from_blob_path",
    "image_name",
    "layout_images",
    "oci_index",
    "oci_layout_file",
    "parse_oci_index",
    "parse_oci_layout",
    "safe_member_path",
]

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
LAYOUT_VERSION = "1.0.0"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


def safe_member_path(name: str) -> str:
    """``name`` as a clean relative archive path, or :class:`UnsafeArchiveError`."""
    if not isinstance(name, str) or not name:
        raise UnsafeArchiveError(f"empty or non-string member path {name!r}")
    if "\0" in name or "\\" in name:
        raise UnsafeArchiveError(f"member path {name!r} has a NUL byte or a backslash")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"member path {name!r} is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member path {name!r} has a '..' component")
    if not parts:
        raise UnsafeArchiveError(f"member path {name!r} names the archive root")
    return "/".join(parts)


def blob_path(digest: str) -> str:
    """``blobs/<algorithm>/<hex>``: where a layout keeps the blob ``digest``."""
    checked = Digest(digest)
    return f"{BLOBS_DIR}/{checked.algorithm}/{checked.encoded}"


def digest_from_blob_path(path: str) -> Digest | None:
    """The digest a member path names if it is ``blobs/<alg>/<hex>``, else ``None``.

    ``path`` is first made safe (:func:`safe_member_path`), so an unsafe name
    raises rather than reading as "not a blob".
    """
    parts = safe_member_path(path).split("/")
    if len(parts) != 3 or parts[0] != BLOBS_DIR or parts[1] not in ALGORITHMS:
        return None
    try:
        return Digest.from_hex(parts[2], parts[1])
    except InvalidArgumentError:
        return None


def parse_oci_layout(data: bytes) -> str:
    """Validate an ``oci-layout`` file; return its version (1.x only)."""
    document = load_object(data, LAYOUT_FILE)
    version = get_str(document, "imageLayoutVersion", LAYOUT_FILE, required=True)
    assert version is not None
    if version.split(".")[0] != "1":
        raise InvalidArchiveError(f"unsupported OCI image layout version {version!r}")
    return version


def oci_layout_file() -> bytes:
    """The bytes of an ``oci-layout`` file."""
    return canonical_json({"imageLayoutVersion": LAYOUT_VERSION})


def parse_oci_index(data: bytes) -> Index:
    """Validate a layout's ``index.json`` (an image index)."""
    return Index.parse(data, INDEX_FILE, limit=MAX_INDEX_FILE_SIZE)


def image_name(annotations: Mapping[str, str]) -> Reference | None:
    """The name an index entry gives its image (see "Names" above), or ``None``."""
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        text = annotations.get(key)
        if text:
            try:
                return parse_reference(text)
            except InvalidArgumentError:
                continue
    return None


def layout_images(index: Index) -> list[tuple[Descriptor, list[Reference]]]:
    """The index's entries grouped by manifest digest, each with its names.

    Entries for one digest are one image with several names (one entry per
    name is how Docker and containerd write a multi-tag save); the order is
    the index's, by first appearance; names are deduplicated.  Entries that
    are indexes (multi-platform images) are returned like manifests: the
    caller chooses a platform.  Entries of other media types (artifacts,
    signatures) are skipped, as the layout spec lets a reader do.
    """
    grouped: dict[Digest, tuple[Descriptor, list[Reference]]] = {}
    for entry in index.manifests:
        if not (_media.is_manifest(entry.media_type) or _media.is_index(entry.media_type)):
            continue
        descriptor, names = grouped.setdefault(entry.digest, (entry, []))
        if descriptor.media_type != entry.media_type or descriptor.size != entry.size:
            raise InvalidArchiveError(
                f"{INDEX_FILE}: entries for {entry.digest} disagree on media type or size"
            )
        name = image_name(entry.annotations)
        if name is not None and name not in names:
            names.append(name)
    return list(grouped.values())


def oci_index(images: Iterable[tuple[Descriptor, Iterable[Reference]]]) -> bytes:
    """``index.json`` bytes for a save: one entry per (image, name).

    Each descriptor is the image's manifest (or index) descriptor; its own
    annotations are replaced by the two name annotations.  An image with no
    names gets one entry without them.
    """
    entries = []
    for descriptor, names in images:
        refs = list(names)
        if not refs:
            entries.append(descriptor.with_annotations({}))
        for ref in refs:
            annotations = {ANNOTATION_IMAGE_NAME: str(ref)}
            if ref.tag is not None:
                annotations[ANNOTATION_REF_NAME] = ref.tag
            entries.append(descriptor.with_annotations(annotations))
    return Index(entries).to_bytes()
