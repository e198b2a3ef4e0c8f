"""Renames that publish or retire a whole directory in one step.

A layer is built under a staging name and renamed into place, and retired by
renaming it out of place before it is deleted, so that a crash at any moment
leaves either the complete layer or no layer under its visible name, plus
leftovers under names that ``cleanup`` recognises and sweeps.

These helpers give atomicity against process crashes (``kill -9``), not
durability against power loss: nothing here fsyncs file data, because a
layer copy would then cost one fsync per file.  A store that needs
durability calls :func:`sync_filesystem` once at its commit point.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina import _tree
from lamina.errors import InUseError

__all__ = [
    "exchange_dirs",
    "made_by_other_live_process",
    "make_staging_dir",
    "publish_file",
    "remove_tree",
    "rename_noreplace",
    "retire_dir",
    "staging_name",
    "sweep_atomic_writes",
    "sync_filesystem",
    "write_file_atomic",
]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _load_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
        fn: Any = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    result: Callable[..., int] = fn
    return result


_renameat2 = _load_renameat2()
_noreplace_works = _renameat2 is not None


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst``; raise FileExistsError if ``dst`` exists.

    A plain rename(2) of a directory silently replaces an *empty* directory,
    so two concurrent creates of the same empty layer would both "succeed".
    renameat2(RENAME_NOREPLACE) makes the check and the rename one step.
    Where the C library or the filesystem lacks it, we fall back to a check
    followed by a rename, which is only racy between concurrent creators.
    """
    global _noreplace_works
    if _noreplace_works and _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))
        _noreplace_works = False
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    os.rename(src, dst)


def exchange_dirs(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Atomically swap the names ``a`` and ``b`` (both must exist).

    This is how a fully built replacement of a layer directory takes its
    place: at every instant the name holds either the old tree or the new.
    """
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def staging_name(base: str) -> str:
    """A unique leftover name that records which process made it.

    The pid lets ``cleanup`` tell a crashed writer's leftovers from those of
    a writer that is still running in another process.
    """
    # ids may be 255 bytes long (NAME_MAX); keep the decorated name within it
    # 48 random bits tell apart names made by one process (the pid does the rest)
    return f"{base[:200]}.{os.getpid()}.{os.urandom(6).hex()}"


def made_by_other_live_process(name: str) -> bool:
    """Whether a :func:`staging_name` leftover belongs to another running process.

    Such a leftover is that process's work in flight and must not be swept.
    Names we cannot parse, names from dead processes and names with our own
    pid (the caller knows its own work in flight) give False.
    """
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_staging_dir(parent: str | os.PathLike[str], base: str, mode: int = 0o700) -> Path:
    """Create a fresh private directory ``parent/<base>.<pid>.<random>``.

    Every layer a driver makes starts here, so a store on a read-only
    filesystem is refused here, once, with ReadOnlyStoreError.
    """
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        while True:
            path = Path(parent) / staging_name(base)
            try:
                os.mkdir(path, mode)
            except FileExistsError:
                continue
            return path
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        from lamina.errors import ReadOnlyStoreError

        raise ReadOnlyStoreError(
            f"{parent}: the store is on a read-only filesystem", errno=exc.errno
        ) from exc


def retire_dir(
    path: str | os.PathLike[str], graveyard: str | os.PathLike[str], base: str
) -> Path | None:
    """Move ``path`` out of sight into ``graveyard``; None if it did not exist.

    After this returns the directory is no longer visible under its name,
    whatever happens to the deletion that follows.
    """
    os.makedirs(graveyard, mode=0o700, exist_ok=True)
    target = Path(graveyard) / staging_name(base)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    return target


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a directory tree (or a single non-directory); a missing tree is not an error.

    The one remover of :mod:`lamina._tree`: iterative (a layer may hold a
    directory chain thousands deep), relative to directory descriptors (a
    path may be longer than ``PATH_MAX``), never following a symlink, and
    able to delete directories their unprivileged owner cannot write, which
    any faithful copy of a root filesystem contains.

    Nothing mounted inside the tree is touched: a bind mount left in a layer
    (a crashed runtime's volume) raises :class:`~lamina.errors.InUseError`
    before anything is deleted.  A bind mount of the same filesystem has the
    same device number, so the walk's own device check cannot see it; the
    mount table can.
    """
    from lamina._fs._mount import mounts_below  # the one mountinfo decoder

    inside = mounts_below(path)
    if inside:
        raise InUseError(
            f"cannot remove {os.fspath(path)!r}: {inside[-1].mountpoint!r} is mounted inside it"
            " (unmount it first; nothing was deleted)",
            errno=errno.EBUSY,
        )
    _tree.remove_tree(path)


def write_file_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace the file at ``path`` with ``data`` in one step.

    Readers see the old content or the new one, never a mix, even after a
    crash: the bytes go to a private temporary name in the same directory,
    which is renamed over ``path``.  With ``durable`` the data is fsynced
    before the rename and the directory after it, so the new content also
    survives a power loss.  ``mode`` is applied exactly (no umask).
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, "." + staging_name(os.path.basename(path)) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            publish_file(fd, tmp, path, durable=durable)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sweep_atomic_writes(directory: str | os.PathLike[str]) -> list[str]:
    """Delete what :func:`write_file_atomic` left in ``directory`` when its writer died.

    Its temporaries are ``.<name>.<pid>.<random>.tmp``; those of live
    processes (writes in flight) and names of any other shape are left
    alone.  Returns the names deleted.  ``cleanup`` calls this for every
    directory it keeps records in.
    """
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    swept = []
    for name in names:
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        stem = name[1 : -len(".tmp")]
        parts = stem.rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
            continue
        if int(parts[1]) == os.getpid() or made_by_other_live_process(stem):
            continue  # a write in flight (ours: another thread's)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
            swept.append(name)
    return swept


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


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Flush the whole filesystem holding ``path`` (one syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)
