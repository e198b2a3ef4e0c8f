"""Content digests and the layer identities built from them (OCI image spec).

Everything in an image is named by a digest: a blob by the digest of its
bytes as stored, a layer by its *diff ID* (the digest of the uncompressed
tar), a stack of layers by its *chain ID*, an image by the digest of its
config.  The store, the archive formats and the registry client all need the
same few rules, so they live here, on the bottom floor, with nothing above.

Digests
    :class:`Digest` is a ``str`` (``"sha256:<64 hex>"``), like go-digest's
    ``type Digest string``: it goes into JSON, SQLite and f-strings unchanged
    and compares equal to the plain string.  Constructing one validates it:
    the algorithms are the OCI image spec's registered ones, ``sha256`` and
    ``sha512``, and the encoded part must be lower-case hex of the exact
    length.  Docker's grammar would accept any algorithm name and upper-case
    hex; we refuse both, because a digest we cannot verify is not a name we
    can trust, and ``sha256:ABC…`` and ``sha256:abc…`` would otherwise be two
    names for one blob.  (A ``str`` subclass rather than a
    :class:`lamina._frozen.Frozen` value for exactly that interchangeability.)

Chain IDs
    ``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1)
    + " " + DiffID(Ln))``: the hash runs over the ASCII text of the two
    digests with one space between them.  A chain ID is what a store keys a
    layer by: the same tar on two different parents is two layers.

Verifying while streaming
    :class:`HashingReader` and :class:`HashingWriter` hash what passes through
    them and check the size and digest at the end, so a blob is never read a
    second time to verify it (store-and-registry.md §5.3: "hash in the same
    pass").  A reader given an expected size refuses to read past it: a
    stream that is longer than declared fails at the first surplus byte, not
    after filling a disk.  Every mismatch is :class:`IntegrityError`.
"""

from __future__ import annotations

import hashlib
import io
import re

from lamina.errors import IntegrityError, InvalidArgumentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import BinaryIO

    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "ALGORITHMS",
    "Digest",
    "HashingReader",
    "HashingWriter",
    "chain_id",
    "chain_ids",
    "diff_id",
    "digest_of",
    "digest_stream",
]

# algorithm -> length of its lower-case hex encoding (OCI image spec, descriptor.md)
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})")
_CHUNK = 1 << 20


class Digest(str):
    """A validated content digest, ``"<algorithm>:<lower-case hex>"``.

    ``Digest("sha256:…")`` raises :class:`InvalidArgumentError` for anything
    else (unknown algorithm, upper-case or wrong-length hex, whitespace).
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str) or _DIGEST.fullmatch(value) is None:
            raise InvalidArgumentError(
                f"invalid digest {value!r}: want sha256:<64 hex> or sha512:<128 hex>, lower case"
            )
        return super().__new__(cls, value)

    @classmethod
    def from_hex(cls, encoded: str, algorithm: str = "sha256") -> Digest:
        """The digest with this algorithm and hex encoding (validated)."""
        return cls(f"{algorithm}:{encoded}")

    @property
    def algorithm(self) -> str:
        """``"sha256"`` or ``"sha512"``."""
        return self.partition(":")[0]

    @property
    def encoded(self) -> str:
        """The hex part after the colon (what blob paths and short ids use)."""
        return self.partition(":")[2]

    def short(self, length: int = 12) -> str:
        """The first ``length`` hex digits, as ``docker images`` shows an id."""
        return self.encoded[:length]

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"


def _hasher(algorithm: str) -> hashlib._Hash:
    if algorithm not in ALGORITHMS:
        raise InvalidArgumentError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def digest_of(data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> Digest:
    """The digest of ``data`` (a config, a manifest, a small blob)."""
    hasher = _hasher(algorithm)
    hasher.update(data)
    return Digest(f"{algorithm}:{hasher.hexdigest()}")


def digest_stream(stream: BinaryIO, algorithm: str = "sha256") -> tuple[Digest, int]:
    """Read ``stream`` to its end; return its digest and its length in bytes."""
    hasher = _hasher(algorithm)
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    readinto = getattr(stream, "readinto", None)
    while True:
        if readinto is not None:
            count = readinto(view)
            if not count:
                break
            hasher.update(view[:count])
        else:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            count = len(chunk)
            hasher.update(chunk)
        size += count
    return Digest(f"{algorithm}:{hasher.hexdigest()}"), size


def diff_id(uncompressed_tar: BinaryIO | bytes) -> Digest:
    """The diff ID of a layer: sha256 of its *uncompressed* tar, read to the end.

    Give it the decompressed stream; the digest of a compressed blob is the
    blob's digest, not its diff ID.
    """
    if isinstance(uncompressed_tar, bytes | bytearray | memoryview):
        return digest_of(uncompressed_tar)
    return digest_stream(uncompressed_tar)[0]


def chain_ids(diff_ids: Iterable[str]) -> list[Digest]:
    """The chain ID of every prefix of ``diff_ids`` (base first), one per layer."""
    result: list[Digest] = []
    for item in diff_ids:
        layer = Digest(item)
        if not result:
            result.append(layer)
        else:
            result.append(digest_of(f"{result[-1]} {layer}".encode("ascii")))
    return result


def chain_id(diff_ids: Iterable[str]) -> Digest:
    """The chain ID of the stack ``diff_ids`` (base first); the top layer's key.

    An empty stack has no chain ID: :class:`InvalidArgumentError`.
    """
    ids = chain_ids(diff_ids)
    if not ids:
        raise InvalidArgumentError("a chain ID needs at least one diff ID")
    return ids[-1]


class _Verifier(io.RawIOBase):
    """What the reader and the writer share: the running hash, count and final check."""

    def __init__(
        self,
        raw: BinaryIO,
        expected_digest: str | None,
        expected_size: int | None,
        algorithm: str,
    ) -> None:
        super().__init__()
        if expected_digest is not None:
            expected = Digest(expected_digest)
            algorithm = expected.algorithm
            self.expected_digest: Digest | None = expected
        else:
            self.expected_digest = None
        if expected_size is not None and expected_size < 0:
            raise InvalidArgumentError(f"negative expected size {expected_size}")
        self.expected_size = expected_size
        self._hasher = _hasher(algorithm)
        self._algorithm = algorithm
        self._raw = raw
        self.size = 0
        self._verified = False

    @property
    def digest(self) -> Digest:
        """The digest of the bytes seen so far."""
        return Digest(f"{self._algorithm}:{self._hasher.hexdigest()}")

    def _count(self, data: bytes | bytearray | memoryview) -> None:
        size = self.size + len(data)
        if self.expected_size is not None and size > self.expected_size:
            raise IntegrityError(
                f"content longer than its declared {self.expected_size} bytes"
                + (f" ({self.expected_digest})" if self.expected_digest else "")
            )
        self._hasher.update(data)
        self.size = size

    def _check(self) -> Digest:
        if self.expected_size is not None and self.size != self.expected_size:
            raise IntegrityError(
                f"content is {self.size} bytes, declared {self.expected_size}"
                + (f" ({self.expected_digest})" if self.expected_digest else "")
            )
        actual = self.digest
        if self.expected_digest is not None and actual != self.expected_digest:
            raise IntegrityError(f"content digest {actual} does not match {self.expected_digest}")
        self._verified = True
        return actual

    def close(self) -> None:
        """Close this stream and the one it wraps (like :class:`io.BufferedReader`)."""
        if not self.closed:
            try:
                super().close()  # flushes first
            finally:
                self._raw.close()


class HashingReader(_Verifier):
    """A read-only stream over ``raw`` that hashes and counts what it yields.

    At end of stream (the first read that returns nothing) it verifies the
    expected size and digest, if given, and raises :class:`IntegrityError` on
    a mismatch, so a consumer that simply reads to the end cannot miss it.
    With ``expected_size`` it never yields more than that many bytes without
    raising.  A consumer that stops early (a tar reader stops at the
    end-of-archive blocks; padding may follow) calls :meth:`verify`, which
    reads and hashes the rest first.

    An :class:`io.RawIOBase`: ``read``, ``readall``, ``readinto``, iteration
    and :class:`io.BufferedReader` all work.  Closing it closes ``raw``.
    """

    def __init__(
        self,
        raw: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        *,
        algorithm: str = "sha256",
    ) -> None:
        super().__init__(raw, expected_digest, expected_size, algorithm)
        self._readinto = getattr(raw, "readinto", None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill ``buffer`` from ``raw``; 0 at the (verified) end."""
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self._readinto is not None:
            count: int = self._readinto(view) or 0
            data: bytes | memoryview = view[:count]
        else:
            data = self._raw.read(len(view))
            count = len(data)
            view[:count] = data
        if count:
            self._count(data)
        elif not self._verified:
            self._check()
        return count

    def verify(self) -> Digest:
        """Read (and hash) whatever remains, then check size and digest; return the digest.

        Raises :class:`IntegrityError` on a short or long stream or a digest
        mismatch.
        """
        if not self._verified:
            buffer = memoryview(bytearray(_CHUNK))
            while self.readinto(buffer):
                pass
        return self.digest


class HashingWriter(_Verifier):
    """A write-only stream into ``raw`` that hashes and counts what it is given.

    :meth:`verify` (call it once everything is written) checks the expected
    size and digest; a write past ``expected_size`` raises at once and
    writes nothing.  Closing it closes ``raw``; verify before closing when
    the caller publishes the file afterwards (temp file, verify, rename).
    """

    def __init__(
        self,
        raw: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        *,
        algorithm: str = "sha256",
    ) -> None:
        super().__init__(raw, expected_digest, expected_size, algorithm)

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        """Hash, count and pass on all of ``data``; return its length."""
        view = memoryview(data).cast("B")
        self._count(view)
        self._raw.write(view)
        return len(view)

    def flush(self) -> None:
        if not self.closed:
            self._raw.flush()

    def verify(self) -> Digest:
        """Check size and digest of everything written; return the digest."""
        return self._check()
