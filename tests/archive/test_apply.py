"""apply_layer on real files: Docker's UnpackLayer semantics and the OCI layer spec."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest
import zstandard

from lamina.archive import ApplyOptions, IDMap, IDRange, WhiteoutFormat, apply_layer
from lamina.errors import (
    InvalidArchiveError,
    LaminaError,
    NotSupportedError,
    UnsafeArchiveError,
)

root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (chown, mknod, trusted xattrs)"
)

Member = tuple[str, str, dict[str, object]]


def build(members: Iterable[Member]) -> bytes:
    """A PAX tar from (name, kind, attrs); kind is file|dir|symlink|link|fifo|chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, attrs in members:
            info = tarfile.TarInfo(name)
            info.mtime = int(attrs.get("mtime", 1_600_000_000))  # type: ignore[call-overload]
            info.mode = int(attrs.get("mode", 0o755 if kind == "dir" else 0o644))  # type: ignore[call-overload]
            info.uid = int(attrs.get("uid", 0))  # type: ignore[call-overload]
            info.gid = int(attrs.get("gid", 0))  # type: ignore[call-overload]
            info.pax_headers = dict(attrs.get("pax", {}))  # type: ignore[call-overload]
            data = None
            if kind == "file":
                raw = attrs.get("data", b"")
                assert isinstance(raw, bytes)
                info.size = len(raw)
                data = io.BytesIO(raw)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = str(attrs["target"])
            elif kind == "link":
                info.type = tarfile.LNKTYPE
                info.linkname = str(attrs["target"])
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
            tf.addfile(info, data)
    return buf.getvalue()


def apply(raw: bytes, dest: Path, **opts: object) -> int:
    return apply_layer(io.BytesIO(raw), dest, ApplyOptions(**opts))  # type: ignore[arg-type]


def listing(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out.append(os.path.normpath(os.path.join(rel, d)) + "/")
        for f in filenames:
            out.append(os.path.normpath(os.path.join(rel, f)))
    return sorted(out)


def names_layer(names: list[str]) -> bytes:
    """Like Docker's test: names ending in / are dirs, others empty files, lexical order."""
    return build((n, "dir" if n.endswith("/") else "file", {}) for n in sorted(names))


def test_docker_apply_layer_whiteouts_sequence(tmp_path: Path) -> None:
    # Docker's TestApplyLayerWhiteouts, applied cumulatively to one directory
    base = [
        ".baz",
        "bar/",
        "bar/bax",
        "bar/bay/",
        "baz",
        "foo/",
        "foo/.abc",
        "foo/.bcd/",
        "foo/.bcd/a",
        "foo/cde/",
        "foo/cde/def",
        "foo/cde/efg",
        "foo/fgh",
        "foobar",
    ]
    apply(names_layer(base), tmp_path)
    assert listing(tmp_path) == sorted(base)

    layer2 = [".bay", ".wh.baz", "foo/", "foo/.bce", "foo/.wh..wh..opq", "foo/cde/", "foo/cde/efg"]
    apply(names_layer(layer2), tmp_path)
    assert listing(tmp_path) == sorted(
        [
            ".bay",
            ".baz",
            "bar/",
            "bar/bax",
            "bar/bay/",
            "foo/",
            "foo/.bce",
            "foo/cde/",
            "foo/cde/efg",
            "foobar",
        ]
    )

    layer3 = [".bay", ".wh..baz", ".wh.foobar", "foo/", "foo/.abc", "foo/.wh.cde", "bar/"]
    apply(names_layer(layer3), tmp_path)
    assert listing(tmp_path) == sorted(
        [".bay", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.abc", "foo/.bce"]
    )

    apply(names_layer([".abc", ".wh..wh..opq", "foobar"]), tmp_path)
    assert listing(tmp_path) == [".abc", "foobar"]


def test_size_is_the_sum_of_header_sizes(tmp_path: Path) -> None:
    raw = build(
        [
            ("d", "dir", {}),
            ("d/a", "file", {"data": b"x" * 100}),
            ("d/b", "link", {"target": "d/a"}),
            ("d/s", "symlink", {"target": "a"}),
            ("d/.wh.gone", "file", {}),
            ("big", "file", {"data": b"y" * 70000}),
        ]
    )
    assert apply(raw, tmp_path) == 70100


def test_metadata_modes_times_and_hardlinks(tmp_path: Path) -> None:
    raw = build(
        [
            ("dir", "dir", {"mode": 0o1705, "mtime": 1_000_000_000}),
            ("dir/suid", "file", {"mode": 0o4755, "data": b"s", "mtime": 1_100_000_000}),
            ("dir/ro", "file", {"mode": 0o400, "data": b"r"}),
            ("dir/hl", "link", {"target": "dir/suid"}),
            ("dir/sl", "symlink", {"target": "/etc/passwd", "mtime": 1_200_000_000}),
            ("dir/fifo", "fifo", {"mode": 0o640}),
        ]
    )
    apply(raw, tmp_path)
    d = tmp_path / "dir"
    assert stat.S_IMODE(d.lstat().st_mode) == 0o1705
    assert d.lstat().st_mtime == 1_000_000_000  # set after its contents were written
    suid = (d / "suid").lstat()
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert suid.st_mtime == 1_100_000_000
    assert (d / "hl").lstat().st_ino == suid.st_ino
    assert stat.S_IMODE((d / "ro").lstat().st_mode) == 0o400
    assert os.readlink(d / "sl") == "/etc/passwd"
    assert (d / "sl").lstat().st_mtime == 1_200_000_000
    assert stat.S_ISFIFO((d / "fifo").lstat().st_mode)
    assert stat.S_IMODE((d / "fifo").lstat().st_mode) == 0o640


def test_nanosecond_mtime_from_pax(tmp_path: Path) -> None:
    apply(build([("f", "file", {"pax": {"mtime": "1600000000.123456789"}})]), tmp_path)
    assert (tmp_path / "f").lstat().st_mtime_ns == 1_600_000_000_123_456_789


@root_only
def test_owners_setuid_after_chown_and_devices(tmp_path: Path) -> None:
    raw = build(
        [
            ("f", "file", {"mode": 0o4755, "uid": 1000, "gid": 1001, "data": b"x"}),
            ("d", "dir", {"mode": 0o2775, "uid": 7, "gid": 8}),
            ("d/implied/deep", "file", {"uid": 3, "gid": 4}),
            ("null", "chr", {"mode": 0o666}),
            ("sl", "symlink", {"target": "f", "uid": 5, "gid": 6}),
        ]
    )
    apply(raw, tmp_path)
    st = (tmp_path / "f").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)
    st = (tmp_path / "d").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o2775)
    implied = (tmp_path / "d/implied").lstat()
    assert implied.st_mode & 0o777 == 0o755 and implied.st_uid == 0  # setgid inherits
    deep = (tmp_path / "d/implied/deep").lstat()
    assert (deep.st_uid, deep.st_gid) == (3, 4)
    null = (tmp_path / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert (tmp_path / "sl").lstat().st_uid == 5


@root_only
def test_id_map_shifts_owners(tmp_path: Path) -> None:
    idmap = IDMap((IDRange(0, 100000, 65536),), (IDRange(0, 200000, 65536),))
    apply(build([("f", "file", {"uid": 1, "gid": 2}), ("a/b", "file", {})]), tmp_path, id_map=idmap)
    st = (tmp_path / "f").lstat()
    assert (st.st_uid, st.st_gid) == (100001, 200002)
    implied = (tmp_path / "a").lstat()
    assert (implied.st_uid, implied.st_gid) == (100000, 200000)


def test_xattrs_from_pax(tmp_path: Path) -> None:
    raw = build([("f", "file", {"pax": {"SCHILY.xattr.user.k": "v"}})])
    try:
        os.setxattr(tmp_path, "user.probe", b"1")
    except OSError:
        pytest.skip("filesystem has no user xattrs")
    apply(raw, tmp_path)
    assert os.getxattr(tmp_path / "f", "user.k") == b"v"


def test_overlay_private_xattrs_are_dropped(tmp_path: Path) -> None:
    raw = build([("d", "dir", {"pax": {"SCHILY.xattr.trusted.overlay.redirect": "/x"}})])
    apply(raw, tmp_path)
    assert "trusted.overlay.redirect" not in os.listxattr(tmp_path / "d")


@root_only
def test_overlay_whiteout_format(tmp_path: Path) -> None:
    raw = build(
        [
            ("d", "dir", {}),
            ("d/.wh..wh..opq", "file", {}),
            ("d/keep", "file", {"data": b"k"}),
            ("e/.wh.gone", "file", {}),
        ]
    )
    apply(raw, tmp_path, whiteouts=WhiteoutFormat.OVERLAY)
    assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"
    gone = (tmp_path / "e/gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert sorted(os.listdir(tmp_path / "d")) == ["keep"]


def test_file_replaces_directory_and_back(tmp_path: Path) -> None:
    apply(build([("x", "dir", {}), ("x/child", "file", {"data": b"c"})]), tmp_path)
    apply(build([("x", "file", {"data": b"now a file"})]), tmp_path)
    assert (tmp_path / "x").read_bytes() == b"now a file"
    apply(build([("x", "dir", {}), ("x/y", "file", {})]), tmp_path)
    assert (tmp_path / "x").is_dir() and listing(tmp_path) == ["x/", "x/y"]


def test_compressed_layers_are_sniffed(tmp_path: Path) -> None:
    raw = build([("f", "file", {"data": b"hello"})])
    apply(gzip.compress(raw), tmp_path / "g" if (tmp_path / "g").mkdir() is None else tmp_path)
    (tmp_path / "z").mkdir()
    apply(zstandard.ZstdCompressor().compress(raw), tmp_path / "z")
    assert (tmp_path / "g/f").read_bytes() == (tmp_path / "z/f").read_bytes() == b"hello"


def test_empty_stream_is_an_empty_layer(tmp_path: Path) -> None:
    assert apply(b"", tmp_path) == 0
    assert listing(tmp_path) == []


def test_bomb_limit(tmp_path: Path) -> None:
    raw = gzip.compress(build([("f", "file", {"data": bytes(10 << 20)})]))
    assert len(raw) < 100_000
    with pytest.raises(InvalidArchiveError, match="limit"):
        apply(raw, tmp_path, max_bytes=1 << 20)


# -- confinement: a sentinel outside the root must never change -----------------


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hello").write_bytes(b"sentinel")
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest, victim


def _assert_victim_intact(victim: Path) -> None:
    assert sorted(os.listdir(victim)) == ["hello"]
    assert (victim / "hello").read_bytes() == b"sentinel"


@pytest.mark.parametrize(
    "members",
    [
        [("../victim/dotdot", "file", {"data": b"x"})],
        [("/../victim/slash-dotdot", "file", {"data": b"x"})],
        [("dotdot", "link", {"target": "../victim/hello"})],
        [("loophole", "symlink", {"target": "../victim"}), ("loophole/file", "file", {})],
        [("loophole", "symlink", {"target": "/"}), ("loophole/victim/hello", "file", {})],
        [
            ("loophole", "symlink", {"target": "../victim/hello"}),
            ("loophole", "file", {"data": b"x"}),
        ],
        [
            ("loophole", "symlink", {"target": "../victim"}),
            ("x", "link", {"target": "loophole/hello"}),
        ],
        [("../victim/.wh.hello", "file", {})],
        [("loophole", "symlink", {"target": "../victim"}), ("loophole/.wh.hello", "file", {})],
        [("loophole", "symlink", {"target": "../victim"}), ("loophole/.wh..wh..opq", "file", {})],
    ],
)
def test_breakouts_never_touch_the_outside(jail: tuple[Path, Path], members: list[Member]) -> None:
    dest, victim = jail
    with contextlib.suppress(LaminaError):
        apply(build(members), dest)
    _assert_victim_intact(victim)
    for dirpath, _, filenames in os.walk(dest):
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink():
                assert p.read_bytes() != b"sentinel"


def test_writing_through_a_symlink_is_refused(jail: tuple[Path, Path]) -> None:
    dest, victim = jail
    raw = build([("loophole", "symlink", {"target": "../victim"}), ("loophole/x", "file", {})])
    with pytest.raises(UnsafeArchiveError):
        apply(raw, dest)
    _assert_victim_intact(victim)


def test_dotdot_name_is_refused(jail: tuple[Path, Path]) -> None:
    dest, victim = jail
    with pytest.raises(UnsafeArchiveError):
        apply(build([("a/../../victim/x", "file", {})]), dest)
    _assert_victim_intact(victim)


def test_missing_hardlink_target_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArchiveError):
        apply(build([("x", "link", {"target": "nope"})]), tmp_path)


def test_unprivileged_devices_are_skipped_or_refused(tmp_path: Path) -> None:
    raw = build([("null", "chr", {})])
    if os.geteuid() == 0:
        with pytest.raises(UnsafeArchiveError):
            apply(raw, tmp_path, devices=False)
    else:
        apply(raw, tmp_path)
        assert not (tmp_path / "null").exists()
        with pytest.raises(NotSupportedError):
            apply(raw, tmp_path, devices=True)
