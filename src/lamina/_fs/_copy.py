"""Copy a directory tree keeping everything a root filesystem needs.

This is the create-layer path of the vfs driver (a child layer starts as a
copy of its parent), so it is descriptor-relative and spends few system
calls per entry: one ``fstatat`` per entry from the directory scan, and for
a regular file ``open``/``open``/one data call/``fchown``/``flistxattr``/
``fchmod``/``futimens``/two ``close``.

What is kept, and how:

* **file data**: ``ioctl(FICLONE)`` (a reflink: shared extents, no data
  written) first; when the filesystem refuses it, ``copy_file_range`` (an
  in-kernel copy); then ``sendfile``; then ``pread``/``write``.  The first
  method that fails for a reason that will not change is dropped for the
  rest of the walk, so a tree on ext4 pays the failed clone once.  Sparse
  files (fewer blocks than bytes) are copied segment by segment with
  ``SEEK_DATA``/``SEEK_HOLE``, so their holes stay holes.
* **modes** including setuid, setgid and sticky, applied after ``chown``
  (which clears setuid) and after the data and xattrs are written (writing
  clears setuid and ``security.capability`` too).
* **owners** with ``lchown`` when running as root; an unprivileged copy
  cannot give files away, so ownership is skipped silently and the copy is
  owned by the caller.
* **every extended attribute**, ``security.capability``, ACLs and
  ``trusted.*`` included.  A failure to *write* one is an error, except
  when the value cannot be represented by this process: ``trusted.*`` and
  ``security.*`` when not root (an unprivileged process can usually not
  even list ``trusted.*``).  With ``best_effort_xattrs`` every xattr write
  failure is tolerated (vfs's ``vfs.xattrs=i_want_broken_containers``,
  for backing filesystems such as NFS or ramfs that lack xattrs).  Skipped
  attributes are counted in :class:`CopyStats`.
* **hardlinks** inside the tree stay hardlinks: the first copy of an inode
  is remembered by ``(st_dev, st_ino)`` and later names are ``link``-ed to it.
* **times** to the nanosecond, symlinks included (``utimensat`` with
  ``AT_SYMLINK_NOFOLLOW``); a directory's times, owner, mode and xattrs are
  set after its contents, so creating the children does not disturb them
  and inherited default ACLs or setgid bits do not leak onto the children.
* **device nodes** with ``mknod`` when privileged; without privilege
  (``EPERM``) they are skipped, as Docker does in a user namespace, and
  counted in :class:`CopyStats`.
* **FIFOs** with ``mkfifo``.  **Sockets** are recreated as socket inodes
  with ``mknod(S_IFSOCK)``, which needs no privilege: the copy is exactly
  what the source is once its server has gone (Docker turns them into
  FIFOs instead).  If the filesystem refuses, the socket is skipped.

The walk is a loop over a stack of directory pairs, never a recursion.  Only
the last :data:`lamina._tree.HELD` pairs on the current path (and the root's)
keep their descriptors open; an ancestor closed meanwhile is reopened as
``..`` of its child, checked to be the same directory on both sides
(:func:`lamina._tree.reopen_parent`), so a layer 1,500 directories deep is
copied within the common limit of 1024 descriptors.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from lamina._tree import HELD, reopen_parent

__all__ = ["CopyStats", "copy_tree"]

FICLONE = 0x40049409  # _IOW(0x94, 9, int)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SRC_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)
_SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: int | None = getattr(os, "SEEK_HOLE", None)
_CHUNK = 1 << 30
_RW_BUFFER = 1 << 20

# Errors after which a data-copy method will not work for this walk either.
_CLONE_GIVE_UP = frozenset(
    {
        errno.EOPNOTSUPP,
        errno.ENOTSUP,
        errno.ENOTTY,
        errno.EXDEV,
        errno.EINVAL,
        errno.ENOSYS,
        errno.EBADF,
        errno.EPERM,
    }
)
_CFR_GIVE_UP = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF}
)
_XATTR_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP})
_PRIVILEGED_NAMESPACES = ("trusted.", "security.")


class CopyStats:
    """What a copy did; ``method`` is the data-copy method that ended up in use.

    A plain class (not a dataclass) so that importing the copier does not
    import ``dataclasses`` and ``inspect``; equality and repr are kept.
    """

    _FIELDS = (
        "files",
        "dirs",
        "symlinks",
        "hardlinks",
        "specials",
        "bytes",
        "method",
        "skipped_devices",
        "skipped_xattrs",
    )
    __slots__ = tuple(sorted(_FIELDS))

    def __init__(
        self,
        files: int = 0,
        dirs: int = 0,
        symlinks: int = 0,
        hardlinks: int = 0,
        specials: int = 0,
        bytes: int = 0,
        method: str = "none",
        skipped_devices: list[str] | None = None,
        skipped_xattrs: list[str] | None = None,
    ) -> None:
        self.files = files
        self.dirs = dirs
        self.symlinks = symlinks
        self.hardlinks = hardlinks
        self.specials = specials
        self.bytes = bytes
        self.method = method
        self.skipped_devices: list[str] = [] if skipped_devices is None else skipped_devices
        self.skipped_xattrs: list[str] = [] if skipped_xattrs is None else skipped_xattrs

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, CopyStats):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"CopyStats({fields})"


class _Frame:
    """One directory being copied: both descriptors and the entries still to visit."""

    __slots__ = ("dst_fd", "dst_key", "entries", "rel", "src_fd", "st")

    def __init__(
        self,
        src_fd: int,
        dst_fd: int,
        st: os.stat_result,
        rel: str,
        entries: Iterator[str],
    ) -> None:
        self.src_fd = src_fd  # both -1 while closed to bound the descriptors held
        self.dst_fd = dst_fd
        self.st = st
        self.rel = rel
        self.entries = entries
        dst = os.fstat(dst_fd)
        self.dst_key = (dst.st_dev, dst.st_ino)  # how a reopened ``..`` is recognised


class _Copier:
    def __init__(self, best_effort_xattrs: bool) -> None:
        self.best_effort_xattrs = best_effort_xattrs
        self.root = os.geteuid() == 0
        self.clone = True
        self.copy_file_range = hasattr(os, "copy_file_range")
        self.sendfile = True
        self.noatime = _NOATIME if self.root else 0
        self.src_xattrs = True
        self.proc = os.path.isdir("/proc/self/fd")
        self.links: dict[tuple[int, int], str] = {}
        self.stats = CopyStats()
        self.dst_root_fd = -1
        self.src_root = ""
        self.dst_root = ""

    # -- data -----------------------------------------------------------

    def copy_data(self, sfd: int, dfd: int, st: os.stat_result) -> None:
        size = st.st_size
        if self.clone:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
            except OSError as exc:
                if exc.errno not in _CLONE_GIVE_UP:
                    raise
                self.clone = False
                if exc.errno == errno.EXDEV:
                    self.copy_file_range = False
            else:
                self.stats.method = "reflink"
                return
        if st.st_blocks * 512 < size and _SEEK_DATA is not None:
            self._copy_sparse(sfd, dfd, size)
        else:
            self._copy_range(sfd, dfd, 0, size)

    def _copy_sparse(self, sfd: int, dfd: int, size: int) -> None:
        """Copy only the data segments, so holes stay holes (lastlog can be terabytes)."""
        assert _SEEK_DATA is not None and _SEEK_HOLE is not None
        os.ftruncate(dfd, size)
        offset = 0
        while offset < size:
            try:
                data = os.lseek(sfd, offset, _SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return  # only a hole is left
                raise
            hole = min(os.lseek(sfd, data, _SEEK_HOLE), size)
            self._copy_range(sfd, dfd, data, hole - data)
            offset = hole

    def _copy_range(self, sfd: int, dfd: int, offset: int, length: int) -> None:
        """Copy ``length`` bytes at ``offset`` to the same offset, in the kernel if possible."""
        end = offset + length
        if self.copy_file_range:
            try:
                while offset < end:
                    n = os.copy_file_range(sfd, dfd, min(end - offset, _CHUNK), offset, offset)
                    if n == 0:
                        break
                    offset += n
            except OSError as exc:
                if exc.errno not in _CFR_GIVE_UP:
                    raise
                self.copy_file_range = False
            else:
                self.stats.method = "copy_file_range"
                return
        if self.sendfile:
            try:
                os.lseek(dfd, offset, os.SEEK_SET)  # sendfile writes at the file position
                while offset < end:
                    n = os.sendfile(dfd, sfd, offset, min(end - offset, _CHUNK))
                    if n == 0:
                        break
                    offset += n
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.sendfile = False
            else:
                self.stats.method = "sendfile"
                return
        while offset < end:
            buf = os.pread(sfd, min(end - offset, _RW_BUFFER), offset)
            if not buf:
                break
            view = memoryview(buf)
            while view:
                written = os.pwrite(dfd, view, offset)
                view = view[written:]
                offset += written
        self.stats.method = "read/write"

    # -- metadata -----------------------------------------------------------

    def _nofollow_path(self, dir_fd: int, name: str, root: str, rel: str) -> str:
        """A path for the xattr calls that have no ``*at`` form.

        ``/proc/self/fd/N/name`` resolves in one step from the open directory
        (and never through a symlink swapped in above it); the full path is
        the fallback where /proc is not mounted.
        """
        return f"/proc/self/fd/{dir_fd}/{name}" if self.proc else os.path.join(root, rel)

    def copy_xattrs(self, src: int | str, dst: int | str, where: str) -> None:
        """Copy every xattr; ``src``/``dst`` are descriptors or no-follow paths."""
        if not self.src_xattrs:
            return
        follow = isinstance(src, int)
        try:
            names = os.listxattr(src, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in _XATTR_UNSUPPORTED:
                self.src_xattrs = False  # the tree lives on one filesystem
                return
            raise
        for name in names:
            try:
                value = os.getxattr(src, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    continue  # removed while we looked
                raise
            try:
                os.setxattr(dst, name, value, 0, follow_symlinks=isinstance(dst, int))
            except OSError as exc:
                if self._tolerable_xattr_failure(name, exc):
                    self.stats.skipped_xattrs.append(f"{where}: {name}")
                    continue
                raise OSError(
                    exc.errno, f"cannot copy extended attribute {name}: {exc.strerror}", where
                ) from exc

    def _tolerable_xattr_failure(self, name: str, exc: OSError) -> bool:
        if self.best_effort_xattrs:
            return True
        unrepresentable = exc.errno in (errno.EPERM, errno.EACCES) or (
            exc.errno in _XATTR_UNSUPPORTED
        )
        return unrepresentable and not self.root and name.startswith(_PRIVILEGED_NAMESPACES)

    # -- walk -----------------------------------------------------------------

    def run(self, src: str, dst: str) -> CopyStats:
        self.src_root, self.dst_root = src, dst
        src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack: list[_Frame] = []
        try:
            src_st = os.fstat(src_fd)
            try:
                os.mkdir(dst, 0o700)
            except FileExistsError:
                with os.scandir(dst) as it:
                    if any(True for _ in it):
                        raise OSError(
                            errno.ENOTEMPTY, "copy destination is not empty", dst
                        ) from None
            dst_fd = os.open(dst, _DIR_FLAGS)
            self.dst_root_fd = dst_fd
            stack.append(_Frame(src_fd, dst_fd, src_st, "", iter(os.listdir(src_fd))))
            self.stats.dirs += 1
            self._walk(stack)
        finally:
            for frame in stack:
                if frame.dst_fd >= 0:
                    os.close(frame.dst_fd)
                if frame.src_fd not in (src_fd, -1):
                    os.close(frame.src_fd)
            os.close(src_fd)
        return self.stats

    def _finish_dir(self, frame: _Frame) -> None:
        st = frame.st
        dfd = frame.dst_fd
        if self.root:
            os.fchown(dfd, st.st_uid, st.st_gid)
        self.copy_xattrs(frame.src_fd, dfd, frame.rel or ".")
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))

    @staticmethod
    def _reopen(parent: _Frame, child: _Frame) -> None:
        """Reopen an ancestor closed to bound the descriptors (a chain of any depth)."""
        src = reopen_parent(child.src_fd, (parent.st.st_dev, parent.st.st_ino))
        try:
            parent.dst_fd = reopen_parent(child.dst_fd, parent.dst_key)
        except BaseException:
            os.close(src)
            raise
        parent.src_fd = src

    def _walk(self, stack: list[_Frame]) -> None:
        stats = self.stats
        while stack:
            frame = stack[-1]
            name = next(frame.entries, None)
            if name is None:
                self._finish_dir(frame)
                stack.pop()
                try:
                    if stack and stack[-1].src_fd < 0:
                        self._reopen(stack[-1], frame)
                finally:
                    os.close(frame.dst_fd)
                    if stack:  # the root's source descriptor is closed by run()
                        os.close(frame.src_fd)
                continue
            st = os.stat(name, dir_fd=frame.src_fd, follow_symlinks=False)
            fmt = stat.S_IFMT(st.st_mode)
            sdir, ddir = frame.src_fd, frame.dst_fd
            rel = f"{frame.rel}/{name}" if frame.rel else name
            if fmt == stat.S_IFDIR:
                os.mkdir(name, 0o700, dir_fd=ddir)
                child_src = os.open(name, _DIR_FLAGS, dir_fd=sdir)
                try:
                    child_dst = os.open(name, _DIR_FLAGS, dir_fd=ddir)
                except BaseException:
                    os.close(child_src)
                    raise
                try:
                    child = _Frame(child_src, child_dst, st, rel, iter(os.listdir(child_src)))
                except BaseException:
                    os.close(child_src)
                    os.close(child_dst)
                    raise
                stack.append(child)
                if len(stack) > HELD + 1:  # a deep tree: close an ancestor (never the root)
                    old = stack[-HELD - 1]
                    if old.src_fd >= 0:
                        os.close(old.src_fd)
                        os.close(old.dst_fd)
                        old.src_fd = old.dst_fd = -1
                stats.dirs += 1
                continue
            if st.st_nlink > 1:
                first = self.links.get((st.st_dev, st.st_ino))
                if first is not None:
                    os.link(
                        first,
                        name,
                        src_dir_fd=self.dst_root_fd,
                        dst_dir_fd=ddir,
                        follow_symlinks=False,
                    )
                    stats.hardlinks += 1
                    continue
            if fmt == stat.S_IFREG:
                self._copy_file(sdir, ddir, name, st, rel)
            elif fmt == stat.S_IFLNK:
                target = os.readlink(name, dir_fd=sdir)
                os.symlink(target, name, dir_fd=ddir)
                stats.symlinks += 1
                self._special_metadata(sdir, ddir, name, st, rel, is_link=True)
            elif self._make_special(ddir, name, st, rel):
                stats.specials += 1
                self._special_metadata(sdir, ddir, name, st, rel, is_link=False)
            else:
                continue  # skipped: nothing to link later names to
            if st.st_nlink > 1:
                self.links[(st.st_dev, st.st_ino)] = rel

    def _copy_file(self, sdir: int, ddir: int, name: str, st: os.stat_result, rel: str) -> None:
        size = st.st_size
        sfd = -1
        if size > 0:
            try:
                sfd = os.open(name, _SRC_FLAGS | self.noatime, dir_fd=sdir)
            except PermissionError:
                if not self.noatime:
                    raise
                self.noatime = 0  # O_NOATIME needs ownership or CAP_FOWNER
                sfd = os.open(name, _SRC_FLAGS, dir_fd=sdir)
        try:
            dfd = os.open(name, _DST_FLAGS, 0o600, dir_fd=ddir)
            try:
                if size > 0:
                    self.copy_data(sfd, dfd, st)
                    self.stats.bytes += size
                if self.root:
                    os.fchown(dfd, st.st_uid, st.st_gid)
                if sfd >= 0:
                    self.copy_xattrs(sfd, dfd, rel)
                else:
                    self.copy_xattrs(self._nofollow_path(sdir, name, self.src_root, rel), dfd, rel)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            if sfd >= 0:
                os.close(sfd)
        self.stats.files += 1

    def _make_special(self, ddir: int, name: str, st: os.stat_result, rel: str) -> bool:
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFIFO:
            os.mkfifo(name, 0o600, dir_fd=ddir)
            return True
        if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            try:
                os.mknod(name, fmt | 0o600, st.st_rdev, dir_fd=ddir)
            except PermissionError:
                self.stats.skipped_devices.append(rel)
                return False
            except OSError as exc:
                if fmt == stat.S_IFSOCK and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    self.stats.skipped_devices.append(rel)
                    return False
                raise
            return True
        raise OSError(errno.EINVAL, f"unknown file type {fmt:#o}", rel)

    def _special_metadata(
        self, sdir: int, ddir: int, name: str, st: os.stat_result, rel: str, *, is_link: bool
    ) -> None:
        if self.root:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=ddir, follow_symlinks=False)
        self.copy_xattrs(
            self._nofollow_path(sdir, name, self.src_root, rel),
            self._nofollow_path(ddir, name, self.dst_root, rel),
            rel,
        )
        if not is_link:
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=ddir)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=ddir, follow_symlinks=False)


def copy_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    best_effort_xattrs: bool = False,
) -> CopyStats:
    """Copy the tree at ``src`` to ``dst``, which must not exist yet or be empty.

    ``dst`` ends up with ``src``'s own mode, owner, xattrs and times as well.
    On error the partial copy is left in place for the caller to remove
    (the caller built it under a staging name, see :mod:`lamina._fs._atomic`).
    """
    return _Copier(best_effort_xattrs).run(os.fspath(src), os.fspath(dst))
