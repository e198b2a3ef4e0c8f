"""Entry-by-entry comparison of two directory trees, for the differential tests.

A tree is scanned once into :class:`Entry` records (one ``lstat`` per entry,
xattrs, a sha256 of every regular file) so each tree can be compared with
several peers without re-reading it.  A comparison lists every difference
with its kind, so a failing test says *what* differs (mode bits, owners,
directory times, hardlink groups, ...) and on which paths, not just "differs".

Compared per path: presence, file type, permission bits including
setuid/setgid/sticky, uid/gid, size and content hash of regular files,
symlink targets, device numbers, hardlink groups (the set of scanned paths
sharing the inode), every xattr name and value, and mtime in whole seconds
for every type, directories included (a directory's time must be set after
its contents were written).  The root of the tree is compared for mode and
owner only: layer tars usually carry no entry for it, so its time is the
extractor's.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "KINDS",
    "Comparison",
    "Difference",
    "Entry",
    "Tree",
    "compare",
    "excuse",
    "scan",
]

ROOT = "."

#: Difference kinds, in the order they are reported.
KINDS: tuple[str, ...] = (
    "missing",  # in expected only
    "extra",  # in actual only
    "type",
    "mode",
    "owner",
    "size",
    "content",
    "target",
    "rdev",
    "hardlinks",
    "xattrs",
    "mtime",
)

_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Entry:
    """What the comparison looks at for one path (relative, ``"."`` for the root)."""

    path: str
    fmt: int
    perm: int  # S_IMODE: permission bits plus setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    mtime_s: int  # floor of st_mtime, whole seconds
    sha256: str | None = None  # regular files
    target: str | None = None  # symlinks
    rdev: tuple[int, int] | None = None  # character and block devices
    xattrs: tuple[tuple[str, bytes], ...] = ()
    inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino), for hardlink groups
    nlink: int = 1

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.fmt, f"fmt{self.fmt:o}")


@dataclass(frozen=True)
class Tree:
    """A scanned tree: entries by relative path and its hardlink groups."""

    root: str
    entries: Mapping[str, Entry]
    # path -> sorted tuple of every scanned path on the same inode (only for
    # non-directories whose inode is reached by more than one scanned path)
    links: Mapping[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.entries)


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # ENOTSUP on filesystems without xattrs
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _sha256(path: str) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _entry(rel: str, path: str, st: os.stat_result) -> Entry:
    fmt = stat.S_IFMT(st.st_mode)
    sha = target = rdev = None
    if fmt == stat.S_IFREG:
        sha = _sha256(path)
    elif fmt == stat.S_IFLNK:
        target = os.readlink(path)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return Entry(
        path=rel,
        fmt=fmt,
        perm=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if fmt == stat.S_IFREG else 0,
        mtime_s=st.st_mtime_ns // 1_000_000_000,
        sha256=sha,
        target=target,
        rdev=rdev,
        xattrs=_xattrs(path),
        inode=(st.st_dev, st.st_ino),
        nlink=st.st_nlink,
    )


def scan(root: str | os.PathLike[str], exclude_contents: Iterable[str] = ()) -> Tree:
    """Read every entry under ``root`` without following symlinks.

    ``exclude_contents`` names directories (relative) whose own entry is kept
    but whose contents are skipped, as mklayer.py skips dev, proc and sys.
    """
    root = os.fspath(root)
    skip = {p.strip("/") for p in exclude_contents}
    entries: dict[str, Entry] = {ROOT: _entry(ROOT, root, os.lstat(root))}
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        if rel_dir in skip:
            continue
        with os.scandir(abs_dir) as it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                st = de.stat(follow_symlinks=False)
                entries[rel] = _entry(rel, de.path, st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((rel, de.path))
    by_inode: dict[tuple[int, int], list[str]] = {}
    for e in entries.values():
        if e.fmt != stat.S_IFDIR and e.nlink > 1:
            by_inode.setdefault(e.inode, []).append(e.path)
    links: dict[str, tuple[str, ...]] = {}
    for paths in by_inode.values():
        if len(paths) > 1:
            group = tuple(sorted(paths))
            for p in group:
                links[p] = group
    return Tree(root=root, entries=entries, links=links)


@dataclass(frozen=True)
class Difference:
    path: str
    kind: str
    type_name: str
    expected: object
    actual: object

    def __str__(self) -> str:
        return (
            f"{self.path} [{self.type_name}]: "
            f"expected {_short(self.expected)}, got {_short(self.actual)}"
        )


def _short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


XattrFilter = Callable[[str, str], bool]


@dataclass
class Comparison:
    """The outcome of comparing an expected tree with an actual one."""

    expected_label: str
    actual_label: str
    expected_count: int
    actual_count: int
    differences: list[Difference] = field(default_factory=list)
    # expected xattrs left out because the actual side cannot carry them
    ignored_xattrs: Counter[str] = field(default_factory=Counter)
    # differences the reference itself has against the source tree (see excuse())
    excused: list[Difference] = field(default_factory=list)
    excused_by: str = ""

    def __bool__(self) -> bool:
        """True when the trees are equal."""
        return not self.differences

    def by_kind(self) -> dict[str, list[Difference]]:
        out: dict[str, list[Difference]] = {}
        for d in self.differences:
            out.setdefault(d.kind, []).append(d)
        return {k: out[k] for k in KINDS if k in out}

    def summary(self) -> str:
        """One line: counts per kind and per entry type."""
        if not self.differences:
            return (
                f"{self.actual_label} == {self.expected_label}: "
                f"{self.expected_count} entries, 0 differences"
            )
        parts = []
        for kind, diffs in self.by_kind().items():
            types = Counter(d.type_name for d in diffs)
            per_type = ", ".join(f"{t} {n}" for t, n in sorted(types.items()))
            parts.append(f"{kind} {len(diffs)} ({per_type})")
        return (
            f"{self.actual_label} vs {self.expected_label} "
            f"({self.expected_count} expected / {self.actual_count} actual entries): "
            f"{len(self.differences)} differences: " + "; ".join(parts)
        )

    def report(self, examples: int = 8) -> str:
        """The summary, then up to ``examples`` paths per kind."""
        lines = [self.summary()]
        for kind, diffs in self.by_kind().items():
            lines.append(f"  {kind}: {len(diffs)}")
            lines.extend(f"    {d}" for d in diffs[:examples])
            if len(diffs) > examples:
                lines.append(f"    ... {len(diffs) - examples} more")
        if self.excused:
            kinds = Counter(d.kind for d in self.excused)
            lines.append(
                f"  note: {len(self.excused)} differences not counted because "
                f"{self.excused_by}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            )
            lines.extend(f"    {d}" for d in self.excused[:examples])
        if self.ignored_xattrs:
            names = ", ".join(f"{n} x{c}" for n, c in sorted(self.ignored_xattrs.items()))
            lines.append(
                f"  note: xattrs not compared (the actual side cannot carry them): {names}"
            )
        return "\n".join(lines)


def _fmt_time(s: int) -> str:
    return datetime.datetime.fromtimestamp(s, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compare(
    expected: Tree,
    actual: Tree,
    *,
    expected_label: str = "expected",
    actual_label: str = "actual",
    xattr_carried: XattrFilter | None = None,
) -> Comparison:
    """Compare two scanned trees entry by entry.

    ``xattr_carried(path, name)`` says whether the actual side can hold the
    expected xattr ``name`` on ``path`` (for instance, whether the layer tar it
    was built from recorded it); xattrs for which it is false are left out of
    the comparison and counted in :attr:`Comparison.ignored_xattrs`.  Extra
    xattrs on the actual side are always differences.
    """
    out = Comparison(expected_label, actual_label, len(expected), len(actual))
    diffs = out.differences
    e_all, a_all = expected.entries, actual.entries
    for path in sorted(set(e_all) | set(a_all)):
        e, a = e_all.get(path), a_all.get(path)
        if a is None:
            assert e is not None
            diffs.append(Difference(path, "missing", e.type_name, e.type_name, None))
            continue
        if e is None:
            diffs.append(Difference(path, "extra", a.type_name, None, a.type_name))
            continue
        t = e.type_name

        def add(kind: str, x: object, y: object, _p: str = path, _t: str = t) -> None:
            diffs.append(Difference(_p, kind, _t, x, y))

        if e.fmt != a.fmt:
            add("type", e.type_name, a.type_name)
            continue
        if e.perm != a.perm:
            add("mode", f"{e.perm:04o}", f"{a.perm:04o}")
        if (e.uid, e.gid) != (a.uid, a.gid):
            add("owner", f"{e.uid}:{e.gid}", f"{a.uid}:{a.gid}")
        if e.size != a.size:
            add("size", e.size, a.size)
        elif e.sha256 != a.sha256:
            add("content", e.sha256, a.sha256)
        if e.target != a.target:
            add("target", e.target, a.target)
        if e.rdev != a.rdev:
            add("rdev", e.rdev, a.rdev)
        e_links, a_links = expected.links.get(path, ()), actual.links.get(path, ())
        if e_links != a_links:
            add("hardlinks", list(e_links), list(a_links))
        e_x = dict(e.xattrs)
        if xattr_carried is not None:
            for name in list(e_x):
                if not xattr_carried(path, name):
                    del e_x[name]
                    out.ignored_xattrs[name] += 1
        if e_x != dict(a.xattrs):
            add("xattrs", e_x, dict(a.xattrs))
        if path != ROOT and e.mtime_s != a.mtime_s:
            add("mtime", _fmt_time(e.mtime_s), _fmt_time(a.mtime_s))
    return out


def excuse(comparison: Comparison, reference_faults: Comparison) -> Comparison:
    """Drop differences that are the reference's own faults.

    When lamina is compared with a peer tool, a difference counts against
    lamina only where the peer is right: ``reference_faults`` is the peer's
    tree compared with the source tree, and every (path, kind) it reports is
    moved from ``comparison.differences`` to ``comparison.excused``.
    """
    known = {(d.path, d.kind) for d in reference_faults.differences}
    kept = [d for d in comparison.differences if (d.path, d.kind) not in known]
    return Comparison(
        comparison.expected_label,
        comparison.actual_label,
        comparison.expected_count,
        comparison.actual_count,
        kept,
        Counter(comparison.ignored_xattrs),
        comparison.excused + [d for d in comparison.differences if (d.path, d.kind) in known],
        f"{reference_faults.actual_label} also differs there "
        f"from {reference_faults.expected_label}",
    )
