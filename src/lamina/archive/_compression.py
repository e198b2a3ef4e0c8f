"""Streaming decompression of layer blobs, sniffed from their first bytes.

gzip goes through ISA-L (``isal``), several times faster than zlib for
inflate; zstd through ``zstandard``.  Decompression happens in this process,
never by running a tool found inside the layer being applied.
"""

from __future__ import annotations

import enum
import io

from lamina.errors import ArchiveTooLargeError, InvalidArchiveError, LaminaError

# ``typing`` is for the checker only: importing it at run time (``re`` and more
# behind it) adds milliseconds to every process that applies a layer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["Compression", "decompress", "detect_compression", "open_decompressed"]

_GZIP = b"\x1f\x8b\x08"
_ZSTD = b"\x28\xb5\x2f\xfd"
_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"
_BUFFER = 1 << 20


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


class _Borrowed(io.RawIOBase):
    """The caller's stream as a raw stream that closing (or garbage collection) never closes."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return int(readinto(buffer) or 0)
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n


class _Guarded(io.RawIOBase):
    """Decoded bytes: typed errors for corrupt input, a size limit, an owned decoder.

    Decoders report corruption with their own exceptions (``EOFError``,
    ``zstandard.ZstdError``, ``BadGzipFile`` ...); they become
    :class:`InvalidArchiveError` here, while an ``OSError`` with an errno is
    a real I/O error of the source and passes through.  Closing this closes
    the decoder (stopping its thread), never the caller's stream.
    """

    def __init__(self, inner: BinaryIO, limit: int | None, *, owned: bool) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self._owned = owned
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        except LaminaError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise InvalidArchiveError(f"corrupt compressed stream: {exc}") from exc
        n = int(n or 0)
        if self._limit is not None:
            self._seen += n
            if self._seen > self._limit:
                raise ArchiveTooLargeError(
                    f"decompressed layer exceeds the limit of {self._limit} bytes"
                )
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                if self._owned:
                    self._inner.close()
            finally:
                super().close()


def open_decompressed(
    stream: BinaryIO, *, limit: int | None = None
) -> tuple[BinaryIO, Compression]:
    """:func:`decompress`, also saying which compression the stream used."""
    buffered = io.BufferedReader(_Borrowed(stream), _BUFFER)
    head = buffered.peek(10)[:10]
    kind = detect_compression(head)
    inner: BinaryIO
    if kind is Compression.NONE:
        if limit is None:
            return buffered, kind
        inner = buffered
    elif kind is Compression.GZIP:
        from typing import cast

        from isal import igzip_threaded

        # one worker thread: inflate runs beside the apply, outside the GIL
        inner = cast("BinaryIO", igzip_threaded.open(buffered, "rb", threads=1))  # type: ignore[no-untyped-call]
    elif kind is Compression.ZSTD:
        from typing import cast

        import zstandard

        inner = cast(
            "BinaryIO",
            zstandard.ZstdDecompressor().stream_reader(
                buffered, read_size=_BUFFER, read_across_frames=True, closefd=False
            ),
        )
    else:
        raise InvalidArchiveError(f"{kind.value} layers are not supported (gzip and zstd are)")
    guarded = _Guarded(inner, limit, owned=kind is not Compression.NONE)
    return io.BufferedReader(guarded, _BUFFER), kind


def decompress(stream: BinaryIO, *, limit: int | None = None) -> BinaryIO:
    """A readable stream of the uncompressed bytes of ``stream``.

    ``limit`` caps the decompressed size (a bomb raises ArchiveTooLargeError);
    corrupt compressed data raises InvalidArchiveError.  An empty stream is an
    empty (uncompressed) layer, as in Docker.  Close the result when done: that
    stops the decoder (gzip inflates in a worker thread); it never closes
    ``stream``, which stays the caller's.
    """
    return open_decompressed(stream, limit=limit)[0]
