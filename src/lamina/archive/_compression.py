"""Streaming decompression of layer blobs, sniffed from their first bytes.

gzip goes through ISA-L (``isal``), several times faster than zlib for
inflate; zstd through ``zstandard``.  Decompression happens in this process,
never by running a tool found inside the layer being applied.
"""

from __future__ import annotations

import enum
import io
from typing import Any, BinaryIO, cast

from lamina.errors import ArchiveTooLargeError, InvalidArchiveError

__all__ = ["Compression", "decompress", "detect_compression"]

_GZIP = b"\x1f\x8b\x08"
_ZSTD = b"\x28\xb5\x2f\xfd"
_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"


class Compression(enum.Enum):
    """The compressions a layer blob may use."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    BZIP2 = "bzip2"
    XZ = "xz"


def detect_compression(head: bytes) -> Compression:
    """Which compression the first bytes of a blob announce."""
    if head.startswith(_GZIP):
        return Compression.GZIP
    if head.startswith(_ZSTD):
        return Compression.ZSTD
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and (head[0] & 0xF0) == 0x50:
        return Compression.ZSTD  # skippable frame
    if head.startswith(_XZ):
        return Compression.XZ
    if head.startswith(_BZIP2):
        return Compression.BZIP2
    return Compression.NONE


class _Limited(io.RawIOBase):
    """Counts decompressed bytes and stops a bomb with a typed error."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except (OSError, EOFError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise InvalidArchiveError(f"corrupt compressed stream: {exc}") from exc
        n = len(data)
        self._seen += n
        if self._seen > self._limit:
            raise ArchiveTooLargeError(
                f"decompressed layer exceeds the limit of {self._limit} bytes"
            )
        buffer[:n] = data
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


def decompress(stream: BinaryIO, *, limit: int | None = None) -> BinaryIO:
    """A readable stream of the uncompressed bytes of ``stream``.

    ``limit`` caps the decompressed size (a bomb raises ArchiveTooLargeError).
    An empty stream is an empty (uncompressed) layer, as in Docker.
    """
    buffered: BinaryIO = (
        stream
        if hasattr(stream, "peek")
        else cast(BinaryIO, io.BufferedReader(cast(Any, stream), 1 << 20))
    )
    head = cast(io.BufferedReader, buffered).peek(10)[:10]
    kind = detect_compression(head)
    inner: BinaryIO
    if kind is Compression.NONE:
        inner = buffered
    elif kind is Compression.GZIP:
        from isal import igzip_threaded

        inner = cast(BinaryIO, igzip_threaded.open(buffered, "rb", threads=1))  # type: ignore[no-untyped-call]
    elif kind is Compression.ZSTD:
        import zstandard

        inner = cast(
            BinaryIO,
            zstandard.ZstdDecompressor().stream_reader(
                buffered, read_size=1 << 20, read_across_frames=True
            ),
        )
    else:
        raise InvalidArchiveError(f"{kind.value} layers are not supported (gzip and zstd are)")
    if limit is None:
        return inner
    return cast(BinaryIO, io.BufferedReader(_Limited(inner, limit), 1 << 20))
