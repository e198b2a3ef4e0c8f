"""Changes read from an overlay upper dir equal archive.changes on the kernel's merged views.

Every case is checked twice: against the expected list written out by hand,
and against :func:`lamina.archive.changes` comparing two real overlayfs
mounts (the upper stacked on the lowers, and the lowers alone), so the
resolution of whiteouts and opaque directories is the kernel's, not ours.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from lamina import archive
from lamina._change import Change, ChangeKind
from lamina._fs import Mount, remove_tree
from lamina._fs._mount import mount_spec, umount
from lamina.archive._overlay_changes import _LowerView, overlay_changes, upper_size

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: whiteout devices, trusted.* xattrs, overlay mounts"
)

OLD = 1_600_000_000
_PARAMS = Path("/sys/module/overlay/parameters")
_OPTIONS = tuple(
    f"{p}=off" for p in ("index", "redirect_dir", "metacopy") if (_PARAMS / p).exists()
)


@contextmanager
def _view(target: Path, layers: Sequence[Path]) -> Iterator[Path]:
    """A read-only overlay of ``layers`` (uppermost first).

    Without an upper the kernel wants two lowers; an empty one at the bottom
    changes nothing.
    """
    target.mkdir(exist_ok=True)
    if len(layers) == 1:
        empty = target.with_name(target.name + "-empty")
        empty.mkdir(exist_ok=True)
        layers = [*layers, empty]
    lowerdir = "lowerdir=" + ":".join(str(p) for p in layers)
    mount_spec(Mount("overlay", "overlay", target, (*_OPTIONS, lowerdir)))
    try:
        yield target
    finally:
        umount(target)


def kernel_changes(tmp: Path, upper: Path, lowers: Sequence[Path]) -> list[Change]:
    with _view(tmp / "old-view", lowers) as old, _view(tmp / "new-view", [upper, *lowers]) as new:
        return archive.changes(new, old)


def check(tmp: Path, upper: Path, lowers: Sequence[Path], expected: list[str]) -> None:
    got = overlay_changes(upper, lowers)
    assert [str(c) for c in got] == expected
    assert got == kernel_changes(tmp, upper, lowers)


def f(path: Path, data: bytes = b"x", mode: int = 0o644, mtime: int | None = OLD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def d(path: Path, mode: int = 0o755, opaque: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if opaque:
        os.setxattr(path, "trusted.overlay.opaque", b"y")


def wh(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    dirs = tuple(tmp_path / n for n in ("upper", "l1", "l2", "l3"))
    for p in dirs:
        p.mkdir()
    return dirs  # type: ignore[return-value]


def test_add_modify_delete(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, l2, _ = layers
    f(l2 / "etc" / "passwd", b"root")
    f(l2 / "etc" / "group", b"root")
    f(l2 / "etc" / "shadow", b"s", 0o600)
    f(l1 / "var" / "log" / "a", b"a")
    f(l1 / "var" / "log" / "b", b"b")
    f(upper / "etc" / "passwd", b"root+user")  # content and size
    f(upper / "etc" / "shadow", b"s", 0o640)  # mode only
    wh(upper / "etc" / "group")
    wh(upper / "etc" / "never-existed")
    wh(upper / "var")  # a whole directory: one DELETE
    f(upper / "opt" / "app" / "bin", b"#!")
    os.symlink("bin", upper / "opt" / "app" / "link")
    check(
        tmp_path,
        upper,
        [l1, l2],
        [
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
            "C /etc/shadow",
            "A /opt",
            "A /opt/app",
            "A /opt/app/bin",
            "A /opt/app/link",
            "D /var",
        ],
    )
    assert upper_size(upper) == len(b"root+user") + 1 + 2 + len("bin")


def test_opaque_directory(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, l2, _ = layers
    f(l2 / "data" / "kept-same", b"same")
    f(l2 / "data" / "hidden", b"h")
    d(l2 / "data" / "subdir")
    f(l1 / "data" / "from-l1", b"1")
    f(l2 / "data" / "deep" / "gone", b"g")
    f(l2 / "data" / "deep" / "kept", b"k")
    d(upper / "data", opaque=True)
    f(upper / "data" / "kept-same", b"same")  # re-added identically: no change
    f(upper / "data" / "new", b"n")
    f(upper / "data" / "deep" / "kept", b"k")  # deep/ is not opaque, but data/ hides l2
    check(
        tmp_path,
        upper,
        [l1, l2],
        [
            "C /data",
            "C /data/deep",
            "D /data/deep/gone",
            "D /data/from-l1",
            "D /data/hidden",
            "A /data/new",
            "D /data/subdir",
        ],
    )


def test_opaque_flag_on_the_root_is_ignored(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, _, _ = layers
    f(l1 / "stays", b"s")
    os.setxattr(upper, "trusted.overlay.opaque", b"y")
    f(upper / "new", b"n")
    check(tmp_path, upper, [l1], ["A /new"])


def test_lower_layers_resolve_like_the_kernel(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, l2, l3 = layers
    f(l3 / "a" / "b" / "c", b"deep")
    f(l3 / "a" / "x", b"x")
    f(l3 / "p" / "q", b"q")
    f(l3 / "o" / "old", b"o")
    wh(l2 / "a" / "b")  # l3's a/b is gone below l2
    f(l2 / "p", b"now a file")  # l3's p/ is hidden by a file
    d(l1 / "o", opaque=True)  # l3's o/old is hidden by an opaque dir
    f(l1 / "o" / "new", b"n")
    f(upper / "a" / "b" / "c", b"deep")  # added again (the parent view has no a/b)
    f(upper / "p" / "q", b"q")  # under what is a file in the parent view
    wh(upper / "o" / "old")  # hidden already: no change
    lower_o = os.stat(l1 / "o")
    os.utime(
        upper / "o", ns=(lower_o.st_atime_ns, lower_o.st_mtime_ns)
    )  # a directory's time counts
    wh(upper / "a" / "x")
    check(
        tmp_path,
        upper,
        [l1, l2, l3],
        ["C /a", "A /a/b", "A /a/b/c", "D /a/x", "C /p", "A /p/q"],
    )


def test_type_replacements(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, _, _ = layers
    f(l1 / "was-file", b"f")
    f(l1 / "was-dir" / "child", b"c")
    d(upper / "was-file")
    f(upper / "was-file" / "inside", b"i")
    f(upper / "was-dir", b"now a file")
    check(tmp_path, upper, [l1], ["C /was-dir", "C /was-file", "A /was-file/inside"])


def test_same_size_rewrite_in_one_tick_is_seen(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, _, _ = layers
    f(l1 / "conf", b"aaaa", mtime=None)
    f(upper / "conf", b"bbbb", mtime=None)
    ns = os.stat(l1 / "conf").st_mtime_ns
    os.utime(upper / "conf", ns=(ns, ns))  # identical metadata, different bytes
    os.symlink("aaaa", l1 / "link")
    os.symlink("bbbb", upper / "link")
    ns = os.lstat(l1 / "link").st_mtime_ns
    os.utime(upper / "link", ns=(ns, ns), follow_symlinks=False)
    f(l1 / "untouched", b"u", mtime=None)
    f(upper / "untouched", b"u", mtime=None)
    ns = os.stat(l1 / "untouched").st_mtime_ns
    os.utime(upper / "untouched", ns=(ns, ns))
    check(tmp_path, upper, [l1], ["C /conf", "C /link"])


def test_capability_and_directory_metadata(tmp_path: Path, layers: tuple[Path, ...]) -> None:
    upper, l1, _, _ = layers
    f(l1 / "bin" / "ping", b"elf", 0o755)
    d(l1 / "srv", 0o755)
    f(upper / "bin" / "ping", b"elf", 0o755)
    os.setxattr(
        upper / "bin" / "ping",
        "security.capability",
        bytes.fromhex("0100000200200000000000000000000000000000"),
    )
    d(upper / "srv", 0o700)
    check(tmp_path, upper, [l1], ["C /bin", "C /bin/ping", "C /srv"])


def test_hardlinks_count_once(tmp_path: Path) -> None:
    f(tmp_path / "a", b"12345")
    os.link(tmp_path / "a", tmp_path / "b")
    f(tmp_path / "sub" / "c", b"67")
    wh(tmp_path / "gone")
    assert upper_size(tmp_path) == 7


# -- random stacks ------------------------------------------------------------------

_NAMES = ("a", "b", "c")


def _random_layer(
    rng: random.Random,
    root: Path,
    below: _LowerView,
    parts: tuple[str, ...] = (),
    opaque: bool = False,
) -> None:
    """Random entries; a whiteout only where it hides something, as a real layer has.

    The kernel lists whiteouts in directories it does not merge (they exist
    in one layer only, or are opaque) although they cannot be opened, so a
    merged view with such "phantom" whiteouts is no ground truth.
    """
    for name in _NAMES:
        path = root / name
        roll = rng.random()
        if roll < 0.30:
            continue
        if roll < 0.55:
            size = rng.choice((0, 1, 2, 3))
            data = bytes([rng.randrange(2)]) * size
            f(path, data, rng.choice((0o644, 0o600)), rng.choice((OLD, None)))
        elif roll < 0.62:
            os.symlink(rng.choice(("t1", "t2", "t33")), path)
        elif roll < 0.72:
            if not opaque and below.lookup(below.dirs(parts), name) is not None:
                wh(path)
        elif len(parts) < 2:
            child_opaque = rng.random() < 0.25
            d(path, rng.choice((0o755, 0o755, 0o700)), opaque=child_opaque)
            _random_layer(rng, path, below, (*parts, name), opaque or child_opaque)


@pytest.mark.parametrize("seed", range(60))
def test_random_stacks_match_the_kernel(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    count = rng.choice((1, 2, 3))
    dirs = [tmp_path / f"layer{i}" for i in range(count + 1)]
    for i in reversed(range(len(dirs))):  # bottom up
        dirs[i].mkdir()
        _random_layer(rng, dirs[i], _LowerView(dirs[i + 1 :]))
    upper, lowers = dirs[0], dirs[1:]
    assert overlay_changes(upper, lowers) == kernel_changes(tmp_path, upper, lowers)


def test_change_kinds_are_docker_values() -> None:
    assert [k.value for k in (ChangeKind.MODIFY, ChangeKind.ADD, ChangeKind.DELETE)] == [0, 1, 2]


# -- directory times, deep and long paths ---------------------------------------------


def test_a_directory_whose_entries_came_and_went_is_modified(
    tmp_path: Path, layers: tuple[Path, ...]
) -> None:
    """``/tmp`` copied up, a file made and deleted in it: only its mtime is left, and counts.

    The native diff exports ``tmp/`` (it is in the upper directory); the changes now say so.
    """
    upper, l1, _, _ = layers
    d(l1 / "tmp", 0o1777)
    os.utime(l1 / "tmp", (OLD, OLD))
    d(upper / "tmp", 0o1777)
    os.utime(upper / "tmp", (OLD + 60, OLD + 60))
    check(tmp_path, upper, [l1], ["C /tmp"])


def _chain(root: Path, depth: int, name: str, leaf: bytes) -> None:
    """``root/name/.../name/leaf`` built by descriptors (the path may pass PATH_MAX)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("leaf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        os.write(wfd, leaf)
        os.close(wfd)
        os.utime("leaf", (OLD, OLD), dir_fd=fd)
    finally:
        os.close(fd)


def _same_dir_times(upper: Path, lower: Path, name: str, depth: int) -> None:
    """Give the upper chain's directories the lower's times, from the bottom up."""
    ufds = [os.open(upper, os.O_RDONLY | os.O_DIRECTORY)]
    lfds = [os.open(lower, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(depth):
            ufds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=ufds[-1]))
            lfds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=lfds[-1]))
        for ufd, lfd in zip(reversed(ufds[1:]), reversed(lfds[1:]), strict=True):
            st = os.fstat(lfd)
            os.utime(ufd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        for fd in ufds + lfds:
            os.close(fd)


@pytest.mark.parametrize(("name", "depth"), [("d", 1500), ("abcdefghij", 600)])
def test_deep_and_long_chains(
    tmp_path: Path, layers: tuple[Path, ...], name: str, depth: int
) -> None:
    """1,500 levels (past the recursion limit), then 6,600-byte paths (past PATH_MAX)."""
    upper, l1, _, _ = layers
    _chain(l1, depth, name, b"old")
    _chain(upper, depth, name, b"new!")
    _same_dir_times(upper, l1, name, depth)
    chain = [f"/{name}" * n for n in range(1, depth + 1)]
    expected = sorted([*(f"C {p}" for p in chain), f"C {chain[-1]}/leaf"])
    got = overlay_changes(upper, [l1])
    assert [str(c) for c in got] == expected
    assert upper_size(upper) == 4
    assert got == kernel_changes(tmp_path, upper, [l1])
    _chain(upper, depth, name, b"old")  # same again: nothing changed
    assert overlay_changes(upper, [l1]) == []
    for tree in (upper, l1):
        remove_tree(tree)
