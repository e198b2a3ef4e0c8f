"""Size-limited sandbox filesystems (loop-mounted sparse ext4 images).

A Windows sandbox (read-write) layer has a size, like the seed's
``sandbox.vhdx`` (127 GB by default, grown with ``ExpandSandboxSize``).
Here it is a sparse file holding an ext4 filesystem of that size, mounted
through a loop device: writes past the size fail with ENOSPC, the image
only takes the space its data uses, and growing it is ``truncate`` plus
``resize2fs``.  ``noinit_itable`` keeps the kernel from zeroing inode
tables in the background, which would make the sparse file dense.

This needs root and e2fsprogs' ``mkfs.ext4``; :func:`loop_supported` says
whether this host has both.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "grow_image",
    "loop_supported",
    "make_image",
    "mount_image",
    "unmount_image",
]


def loop_supported() -> bool:
    """Whether sandbox images can be made and mounted here (root, loop, mkfs.ext4)."""
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/loop-control")
        and shutil.which("mkfs.ext4") is not None
        and shutil.which("mount") is not None
    )


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(errno.EIO, f"{argv[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def make_image(path: str | os.PathLike[str], size: int) -> None:
    """Create a sparse ``size``-byte file holding an empty ext4 filesystem."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    _run(
        "mkfs.ext4",
        "-q",
        "-F",
        "-m",
        "0",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        os.fspath(path),
    )


def mount_image(path: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Mount an image through a loop device (freed automatically on unmount)."""
    os.makedirs(target, mode=0o700, exist_ok=True)
    _run("mount", "-t", "ext4", "-o", "loop,noinit_itable", os.fspath(path), os.fspath(target))


def unmount_image(target: str | os.PathLike[str]) -> None:
    """Unmount a sandbox (its loop device goes with it)."""
    _run("umount", os.fspath(target))


def grow_image(path: str | os.PathLike[str], size: int) -> None:
    """Grow an unmounted image and its filesystem to ``size`` bytes."""
    if os.stat(path).st_size >= size:
        return
    with open(path, "r+b") as f:
        f.truncate(size)
    proc = subprocess.run(
        ["e2fsck", "-f", "-p", os.fspath(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode not in (0, 1):
        raise OSError(errno.EIO, f"e2fsck failed: {proc.stderr.strip()}")
    _run("resize2fs", os.fspath(path))


def image_path_is_mounted(target: Path) -> bool:
    """Whether something is mounted at ``target``."""
    return os.path.ismount(target)
