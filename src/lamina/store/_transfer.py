"""load and save: docker-archive tars, OCI archives (tar) and OCI layout directories.

Loading streams.  A tar (a path or any readable binary stream, seekable or
not) is read once, member by member, with lamina's own tar reader
(:class:`lamina.archive.RawTarReader`): one parser per untrusted stream.

* Small members (≤ 1 MiB, up to 64 MiB in all: ``manifest.json``,
  ``index.json``, configs, manifests) are kept in memory; those named
  ``blobs/<alg>/<hex>`` are verified against their name at once.
* A large member (a layer) is applied **straight from the archive** when
  the index documents have already been seen and its parent layer is
  stored: lamina's own archives put them first, so loading them is one
  pass with no copy.
* Otherwise (``docker save`` writes ``manifest.json`` after the layers) the
  member is spooled: into the blob area, verified, when the store keeps
  blobs (so the spool *is* the kept blob and costs no extra write), else
  into ``<root>/tmp`` and deleted after the load.  Nothing is ever copied
  whole before reading starts, as containers/image does for a stream.

Then each image's layers are stored in order (:func:`store_layer`: every
digest and diff ID verified) under one ``load`` intent whose leases keep a
concurrent ``gc`` off them, and the images are recorded.  On any error the
layers this load stored that nothing else needs are released again, so a
failed load adds nothing.

Member paths go through :func:`lamina.oci.safe_member_path`; symlinked and
hard-linked members are aliases resolved *inside* the archive (a target
that leaves it is :class:`UnsafeArchiveError`); nothing from an archive is
ever written to a path it names.

Saving writes ``oci-layout``, ``index.json`` (and ``manifest.json`` for a
docker-archive, which is Docker ≥ 25's form: an OCI layout plus
``manifest.json``), then every manifest and config, then the layers: kept
blobs byte for byte (digests never drift); a layer whose blob was not kept
goes as its uncompressed tar rebuilt by ``layer_diff`` (media type
``…tar``), and its manifest is rewritten to say so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tarfile
from pathlib import Path
from typing import cast

from lamina import archive, oci
from lamina._ids import Digest, digest_of
from lamina.errors import (
    IntegrityError,
    InvalidArchiveError,
    InvalidArgumentError,
    LaminaError,
    NotFoundError,
    UnsafeArchiveError,
)
from lamina.store._layers import LayerSource, child_chain, store_layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from lamina.store._store import Store
    from lamina.store._values import Image

__all__ = ["load", "save"]

_SMALL = 1 << 20
_MEMORY_BUDGET = 64 << 20
_FORMATS = ("docker-archive", "oci-archive", "oci-dir")


class _Job:
    """One layer of one image: where its blob is and what it must hash to."""

    def __init__(self, member: str, diff_id: Digest, descriptor: oci.Descriptor | None) -> None:
        self.member = member
        self.diff_id = diff_id
        self.descriptor = descriptor


class _Plan:
    """One image to add."""

    def __init__(
        self, config: bytes, manifest: bytes | None, names: list[str], jobs: list[_Job]
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.names = names
        self.jobs = jobs
        cfg = oci.ImageConfig.parse(config)
        self.windows = cfg.os == "windows"
        if len(cfg.diff_ids) != len(jobs):
            raise InvalidArchiveError(
                f"image {digest_of(config)}: {len(jobs)} layers but {len(cfg.diff_ids)} diff IDs"
            )
        self.chains: list[Digest] = []
        parent: Digest | None = None
        for job in jobs:
            parent = child_chain(parent, job.diff_id)
            self.chains.append(parent)


def _implied_digest(member: str) -> Digest | None:
    """The digest a member's name promises: ``blobs/<alg>/<hex>`` or legacy ``<hex>.json``."""
    found = oci.digest_from_blob_path(member)
    if found is not None:
        return found
    base = posixpath.basename(member)
    if member == base and base.endswith(".json") and len(base) == 69:
        with contextlib.suppress(InvalidArgumentError):
            return Digest.from_hex(base[:-5])
    return None


# -- planning: documents -> images ----------------------------------------------------


class _Docs:
    """Access to small members by path (memory), following aliases."""

    def __init__(self, mem: dict[str, bytes], aliases: dict[str, str]) -> None:
        self.mem = mem
        self.aliases = aliases

    def resolve(self, member: str) -> str:
        for _ in range(16):
            target = self.aliases.get(member)
            if target is None:
                return member
            member = target
        raise InvalidArchiveError(f"archive member {member!r}: too many links")

    def get(self, member: str) -> bytes | None:
        return self.mem.get(self.resolve(member))


def _blob(docs: _Docs, descriptor: oci.Descriptor, what: str) -> bytes | None:
    data = docs.get(oci.blob_path(descriptor.digest))
    if data is None:
        return None
    if (
        len(data) != descriptor.size
        or digest_of(data, descriptor.digest.algorithm) != descriptor.digest
    ):
        raise IntegrityError(f"{what} {descriptor.digest} does not match its descriptor")
    return data


def _oci_plans(docs: _Docs, *, final: bool) -> list[_Plan] | None:
    layout = docs.get(oci.LAYOUT_FILE)
    index_bytes = docs.get(oci.INDEX_FILE)
    if layout is None or index_bytes is None:
        return None
    oci.parse_oci_layout(layout)
    plans: list[_Plan] = []
    for descriptor, refs in oci.layout_images(oci.parse_oci_index(index_bytes)):
        manifest_desc = descriptor
        if oci.is_index(descriptor.media_type):
            data = _blob(docs, descriptor, "image index")
            if data is None:
                return _missing(final, descriptor.digest)
            nested = oci.Index.parse(data)
            # a platform-sparse export holds some of the manifests: choose among those
            present = [
                p if docs.get(oci.blob_path(m.digest)) is not None else None
                for p, m in zip(nested.platforms(), nested.manifests, strict=True)
            ]
            pick = oci.select_platform(present, oci.host_platform())
            if pick is None:
                raise NotFoundError(f"image index {descriptor.digest} has no image for this host")
            manifest_desc = nested.manifests[pick]
        manifest_bytes = _blob(docs, manifest_desc, "manifest")
        if manifest_bytes is None:
            return _missing(final, manifest_desc.digest)
        manifest = oci.Manifest.parse(manifest_bytes)
        config_bytes = _blob(docs, manifest.config, "config")
        if config_bytes is None:
            return _missing(final, manifest.config.digest)
        config = oci.ImageConfig.parse(config_bytes)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArchiveError(
                f"manifest {manifest_desc.digest}: layers and diff IDs differ in number"
            )
        jobs = [
            _Job(oci.blob_path(layer.digest), diff, layer)
            for layer, diff in zip(manifest.layers, config.diff_ids, strict=True)
        ]
        for layer in manifest.layers:
            if not oci.is_layer(layer.media_type):
                raise InvalidArchiveError(f"unsupported layer media type {layer.media_type!r}")
        plans.append(_Plan(config_bytes, manifest_bytes, [str(r) for r in refs], jobs))
    return plans


def _missing(final: bool, digest: str) -> list[_Plan] | None:
    if final:
        raise InvalidArchiveError(f"blob {digest} is missing from the archive (truncated?)")
    return None


def _docker_plans(docs: _Docs, *, final: bool) -> list[_Plan] | None:
    data = docs.get(oci.MANIFEST_FILE)
    if data is None:
        return None
    plans = []
    for entry in oci.parse_docker_manifest(data):
        config = docs.get(entry.config)
        if config is None:
            return _missing(final, entry.config)
        implied = _implied_digest(entry.config)
        if implied is not None and digest_of(config, implied.algorithm) != implied:
            raise IntegrityError(f"config {entry.config} does not match its name")
        cfg = oci.ImageConfig.parse(config)
        if len(cfg.diff_ids) != len(entry.layers):
            raise InvalidArchiveError(f"{entry.config}: layers and diff IDs differ in number")
        jobs = []
        for member, diff in zip(entry.layers, cfg.diff_ids, strict=True):
            descriptor = entry.layer_sources.get(diff)
            jobs.append(_Job(docs.resolve(member), diff, descriptor))
        plans.append(_Plan(config, None, [str(r) for r in entry.repo_tags], jobs))
    return plans


def _plans(docs: _Docs, *, final: bool) -> list[_Plan] | None:
    plans = _oci_plans(docs, final=final)
    if plans is not None:
        # Docker >= 25 writes both: names from manifest.json's RepoTags too
        with contextlib.suppress(LaminaError):
            extra = _docker_plans(docs, final=False) or []
            by_config = {digest_of(p.config): p for p in plans}
            for p in extra:
                target = by_config.get(digest_of(p.config))
                if target is not None:
                    target.names.extend(n for n in p.names if n not in target.names)
        return plans
    plans = _docker_plans(docs, final=final)
    if plans is None and final:
        raise InvalidArchiveError(
            "not an image archive: no manifest.json, and no oci-layout with index.json"
        )
    return plans


# -- executing plans -------------------------------------------------------------------


def _execute(
    store: Store,
    plans: list[_Plan],
    source_for: Callable[[_Job], LayerSource],
    intent: int,
) -> list[Image]:
    for plan in plans:
        parent: str | None = None
        for job, chain in zip(plan.jobs, plan.chains, strict=True):
            if store._db.layer(chain) is not None:
                store._db.lease(intent, [chain])
            else:
                store_layer(
                    store,
                    parent=parent,
                    diff_id=job.diff_id,
                    source=source_for(job),
                    windows=plan.windows,
                    lease=intent,
                )
            parent = chain
    ids = []
    for position, plan in enumerate(plans):
        last = position == len(plans) - 1
        ids.append(
            store._add_image(
                plan.config,
                plan.manifest,
                [str(c) for c in plan.chains],
                plan.names,
                intent if last else None,
            )
        )
    if not plans:
        store._db.end_intent(intent)
    return [store.image(i) for i in dict.fromkeys(ids)]


def _abandon(store: Store, intent: int) -> None:
    """After a failed load: drop its leases and the layers only it needed."""
    from lamina.store._recover import _release_unreferenced

    with contextlib.suppress(Exception):
        leased = [
            str(r[0])
            for r in store._db.query("SELECT chain_id FROM leases WHERE intent_id = ?", (intent,))
        ]
        store._db.end_intent(intent)
        if leased:
            _release_unreferenced(store)


def load(store: Store, source: str | os.PathLike[str] | BinaryIO) -> list[Image]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            return _load_dir(store, path)
        try:
            stream = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InvalidArgumentError(f"{path}: not a file") from None
        with stream:
            return _load_tar(store, stream)
    if not hasattr(source, "read"):
        raise InvalidArgumentError(f"load needs a path or a binary stream, not {source!r}")
    return _load_tar(store, source)


def _open_nofollow(path: Path) -> BinaryIO:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArchiveError(f"{path.name}: missing from the layout") from None
    except OSError as exc:
        raise UnsafeArchiveError(f"{path}: not a regular file ({exc.strerror})") from None
    return os.fdopen(fd, "rb")


def _load_dir(store: Store, root: Path) -> list[Image]:
    """An OCI layout directory: documents read as needed, layers straight from their files."""
    mem: dict[str, bytes] = {}

    class _LazyMem(dict[str, bytes]):
        def get(self, key: str, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
            if key not in mem:
                path = root / oci.safe_member_path(key)
                if not path.exists() and not path.is_symlink():
                    return default
                with _open_nofollow(path) as f:
                    data = f.read(oci.MAX_DOCUMENT_SIZE + 1)
                mem[key] = data
            return mem[key]

    docs = _Docs(_LazyMem(), {})
    if docs.get(oci.LAYOUT_FILE) is None:
        raise InvalidArchiveError(f"{root}: not an OCI image layout (no {oci.LAYOUT_FILE})")
    plans = _plans(docs, final=True)
    assert plans is not None

    def source_for(job: _Job) -> LayerSource:
        path = root / oci.safe_member_path(job.member)
        d = job.descriptor
        return LayerSource(
            lambda: _open_nofollow(path),
            None if d is None else d.digest,
            None if d is None else d.size,
            None if d is None else d.media_type,
        )

    intent = store._db.begin_intent("load", str(root))
    try:
        return _execute(store, plans, source_for, intent)
    except BaseException:
        _abandon(store, intent)
        raise


class _MemberStream(io.RawIOBase):
    """The body of the current tar member, as a stream (reads stop at its end)."""

    def __init__(self, reader: archive.RawTarReader) -> None:
        super().__init__()
        self._reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._reader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:  # the reader stays the caller's
        super().close()


def _member_name(hdr: archive.RawHeader) -> str | None:
    raw = hdr.name
    stripped = raw.strip("/").removeprefix("./") if raw not in (".", "./") else ""
    if not stripped or stripped == ".":
        return None
    return oci.safe_member_path(raw.rstrip("/"))


def _link_target(name: str, hdr: archive.RawHeader) -> str:
    if hdr.typeflag == "1":  # hard link: the target is an archive path
        return oci.safe_member_path(hdr.linkname)
    target = hdr.linkname
    if target.startswith("/"):
        raise UnsafeArchiveError(f"archive member {name!r} links to an absolute path")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if joined == ".." or joined.startswith("../") or joined == ".":
        raise UnsafeArchiveError(f"archive member {name!r} links outside the archive")
    return oci.safe_member_path(joined)


def _load_tar(store: Store, stream: BinaryIO) -> list[Image]:
    """Load a tar read once from ``stream`` (``docker save | gzip`` and zstd are accepted)."""
    with archive.decompress(stream) as plain:
        return _load_plain_tar(store, plain)


def _load_plain_tar(store: Store, stream: BinaryIO) -> list[Image]:
    reader = archive.RawTarReader(stream)
    mem: dict[str, bytes] = {}
    aliases: dict[str, str] = {}
    docs = _Docs(mem, aliases)
    spooled: dict[
        str, tuple[str, Digest, int, Path | None]
    ] = {}  # member -> (kind, digest, size, tmp)
    budget = _MEMORY_BUDGET
    intent = store._db.begin_intent("load", "stream")
    spooled_blobs: list[Digest] = []
    tmp_files: list[Path] = []
    early: list[_Plan] | None = None
    try:
        seen_any = False
        while (hdr := reader.next()) is not None:
            seen_any = True
            name = _member_name(hdr)
            if hdr.typeflag in ("1", "2"):
                if name is not None:
                    aliases[name] = _link_target(name, hdr)
                continue
            if hdr.typeflag == "5" or name is None:
                reader.skip()
                continue
            if hdr.typeflag not in ("0", "7"):
                if hdr.typeflag in ("x", "g"):
                    continue
                raise UnsafeArchiveError(
                    f"archive member {name!r} is not a regular file (type {hdr.typeflag!r})"
                )
            size = hdr.data_size
            if size <= _SMALL and size <= budget:
                data = reader.read(size) if size else b""
                if len(data) != size:
                    raise InvalidArchiveError(f"archive member {name!r} is truncated")
                implied = oci.digest_from_blob_path(name)
                if implied is not None and digest_of(data, implied.algorithm) != implied:
                    raise IntegrityError(f"archive member {name} does not match its digest")
                mem[name] = data
                budget -= size
                early = None
                continue
            if early is None:
                with contextlib.suppress(LaminaError):
                    early = _plans(docs, final=False)
            if early is not None and _apply_direct(store, early, name, size, reader, intent):
                reader.skip()
                continue
            # spool: into the blob area (the kept blob) or a temporary file
            implied = oci.digest_from_blob_path(name)
            body = _MemberStream(reader)
            if store.keep_blobs:
                digest, got = store._blobs.write_stream(body, implied, size)  # type: ignore[arg-type]
                spooled_blobs.append(digest)
                spooled[name] = ("blob", digest, got, None)
            else:
                temp = store._blobs.temp(implied, size)
                tmp_files.append(temp.path)
                try:
                    while chunk := body.read(1 << 20):
                        temp.write(chunk)
                    digest = temp.verify()
                    temp._raw.flush()
                finally:
                    temp._close()
                spooled[name] = ("tmp", digest, size, temp.path)
        if not seen_any:
            raise InvalidArchiveError("not an image archive: an empty tar")
        if not reader.saw_end_marker:
            raise InvalidArchiveError(
                "truncated archive: it ends without the end-of-archive blocks"
            )
        plans = _plans(docs, final=True)
        assert plans is not None

        def source_for(job: _Job) -> LayerSource:
            member = docs.resolve(job.member)
            d = job.descriptor
            media = None if d is None else d.media_type
            if member in spooled:
                kind, digest, got, tmp = spooled[member]
                if d is not None and (digest != d.digest or got != d.size):
                    raise IntegrityError(f"layer {member} does not match its descriptor {d.digest}")
                if kind == "blob":
                    return LayerSource(
                        lambda: store._blobs.open(digest), digest, got, media, kept=True
                    )
                assert tmp is not None
                return LayerSource(lambda: open(tmp, "rb"), digest, got, media)
            if member in mem:
                data = mem[member]
                return LayerSource(
                    lambda: io.BytesIO(data),
                    None if d is None else d.digest,
                    None if d is None else d.size,
                    media,
                )
            raise InvalidArchiveError(f"layer {member!r} is missing from the archive (truncated?)")

        images = _execute(store, plans, source_for, intent)
        for digest in spooled_blobs:  # spooled but no layer's: another platform's, say
            if store._db.blob(digest) is None:
                store._blobs.remove(digest)
        return images
    except BaseException:
        _abandon(store, intent)
        for digest in spooled_blobs:
            if store._db.blob(digest) is None:
                store._blobs.remove(digest)
        raise
    finally:
        for path in tmp_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _apply_direct(
    store: Store,
    plans: list[_Plan],
    member: str,
    size: int,
    reader: archive.RawTarReader,
    intent: int,
) -> bool:
    """Store the current member straight from the archive if its place is known and ready."""
    targets = set()
    for plan in plans:
        for position, job in enumerate(plan.jobs):
            if job.member == member:
                parent = plan.chains[position - 1] if position else None
                targets.add((parent, job.diff_id, job.descriptor, plan.windows))
    if len(targets) != 1:
        return False
    parent, diff_id, descriptor, windows = targets.pop()
    if parent is not None and store._db.layer(parent) is None:
        return False
    implied = oci.digest_from_blob_path(member)
    digest = descriptor.digest if descriptor is not None else implied
    if descriptor is not None and implied is not None and descriptor.digest != implied:
        raise IntegrityError(f"layer {member} is named for another digest than {descriptor.digest}")
    if descriptor is not None and descriptor.size != size:
        raise IntegrityError(
            f"layer {member} is {size} bytes, its descriptor says {descriptor.size}"
        )
    body = _MemberStream(reader)
    source = LayerSource(
        lambda: cast("BinaryIO", body),
        digest,
        size,
        None if descriptor is None else descriptor.media_type,
    )
    store_layer(store, parent=parent, diff_id=diff_id, source=source, windows=windows, lease=intent)
    return True


# -- save ----------------------------------------------------------------------------


class _Entry:
    def __init__(
        self,
        image: Image,
        manifest: bytes,
        config: bytes,
        layers: list[tuple[oci.Descriptor, Callable[[], BinaryIO]]],
    ) -> None:
        self.image = image
        self.manifest = manifest
        self.config = config
        self.layers = layers
        self.manifest_digest = digest_of(manifest)
        self.config_digest = digest_of(config)


def _media_type_of(store: Store, row: object, path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    kind = archive.detect_compression(head).value
    return oci.layer_media_type(kind if kind in ("gzip", "zstd") else "none")


def _entry(store: Store, image: Image) -> _Entry:
    row = store._db.image_row(image.id)
    if row is None:
        raise NotFoundError(f"image {image.id} is not in the store")
    config = bytes(row["config"])
    chains = store._db.image_layers(image.id)
    layer_rows = [store._db.layer(c) for c in chains]
    if any(r is None for r in layer_rows):
        raise NotFoundError(f"image {image.id} has lost a layer; run check(repair=True)")

    def opener_blob(digest: str) -> Callable[[], BinaryIO]:
        return lambda: store._blobs.open(digest)

    def opener_diff(chain: str) -> Callable[[], BinaryIO]:
        return lambda: store.layer_diff(chain)

    if row["manifest"] is not None:
        manifest_bytes = bytes(row["manifest"])
        manifest = oci.Manifest.parse(manifest_bytes)
        sources = []
        for desc, lrow in zip(manifest.layers, layer_rows, strict=True):
            assert lrow is not None
            if store._blobs.exists(desc.digest):
                sources.append((desc, opener_blob(desc.digest)))
            elif desc.digest == lrow["diff_id"]:
                sources.append((desc, opener_diff(str(lrow["chain_id"]))))
            else:
                break
        else:
            return _Entry(image, manifest_bytes, config, sources)
    layers = []
    for lrow in layer_rows:
        assert lrow is not None
        digest = lrow["digest"]
        if digest is not None and store._blobs.exists(digest):
            media = lrow["media_type"] or _media_type_of(store, lrow, store._blobs.path(digest))
            kind = oci.layer_compression(media) or "none"
            desc = oci.Descriptor(oci.layer_media_type(kind), digest, int(lrow["compressed_size"]))
            layers.append((desc, opener_blob(digest)))
        else:
            desc = oci.Descriptor(oci.OCI_LAYER, lrow["diff_id"], int(lrow["tar_size"]))
            layers.append((desc, opener_diff(str(lrow["chain_id"]))))
    config_desc = oci.Descriptor(oci.OCI_CONFIG, digest_of(config), len(config))
    manifest_bytes = oci.Manifest(config_desc, [d for d, _ in layers]).to_bytes()
    return _Entry(image, manifest_bytes, config, layers)


class _TarOut:
    def __init__(self, dest: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._dirs: set[str] = set()

    def _dir(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if not parent or parent in self._dirs:
            return
        self._dir(parent)
        info = tarfile.TarInfo(parent)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        self._tar.addfile(info)
        self._dirs.add(parent)

    def add(self, name: str, size: int, stream: BinaryIO) -> None:
        self._dir(name)
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        self._tar.addfile(info, stream)

    def close(self) -> None:
        self._tar.close()


class _DirOut:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, size: int, stream: BinaryIO) -> None:
        path = self._root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(path, "wb") as out:
            while written < size and (chunk := stream.read(min(1 << 20, size - written))):
                out.write(chunk)
                written += len(chunk)
        if written != size:
            raise IntegrityError(f"{name}: wrote {written} bytes of {size}")

    def close(self) -> None:
        return None


def save(
    store: Store, images: list[Image], dest: str | os.PathLike[str] | BinaryIO, format: str
) -> None:
    if format not in _FORMATS:
        raise InvalidArgumentError(
            f"unknown save format {format!r}; want one of {', '.join(_FORMATS)}"
        )
    entries = [_entry(store, image) for image in images]
    index = oci.oci_index(
        (
            oci.Descriptor(_manifest_media_type(e.manifest), e.manifest_digest, len(e.manifest)),
            [oci.parse_reference(n) for n in e.image.names],
        )
        for e in entries
    )
    docs: list[tuple[str, bytes]] = [
        (oci.LAYOUT_FILE, oci.oci_layout_file()),
        (oci.INDEX_FILE, index),
    ]
    if format == "docker-archive":
        manifest_json = oci.docker_archive_manifest(
            oci.docker_archive_image(
                e.config_digest,
                [d.digest for d, _ in e.layers],
                [
                    r
                    for r in (oci.parse_reference(n) for n in e.image.names)
                    if r.tag is not None and r.digest is None
                ],
            )
            for e in entries
        )
        docs.append((oci.MANIFEST_FILE, manifest_json))
    own_stream = False
    out: _TarOut | _DirOut
    if format == "oci-dir":
        if not isinstance(dest, str | os.PathLike):
            raise InvalidArgumentError("format oci-dir needs a directory path")
        out = _DirOut(Path(dest))
    elif isinstance(dest, str | os.PathLike):
        stream: BinaryIO = open(dest, "wb")  # noqa: SIM115 (closed in finally)
        own_stream = True
        out = _TarOut(stream)
    else:
        stream = dest
        out = _TarOut(stream)
    try:
        written: set[str] = set()
        if format != "oci-dir":
            for name, data in docs:
                out.add(name, len(data), io.BytesIO(data))
        for e in entries:
            for digest, data in ((e.config_digest, e.config), (e.manifest_digest, e.manifest)):
                if digest not in written:
                    out.add(oci.blob_path(digest), len(data), io.BytesIO(data))
                    written.add(digest)
        for e in entries:
            for desc, opener in e.layers:
                if desc.digest in written:
                    continue
                with opener() as body:
                    out.add(oci.blob_path(desc.digest), desc.size, body)
                written.add(desc.digest)
        if format == "oci-dir":
            for name, data in docs:
                out.add(name, len(data), io.BytesIO(data))
        out.close()
    finally:
        if own_stream:
            stream.close()


def _manifest_media_type(manifest: bytes) -> str:
    media = json.loads(manifest).get("mediaType")
    return str(media) if media else oci.OCI_MANIFEST
