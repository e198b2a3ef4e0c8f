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
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "exchange_dirs",
    "made_by_other_live_process",
    "make_staging_dir",
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


def _make_writable_and_retry(func: Callable[..., Any], path: str, exc: BaseException) -> None:
    """rmtree error hook: an unprivileged owner may have copied a 0o555 directory."""
    if isinstance(exc, FileNotFoundError):
        return
    if not isinstance(exc, PermissionError):
        raise exc
    try:
        parent = os.path.dirname(path)
        st = os.lstat(parent)
        os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
            _rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return


def _on_error(func: Callable[..., Any], path: str, exc_info: Any) -> None:
    _make_writable_and_retry(func, path, exc_info[1])


def _rmtree(path: str | os.PathLike[str]) -> None:
    import shutil  # with bz2 and lzma behind it: only processes that delete trees pay

    kwargs: dict[str, Any]
    if sys.version_info >= (3, 12):
        kwargs = {"onexc": _make_writable_and_retry}
    else:
        kwargs = {"onerror": _on_error}
    shutil.rmtree(path, **kwargs)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a directory tree; a missing tree is not an error.

    Unlike a bare ``shutil.rmtree`` this also removes trees whose
    directories are not writable by their (unprivileged) owner, which any
    faithful copy of a root filesystem contains.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    for attempt in range(3):
        try:
            _rmtree(path)
            return
        except OSError as exc:
            # A directory that was emptied got an entry back: the last call of a
            # writer killed with its process (an apply's helper) can land late.
            if exc.errno != errno.ENOTEMPTY or attempt == 2:
                raise


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
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


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
