"""Property: changes + export_changes + apply_layer reproduce the new tree exactly.

Random small trees (files, directories, symlinks, hard links, modes) are copied
(``cp -a``, nanosecond times kept) and mutated right away, inside the same
timestamp tick, including in-place same-size rewrites that keep the mtime (what a
coarse clock gives, and what Docker's metadata-only compare cannot see).  Applying the exported
changes of (upper vs lower) onto another copy of lower must give upper: the
same entries with the same type, mode, size, content, link target and
whole-second mtime (directories' mtimes excepted: Docker's change detection
ignores them by design).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.archive import apply_layer, changes, export_changes

NAMES = ("a", "b", "c")
FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755)
DIR_MODES = (0o755, 0o700, 0o1777, 0o2755)

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
contents = st.binary(min_size=0, max_size=300) | st.binary(min_size=1, max_size=40)
build_ops = st.one_of(
    st.tuples(st.just("file"), paths, contents, st.sampled_from(FILE_MODES)),
    st.tuples(st.just("file"), paths, contents, st.sampled_from(FILE_MODES)),
    st.tuples(st.just("dir"), paths, st.sampled_from(DIR_MODES)),
    st.tuples(st.just("symlink"), paths, st.sampled_from(("a", "../b", "/etc/x", "c/a"))),
    st.tuples(st.just("hardlink"), paths, paths),
)
# Mutations name their target either by path or, mostly, as "the i-th existing entry",
# so that they hit something.
targets = st.one_of(st.integers(0, 1000), st.integers(0, 1000), paths)
mutate_ops = st.one_of(
    build_ops,
    st.tuples(st.just("delete"), targets),
    st.tuples(st.just("rewrite"), targets, st.integers(0, 255), st.booleans()),
    st.tuples(st.just("rewrite"), targets, st.integers(0, 255), st.just(True)),
    st.tuples(st.just("chmod"), targets, st.sampled_from(FILE_MODES + DIR_MODES)),
    st.tuples(st.just("touch"), targets, st.sampled_from((-3, -1, 1, 2))),
    st.tuples(st.just("retarget"), targets, st.sampled_from(("x", "yy", "../a"))),
)


def _parent_ok(root: Path, rel: str) -> bool:
    parent = (root / rel).parent
    cur = root
    for part in parent.relative_to(root).parts:
        cur = cur / part
        if not cur.is_dir() or cur.is_symlink():
            return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def apply_op(root: Path, op: tuple[object, ...]) -> None:
    """Apply one operation if it makes sense on the current tree; skip it otherwise."""
    kind = op[0]
    if isinstance(op[1], int):
        entries = sorted(root.rglob("*"))
        if kind == "rewrite":
            entries = [p for p in entries if p.is_file() and not p.is_symlink()]
        elif kind == "retarget":
            entries = [p for p in entries if p.is_symlink()]
        if not entries:
            return
        rel = str(entries[op[1] % len(entries)].relative_to(root))
    else:
        rel = str(op[1])
    path = root / rel
    if not _parent_ok(root, rel):
        return
    exists = path.is_symlink() or path.exists()
    if kind == "file":
        if exists:
            _remove(path)
        path.write_bytes(bytes(op[2]))  # type: ignore[call-overload]
        os.chmod(path, int(op[3]))  # type: ignore[call-overload]
    elif kind == "dir":
        if exists:
            _remove(path)
        path.mkdir()
        os.chmod(path, int(op[2]))  # type: ignore[call-overload]
    elif kind == "symlink":
        if exists:
            _remove(path)
        os.symlink(str(op[2]), path)
    elif kind == "hardlink":
        target = root / str(op[2])
        if target.is_symlink() or not target.is_file() or target == path:
            return
        if target.is_relative_to(path):
            return
        if exists:
            _remove(path)
        os.link(target, path)
    elif not exists:
        return
    elif kind == "delete":
        _remove(path)
    elif kind == "rewrite":  # in place, same size, same inode
        if path.is_symlink() or not path.is_file():
            return
        data = path.read_bytes()
        if not data:
            return
        fill = int(op[2])  # type: ignore[call-overload]
        new = bytes((b + fill + 1) % 256 for b in data)
        before = os.lstat(path)
        with open(path, "r+b") as fh:
            fh.write(new)
        if op[3]:  # as on a coarse clock: the rewrite keeps the old mtime
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif kind == "chmod":
        if not path.is_symlink():
            os.chmod(path, int(op[2]))  # type: ignore[call-overload]
    elif kind == "touch":
        st_ = os.lstat(path)
        shift = int(op[2]) * 1_000_000_000  # type: ignore[call-overload]
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + shift), follow_symlinks=False)
    elif kind == "retarget" and path.is_symlink():
        path.unlink()
        os.symlink(str(op[2]), path)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            s = os.lstat(path)
            kind = stat.S_IFMT(s.st_mode)
            record: tuple[object, ...] = (kind, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid)
            if stat.S_ISREG(s.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                record += (s.st_size, digest, s.st_mtime_ns // 1_000_000_000)
            elif stat.S_ISLNK(s.st_mode):
                record += (os.readlink(path), s.st_mtime_ns // 1_000_000_000)
            out[rel] = record
    return out


def cp_a(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    build=st.lists(build_ops, min_size=1, max_size=14),
    mutate=st.lists(mutate_ops, min_size=1, max_size=10),
)
def test_changes_export_apply_roundtrip(
    build: list[tuple[object, ...]], mutate: list[tuple[object, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lower = work / "lower"
        lower.mkdir()
        for op in build:
            apply_op(lower, op)
        upper = work / "upper"
        cp_a(lower, upper)
        for op in mutate:
            apply_op(upper, op)
        target = work / "target"
        cp_a(lower, target)

        found = changes(upper, lower)
        with export_changes(upper, found) as stream:
            apply_layer(stream, target)

        assert snapshot(target) == snapshot(upper)
        # and the result is a fixed point: nothing left to report
        assert changes(target, upper) == []
