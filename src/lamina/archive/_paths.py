"""Entry names and confined path resolution.

A tar entry name is turned into a list of plain components (no ``.``, no
``..``, no empty parts).  Names that would climb above the root are refused
rather than clamped: a layer that says ``../x`` is hostile or broken.
Resolution on disk walks the components one directory descriptor at a time
with ``O_NOFOLLOW``, so a symlink found on disk is never followed.
"""

from __future__ import annotations

import errno
import os
import stat

# ``typing`` is for the checker only: importing it at run time (``re`` and more
# behind it) adds milliseconds to every process that applies a layer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["clean_entry_name", "open_beneath", "split_entry_name"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_entry_name(name: str) -> list[str] | None:
    """Components of a tar entry name, or None if it escapes or is unusable.

    Leading ``/`` and ``./`` are dropped (absolute names are relative to the
    layer root, as every runtime treats them).  ``a/../b`` is resolved
    lexically; anything that would go above the root gives None.
    """
    if "\x00" in name:
        return None
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
    return parts


def clean_entry_name(name: str) -> str | None:
    """The canonical relative form of a tar entry name ("" for the root), or None."""
    parts = split_entry_name(name)
    return None if parts is None else "/".join(parts)


def open_beneath(root: str | os.PathLike[str], rel: str) -> BinaryIO:
    """Open the regular file ``rel`` under ``root`` for reading, never following symlinks."""
    parts = [p for p in rel.split("/") if p]
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the layer root is not a file", str(root))
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        # O_NONBLOCK: a FIFO must not block the open; only regular files are served
        ffd = os.open(
            parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd
        )
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(ffd).st_mode):
        os.close(ffd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", rel)
    os.set_blocking(ffd, True)
    return os.fdopen(ffd, "rb")
