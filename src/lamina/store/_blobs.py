"""Content-addressed blobs: ``<root>/blobs/sha256/<hex>``, written temp → verify → rename.

A blob is written under a private temporary name in ``<root>/tmp``, hashed
and counted while it streams in (:class:`lamina._ids.HashingWriter`), checked
against the size and digest it was announced with, and only then renamed
into place and fsynced (:func:`lamina._fs.publish_file`).  So a blob under
its name is always complete and right, whatever was killed when; a
temporary file whose pid is dead is swept by recovery.
"""

from __future__ import annotations

import contextlib
import os

from lamina._fs import publish_file, staging_name
from lamina._ids import Digest, HashingWriter
from lamina.errors import NotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

__all__ = ["BlobStore", "TempFile"]


class TempFile:
    """A file being written in ``tmp``: hash on the way, publish or discard at the end."""

    def __init__(
        self,
        tmp_dir: Path,
        base: str,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> None:
        os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
        self.path = tmp_dir / staging_name(base)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._raw = os.fdopen(self._fd, "wb", buffering=1 << 20, closefd=False)
        self.writer = HashingWriter(self._raw, expected_digest, expected_size)
        self._done = False

    def write(self, data: bytes | memoryview) -> int:
        return self.writer.write(data)

    def verify(self) -> Digest:
        """Check the size and digest of what was written (IntegrityError on a mismatch)."""
        return self.writer.verify()

    def publish(self, dest: Path) -> None:
        """Flush, fsync and rename into ``dest`` (its directory is created)."""
        self._raw.flush()
        os.makedirs(dest.parent, mode=0o755, exist_ok=True)
        publish_file(self._fd, self.path, dest)
        self._close()
        self._done = True

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def discard(self) -> None:
        if not self._done:
            self._close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._done = True


class BlobStore:
    """The blob area of a store root."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs"
        self.tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        d = Digest(digest)
        return self.dir / d.algorithm / d.encoded

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the store") from None

    def temp(
        self, expected_digest: str | None = None, expected_size: int | None = None
    ) -> TempFile:
        return TempFile(self.tmp, "blob", expected_digest, expected_size)

    def publish(self, temp: TempFile) -> tuple[Digest, int]:
        """Verify ``temp`` and move it under its digest; returns (digest, size)."""
        digest = temp.verify()
        size = temp.writer.size
        dest = self.path(digest)
        if dest.is_file():
            temp.discard()  # someone stored the same bytes first: content-addressed, identical
        else:
            temp.publish(dest)
        return digest, size

    def write_stream(
        self, stream: BinaryIO, expected_digest: str | None = None, expected_size: int | None = None
    ) -> tuple[Digest, int]:
        """Copy ``stream`` in, verified; returns (digest, size)."""
        temp = self.temp(expected_digest, expected_size)
        try:
            while chunk := stream.read(1 << 20):
                temp.write(chunk)
            return self.publish(temp)
        finally:
            temp.discard()

    def remove(self, digest: str) -> int:
        """Delete a blob; returns the bytes freed (0 if it was not there)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def sweep_temp(self) -> None:
        """Remove temporary files that dead processes left (live ones are kept)."""
        from lamina._fs import made_by_other_live_process

        try:
            names = os.listdir(self.tmp)
        except FileNotFoundError:
            return
        for name in names:
            parts = name.rsplit(".", 2)
            if len(parts) == 3 and parts[1] == str(os.getpid()):
                continue
            if made_by_other_live_process(name):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(self.tmp / name)
