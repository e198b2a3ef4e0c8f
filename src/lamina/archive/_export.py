"""Deterministic PAX export of changes or whole trees, as Docker writes layer tars.

Entries follow Docker's ``addTarFile`` (pkg/archive): mtime truncated to
whole seconds, no atime/ctime, empty uname/gname, mode = permission bits
plus setuid/setgid/sticky, directories named with a trailing ``/``, a
second link to an inode (``nlink > 1``, keyed by device and inode) written
as a hard link to the first name seen with size 0, symlinks with their
target, devices with major/minor, fifos; sockets are skipped.

A layer being exported may belong to a running container.  Every directory
and body is opened beneath the root with ``_paths``' one rule (relative to
its parent's descriptor, no symlink followed), and a body is read only
after ``fstat`` of the opened descriptor shows the regular file that was
listed (same device and inode); its header is made from that ``fstat``.
What the container may do meanwhile, and what the export does:

* an entry removed (``ENOENT``): skipped (logged), as Docker does;
* a listed file replaced by a symlink, a device node, a FIFO, a socket,
  a directory or another file, or a listed directory replaced by anything
  that is not it: :class:`~lamina.errors.LayerChangedError` naming the
  path, before anything of what was swapped in is read;
* a file that shrinks or grows while its body is read:
  :class:`~lamina.errors.LayerChangedError`.  Its header, with the size,
  is already out, so the tar cannot hold the file as it now is; padding
  with zeros or cutting it (what this module did before) would give a
  valid tar holding a file that never existed, and nothing would tell the
  caller.  The stream ends with the error instead; export again.

Deliberate differences from Docker, for fidelity and reproducibility:

* xattrs: Docker exports only ``security.capability``.  We export every
  xattr as ``SCHILY.xattr.<name>`` (``user.*``, ``trusted.*``, ACLs, ...)
  except overlayfs' private ones (``trusted.overlay.*``,
  ``user.overlay.*``), which describe the upper directory rather than the
  file, and ``security.selinux``, which belongs to the host's policy.  Like
  Docker, a revision-3 (namespaced) ``security.capability`` is written as
  revision 2, because its root uid means nothing outside that namespace.
* whiteouts written by :func:`export_changes` carry mtime 0 (the epoch)
  where Docker stamps "now", so exporting the same changes twice gives the
  same bytes.
* an owner that the id map cannot translate fails the export with
  :class:`~lamina.errors.InvalidArchiveError` instead of silently dropping
  the file from the layer.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections import deque

from lamina._change import Change, ChangeKind
from lamina.archive import _tarwriter as tw
from lamina.archive._idmap import IDMap
from lamina.archive._paths import DirPath, NotRegularError, open_dir_beneath, open_regular_at
from lamina.archive._whiteout import OPAQUE_MARKER, WHITEOUT_PREFIX, WhiteoutFormat
from lamina.errors import ArchiveError, LayerChangedError, NotFoundError

# ``typing`` is for the checker only: importing it at run time (``re`` and more
# behind it) adds milliseconds to every process that exports a layer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import BinaryIO

__all__ = ["export_changes", "export_tree"]


def _debug(message: str, *args: object) -> None:
    """Log a skipped entry; ``logging`` is imported only when there is one to log."""
    import logging

    logging.getLogger(__name__).debug(message, *args)


_CHUNK = 1 << 20
# Files up to this size are read in one go into the header's piece; bigger
# ones are streamed straight into the reader's buffer.
_INLINE_MAX = 64 << 10
_NS = 1_000_000_000

_CAPABILITY = "security.capability"
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_PRIVATE_PREFIXES = ("trusted.overlay.", "user.overlay.")
_DROPPED = ("security.selinux",)

_HAVE_PROC_FD = os.path.isdir("/proc/self/fd")

# A piece of the stream: literal bytes, or (fd, size, path) of file content to copy.
_Piece = bytes | tuple[int, int, str]
# errnos of opening a directory that met something else at its name
_NOT_A_DIR = (errno.ELOOP, errno.ENOTDIR)


def _changed(rel: str, what: str, exc: OSError | None = None) -> LayerChangedError:
    return LayerChangedError(
        f"{rel}: {what} while the layer was exported",
        path=rel,
        errno=None if exc is None else exc.errno,
    )


class _TarStream(io.RawIOBase):
    """A readable tar stream pulled from a generator of pieces; no threads.

    File content is read with ``readv`` straight into the caller's buffer.
    Closing early closes the generator (which closes its directory
    descriptors) and any file being copied.
    """

    def __init__(self, entries: Iterator[tuple[_Piece, ...]], on_close: Callable[[], None]) -> None:
        super().__init__()
        self._entries = entries  # one tuple of pieces per tar member
        self._queue: deque[_Piece] = deque()
        self._on_close: Callable[[], None] | None = on_close
        self._data: bytes | memoryview = b""
        self._fd = -1
        self._path = ""  # the entry _fd belongs to
        self._left = 0  # bytes of file content still owed for _fd
        self._pad = 0
        self._done = False
        self._error: Exception | None = None

    def readable(self) -> bool:
        return True

    def _finish_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        # An error is sticky: a caller that reads on after it must never be
        # given the end-of-archive marker, which would make a cut tar look whole.
        if self._error is not None:
            raise self._error
        try:
            return self._fill(buffer)
        except Exception as exc:
            self._error = exc
            raise

    def _fill(self, buffer: memoryview | bytearray) -> int:
        out = memoryview(buffer).cast("B")
        want = len(out)
        n = 0
        while n < want:
            data = self._data
            if data:
                k = len(data)
                if k <= want - n:
                    out[n : n + k] = data
                    n += k
                    self._data = b""
                else:
                    k = want - n
                    out[n:] = data[:k]
                    self._data = memoryview(data)[k:]
                    n = want
            elif self._left:
                n += self._copy_file(out, n, want)
            elif self._queue:
                piece = self._queue.popleft()
                if isinstance(piece, bytes):
                    self._data = piece
                else:
                    self._fd, self._left, self._path = piece
                    self._pad = self._left
            elif self._done:
                break
            else:
                try:
                    self._queue.extend(next(self._entries))
                except StopIteration:
                    self._done = True
                    self._data = tw.END_OF_ARCHIVE
        return n

    def _copy_file(self, out: memoryview, n: int, want: int) -> int:
        """Copy the current file's content into ``out[n:want]``; the count copied.

        A file that ends before its header's size, or goes on after it,
        changed while it was read: :class:`LayerChangedError`.
        """
        k = min(self._left, want - n)
        try:
            got = os.readv(self._fd, [out[n : n + k]])
            more = b"" if got < self._left else os.read(self._fd, 1)
        except OSError as exc:
            raise ArchiveError(f"{self._path}: {exc.strerror}", errno=exc.errno) from exc
        if got == 0:
            raise _changed(self._path, f"shrank below the {self._pad} bytes listed")
        if more:
            raise _changed(self._path, f"grew past the {self._pad} bytes listed")
        self._left -= got
        if not self._left:
            self._finish_file()
            self._data = tw.padding(self._pad)
        return got

    def readall(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            chunk = self.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def close(self) -> None:
        if not self.closed:
            try:
                close = getattr(self._entries, "close", None)
                if close is not None:
                    close()
                self._finish_file()
                for piece in self._queue:
                    if not isinstance(piece, bytes):
                        os.close(piece[0])
                self._queue.clear()
            finally:
                if self._on_close is not None:
                    self._on_close()
                    self._on_close = None
        super().close()


def _wrap(entries: Iterator[tuple[_Piece, ...]], root_fd: int) -> BinaryIO:
    raw = _TarStream(entries, lambda: os.close(root_fd))
    return io.BufferedReader(raw, _CHUNK)


def _convert_xattr(name: str, value: bytes) -> bytes:
    if name == _CAPABILITY and len(value) >= 4 and value[3] == 3:
        v2 = bytearray(value[:20])
        v2[3] = 2
        return bytes(v2)
    return value


def _read_xattrs(target: int | str) -> tuple[list[tuple[bytes, bytes]], bool]:
    """(exported xattrs sorted by name, whether the overlay opaque flag is set).

    ``target`` is an open descriptor, or a path whose last component is not
    followed.
    """
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=False)
    except OSError:
        return [], False  # none, unsupported here, or vanished
    if not names:
        return [], False
    out: list[tuple[bytes, bytes]] = []
    opaque = False
    for name in sorted(names):
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        if name in _OPAQUE_XATTRS:
            opaque = opaque or value == b"y"
        if name.startswith(_PRIVATE_PREFIXES) or name in _DROPPED:
            continue
        out.append((os.fsencode(name), _convert_xattr(name, value)))
    return out, opaque


def _read_small(fd: int, size: int, rel: str) -> bytes:
    """Exactly the ``size`` bytes of a file, or :class:`LayerChangedError` if it has more or fewer.

    One read of ``size + 1`` bytes tells a file that grew from one that did
    not, at no extra system call.
    """
    try:
        data = os.read(fd, size + 1)
        if len(data) < size:
            parts = [data]
            got = len(data)
            while got < size:
                more = os.read(fd, size + 1 - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
    except OSError as exc:
        raise ArchiveError(f"{rel}: {exc.strerror}", errno=exc.errno) from exc
    if len(data) != size:
        how = "grew past" if len(data) > size else "shrank below"
        raise _changed(rel, f"{how} the {size} bytes listed")
    return data


class _Members:
    """Turns (directory fd, name, lstat) into tar pieces, tracking hard links."""

    def __init__(self, root: str, id_map: IDMap | None, whiteouts: WhiteoutFormat) -> None:
        self.root = root
        self.id_map = None if id_map is None or id_map.is_identity else id_map
        self.overlay = whiteouts is WhiteoutFormat.OVERLAY
        self.links: dict[tuple[int, int], bytes] = {}

    def _owner(self, st: os.stat_result, basename: str) -> tuple[int, int]:
        if self.id_map is None or basename.startswith(WHITEOUT_PREFIX):
            return st.st_uid, st.st_gid
        return self.id_map.to_container(st.st_uid, st.st_gid)

    def entry(
        self,
        dir_fd: int,
        name: str,
        rel: str,
        st: os.stat_result,
        dir_fd_of_self: int | None = None,
    ) -> tuple[_Piece, ...]:
        """Pieces for ``rel`` (relative path, no leading slash) named ``name`` in ``dir_fd``.

        For a directory, ``dir_fd_of_self`` is its own open descriptor (for
        its xattrs).
        """
        mode = st.st_mode
        fmt = stat.S_IFMT(mode)
        arcname = os.fsencode(rel)
        mtime = st.st_mtime_ns // _NS
        perm = mode & 0o7777

        if fmt == stat.S_IFCHR and self.overlay and st.st_rdev == 0:
            slash = arcname.rfind(b"/")
            wh = arcname[: slash + 1] + WHITEOUT_PREFIX.encode() + arcname[slash + 1 :]
            return (
                tw.encode_header(
                    wh, tw.REGTYPE, mode=0o600, uid=st.st_uid, gid=st.st_gid, mtime=mtime
                ),
            )
        if fmt == stat.S_IFSOCK:
            _debug("export: skipping socket %s", rel)
            return ()

        uid, gid = self._owner(st, name)
        if fmt == stat.S_IFDIR:
            target: int | str = (
                dir_fd_of_self if dir_fd_of_self is not None else self._beneath(dir_fd, name, rel)
            )
            xattrs, opaque = _read_xattrs(target)
            dirname = arcname + b"/"
            header = tw.encode_header(
                dirname, tw.DIRTYPE, mode=perm, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs
            )
            if opaque and self.overlay:
                header += tw.encode_header(
                    dirname + OPAQUE_MARKER.encode(),
                    tw.REGTYPE,
                    mode=perm & 0o777,
                    uid=uid,
                    gid=gid,
                    mtime=0,
                )
            return (header,)

        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                return (
                    tw.encode_header(
                        arcname,
                        tw.LNKTYPE,
                        mode=perm,
                        uid=uid,
                        gid=gid,
                        mtime=mtime,
                        linkname=first,
                    ),
                )
        else:
            key = None

        if fmt == stat.S_IFREG:
            try:
                fd, st = open_regular_at(dir_fd, name, st)
            except NotRegularError as exc:
                raise _changed(rel, "was replaced by something else", exc) from None
            except OSError as exc:
                _debug("export: skipping %s: %s", rel, exc)
                return ()
            try:
                # the header describes the inode opened, which may have been
                # written to since it was listed
                uid, gid = self._owner(st, name)
                try:
                    has_xattrs = bool(os.listxattr(fd))
                except OSError:
                    has_xattrs = False
                xattrs = _read_xattrs(fd)[0] if has_xattrs else []
                size = st.st_size
                header = tw.encode_header(
                    arcname,
                    tw.REGTYPE,
                    mode=st.st_mode & 0o7777,
                    uid=uid,
                    gid=gid,
                    mtime=st.st_mtime_ns // _NS,
                    size=size,
                    xattrs=xattrs,
                )
                if size <= _INLINE_MAX:
                    piece: _Piece = header + _read_small(fd, size, rel) + tw.padding(size)
                else:
                    piece = header
            except BaseException:
                os.close(fd)
                raise
            if key is not None:
                self.links[key] = arcname
            if size <= _INLINE_MAX:
                os.close(fd)
                return (piece,)
            return (piece, (fd, size, rel))  # the stream owns fd from here

        linkname = b""
        devmajor = devminor = 0
        if fmt == stat.S_IFLNK:
            typeflag = tw.SYMTYPE
            try:
                linkname = os.fsencode(os.readlink(name, dir_fd=dir_fd))
            except OSError as exc:
                _debug("export: skipping %s: %s", rel, exc)
                return ()
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            typeflag = tw.CHRTYPE if fmt == stat.S_IFCHR else tw.BLKTYPE
            devmajor, devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif fmt == stat.S_IFIFO:
            typeflag = tw.FIFOTYPE
        else:
            _debug("export: skipping %s of unknown type %o", rel, fmt)
            return ()
        xattrs, _ = _read_xattrs(self._beneath(dir_fd, name, rel))
        if key is not None:
            self.links[key] = arcname
        header = tw.encode_header(
            arcname,
            typeflag,
            mode=perm,
            uid=uid,
            gid=gid,
            mtime=mtime,
            linkname=linkname,
            devmajor=devmajor,
            devminor=devminor,
            xattrs=xattrs,
        )
        return (header,)

    def _beneath(self, dir_fd: int, name: str, rel: str) -> str:
        """A path naming ``name`` in ``dir_fd`` for the xattr calls, which have no ``*at`` form.

        Through ``/proc/self/fd`` the kernel starts from the open directory,
        so a parent swapped for a symlink meanwhile cannot redirect the
        lookup out of the tree; without /proc, the plain path.
        """
        if _HAVE_PROC_FD:
            return f"/proc/self/fd/{dir_fd}/{name}"
        return f"{self.root}/{rel}"


def _open_root(root: str | os.PathLike[str]) -> tuple[str, int]:
    path = os.fspath(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NotFoundError(f"cannot export {path!r}: {exc.strerror}", errno=exc.errno) from exc
    return path.rstrip("/") or "/", fd


def _changes_pieces(
    root: str, root_fd: int, changes: list[Change], id_map: IDMap | None
) -> Iterator[tuple[_Piece, ...]]:
    members = _Members(root, id_map, WhiteoutFormat.OCI)
    dirs = DirPath(root_fd)
    try:
        for change in changes:
            parts = [p for p in change.path.split("/") if p]
            if not parts:
                continue  # the root itself is never an entry
            name = parts[-1]
            rel = "/".join(parts)
            if change.kind == ChangeKind.DELETE:
                parent = rel[: len(rel) - len(name)]
                whiteout = os.fsencode(parent + WHITEOUT_PREFIX + name)
                yield (tw.encode_header(whiteout, tw.REGTYPE, mode=0, uid=0, gid=0, mtime=0),)
                continue
            try:
                dir_fd = dirs.fd(parts[:-1])
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                self_fd = dirs.fd(parts) if stat.S_ISDIR(st.st_mode) else None
            except OSError as exc:
                if exc.errno in _NOT_A_DIR:  # the changes were found with directories there
                    raise _changed(rel, "has a directory replaced by something else", exc) from None
                _debug("export: skipping %s: %s", change.path, exc)
                continue
            pieces = members.entry(dir_fd, name, rel, st, self_fd)
            if pieces:
                yield pieces
    finally:
        dirs.close()


def _list_dir(fd: int) -> list[tuple[str, os.stat_result]]:
    """Entries of a directory with their lstat, in reverse name order (popped from the end)."""
    out = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                out.append((entry.name, entry.stat(follow_symlinks=False)))
            except OSError:
                continue  # vanished meanwhile
    out.sort(key=lambda item: item[0], reverse=True)
    return out


def _tree_pieces(
    root: str, root_fd: int, whiteouts: WhiteoutFormat, id_map: IDMap | None
) -> Iterator[tuple[_Piece, ...]]:
    members = _Members(root, id_map, whiteouts)
    # (directory fd, its path with a trailing "/", entries left in reverse name order)
    stack: list[tuple[int, str, list[tuple[str, os.stat_result]]]] = [
        (root_fd, "", _list_dir(root_fd))
    ]
    try:
        while stack:
            fd, prefix, entries = stack[-1]
            if not entries:
                stack.pop()
                if fd != root_fd:
                    os.close(fd)
                continue
            name, st = entries.pop()
            rel = prefix + name
            if not stat.S_ISDIR(st.st_mode):
                pieces = members.entry(fd, name, rel, st)
                if pieces:
                    yield pieces
                continue
            try:
                child_fd = open_dir_beneath(fd, name)
            except OSError as exc:
                if exc.errno in _NOT_A_DIR:
                    raise _changed(rel, "was listed as a directory and replaced", exc) from None
                _debug("export: skipping %s: %s", rel, exc)
                continue
            try:
                listing = _list_dir(child_fd)
            except OSError as exc:
                os.close(child_fd)
                _debug("export: skipping %s: %s", rel, exc)
                continue
            stack.append((child_fd, rel + "/", listing))
            yield members.entry(fd, name, rel, st, child_fd)
    finally:
        for fd, _, _ in stack:
            if fd != root_fd:
                os.close(fd)


def export_changes(
    root: str | os.PathLike[str], changes: Iterable[Change], *, id_map: IDMap | None = None
) -> BinaryIO:
    """A tar stream of ``changes`` read from ``root``; deletions become whiteouts.

    Entries are in path order (Docker sorts the changes by path); a changed
    directory is one entry, its contents appear only as their own changes.
    """
    path, fd = _open_root(root)
    ordered = sorted(changes)
    return _wrap(_changes_pieces(path, fd, ordered, id_map), fd)


def export_tree(
    root: str | os.PathLike[str],
    *,
    whiteouts: WhiteoutFormat = WhiteoutFormat.OCI,
    id_map: IDMap | None = None,
) -> BinaryIO:
    """A tar stream of the whole tree under ``root`` (root entry omitted).

    Walks depth first with names sorted within each directory, like Go's
    ``filepath.WalkDir``.  With ``whiteouts=OVERLAY`` the tree is an
    overlayfs upper directory: 0:0 character devices become ``.wh.<name>``
    files (mode 0600, owner kept) and a directory whose opaque xattr is
    ``y`` is followed by a ``.wh..wh..opq`` file with the directory's
    permission bits.
    """
    path, fd = _open_root(root)
    return _wrap(_tree_pieces(path, fd, whiteouts, id_map), fd)
