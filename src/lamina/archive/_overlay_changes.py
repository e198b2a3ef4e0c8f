"""A layer's changes read from its overlayfs upper directory alone.

overlayfs already records what a layer changed: its upper directory holds
the added and modified entries, 0:0 character devices for deletions and
``trusted.overlay.opaque=y`` on directories that hide everything below
them.  Listing that is proportional to the size of the change, not of the
image, which is the point of the overlay driver's "native diff".

The result must be exactly what :func:`lamina.archive.changes` reports when
comparing the merged view with the parent's merged view (Docker's shapes):

* an entry only in the new view is ADD, and so is everything below an added
  directory;
* an entry in both is MODIFY when its metadata differs the way
  ``archive.changes`` sees it (type and mode, owner, rdev and mtime, also of
  directories unlike Docker; plus size for non-directories, mtimes equal
  when either nanosecond part is 0), or
  its ``security.capability`` differs, or — like ``archive.changes`` and
  unlike Docker — when a metadata-equal file or symlink may have been
  rewritten within one timestamp tick and its content or target differs
  (an upper file is a copy-up; if it was not written after its birth, it
  still has the content it was copied with, so nothing is read);
* a whiteout of something the parent has is DELETE (once, even for a
  directory); so is every parent entry that an opaque directory hides,
  at any depth below it (the new view under an opaque directory is the
  upper alone);
* a directory in both views whose subtree changed is MODIFY;
* a file replaced by a directory is MODIFY with all the new children ADD,
  and a directory replaced by a non-directory is a single MODIFY.

"The parent's merged view" is resolved from the lower directories
(uppermost first) the way overlayfs does: the first layer holding a name
wins, a whiteout or a non-directory stops the search, and an opaque
directory stops it below that directory.  Redirects and metacopy are not
understood, which is why the driver only uses this when its kernel probe
says they are off.

Reads only; never follows symlinks.  Nothing recurses (each directory is a
step run from a loop of our own), and paths longer than ``PATH_MAX`` are
reached through :class:`lamina._tree.ShortPaths`, so a layer 1,500
directories deep, with long names, lists like any other.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Generator, Sequence

from lamina._change import Change, ChangeKind
from lamina._tree import ShortPaths
from lamina.archive._changes import stat_different
from lamina.archive._prefetch import warm_for_changes
from lamina.archive._statx import birth_time_ns
from lamina.archive._whiteout import OVERLAY_OPAQUE_XATTR

__all__ = ["overlay_changes", "upper_size"]

_CAPABILITY_XATTR = "security.capability"
_Parts = tuple[str, ...]
_NS = 1_000_000_000
_SLACK_NS = 2 * _NS  # coarse clocks and whole-second mtimes, as archive.changes
_AT_FDCWD = -100
_CHUNK = 1 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


_Entries = list[tuple[str, os.stat_result]]
#: A walk step: it yields the sub-walks it needs (their result is sent back) and
#: returns whether it found a change.  A loop runs them (see :func:`_run`), so a
#: chain of any depth never reaches the interpreter's recursion limit.
_Step = Generator["_Step", bool, bool]


def _run(step: _Step) -> bool:
    """Run a walk step and all the sub-steps it yields, on a stack of our own."""
    stack = [step]
    value: bool | None = None  # what the step on top is sent: None starts a new one
    while stack:
        try:
            sub = stack[-1].send(value)  # type: ignore[arg-type]  # None only to start
        except StopIteration as stop:
            stack.pop()
            value = bool(stop.value)
            continue
        stack.append(sub)
        value = None
    return bool(value)


class _Paths:
    """System calls on full paths, which may be longer than ``PATH_MAX``.

    Every path goes through :class:`~lamina._tree.ShortPaths` right before
    its call, so a 1,500-deep tree of long names is read like any other.
    """

    def __init__(self) -> None:
        self.short = ShortPaths()

    def xattr(self, path: str, name: str) -> bytes | None:
        try:
            return os.getxattr(self.short.get(path), name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.ENOENT):
                return None
            raise

    def is_opaque(self, path: str) -> bool:
        return self.xattr(path, OVERLAY_OPAQUE_XATTR) == b"y"

    def lstat(self, path: str) -> os.stat_result | None:
        try:
            return os.lstat(self.short.get(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def entries(self, directory: str) -> _Entries:
        """A directory's entries by name, each lstat-ed now.

        The walk then meets paths in lexicographic order, which is about the
        order a layer's files were extracted in and so the order of their
        inodes on disk: with cold caches, lstat-ing the lower layers in that
        order reads neighbouring inode table blocks (measured: about a third
        less time than directory hash order on ext4).  The stats are taken
        while the short name of ``directory`` is valid.
        """
        with os.scandir(self.short.get(directory)) as it:
            entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        entries.sort(key=lambda e: e[0])
        return entries

    def same_bytes(self, a_path: str, b_path: str) -> bool:
        try:
            a = os.open(self.short.get(a_path), _READ_FLAGS)
        except OSError:
            return False
        try:
            b = os.open(self.short.get(b_path), _READ_FLAGS)
        except OSError:
            os.close(a)
            return False
        try:
            while True:
                x, y = os.read(a, _CHUNK), os.read(b, _CHUNK)
                if x != y:
                    return False
                if not x:
                    return True
        except OSError:
            return False
        finally:
            os.close(a)
            os.close(b)

    def content_differs(
        self, old_path: str, old: os.stat_result, new_path: str, new: os.stat_result
    ) -> bool:
        """For metadata-equal entries: could the content (or link target) still differ?"""
        if not (stat.S_ISREG(new.st_mode) or stat.S_ISLNK(new.st_mode)) or new.st_size == 0:
            return False
        written_by = max(
            ns + _NS if ns % _NS == 0 else ns for ns in (new.st_mtime_ns, old.st_mtime_ns)
        )
        for path in (new_path, old_path):
            born = birth_time_ns(_AT_FDCWD, self.short.get(path))
            if born is not None and written_by < born - _SLACK_NS:
                return False
        if stat.S_ISLNK(new.st_mode):
            try:
                return os.readlink(self.short.get(new_path)) != os.readlink(
                    self.short.get(old_path)
                )
            except OSError:
                return True
        return not self.same_bytes(new_path, old_path)


class _LowerView:
    """The parent's merged view, resolved lazily from the lower directories."""

    def __init__(
        self, lowers: Sequence[str | os.PathLike[str]], paths: _Paths | None = None
    ) -> None:
        self._paths = _Paths() if paths is None else paths
        self._dirs: dict[_Parts, list[str]] = {(): [os.fspath(p) for p in lowers]}
        self._stats: dict[str, os.stat_result | None] = {}

    def _lstat(self, path: str) -> os.stat_result | None:
        """lstat, remembered: a directory found by :meth:`lookup` is resolved by :meth:`dirs`."""
        try:
            return self._stats[path]
        except KeyError:
            st = self._stats[path] = self._paths.lstat(path)
            return st

    def dirs(self, parts: _Parts) -> list[str]:
        """The layer directories (uppermost first) whose contents make up ``parts``.

        Empty when ``parts`` is not a directory in the merged lower view.
        Resolved from the nearest resolved ancestor down, with a loop.
        """
        cached = self._dirs.get(parts)
        if cached is not None:
            return cached
        known = len(parts) - 1
        while parts[:known] not in self._dirs:
            known -= 1
        result = self._dirs[parts[:known]]
        for depth in range(known + 1, len(parts) + 1):
            result = self._resolve(result, parts[depth - 1])
            self._dirs[parts[:depth]] = result
        return result

    def _resolve(self, parents: list[str], name: str) -> list[str]:
        result: list[str] = []
        for parent in parents:
            path = f"{parent}/{name}"
            st = self._lstat(path)
            if st is None:
                continue
            if _is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                break
            result.append(path)
            if self._paths.is_opaque(path):
                break
        return result

    def lookup(self, dirs: list[str], name: str) -> tuple[str, os.stat_result] | None:
        """The visible entry ``name`` in a merged directory, or None."""
        for parent in dirs:
            path = f"{parent}/{name}"
            st = self._lstat(path)
            if st is None:
                continue
            if _is_whiteout(st):
                return None
            return path, st
        return None

    def names(self, dirs: list[str]) -> set[str]:
        """Names visible in a merged directory."""
        seen: set[str] = set()
        visible: set[str] = set()
        for parent in dirs:
            for name, st in self._paths.entries(parent):
                if name in seen:
                    continue
                seen.add(name)
                if stat.S_ISDIR(st.st_mode) or not _is_whiteout(st):
                    visible.add(name)
        return visible


def _path(parts: _Parts) -> str:
    return "/" + "/".join(parts)


class _Walker:
    def __init__(self, upper: str, lowers: Sequence[str | os.PathLike[str]]) -> None:
        self.upper = upper
        self.paths = _Paths()
        self.view = _LowerView(lowers, self.paths)
        self.out: list[Change] = []

    def add_all(self, upath: str, parts: _Parts) -> _Step:
        """Report every non-whiteout entry below an added directory as ADD."""
        added = False
        for name, st in self.paths.entries(upath):
            if _is_whiteout(st):
                continue
            child = (*parts, name)
            self.out.append(Change(_path(child), ChangeKind.ADD))
            added = True
            if stat.S_ISDIR(st.st_mode):
                yield self.add_all(f"{upath}/{name}", child)
        return added

    def visit(self, upath: str, parts: _Parts, old_dirs: list[str], hides: bool = False) -> _Step:
        """Report the changes below the upper directory ``upath``; True if any.

        ``hides``: an opaque directory above already hides the lowers here, so
        the new view below is the upper alone.
        """
        paths = self.paths
        changed = False
        hides = hides or bool(parts and old_dirs and paths.is_opaque(upath))
        present: set[str] = set()
        for name, st in paths.entries(upath):
            present.add(name)
            child = (*parts, name)
            entry_path = f"{upath}/{name}"
            old = self.view.lookup(old_dirs, name) if old_dirs else None
            if _is_whiteout(st):
                if old is not None:
                    self.out.append(Change(_path(child), ChangeKind.DELETE))
                    changed = True
                continue
            if old is None:
                self.out.append(Change(_path(child), ChangeKind.ADD))
                changed = True
                if stat.S_ISDIR(st.st_mode):
                    yield self.add_all(entry_path, child)
                continue
            old_path, old_st = old
            differs = (
                stat_different(old_st, st)
                or paths.xattr(old_path, _CAPABILITY_XATTR)
                != paths.xattr(entry_path, _CAPABILITY_XATTR)
                or paths.content_differs(old_path, old_st, entry_path, st)
            )
            if differs:
                self.out.append(Change(_path(child), ChangeKind.MODIFY))
                changed = True
            if stat.S_ISDIR(st.st_mode):
                if stat.S_ISDIR(old_st.st_mode):
                    below = yield self.visit(entry_path, child, self.view.dirs(child), hides)
                else:
                    below = yield self.add_all(entry_path, child)
                if below:
                    changed = True
                    if not differs:
                        self.out.append(Change(_path(child), ChangeKind.MODIFY))
        if hides and old_dirs:
            for name in sorted(self.view.names(old_dirs) - present):
                self.out.append(Change(_path((*parts, name)), ChangeKind.DELETE))
                changed = True
        return changed


def overlay_changes(
    upper: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]]
) -> list[Change]:
    """Changes of a layer from its upper dir and its parent's lower dirs (uppermost first).

    Sorted by (path, kind), like :func:`lamina.archive.changes`.
    """
    walker = _Walker(os.fspath(upper), lowers)
    try:
        warm_for_changes(walker.upper, [os.fspath(p) for p in lowers])  # cold caches overlap
        _run(walker.visit(walker.upper, (), walker.view.dirs(())))
    finally:
        walker.paths.short.close()
    return sorted(walker.out)


def upper_size(upper: str | os.PathLike[str]) -> int:
    """Bytes held by a layer's own directory: ``du``-style, hardlinked inodes counted once.

    This is Docker's ``directory.Size``, which overlay2 reports as a layer's
    size on the native path: the sum of ``st_size`` of non-directories.
    Iterative, and paths past ``PATH_MAX`` are reached by short names.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [os.fspath(upper)]
    with ShortPaths() as short:
        while stack:
            directory = stack.pop()
            with os.scandir(short.get(directory)) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False), e) for e in it]
            for name, is_dir, entry in entries:
                if is_dir:  # d_type: no stat
                    stack.append(f"{directory}/{name}")
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_size <= 0:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_size
    return total
