"""Entry names, and the one way lamina opens anything beneath a layer root.

A tar entry name is turned into a list of plain components (no ``.``, no
``..``, no empty parts).  Names that would climb above the root are refused
rather than clamped: a layer that says ``../x`` is hostile or broken.

Beneath a root.  Apply (``_apply``, ``_file_writer``) and export
(``_export``, the windowsfilter generator, every driver's file getter)
reach paths under a layer root by the same rule: a directory is opened
relative to its parent's descriptor and a symlink is never followed, on the
way or at the end.  :func:`open_dir_beneath` does it in one ``openat2``
call (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, see ``_openat2``) where the
kernel has it and the path has more than one component, else one
``O_NOFOLLOW | O_DIRECTORY`` open per component (also when ``openat2``
gives up on a racing rename, ``EAGAIN``, or on a path past ``PATH_MAX``,
``ENAMETOOLONG``).  :class:`DirPath` keeps the descriptors along the path
being walked so that sorted names open each directory once.

Bodies.  A container can rename anything over a name between the moment
its layer is listed and the moment a body is read: a symlink to a host
file, a device node of a host disk, a FIFO a host process writes to, a
directory swapped for a symlink to a host directory.  :func:`open_regular_at`
opens the last component with ``O_NOFOLLOW`` (a symlink fails with
``ELOOP``), ``O_NONBLOCK`` (a FIFO or a device cannot block the open) and
``O_NOCTTY``, then ``fstat``\\ s the descriptor and refuses with
:class:`NotRegularError` anything that is not a regular file or, when the
caller has the listing's ``lstat``, not the same inode.  Nothing is read
from a refused descriptor.  The one cost over a plain open is that
``fstat`` (measured: about 1.5 µs of a 10 µs small-file export).

Known limit: the swapped-in node is opened before it is refused, and
opening some device nodes has an effect of its own (a watchdog starts
counting, a tape rewinds on close).  Opening by ``O_PATH`` first and
reopening through ``/proc/self/fd`` would avoid it, at about twice the
system-call cost of every body (measured 17 µs against 10 µs a small
file), so it is not done here.
"""

from __future__ import annotations

import errno
import os
import stat

from lamina.errors import ArchiveError, LayerChangedError, NotFoundError

# ``typing`` is for the checker only: importing it at run time (``re`` and more
# behind it) adds milliseconds to every process that applies a layer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = [
    "FILE_FLAGS",
    "DirPath",
    "NotRegularError",
    "TreeReader",
    "clean_entry_name",
    "open_beneath",
    "open_dir_beneath",
    "open_regular_at",
    "split_entry_name",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: How a body is opened: never through a symlink at its name, never blocking on
#: a FIFO or a device swapped in for it, never taking a terminal as ours.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# errnos of an open that met something other than a regular file at the name:
# a symlink (O_NOFOLLOW), a socket or a device without a driver (overlay's 0:0
# whiteout among them)
_NOT_REGULAR_ERRNOS = (errno.ELOOP, errno.ENXIO, errno.ENODEV)

#: None until the first call that could use ``openat2``; then whether it works.
#: Turned off for good, process-wide, the first time the kernel refuses it.
_use_openat2: bool | None = None


class NotRegularError(OSError):
    """What is at a name beneath the root is not (or no longer) the regular file wanted.

    ``errno`` says what was met: ``ELOOP`` a symlink, ``ENOTDIR`` a
    non-directory on the way, ``ENXIO``/``ENODEV`` a socket or device that
    would not open, ``EINVAL`` another kind of file, ``ESTALE`` a regular
    file that is not the inode the caller listed.
    """


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


def _openat2_works() -> bool:
    global _use_openat2
    if _use_openat2 is None:
        # loaded on first need: ctypes is no cost a one-level export should pay
        from lamina.archive import _openat2

        _use_openat2 = _openat2.AVAILABLE
    return _use_openat2


def _walk(base_fd: int, parts: list[str]) -> int:
    fd = base_fd
    try:
        for part in parts:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != base_fd:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd != base_fd:
            os.close(fd)
        raise
    return fd


def open_dir_beneath(base_fd: int, rel: str, *, use_openat2: bool = True) -> int:
    """A new read-only descriptor of directory ``rel`` beneath ``base_fd``, crossing no symlink.

    ``rel`` is plain components joined by ``/`` (see :func:`split_entry_name`);
    ``""`` gives a new descriptor of ``base_fd`` itself.  Raises ``OSError``:
    ``ENOENT`` for a missing component, ``ELOOP`` or ``ENOTDIR`` for a
    symlink (the kernel's choice), ``ENOTDIR`` for another non-directory.
    ``use_openat2=False`` forces the per-component walk (the apply engine's
    switch, so its tests can run the fallback).
    """
    global _use_openat2
    if "/" not in rel:
        return os.open(rel or ".", _DIR_FLAGS, dir_fd=base_fd)
    if use_openat2 and _openat2_works():
        from lamina.archive import _openat2

        try:
            return _openat2.open_dir_beneath(base_fd, rel)
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EPERM):
                _use_openat2 = False
            elif exc.errno == errno.EXDEV:  # an escape: only a symlink could make one
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), rel) from None
            elif exc.errno not in (errno.EAGAIN, errno.ENAMETOOLONG):
                raise
            # a racing rename, a path past PATH_MAX: one component at a time
    return _walk(base_fd, rel.split("/"))


def open_regular_at(
    dir_fd: int, name: str, listed: os.stat_result | None = None
) -> tuple[int, os.stat_result]:
    """Open regular file ``name`` in ``dir_fd`` for reading: (descriptor, its ``fstat``).

    Raises :class:`NotRegularError` for anything else at the name (a symlink
    is never followed), and for a regular file that is not ``listed``'s
    inode when ``listed`` is given; ``FileNotFoundError`` when nothing is
    there.  The descriptor is non-blocking, which changes nothing for a
    regular file.
    """
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _NOT_REGULAR_ERRNOS:
            raise NotRegularError(exc.errno, exc.strerror, name) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularError(errno.EINVAL, "not a regular file", name)
    if listed is not None and (st.st_ino != listed.st_ino or st.st_dev != listed.st_dev):
        os.close(fd)
        raise NotRegularError(errno.ESTALE, "replaced since it was listed", name)
    return fd, st


class DirPath:
    """Descriptors of the directories along the current path beneath a root.

    Each component is opened relative to its parent with ``O_NOFOLLOW``, so
    a symlink swapped in by a running container is never followed out of
    the tree.  Consecutive names share their parents, so sorted input opens
    each directory once.  The root descriptor stays the caller's.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.parts: list[str] = []
        self.fds: list[int] = []

    def fd(self, parts: list[str]) -> int:
        """The descriptor of directory ``parts`` (``[]``: the root); owned by this object."""
        k = 0
        limit = min(len(parts), len(self.parts))
        while k < limit and parts[k] == self.parts[k]:
            k += 1
        while len(self.parts) > k:
            self.parts.pop()
            os.close(self.fds.pop())
        while len(self.parts) < len(parts):
            parent = self.fds[-1] if self.fds else self.root_fd
            part = parts[len(self.parts)]
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
            self.parts.append(part)
            self.fds.append(fd)
        return self.fds[-1] if self.fds else self.root_fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
        self.parts.clear()


def open_beneath(
    root: str | os.PathLike[str], rel: str, *, listed: os.stat_result | None = None
) -> BinaryIO:
    """Open the regular file ``rel`` under ``root`` for reading, never following symlinks.

    Raises :class:`~lamina.errors.NotFoundError` when there is no regular
    file at ``rel`` reached without crossing a symlink (``errno`` is
    ``ENOENT`` when nothing is there, else what was met, as for
    :class:`NotRegularError`), or when ``listed`` is given and the file is
    not that inode.
    """
    parts = split_entry_name(rel)
    if not parts:
        raise NotFoundError(f"{rel!r}: not a file beneath {os.fspath(root)!r}", errno=errno.EISDIR)
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise NotFoundError(
            f"cannot open {os.fspath(root)!r}: {exc.strerror}", errno=exc.errno
        ) from exc
    try:
        try:
            dir_fd = open_dir_beneath(root_fd, "/".join(parts[:-1])) if len(parts) > 1 else root_fd
            try:
                fd, _ = open_regular_at(dir_fd, parts[-1], listed)
            finally:
                if dir_fd != root_fd:
                    os.close(dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP) and not isinstance(
                exc, NotRegularError
            ):
                raise
            what = "not there" if exc.errno == errno.ENOENT else exc.strerror
            raise NotFoundError(f"{rel}: {what}", errno=exc.errno) from exc
    finally:
        os.close(root_fd)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class TreeReader:
    """A tree read while something else may change it (a running container's layer).

    Every path is reached beneath the root as everywhere in lamina (no
    symlink followed, on the way or at the end), and a body is opened only
    if it is still the regular file the caller listed.  Errors are typed:
    :class:`~lamina.errors.NotFoundError` when the path is gone (a caller
    may skip it), :class:`~lamina.errors.LayerChangedError` when something
    else stands where the listing had a directory or a file, and
    :class:`~lamina.errors.ArchiveError` for other failures.  Directories
    along the path are kept open between calls, so names in walk order
    open each directory once.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = os.fspath(root)
        try:
            fd = os.open(self._root, _DIR_FLAGS)
        except OSError as exc:
            raise NotFoundError(
                f"cannot read {self._root!r}: {exc.strerror}", errno=exc.errno
            ) from exc
        self._dirs = DirPath(fd)

    def __enter__(self) -> TreeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every descriptor held (idempotent)."""
        if self._dirs.root_fd >= 0:
            self._dirs.close()
            os.close(self._dirs.root_fd)
            self._dirs.root_fd = -1

    def _fail(self, rel: str, exc: OSError) -> Exception:
        if exc.errno == errno.ENOENT:
            return NotFoundError(f"{rel}: no longer in {self._root!r}", errno=exc.errno)
        if isinstance(exc, NotRegularError) or exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return LayerChangedError(
                f"{rel}: replaced by something else while {self._root!r} was read",
                path=rel,
                errno=exc.errno,
            )
        return ArchiveError(f"{rel}: {exc.strerror}", errno=exc.errno)

    def _at(self, rel: str) -> tuple[int, str]:
        parts = split_entry_name(rel)
        if not parts:
            raise NotFoundError(f"{rel!r}: not a path beneath {self._root!r}")
        try:
            return self._dirs.fd(parts[:-1]), parts[-1]
        except OSError as exc:
            raise self._fail(rel, exc) from exc

    def lstat(self, rel: str) -> os.stat_result:
        """``lstat`` of ``rel`` (its last component is not followed)."""
        dir_fd, name = self._at(rel)
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise self._fail(rel, exc) from exc

    def readlink(self, rel: str) -> str:
        """The target of symlink ``rel``."""
        dir_fd, name = self._at(rel)
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # no longer a symlink
                exc = NotRegularError(exc.errno, "not a symlink", rel)
            raise self._fail(rel, exc) from exc

    def open(self, rel: str, listed: os.stat_result | None = None) -> BinaryIO:
        """Regular file ``rel`` for reading (unbuffered), which must be ``listed``'s inode."""
        dir_fd, name = self._at(rel)
        try:
            fd, _ = open_regular_at(dir_fd, name, listed)
        except OSError as exc:
            raise self._fail(rel, exc) from exc
        return os.fdopen(fd, "rb", buffering=0)
