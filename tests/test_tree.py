"""The one tree remover (``lamina._tree``), through both of its doors.

``lamina._fs.remove_tree`` (every driver's ``remove`` and ``cleanup``) and
the applier's replacement of a directory by a layer entry both stand on it,
so each shape a layer can hold is checked through each door: chains deeper
than the interpreter's recursion limit and than the descriptor limit,
paths longer than ``PATH_MAX``, directories their unprivileged owner cannot
write, symlinks that must not be followed, and an overlayfs merged view.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina import archive
from lamina._fs import remove_tree


def _make_chain(root: Path, depth: int, name: str = "d") -> None:
    """``root/name/name/...`` ``depth`` levels deep with a file at the bottom, by descriptors.

    Built relative to descriptors because the path may be longer than PATH_MAX.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"at the bottom\n")
        os.close(wfd)
        # a link out of the tree at the bottom: removed, never entered (it points at
        # a name that does not exist, so even a remover that followed it deletes nothing)
        os.symlink("../../../../no-such-sentinel-target", "escape", dir_fd=fd)
    finally:
        os.close(fd)


def test_a_chain_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    tree = tmp_path / "layer"
    depth = max(1500, sys.getrecursionlimit() + 100)
    _make_chain(tree, depth)
    remove_tree(tree)
    assert not tree.exists()
    assert os.listdir(tmp_path) == []


def test_a_chain_whose_paths_pass_path_max(tmp_path: Path) -> None:
    tree = tmp_path / "layer"
    _make_chain(tree, 1500, "abcdef")  # 10,500 bytes at the bottom
    remove_tree(tree)
    assert not tree.exists()


@pytest.fixture
def few_descriptors() -> Iterator[int]:
    """The soft descriptor limit lowered to 256 for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_chain_deeper_than_the_descriptor_limit(tmp_path: Path, few_descriptors: int) -> None:
    tree = tmp_path / "layer"
    _make_chain(tree, few_descriptors * 4)
    remove_tree(tree)
    assert not tree.exists()


def test_branches_below_closed_ancestors(tmp_path: Path) -> None:
    """Side chains at several depths: ancestors whose descriptors were closed are reopened."""
    from lamina._tree import HELD

    tree = tmp_path / "layer"
    _make_chain(tree, 3 * HELD)
    for level in (1, HELD - 1, HELD + 1, 2 * HELD + 5, 3 * HELD):
        _make_chain(tree.joinpath(*["d"] * level) / "side", 2 * HELD)
    remove_tree(tree)
    assert os.listdir(tmp_path) == []


def test_missing_trees_files_and_symlinks(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")
    remove_tree(tmp_path / "missing" / "below")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    os.symlink(outside, tree / "a" / "link")  # a link to a directory is removed, not entered
    os.symlink(outside, tmp_path / "top-link")
    remove_tree(tree)
    remove_tree(tmp_path / "top-link")
    assert not tree.exists() and not os.path.lexists(tmp_path / "top-link")
    assert (outside / "keep").read_bytes() == b"keep"
    (tmp_path / "file").write_bytes(b"x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()
    # refusing "/" is checked without ever calling a remover on the real root:
    # an old or broken remover would delete the machine (this test once did)
    with pytest.raises(OSError):
        remove_tree(tmp_path / "tree" / "..")
    assert (outside / "keep").read_bytes() == b"keep"


def test_remove_tree_at_is_relative_to_the_descriptor(tmp_path: Path) -> None:
    from lamina._tree import remove_tree_at

    _make_chain(tmp_path / "x", 300)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree_at(fd, "x")
        remove_tree_at(fd, "x")  # gone: fine
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


_READ_ONLY_TREE = """
import os, sys
from lamina._fs import remove_tree
import lamina._fs._mount  # everything the removal may import, imported before the privileges go
os.fchdir(int(sys.argv[1]))
if os.geteuid() == 0:  # the kernel lets root through everything: be nobody
    os.setgid(65534)
    os.setuid(65534)
os.makedirs("t/ro/deeper")
os.makedirs("t/unreadable/x")
open("t/ro/deeper/f", "wb").close()
fds = [os.open("t/ro/deeper", os.O_RDONLY | os.O_DIRECTORY)]
for _ in range(300):
    os.mkdir("d", dir_fd=fds[-1])
    fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
for fd in fds[1:]:
    os.fchmod(fd, 0o555)  # every level read-only
    os.close(fd)
os.chmod("t/ro/deeper", 0o500)
os.chmod("t/ro", 0o555)
os.chmod("t/unreadable", 0o000)
try:
    os.mkdir("t/ro/probe")
except PermissionError:
    pass
else:
    sys.exit("the tree is writable: the test would prove nothing")
remove_tree("t")
assert not os.path.lexists("t")
"""


def test_directories_their_unprivileged_owner_cannot_write(tmp_path: Path) -> None:
    """An owner can remove its own 0555 and 0000 directories (made writable first)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if os.geteuid() == 0:
        os.chown(scratch, 65534, 65534)
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _READ_ONLY_TREE, str(fd)],
            capture_output=True,
            text=True,
            check=False,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(scratch) == []


def _tar(entries: list[tarfile.TarInfo]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    buf.seek(0)
    return buf


def test_the_applier_replaces_a_deep_directory_by_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _make_chain(root / "a", 2000, "abc")
    entry = tarfile.TarInfo("a")
    entry.size = 3
    archive.apply_layer(_tar([entry]), root)
    assert (root / "a").read_bytes() == b"xxx"


@pytest.mark.usefixtures("needs_root")
def test_the_applier_removes_a_lower_tree_in_an_overlayfs_view(tmp_path: Path) -> None:
    """Renaming a lower directory in a merged view fails (EXDEV): the remover never renames."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    _make_chain(lower / "a", 50)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off"
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"no overlayfs here: {proc.stderr.strip()}")
    try:
        entry = tarfile.TarInfo("a")
        entry.size = 3
        archive.apply_layer(_tar([entry]), merged)
        assert (merged / "a").read_bytes() == b"xxx"
        (merged / "b").mkdir()
        _make_chain(merged / "b", 20)
        remove_tree(merged / "b")
        assert not (merged / "b").exists()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert (lower / "a" / "d").is_dir()  # the lower layer is untouched


def test_the_path_to_the_tree_may_hold_symlinks(tmp_path: Path) -> None:
    """Only the tree is never followed: a symlinked directory above it is the caller's path."""
    (tmp_path / "real" / "tree" / "a").mkdir(parents=True)
    os.symlink("real", tmp_path / "alias")
    remove_tree(tmp_path / "alias" / "tree")
    assert os.listdir(tmp_path / "real") == []


@pytest.mark.usefixtures("needs_root")
def test_a_mount_inside_the_tree_is_never_emptied(tmp_path: Path) -> None:
    """A host directory bind-mounted into a layer must survive the layer's removal."""
    from lamina.errors import InUseError

    host = tmp_path / "host"
    host.mkdir()
    (host / "precious").write_bytes(b"host data")
    tree = tmp_path / "layer"
    (tree / "a" / "volume").mkdir(parents=True)
    (tree / "a" / "file").write_bytes(b"layer data")
    subprocess.run(["mount", "--bind", str(host), str(tree / "a" / "volume")], check=True)
    try:
        with pytest.raises(InUseError):
            remove_tree(tree)
        assert (host / "precious").read_bytes() == b"host data"
    finally:
        subprocess.run(["umount", str(tree / "a" / "volume")], check=True)
    remove_tree(tree)  # unmounted: it goes
    assert not tree.exists()
    assert (host / "precious").read_bytes() == b"host data"
