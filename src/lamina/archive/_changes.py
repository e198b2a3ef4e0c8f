"""Change detection between two trees, with Docker's shapes but correct results.

The shapes are Docker's ``ChangesDirs`` (pkg/archive/changes.go):

* an added directory lists every descendant as ADD;
* a deleted directory is a single DELETE (its contents are not listed);
* a file <-> directory replacement is one MODIFY, with no DELETE for the
  old children (the new directory's children are ADDs);
* a directory gets MODIFY whenever anything below it changed, unless it is
  itself ADD or MODIFY already, and never for the root;
* names with the same inode number on the same device are pruned unvisited
  (hardlinked or shared trees);
* metadata compared: raw ``st_mode``, uid, gid, rdev and mtime, and for
  non-directories size (mtimes with whole-second tolerance: if either side's
  nanoseconds are 0 the seconds decide, for tar-extracted files); the
  ``security.capability`` bytes are compared.

One deliberate difference from Docker: a directory whose mtime differs is
MODIFY, even when nothing below it changed.  Docker's ``statDifferent``
skips directory mtimes, so a directory whose entries came and went (``/tmp``
after a build step, a cache emptied) is left out of the diff and its parent
plus the diff is not the layer: the directory keeps the parent's time.
overlayfs's native diff (the upper directory as it is) has always carried
those directories, so the naive diff now agrees with it and
``apply(parent, diff(layer, parent))`` reproduces the layer's tree,
directory times included (directory times are set after all entries, so
the children applied below it do not disturb them).  The root is still
never reported: a tar cannot carry its metadata (the applier skips ``./``).

Where Docker stops at metadata we go one step further, because a file
rewritten with the same size inside one timestamp tick has the same
metadata; that is why Docker's own Changes conformance test is disabled.

How we avoid reading every unchanged file: a regular file whose metadata
equals the other side's is ambiguous only if it may have been written after
the two copies parted.  Of the two files, the one born later (``statx``
birth time) is the copy, and at its birth its content matched.  A write to
either file after that moment sets its mtime to at least that birth time.
So if both mtimes are older than the later birth time minus a slack for
coarse or slightly stepped clocks, neither was written since the copy:
unchanged, nothing read.  Otherwise (recently written files, or no birth
time on this filesystem) the two contents are streamed and compared,
stopping at the first difference.  A symlink's target is fixed at its
birth, so the same test decides whether two equal-looking symlinks need a
``readlink`` each.  The same inode on both sides is never read.  Files of
real images carry mtimes from their tars, days or years older than the
extraction that gave birth to them, so a layer diff reads only the files
touched around the time its copy was made: on a Debian base layer (6.7k
entries) extracted by GNU tar and copied with ``cp -a``, then changed as a
container would, a scan reads no file at all (one ``statx`` per
metadata-equal regular file or symlink).
The one thing trusted, as Docker does, is an mtime that was deliberately
set back (utime) to well before the file's birth.

The walk is descriptor-relative: each directory pair is listed with
``scandir`` on open descriptors (names from ``getdents``, inode numbers for
pruning without a stat), entries are ``fstatat``-ed once per side, and the
old side's names are matched through a dict rather than a sorted merge (the
result is sorted once at the end).
"""

from __future__ import annotations

import errno
import os
import stat

from lamina._change import Change, ChangeKind
from lamina._tree import ShortPaths
from lamina.archive._statx import birth_time_ns
from lamina.errors import NotFoundError

__all__ = ["changes", "changes_size"]


def _debug(message: str, *args: object) -> None:
    """Log at debug level; ``logging`` is imported only when something went wrong."""
    import logging

    logging.getLogger(__name__).debug(message, *args)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CAPABILITY = "security.capability"
_NS = 1_000_000_000
# Clock slack for the birth-time test: covers coarse (jiffy) timestamps,
# whole-second mtimes and small clock steps between the two writes.
_SLACK_NS = 2 * _NS
_CHUNK = 1 << 20
# Directory descriptors kept open per side along the current path; deeper
# ancestors are closed and reopened from the root when needed again.
_MAX_HELD_DEPTH = 128


class ChangeStats:
    """What a change scan cost: how many file pairs it had to read or birth-check."""

    __slots__ = ("birth_checks", "content_reads")

    def __init__(self, content_reads: int = 0, birth_checks: int = 0) -> None:
        self.content_reads = content_reads
        self.birth_checks = birth_checks

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangeStats):
            return NotImplemented
        return (self.content_reads, self.birth_checks) == (other.content_reads, other.birth_checks)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"ChangeStats(content_reads={self.content_reads}, birth_checks={self.birth_checks})"


class _Frame:
    """One directory being compared: its descriptors and the subdirectories still to visit."""

    __slots__ = ("added", "new_fd", "old_fd", "paired", "path", "pending", "start")

    def __init__(
        self, new_fd: int | None, old_fd: int | None, path: str, start: int, added: bool
    ) -> None:
        self.new_fd = new_fd
        self.old_fd = old_fd
        self.paired = old_fd is not None  # compared against an old directory
        self.path = path  # "" for the root, else "/a/b"
        self.start = start  # len(out) when this directory began
        self.added = added  # reported ADD/MODIFY itself, or below an ADD
        # (name, has an old directory counterpart, counts as added, both on one device)
        self.pending: list[tuple[str, bool, bool, bool]] = []

    def close(self) -> None:
        for fd in (self.new_fd, self.old_fd):
            if fd is not None:
                os.close(fd)
        self.new_fd = self.old_fd = None


def _mtime_bound(st: os.stat_result) -> int:
    """Latest time the content may have been written, given a possibly truncated mtime."""
    ns = st.st_mtime_ns
    return ns + _NS if ns % _NS == 0 else ns


def stat_different(old: os.stat_result, new: os.stat_result) -> bool:
    """Mode, owner, rdev and mtime; size for non-directories (Docker's plus directory mtimes).

    Docker's ``statDifferent`` ignores a directory's mtime, so a directory
    whose entries came and went (``/tmp``) is missing from its diff, and the
    parent plus the diff is not the layer.  Comparing it too makes
    ``apply(parent, diff)`` reproduce every directory time (see the module
    doc).  The size of a directory says nothing and stays ignored.
    """
    if (
        old.st_mode != new.st_mode
        or old.st_uid != new.st_uid
        or old.st_gid != new.st_gid
        or old.st_rdev != new.st_rdev
    ):
        return True
    if old.st_size != new.st_size and not stat.S_ISDIR(old.st_mode):
        return True
    a, b = old.st_mtime_ns, new.st_mtime_ns
    if a == b:
        return False
    if a // _NS != b // _NS:
        return True
    return a % _NS != 0 and b % _NS != 0


def _capability(path: str, dir_fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAPABILITY, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            try:
                return os.getxattr(
                    f"/proc/self/fd/{dir_fd}/{name}", _CAPABILITY, follow_symlinks=False
                )
            except OSError:
                return None
        return None


def _same_content(new_fd: int, old_fd: int, name: str) -> bool:
    try:
        a = os.open(name, _FILE_FLAGS, dir_fd=new_fd)
    except OSError:
        return False
    try:
        try:
            b = os.open(name, _FILE_FLAGS, dir_fd=old_fd)
        except OSError:
            return False
        try:
            while True:
                x = os.read(a, _CHUNK)
                y = os.read(b, _CHUNK)
                if x != y:
                    return False
                if not x:
                    return True
        finally:
            os.close(b)
    except OSError:
        return False
    finally:
        os.close(a)


class _Scan:
    def __init__(self, new_root: str, old_root: str | None) -> None:
        self.new_root = new_root
        self.old_root = old_root
        self.out: list[Change] = []
        self.stats = ChangeStats()
        self.stack: list[_Frame] = []
        self.new_root_fd = -1
        self.old_root_fd = -1

    # -- descriptors -------------------------------------------------------

    def _reopen(self, frame: _Frame) -> None:
        """Reopen a frame whose descriptors were closed to bound open fds."""
        parts = frame.path.split("/")[1:]
        frame.new_fd = _open_path(self.new_root_fd, parts)
        if frame.paired:
            frame.old_fd = _open_path(self.old_root_fd, parts)

    def _push(self, frame: _Frame) -> None:
        self.stack.append(frame)
        if len(self.stack) > _MAX_HELD_DEPTH:
            self.stack[-_MAX_HELD_DEPTH - 1].close()

    # -- the walk ----------------------------------------------------------

    def run(self) -> list[Change]:
        self.new_root_fd = _open_root(self.new_root)
        try:
            if self.old_root is None:
                root = _Frame(os.dup(self.new_root_fd), None, "", 0, True)
                self._push(root)
                self._list_added(root)
            else:
                self.old_root_fd = _open_root(self.old_root)
                root = _Frame(os.dup(self.new_root_fd), os.dup(self.old_root_fd), "", 0, True)
                self._push(root)
                same_dev = os.fstat(self.new_root_fd).st_dev == os.fstat(self.old_root_fd).st_dev
                self._list_pair(root, same_dev)
            while self.stack:
                self._step()
        finally:
            for frame in self.stack:
                frame.close()
            self.stack.clear()
            os.close(self.new_root_fd)
            if self.old_root_fd >= 0:
                os.close(self.old_root_fd)
        self.out.sort()
        return self.out

    def _step(self) -> None:
        frame = self.stack[-1]
        if not frame.pending:
            self.stack.pop()
            frame.close()
            if len(self.out) > frame.start and not frame.added and frame.path:
                self.out.append(Change(frame.path, ChangeKind.MODIFY))
            return
        name, paired, added, same_dev = frame.pending.pop()
        if frame.new_fd is None:
            try:
                self._reopen(frame)
            except OSError as exc:
                _debug("changes: cannot reopen %s: %s", frame.path, exc)
                frame.pending.clear()
                return
        assert frame.new_fd is not None
        path = f"{frame.path}/{name}"
        try:
            new_fd = os.open(name, _DIR_FLAGS, dir_fd=frame.new_fd)
        except OSError as exc:  # changed under us: nothing to list below it
            _debug("changes: cannot open %s: %s", path, exc)
            return
        old_fd: int | None = None
        if paired:
            assert frame.old_fd is not None
            try:
                old_fd = os.open(name, _DIR_FLAGS, dir_fd=frame.old_fd)
            except OSError as exc:
                _debug("changes: cannot open old %s: %s", path, exc)
                old_fd = None
        child = _Frame(new_fd, old_fd, path, len(self.out), added or old_fd is None)
        self._push(child)
        try:
            if old_fd is None:
                self._list_added(child)
            else:
                self._list_pair(child, same_dev)
        except OSError as exc:
            _debug("changes: cannot list %s: %s", path, exc)
            child.pending.clear()

    def _list_added(self, frame: _Frame) -> None:
        """Everything below a directory that has no old counterpart is ADD."""
        assert frame.new_fd is not None
        out = self.out
        prefix = frame.path
        with os.scandir(frame.new_fd) as it:
            for entry in it:
                out.append(Change(f"{prefix}/{entry.name}", ChangeKind.ADD))
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    frame.pending.append((entry.name, False, True, False))

    def _list_pair(self, frame: _Frame, same_dev: bool) -> None:
        assert frame.new_fd is not None and frame.old_fd is not None
        with os.scandir(frame.old_fd) as it:
            old_entries = {e.name: e for e in it}
        out = self.out
        prefix = frame.path
        with os.scandir(frame.new_fd) as it:
            for ne in it:
                name = ne.name
                path = f"{prefix}/{name}"
                oe = old_entries.pop(name, None)
                if oe is not None and same_dev and oe.inode() == ne.inode():
                    continue  # the very same file on both sides
                try:
                    nst = ne.stat(follow_symlinks=False)
                except OSError:  # vanished from the new side meanwhile
                    if oe is not None:
                        old_entries[name] = oe
                    continue
                ost: os.stat_result | None = None
                if oe is not None:
                    try:
                        ost = oe.stat(follow_symlinks=False)
                    except OSError:
                        ost = None
                new_is_dir = stat.S_ISDIR(nst.st_mode)
                if ost is None:
                    out.append(Change(path, ChangeKind.ADD))
                    if new_is_dir:
                        frame.pending.append((name, False, True, False))
                    continue
                modified = stat_different(ost, nst) or self._differs(frame, name, path, nst, ost)
                if modified:
                    out.append(Change(path, ChangeKind.MODIFY))
                if new_is_dir:
                    frame.pending.append(
                        (
                            name,
                            stat.S_ISDIR(ost.st_mode),
                            modified,
                            nst.st_dev == ost.st_dev,
                        )
                    )
        for name in old_entries:
            out.append(Change(f"{prefix}/{name}", ChangeKind.DELETE))

    def _differs(
        self, frame: _Frame, name: str, path: str, nst: os.stat_result, ost: os.stat_result
    ) -> bool:
        """The checks beyond stat for metadata-equal entries: capability and content."""
        assert frame.new_fd is not None and frame.old_fd is not None
        assert self.old_root is not None
        new_cap = _capability(self.new_root + path, frame.new_fd, name)
        old_cap = _capability(self.old_root + path, frame.old_fd, name)
        if new_cap != old_cap:
            return True
        mode = nst.st_mode
        is_link = stat.S_ISLNK(mode)
        if not (stat.S_ISREG(mode) or is_link) or nst.st_size == 0:
            return False
        if nst.st_dev == ost.st_dev and nst.st_ino == ost.st_ino:
            return False
        # Ambiguous only if written after the later of the two births (see the module doc).
        # A symlink's target is fixed at its birth, so the same test covers a retarget.
        written_by = max(_mtime_bound(nst), _mtime_bound(ost))
        self.stats.birth_checks += 1
        for fd in (frame.new_fd, frame.old_fd):
            born = birth_time_ns(fd, name)
            if born is not None and written_by < born - _SLACK_NS:
                return False
        self.stats.content_reads += 1
        if is_link:
            try:
                return os.readlink(name, dir_fd=frame.new_fd) != os.readlink(
                    name, dir_fd=frame.old_fd
                )
            except OSError:
                return True
        return not _same_content(frame.new_fd, frame.old_fd, name)


def _open_root(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NotFoundError(f"cannot compare {path!r}: {exc.strerror}", errno=exc.errno) from exc


def _open_path(root_fd: int, parts: list[str]) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def scan_changes(
    new_dir: str | os.PathLike[str], old_dir: str | os.PathLike[str] | None
) -> tuple[list[Change], ChangeStats]:
    """:func:`changes` plus what it cost (for tests and benchmarks)."""
    new_root = os.fspath(new_dir)
    old_root = None if old_dir is None else os.fspath(old_dir)
    scan = _Scan(
        new_root.rstrip("/") or "/", None if old_root is None else old_root.rstrip("/") or "/"
    )
    return scan.run(), scan.stats


def changes(
    new_dir: str | os.PathLike[str], old_dir: str | os.PathLike[str] | None
) -> list[Change]:
    """Changes that turn ``old_dir`` into ``new_dir`` (all ADD when old is None).

    Sorted by (path, kind), so the result is deterministic.
    """
    return scan_changes(new_dir, old_dir)[0]


def changes_size(new_dir: str | os.PathLike[str], changes: list[Change]) -> int:
    """Bytes of the added and modified non-directories (Docker's ``ChangesSize``).

    Symlinks count their lstat size; an inode with several links counts
    once; paths that vanished are skipped, as Docker does.
    """
    root = os.fspath(new_dir).rstrip("/")
    seen: set[tuple[int, int]] = set()
    total = 0
    with ShortPaths() as short:  # a path may be longer than PATH_MAX
        for change in changes:
            if change.kind != ChangeKind.DELETE:
                total += _size_once(short, root + change.path, seen)
    return total


def _size_once(short: ShortPaths, path: str, seen: set[tuple[int, int]]) -> int:
    """The size a change adds: 0 for a directory, a vanished path or a link already counted."""
    try:
        st = os.lstat(short.get(path))
    except OSError as exc:
        _debug("changes_size: skipping %s: %s", path, exc)
        return 0
    if stat.S_ISDIR(st.st_mode):
        return 0
    if st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
    return st.st_size
