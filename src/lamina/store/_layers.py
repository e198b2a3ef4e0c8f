"""Layers stored once by chain ID, and their original tars rebuilt byte for byte.

Storing a layer is one pass over its blob::

    blob bytes ──▶ [kept-blob temp file] ──▶ HashingReader (compressed digest, size)
               ──▶ archive.decompress ──▶ tee: sha256 (diff ID), tar-split (a thread)
               ──▶ driver.apply_diff

The driver's fast apply path reads the stream; nothing wraps the driver.
The diff ID is the sha256 of exactly what the driver was given, computed
while it reads (house.md: "diff_id computed while spooling"), and the
tar-split records come from the same bytes through a pipe to a thread that
runs :func:`lamina.archive.split_tar`.  After the driver returns, the rest
of the stream (end-of-archive padding a tar reader may leave) is drained
through the tee, so the diff ID covers every byte.  Only when the
compressed digest, the diff ID (the config's ``rootfs.diff_ids`` entry) and
the tar-split all check out is the layer recorded, in the same transaction
that ends its intent; on any failure the driver layer is removed.

A windowsfilter layer keeps no store-side tar-split: the driver already
replays its imported tar byte for byte (``driver.diff``).

Two processes storing one layer: a file lock per chain ID
(``<root>/locks/<hex>.lock``); the second waits, then finds the row.
The driver layer id is the chain ID's hex: deterministic, so a crashed
store's leftover is found (and removed) by the next writer or recovery.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
from typing import cast

from lamina import archive
from lamina._fs import file_lock
from lamina._ids import Digest, HashingReader, digest_of
from lamina.errors import IntegrityError, LaminaError, NotFoundError, StateError
from lamina.store._blobs import TempFile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import BinaryIO

    from lamina.drivers import Driver
    from lamina.store._store import Store

__all__ = ["LayerSource", "layer_diff", "store_layer", "tar_split_path"]

_CHUNK = 1 << 20
WINDOWS_DRIVER = "windowsfilter"


def child_chain(parent: str | None, diff_id: str) -> Digest:
    """The chain ID of ``diff_id`` on top of ``parent`` (OCI image spec)."""
    if parent is None:
        return Digest(diff_id)
    return digest_of(f"{parent} {diff_id}".encode("ascii"))


def tar_split_path(root: Path, chain_id: str) -> Path:
    return root / "tar-split" / (Digest(chain_id).encoded + ".gz")


class LayerSource:
    """Where a layer's blob comes from: an opener and what the manifest says of it."""

    def __init__(
        self,
        open: Callable[[], BinaryIO],
        digest: str | None = None,
        size: int | None = None,
        media_type: str | None = None,
        *,
        kept: bool = False,
    ) -> None:
        self.open = open
        self.digest = digest
        self.size = size
        self.media_type = media_type
        self.kept = kept  # the blob already is in the blob store


class _Tee(io.RawIOBase):
    """Passes reads of ``inner`` through, handing each chunk to ``sinks``."""

    def __init__(self, inner: BinaryIO, sinks: list[Callable[[memoryview], object]]) -> None:
        super().__init__()
        self._inner = inner
        self._sinks = sinks
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self._inner.read(len(view))
        n = len(data)
        view[:n] = data
        if n:
            self.count += n
            for sink in self._sinks:
                sink(view[:n])
        return n

    def drain(self) -> None:
        buffer = memoryview(bytearray(_CHUNK))
        while self.readinto(buffer):
            pass


class _Splitter:
    """tar-split records of the bytes written to it, by a thread reading a pipe."""

    def __init__(self, out: BinaryIO) -> None:
        read_fd, self._write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb", buffering=_CHUNK)
        self._out = out
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lamina-tar-split", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            archive.split_tar(self._reader, self._out)
        except BaseException as exc:  # reported by finish(); keep draining so writers never block
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                while self._reader.read(_CHUNK):
                    pass
            self._reader.close()

    def write(self, data: memoryview) -> None:
        if self._write_fd < 0:
            return
        while data:
            try:
                data = data[os.write(self._write_fd, data) :]
            except BrokenPipeError:
                return

    def finish(self) -> None:
        self.close()
        self._thread.join()
        if self.error is not None:
            if isinstance(self.error, LaminaError):
                raise self.error
            raise StateError(f"tar-split failed: {self.error}") from self.error

    def close(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1

    def join(self) -> None:
        self._thread.join()


def store_layer(
    store: Store,
    *,
    parent: str | None,
    diff_id: str,
    source: LayerSource,
    windows: bool,
    lease: int | None = None,
) -> str:
    """Store the layer ``diff_id`` on ``parent`` (chain IDs) once; returns its chain ID.

    Present already: nothing is read.  Otherwise the blob is read once,
    verified (compressed digest and size when known, diff ID always), kept
    in the blob area when the store keeps blobs, and applied by the driver.
    """
    chain = child_chain(parent, diff_id)
    db = store._db
    if db.layer(chain) is not None:
        if lease is not None:
            db.lease(lease, [chain])
        return chain
    locks = store.root / "locks"
    os.makedirs(locks, mode=0o700, exist_ok=True)
    with file_lock(locks / f"{chain.encoded}.lock", timeout=store._lock_timeout):
        if db.layer(chain) is not None:
            if lease is not None:
                db.lease(lease, [chain])
            return chain
        driver = store._driver_for(windows)
        parent_row = db.layer(parent) if parent is not None else None
        if parent is not None and parent_row is None:
            raise NotFoundError(f"parent layer {parent} is not in the store")
        parent_id = None if parent_row is None else str(parent_row["driver_id"])
        driver_id = chain.encoded
        intent = db.begin_intent("store-layer", chain, f"{driver.name}/{driver_id}")
        try:
            row, blob = _apply(store, driver, driver_id, parent_id, chain, diff_id, source, windows)
            row["parent"] = parent
            db.add_layer(row, intent, blob, lease)
        except BaseException:
            with contextlib.suppress(Exception):
                driver.remove(driver_id)
            with contextlib.suppress(Exception):
                tar_split_path(store.root, chain).unlink(missing_ok=True)
            with contextlib.suppress(Exception):
                db.end_intent(intent)
            raise
    return chain


def _apply(
    store: Store,
    driver: Driver,
    driver_id: str,
    parent_id: str | None,
    chain: Digest,
    diff_id: str,
    source: LayerSource,
    windows: bool,
) -> tuple[dict[str, object], tuple[str, int, str | None] | None]:
    if driver.exists(driver_id):  # a crashed writer's leftover (we hold the chain's lock)
        driver.remove(driver_id)
    driver.create(driver_id, parent_id)
    keep = store.keep_blobs and not source.kept
    blob_temp: TempFile | None = store._blobs.temp() if keep else None
    split_temp: TempFile | None = None
    splitter: _Splitter | None = None
    split_gz: BinaryIO | None = None
    raw = source.open()
    try:
        compressed_sinks: list[Callable[[memoryview], object]] = []
        if blob_temp is not None:
            compressed_sinks.append(blob_temp.write)
        verified = HashingReader(
            cast("BinaryIO", _Tee(raw, compressed_sinks)), source.digest, source.size
        )
        hasher = hashlib.sha256()
        sinks: list[Callable[[memoryview], object]] = [hasher.update]
        if not windows:
            from isal import igzip

            split_temp = TempFile(store.root / "tmp", "tar-split")
            split_gz = cast(
                "BinaryIO",
                igzip.IGzipFile(  # type: ignore[no-untyped-call]
                    fileobj=split_temp, mode="wb", compresslevel=1, mtime=0
                ),
            )
            splitter = _Splitter(split_gz)
            sinks.append(splitter.write)
        decompressed = archive.decompress(cast("BinaryIO", verified))
        try:
            tee = _Tee(decompressed, sinks)
            stream = io.BufferedReader(tee, _CHUNK)
            size = driver.apply_diff(driver_id, parent_id, cast("BinaryIO", stream))
            while stream.read(_CHUNK):  # what the driver left: end-of-archive blocks, padding
                pass
        finally:
            decompressed.close()
        digest = verified.verify()  # reads (and keeps) whatever trails the compressed data
        compressed_size = verified.size
        if splitter is not None:
            splitter.finish()
        actual = Digest(f"sha256:{hasher.hexdigest()}")
        if actual != diff_id:
            raise IntegrityError(f"layer diff ID is {actual}, its config says {diff_id}")
        if split_gz is not None and split_temp is not None:
            split_gz.close()
            target = tar_split_path(store.root, chain)
            split_temp.publish(target)
        blob: tuple[str, int, str | None] | None = None
        if blob_temp is not None:
            store._blobs.publish(blob_temp)
            blob = (digest, compressed_size, source.media_type)
        elif source.kept:
            blob = (digest, compressed_size, source.media_type)
        row: dict[str, object] = {
            "chain_id": str(chain),
            "diff_id": str(diff_id),
            "driver": driver.name,
            "driver_id": driver_id,
            "size": int(size),
            "tar_size": tee.count,
            "digest": str(digest),
            "media_type": source.media_type,
            "compressed_size": compressed_size,
            "created": time.time(),
        }
        return row, blob
    finally:
        with contextlib.suppress(Exception):
            raw.close()
        if splitter is not None:
            splitter.close()
            splitter.join()  # before its output file goes
        if blob_temp is not None:
            blob_temp.discard()
        if split_temp is not None:
            split_temp.discard()


class _Replay(io.RawIOBase):
    """The reading end of a pipe that a thread fills; errors surface at the end."""

    def __init__(self, produce: Callable[[BinaryIO], object], release: Callable[[], None]) -> None:
        super().__init__()
        read_fd, write_fd = os.pipe()
        self._fd = read_fd
        self._release = release
        self._error: BaseException | None = None
        out = os.fdopen(write_fd, "wb", buffering=_CHUNK)

        def run() -> None:
            try:
                with out:
                    produce(out)
            except BrokenPipeError:
                pass
            except BaseException as exc:
                self._error = exc
                with contextlib.suppress(OSError):
                    out.close()

        self._thread = threading.Thread(target=run, name="lamina-layer-diff", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = os.readv(self._fd, [buffer])
        if n == 0:
            self._thread.join()
            if self._error is not None:
                error, self._error = self._error, None
                if isinstance(error, StateError):
                    raise IntegrityError(f"stored layer does not match its tar: {error}") from error
                raise error
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._thread.join()
            try:
                self._release()
            finally:
                super().close()


def layer_diff(store: Store, chain_or_diff_id: str) -> BinaryIO:
    """The layer's original tar, byte for byte (a stream; the caller closes it)."""
    row = store._layer_row(chain_or_diff_id)
    driver = store._driver_named(str(row["driver"]))
    driver_id = str(row["driver_id"])
    if row["driver"] == WINDOWS_DRIVER:
        return driver.diff(driver_id)
    path = tar_split_path(store.root, str(row["chain_id"]))
    try:
        records = open(path, "rb")  # noqa: SIM115 (closed by the stream it feeds)
    except FileNotFoundError:
        raise NotFoundError(f"layer {row['chain_id']} has no tar-split record") from None
    try:
        getter = driver.diff_getter(driver_id)
    except BaseException:
        records.close()
        raise

    def produce(out: BinaryIO) -> None:
        from isal import igzip

        plain = igzip.IGzipFile(fileobj=records, mode="rb")  # type: ignore[no-untyped-call]
        with plain:
            archive.join_tar(cast("BinaryIO", plain), getter, out)

    def release() -> None:
        try:
            getter.close()
        finally:
            records.close()

    return cast("BinaryIO", io.BufferedReader(_Replay(produce, release), _CHUNK))
