"""Deleting a directory tree: iteratively, beneath a descriptor, never following a link.

Why one module.  lamina deletes trees in two places: a retired layer (every
driver's ``remove`` and ``cleanup``, through ``lamina._fs.remove_tree``) and
an entry that a layer tar replaces (the applier, relative to the descriptor
of the entry's parent).  Both run over content a container or a layer tar
made, so both must survive any shape that content can take; this is the one
remover both use.  It sits on the lowest floor (it needs nothing of lamina)
so that ``archive`` and ``_fs`` can both stand on it.

Depth.  A layer tar of 2 KB holds a directory chain thousands deep, and a
container can make one.  Nothing here recurses: the walk keeps its own stack
of frames (one per directory on the current path: its name, its remaining
entries and its inode), so the interpreter's stack never limits the depth.
Paths are never built: every call is relative to the descriptor of the
directory it acts in, so a path longer than ``PATH_MAX`` (4096 bytes) is no
different from a short one.

Descriptors.  Only the last :data:`HELD` directories of the current path
keep their descriptors open; an ancestor whose descriptor was closed is
reopened as ``..`` of its child when the walk climbs back to it, and that
descriptor must be the very directory (device and inode) seen on the way
down, or the removal stops with ``ESTALE`` rather than delete from a place
that was moved under it.  So a chain of any depth costs at most
``HELD + 1`` descriptors.  (``shutil.rmtree`` recurses with one descriptor
per level: a 1,500-deep tree exceeds the interpreter's recursion limit, and
a deeper one the process's descriptor limit.)

Permissions.  A faithful copy of a root filesystem has directories that
their owner cannot write (``0555``) or read.  Root is not stopped by them;
an unprivileged owner is, so then a directory lacking ``rwx`` for its owner
is given it before it is emptied (it is about to go).  Nothing outside the
tree is ever re-moded.

Races.  A name that vanished while the walk ran is not an error (a missing
tree is not one either).  A directory that got an entry back after it was
emptied (``ENOTEMPTY``: the last write of a writer killed with its process
may land late) is walked again, up to :data:`ATTEMPTS` times in all.

Mounts.  The walk never leaves the filesystem of the tree's top: a
directory on another device (a bind mount a crashed runtime left in a
layer, a volume) raises :class:`~lamina.errors.InUseError` before anything
on it is touched.  (``shutil.rmtree`` deletes the mounted files, then fails
on the mount point; a host directory bind-mounted into a container's layer
would be emptied.)  Directories of an overlayfs view all report the
overlay's device, so a merged view is one filesystem here, as it should be.

Filesystems.  No entry is renamed (a rename of a lower directory in an
overlayfs merged view fails with ``EXDEV``), so this works in a merged view
as well as on a plain directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from lamina.errors import InUseError

__all__ = ["ATTEMPTS", "HELD", "ShortPaths", "remove_tree", "remove_tree_at", "reopen_parent"]

#: Directory descriptors kept open along the current path, at most.
HELD = 64
#: Walks of one tree before an ``ENOTEMPTY`` is given up on.
ATTEMPTS = 3

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_OPEN = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Frame:
    """A directory on the current path: what is still to delete in it."""

    __slots__ = ("fd", "key", "name", "names")

    def __init__(self, name: str, fd: int, key: tuple[int, int], names: list[str]) -> None:
        self.name = name  # its name in the frame below it on the stack
        self.fd = fd  # -1 once closed to bound the descriptors held
        self.key = key  # (st_dev, st_ino): how a reopened ``..`` is recognised
        self.names = names  # entries not yet deleted


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` and everything below it; a missing path is not an error.

    A non-directory is unlinked; a symlink is removed, never followed.
    """
    path = os.fspath(path)
    head, tail = os.path.split(path.rstrip("/") or "/")
    if not tail or tail in (".", ".."):
        raise OSError(errno.EINVAL, "refusing to remove this tree", path)
    try:  # the caller's own path to the tree may hold symlinks; the tree is never followed
        parent_fd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        remove_tree_at(parent_fd, tail)
    finally:
        os.close(parent_fd)


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Delete ``name`` of directory ``parent_fd`` and all it holds; missing is fine.

    ``name`` is resolved like the name of any ``*at`` call; its last
    component is never followed (a symlink there is itself removed).
    """
    for attempt in range(ATTEMPTS):
        try:
            _remove_once(parent_fd, name)
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or attempt == ATTEMPTS - 1:
                raise


def _remove_once(parent_fd: int, name: str) -> None:
    if not _unlink_or_is_dir(parent_fd, name):
        return
    try:
        os.rmdir(name, dir_fd=parent_fd)  # empty: one call
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EACCES, errno.EPERM):
            raise
    unprivileged = os.geteuid() != 0
    opened = _open_dir(parent_fd, name, unprivileged)
    if opened is None:
        return
    stack = [_Frame(name, *opened)]
    device = stack[0].key[0]
    try:
        while stack:
            frame = stack[-1]
            if frame.names:
                child = frame.names.pop()
                if not _unlink_or_is_dir(frame.fd, child):
                    continue
                opened = _open_dir(frame.fd, child, unprivileged)
                if opened is None:
                    continue
                stack.append(_Frame(child, *opened))
                if opened[1][0] != device:
                    raise InUseError(
                        f"{child!r} in the tree being removed is a mount point: "
                        "unmount it first (nothing on it was deleted)",
                        errno=errno.EBUSY,
                    )
                if len(stack) > HELD:
                    old = stack[-HELD - 1]
                    if old.fd >= 0:
                        os.close(old.fd)
                        old.fd = -1
                continue
            # emptied: delete it from the directory below it on the stack
            stack.pop()
            try:
                if stack and stack[-1].fd < 0:
                    stack[-1].fd = reopen_parent(frame.fd, stack[-1].key)
            finally:
                os.close(frame.fd)
                frame.fd = -1
            if not stack:
                _rmdir(parent_fd, name)
                return
            _rmdir(stack[-1].fd, frame.name)
    finally:
        for frame in stack:
            if frame.fd >= 0:
                os.close(frame.fd)


def _unlink_or_is_dir(dir_fd: int, name: str) -> bool:
    """Unlink a non-directory; True if ``name`` is a directory (left in place)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return False
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return True
    except PermissionError:
        # unlink of a directory is EISDIR on Linux, EPERM on some systems
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            return True
        raise


def _rmdir(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dir_fd)


def _open_dir(
    dir_fd: int, name: str, unprivileged: bool
) -> tuple[int, tuple[int, int], list[str]] | None:
    """Open and list a directory to be emptied (None: it is gone).

    Unprivileged, a directory without ``rwx`` for its owner is given it;
    a directory that cannot be opened to be re-moded is reached by an
    ``O_PATH`` descriptor, so no symlink swapped in is ever followed.
    """
    try:
        fd = os.open(name, _DIR_OPEN, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except PermissionError:
        if not unprivileged:
            raise
        try:
            pfd = os.open(name, _PATH_OPEN, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        try:
            mode = stat.S_IMODE(os.fstat(pfd).st_mode)
            os.chmod(f"/proc/self/fd/{pfd}", mode | stat.S_IRWXU)
            fd = os.open(".", _DIR_OPEN, dir_fd=pfd)
        finally:
            os.close(pfd)
    try:
        st = os.fstat(fd)
        if unprivileged and st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
            # someone else's directory cannot be re-moded; an empty one still goes
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        return fd, (st.st_dev, st.st_ino), os.listdir(fd)
    except BaseException:
        os.close(fd)
        raise


def reopen_parent(child_fd: int, key: tuple[int, int]) -> int:
    """``..`` of ``child_fd``, which must be the directory ``key`` seen on the way down.

    How a walk that closed an ancestor's descriptor (to bound those it holds)
    climbs back to it: ``ESTALE`` if the tree was moved meanwhile.
    """
    fd = os.open("..", _DIR_OPEN, dir_fd=child_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != key:
        os.close(fd)
        raise OSError(errno.ESTALE, "a directory being removed was moved away")
    return fd


class ShortPaths:
    """Names for paths longer than ``PATH_MAX`` that system calls accept.

    A walk that works with full paths (simple, and as fast as any) meets
    paths past ``PATH_MAX`` in a deep tree, where every call on them fails
    with ``ENAMETOOLONG``.  :meth:`get` turns such a path into
    ``/proc/self/fd/<N>/<rest>``: ``N`` is a descriptor (``O_PATH``, opened
    without following a final symlink) of an ancestor directory short
    enough to open, repeatedly until what is left is short.  A path that is
    already short is returned as it is, so the common case costs nothing.

    The descriptors are kept in a least-recently-used table of at most
    ``held`` entries, so a wide tree of long paths cannot exhaust the
    process's descriptors.  A name returned is therefore valid only until
    :meth:`get` has been called ``held`` more times: use it at once (for
    the calls of one entry), never store it.  :meth:`close` releases all.
    """

    #: paths of up to this many characters are used as they are: even at four
    #: bytes a character they are within Linux's PATH_MAX (4096 bytes)
    LIMIT = 1000

    def __init__(self, held: int = 256) -> None:
        self._held = held
        self._fds: dict[str, int] = {}  # full path of an ancestor -> its descriptor

    def get(self, path: str) -> str:
        limit = self.LIMIT
        if len(path) <= limit:
            return path
        base, start = "", 0  # path[:start] is reached as ``base``
        while len(base) + len(path) - start > limit:
            cut = path.rfind("/", start + 1, start + limit - len(base))
            if cut <= start:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
            ancestor = path[:cut]
            fd = self._fds.pop(ancestor, -1)
            if fd < 0:
                fd = os.open(base + path[start:cut], _PATH_OPEN)
                if len(self._fds) >= self._held:  # the least recently used goes
                    os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[ancestor] = fd  # now the most recently used
            base, start = f"/proc/self/fd/{fd}", cut
        return base + path[start:]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ShortPaths:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
