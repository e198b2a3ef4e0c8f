"""Export: Docker-shaped deterministic PAX tars, read back with Python tarfile and GNU tar."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from lamina import Change, ChangeKind
from lamina.archive import IDMap, IDRange, WhiteoutFormat, changes, export_changes, export_tree
from lamina.errors import InvalidArchiveError, LayerChangedError, NotFoundError

IS_ROOT = os.geteuid() == 0
MTIME = 1_600_000_000
MTIME_NS = MTIME * 1_000_000_000 + 987_654_321  # sub-second part must be truncated


BODIES: dict[int, bytes] = {}


def read_members(stream: BinaryIO) -> tuple[bytes, list[tarfile.TarInfo]]:
    """Read an export to the end and parse it (bodies kept for :func:`content`)."""
    with stream:
        data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        members = tf.getmembers()
        for m in members:
            if m.isreg() and m.size:
                fh = tf.extractfile(m)
                assert fh is not None
                BODIES[id(m)] = fh.read()
    return data, members


def content(member: tarfile.TarInfo) -> bytes:
    return BODIES.get(id(member), b"")


def xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {
        k[len(prefix) :]: v.encode("utf-8", "surrogateescape")
        for k, v in member.pax_headers.items()
        if k.startswith(prefix)
    }


def touch(path: Path, data: bytes = b"", mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def stamp(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


def build_sample(root: Path) -> None:
    root.mkdir()
    (root / "bin").mkdir()
    touch(root / "bin" / "su", b"#!/bin/true\n", 0o4755)
    touch(root / "bin" / "wall", b"wall", 0o2755)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    touch(root / "etc-a", b"x" * 10)
    os.link(root / "etc-a", root / "etc-b")  # second name: a link to the first
    os.link(root / "etc-a", root / "bin" / "etc-c")
    os.symlink("../etc-a", root / "bin" / "rel-link")
    os.symlink("/absolute/target", root / "abs-link")
    os.mkfifo(root / "fifo")
    touch(root / "big", os.urandom(3 * 1024 * 1024 + 7))
    touch(root / "empty")
    os.setxattr(root / "etc-a", "user.comment", b"hello \xff\x00 world")
    os.setxattr(root / "bin", "user.dir", b"d")
    stamp(root)


def test_export_tree_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_sample(root)
    _, members = read_members(export_tree(root))
    names = [m.name for m in members]
    # Depth first, names sorted within each directory; the root itself omitted.
    assert names == [
        "abs-link",
        "big",
        "bin",
        "bin/etc-c",
        "bin/rel-link",
        "bin/su",
        "bin/wall",
        "empty",
        "etc-a",
        "etc-b",
        "fifo",
        "tmp",
    ]
    by = {m.name: m for m in members}
    assert by["bin"].isdir() and by["tmp"].isdir()
    assert by["tmp"].mode == 0o1777
    assert by["bin/su"].mode == 0o4755 and content(by["bin/su"]) == b"#!/bin/true\n"
    assert by["bin/wall"].mode == 0o2755
    # hard links point at the first name in stream order, with no data
    assert by["bin/etc-c"].isreg() and content(by["bin/etc-c"]) == b"x" * 10
    for name in ("etc-a", "etc-b"):
        assert by[name].islnk() and by[name].linkname == "bin/etc-c" and by[name].size == 0
    assert by["bin/rel-link"].issym() and by["bin/rel-link"].linkname == "../etc-a"
    assert by["abs-link"].linkname == "/absolute/target"
    assert by["fifo"].isfifo()
    assert content(by["big"]) == (root / "big").read_bytes()
    assert by["empty"].isreg() and by["empty"].size == 0
    for m in members:
        assert m.mtime == MTIME
        assert m.uname == "" and m.gname == ""
        assert (m.uid, m.gid) == (os.getuid(), os.getgid())
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
    assert xattrs(by["bin"]) == {"user.dir": b"d"}
    assert xattrs(by["bin/etc-c"]) == {"user.comment": b"hello \xff\x00 world"}
    assert xattrs(by["big"]) == {} and by["big"].pax_headers == {}


def test_directories_have_trailing_slash_and_plain_ustar(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    touch(root / "d" / "f", b"abc")
    stamp(root)
    with export_tree(root) as stream:
        data = stream.read()
    # two plain ustar headers, one data block, two zero blocks: no PAX anywhere
    assert len(data) == 5 * 512
    assert data[:2] == b"d/" and data[156:157] == b"5"
    assert data[257:265] == b"ustar\x0000"
    assert data[512:515] == b"d/f" and data[1024:1027] == b"abc"
    assert data[-1024:] == bytes(1024)


def test_export_is_deterministic(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_sample(root)
    with export_tree(root) as s1, export_tree(root) as s2:
        first, second = s1.read(), s2.read()
    assert first == second
    found = changes(root, None)
    found.append(Change("/deleted/thing", ChangeKind.DELETE))
    with export_changes(root, found) as s1, export_changes(root, reversed(found)) as s2:
        assert s1.read() == s2.read()


def test_gnu_tar_reads_and_extracts_it_identically(tmp_path: Path) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    root = tmp_path / "root"
    build_sample(root)
    long_dir = root / ("long-directory-name-" * 4) / ("x" * 90)
    long_dir.mkdir(parents=True)
    touch(long_dir / ("y" * 120), b"long name")  # > 255 bytes: needs a PAX path
    touch(root / "ünïcödé", b"utf8")
    os.symlink("t" * 150, root / "long-link")
    stamp(root)
    archive = tmp_path / "out.tar"
    with export_tree(root) as stream:
        archive.write_bytes(stream.read())
    env = dict(os.environ, LC_ALL="C.UTF-8")
    listing = subprocess.run(
        ["tar", "-tf", str(archive)], capture_output=True, text=True, check=True, env=env
    )
    assert listing.stderr == ""
    with tarfile.open(archive) as tf:
        assert [n.rstrip("/") for n in listing.stdout.splitlines()] == tf.getnames()
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xpf", str(archive), "-C", str(dest)],
        check=True,
        capture_output=True,
    )
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            src = Path(dirpath) / name
            got = dest / src.relative_to(root)
            a, b = os.lstat(src), os.lstat(got)
            assert (a.st_mode, a.st_size, a.st_mtime_ns // 10**9) == (
                b.st_mode,
                b.st_size,
                b.st_mtime_ns // 10**9,
            ), src
            if stat.S_ISREG(a.st_mode):
                assert src.read_bytes() == got.read_bytes()
            if stat.S_ISLNK(a.st_mode):
                assert os.readlink(src) == os.readlink(got)
    assert os.getxattr(dest / "etc-a", "user.comment") == b"hello \xff\x00 world"
    assert os.stat(dest / "etc-a").st_ino == os.stat(dest / "bin" / "etc-c").st_ino


def test_export_changes_whiteouts_and_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir" / "sub").mkdir(parents=True)
    touch(root / "dir" / "sub" / "new", b"new")
    touch(root / "dir" / "unlisted", b"not a change")
    touch(root / "a-b", b"ab")
    stamp(root)
    found = [
        Change("/dir/sub/new", ChangeKind.ADD),
        Change("/gone", ChangeKind.DELETE),
        Change("/dir", ChangeKind.MODIFY),
        Change("/dir/sub", ChangeKind.ADD),
        Change("/dir/old", ChangeKind.DELETE),
        Change("/a-b", ChangeKind.MODIFY),
        Change("/dir/vanished", ChangeKind.ADD),  # missing on disk: skipped, as Docker does
    ]
    _, members = read_members(export_changes(root, found))
    assert [m.name for m in members] == [
        "a-b",
        "dir",
        "dir/.wh.old",
        "dir/sub",
        "dir/sub/new",
        ".wh.gone",
    ]
    for m in members:
        if ".wh." in m.name:
            assert m.isreg() and m.mode == 0 and m.size == 0
            assert (m.uid, m.gid, m.mtime) == (0, 0, 0)
        else:
            assert m.mtime == MTIME
    assert content(members[0]) == b"ab"
    assert content(members[-2]) == b"new"


def test_export_changes_does_not_follow_symlinked_parents(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    touch(outside / "secret", b"host secret")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "dir")  # swapped in after the changes were computed
    stream = export_changes(root, [Change("/dir/secret", ChangeKind.ADD)])
    with pytest.raises(LayerChangedError) as caught:
        stream.read()
    stream.close()
    assert caught.value.path == "dir/secret"


def test_id_map_to_container_and_whiteouts_unmapped(tmp_path: Path, needs_root: None) -> None:
    root = tmp_path / "root"
    root.mkdir()
    touch(root / "owned", b"o")
    os.chown(root / "owned", 100_005, 100_007)
    touch(root / "rootish", b"r")
    os.chown(root / "rootish", 100_000, 100_000)
    id_map = IDMap((IDRange(0, 100_000, 65536),), (IDRange(0, 100_000, 65536),))
    found = [
        Change("/owned", ChangeKind.ADD),
        Change("/rootish", ChangeKind.ADD),
        Change("/x", ChangeKind.DELETE),
    ]
    _, members = read_members(export_changes(root, found, id_map=id_map))
    owners = {m.name: (m.uid, m.gid) for m in members}
    assert owners == {"owned": (5, 7), "rootish": (0, 0), ".wh.x": (0, 0)}
    os.chown(root / "owned", 5, 5)  # outside the map's host range
    with pytest.raises(InvalidArchiveError):
        read_members(export_tree(root, id_map=id_map))


def test_big_ids_and_owners(tmp_path: Path, needs_root: None) -> None:
    root = tmp_path / "root"
    root.mkdir()
    touch(root / "big-uid", b"b")
    os.chown(root / "big-uid", 3_000_000, 1)  # beyond 7 octal digits: PAX uid
    touch(root / "normal", b"n")
    os.chown(root / "normal", 1000, 1000)
    _, members = read_members(export_tree(root))
    by = {m.name: m for m in members}
    assert (by["big-uid"].uid, by["big-uid"].gid) == (3_000_000, 1)
    assert by["big-uid"].pax_headers.get("uid") == "3000000"
    assert (by["normal"].uid, by["normal"].gid) == (1000, 1000)
    assert by["normal"].pax_headers == {}


def test_devices_and_private_xattrs(tmp_path: Path, needs_root: None) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    touch(root / "ping", b"ping")
    # VFS_CAP_REVISION_3 (24 bytes, with a namespace root uid): exported as revision 2
    cap_v3 = (
        (0x03000001).to_bytes(4, "little")
        + (1 << 13).to_bytes(4, "little")
        + bytes(12)
        + (1000).to_bytes(4, "little")  # namespace root uid 1000: the kernel keeps v3
    )
    try:
        os.setxattr(root / "ping", "security.capability", cap_v3)
    except OSError as exc:
        pytest.skip(f"cannot set security.capability: {exc}")
    os.setxattr(root / "ping", "trusted.overlay.origin", b"private")
    os.setxattr(root / "ping", "trusted.keep", b"kept")
    (root / "d").mkdir()
    os.setxattr(root / "d", "trusted.overlay.opaque", b"y")
    sock_path = root / "sock"
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        _, members = read_members(export_tree(root))
    by = {m.name: m for m in members}
    assert "sock" not in by  # sockets are skipped
    assert by["null"].ischr() and (by["null"].devmajor, by["null"].devminor) == (1, 3)
    assert by["loop"].isblk() and (by["loop"].devmajor, by["loop"].devminor) == (7, 200)
    cap = xattrs(by["ping"])["security.capability"]
    stored = os.getxattr(root / "ping", "security.capability")
    if stored[3] == 3:  # the kernel kept v3: check the downgrade
        assert len(cap) == 20 and cap[3] == 2 and cap[:3] == stored[:3] and cap[4:] == stored[4:20]
    else:
        assert cap == stored
    assert xattrs(by["ping"]) == {"security.capability": cap, "trusted.keep": b"kept"}
    # OCI format: the opaque xattr is overlay-private, so neither exported nor converted
    assert xattrs(by["d"]) == {}
    assert [m.name for m in members] == ["d", "loop", "null", "ping"]


def test_overlay_tar_untar_shape(tmp_path: Path, needs_root: None) -> None:
    """Docker's TestOverlayTarUntar: the exact entries of an overlay upper dir."""
    root = tmp_path / "upper"
    root.mkdir()
    os.umask(0)
    try:
        for d, mode in (("d1", 0o700), ("d2", 0o750), ("d3", 0o700)):
            (root / d).mkdir(mode)
        touch(root / "d1" / "f1", b"", 0o600)
        touch(root / "d2" / "f1", b"", 0o660)
        os.mknod(root / "d3" / "f1", 0o600 | stat.S_IFCHR, 0)
    finally:
        os.umask(0o022)
    for d in ("d1", "d2"):
        os.setxattr(root / d, "trusted.overlay.opaque", b"y")
    data, members = read_members(export_tree(root, whiteouts=WhiteoutFormat.OVERLAY))
    assert [m.name for m in members] == [
        "d1",
        "d1/.wh..wh..opq",
        "d1/f1",
        "d2",
        "d2/.wh..wh..opq",
        "d2/f1",
        "d3",
        "d3/.wh.f1",
    ]
    assert all(m.pax_headers == {} and m.devmajor == 0 and m.devminor == 0 for m in members)
    by = {m.name: m for m in members}
    assert by["d1/.wh..wh..opq"].isreg() and by["d1/.wh..wh..opq"].mode == 0o700
    assert by["d2/.wh..wh..opq"].mode == 0o750
    assert by["d1/.wh..wh..opq"].mtime == 0
    assert by["d3/.wh.f1"].isreg() and by["d3/.wh.f1"].mode == 0o600
    assert by["d3/.wh.f1"].size == 0
    assert b"PaxHeaders" not in data


@pytest.mark.parametrize("change", ["shrinks", "grows"])
def test_file_changing_size_while_read_is_refused(tmp_path: Path, change: str) -> None:
    """Its header (with the size) is out: neither zeros nor a cut body may stand for it."""
    root = tmp_path / "root"
    root.mkdir()
    size = 2 * 1024 * 1024
    touch(root / "a-file", b"s" * size)
    touch(root / "b-after", b"after")
    stream = export_tree(root)
    raw = stream.raw  # type: ignore[attr-defined]
    head = raw.read(512)  # the header, with the size as it was; no content read yet
    assert head[:6] == b"a-file"
    if change == "shrinks":
        os.truncate(root / "a-file", 1000)
    else:
        with open(root / "a-file", "ab") as fh:
            fh.write(b"+" * 5000)
    with pytest.raises(LayerChangedError) as caught:
        while raw.read(1 << 20):
            pass
    stream.close()
    assert caught.value.path == "a-file"


def test_file_written_between_listing_and_open_is_exported_as_opened(tmp_path: Path) -> None:
    """The header is made from the descriptor's fstat, so it matches the body read."""
    root = tmp_path / "root"
    root.mkdir()
    touch(root / "a-big", b"a" * (4 << 20))  # the first read stops inside it
    touch(root / "b-small", b"before")
    stream = export_tree(root)
    first = stream.read(1)  # lists the root: b-small is listed, not opened yet
    with open(root / "b-small", "ab") as fh:
        fh.write(b" and after")
    data = first + stream.read()
    stream.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.getmember("b-small")
        body = tf.extractfile(member)
        assert body is not None and body.read() == b"before and after"


def test_closing_early_releases_descriptors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    touch(root / "a" / "b" / "big", b"z" * (4 * 1024 * 1024))
    touch(root / "a" / "b" / "small", b"s")
    before = set(os.listdir("/proc/self/fd"))
    stream = export_tree(root)
    stream.raw.read(2048)  # type: ignore[attr-defined]  # inside the big file
    assert len(set(os.listdir("/proc/self/fd")) - before) >= 3
    stream.close()
    assert set(os.listdir("/proc/self/fd")) <= before
    stream2 = export_changes(root, [Change("/a/b/small", ChangeKind.ADD)])
    stream2.close()  # never read: still releases the root descriptor
    assert set(os.listdir("/proc/self/fd")) <= before


def test_missing_root_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        export_tree(tmp_path / "nope")
    with pytest.raises(NotFoundError):
        export_changes(tmp_path / "nope", [])


def test_export_changes_hardlinks_point_at_the_first_exported_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    touch(root / "b", b"shared")
    os.link(root / "b", root / "a")
    os.link(root / "b", root / "c")  # linked, but not among the changes
    found = [Change("/b", ChangeKind.ADD), Change("/a", ChangeKind.MODIFY)]
    _, members = read_members(export_changes(root, found))
    assert [(m.name, m.type) for m in members] == [("a", tarfile.REGTYPE), ("b", tarfile.LNKTYPE)]
    assert content(members[0]) == b"shared" and members[1].linkname == "a"


def test_times_before_the_epoch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    touch(root / "old", b"1969")
    os.utime(root / "old", ns=(-5_500_000_000, -5_500_000_000))  # -5.5 s: floor to -6
    _, members = read_members(export_tree(root))
    assert members[0].mtime == -6
    assert members[0].pax_headers["mtime"] == "-6"


def test_overlay_whiteouts_sharing_one_inode_are_not_hardlinks(
    tmp_path: Path, needs_root: None
) -> None:
    # Recent overlayfs links all whiteouts of a layer to one 0:0 device inode.
    root = tmp_path / "upper"
    (root / "d").mkdir(parents=True)
    os.mknod(root / "d" / "x", 0o600 | stat.S_IFCHR, 0)
    os.link(root / "d" / "x", root / "y")
    _, members = read_members(export_tree(root, whiteouts=WhiteoutFormat.OVERLAY))
    assert [(m.name, m.type) for m in members] == [
        ("d", tarfile.DIRTYPE),
        ("d/.wh.x", tarfile.REGTYPE),
        (".wh.y", tarfile.REGTYPE),
    ]
