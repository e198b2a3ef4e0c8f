"""Cross-process file locks with a timeout, and publishing a finished file.

The image store takes one lock per layer (by chain ID) so that two processes
storing the same layer store it once: the second waits for the first and
then finds the layer there.  ``flock`` locks belong to the open file, so a
process killed with ``kill -9`` releases its locks with its descriptors, and
no stale lock file can block anybody: the file itself is never deleted
(deleting it would let a third process lock a new inode while the second
still waits on the old one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from lamina.errors import InUseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["file_lock", "publish_file"]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for a ``with`` block.

    Waits up to ``timeout`` seconds (polling, so a waiter never blocks a
    signal) and then raises :class:`InUseError` naming the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise InUseError(f"lock {os.fspath(path)} held by another process for {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def publish_file(
    fd: int, tmp: str | os.PathLike[str], dest: str | os.PathLike[str], *, durable: bool = True
) -> None:
    """Make the fully written temporary file ``tmp`` (open as ``fd``) appear as ``dest``.

    fsync the data, rename over ``dest``, fsync the directory: after a crash
    ``dest`` is either absent (or its old content) or complete, never a
    prefix.  The caller closes ``fd``.
    """
    if durable:
        os.fsync(fd)
    os.rename(tmp, dest)
    if durable:
        directory = os.path.dirname(os.fspath(dest)) or "."
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
