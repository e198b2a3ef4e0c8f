"""copy_tree keeps everything a root filesystem needs (Docker's copy tests and more)."""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import random
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina._fs import copy_tree

IS_ROOT = os.geteuid() == 0
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+p, v2


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def assert_same_tree(src: Path, dst: Path, *, atime: bool = False) -> None:
    """Every entry: new inode, same type/mode/owner/ns mtime/size/content/xattrs."""
    src_names = sorted(str(p.relative_to(src)) for p in _walk(src))
    dst_names = sorted(str(p.relative_to(dst)) for p in _walk(dst))
    assert src_names == dst_names
    for rel in ["", *src_names]:
        a, b = src / rel, dst / rel
        sa, sb = os.lstat(a), os.lstat(b)
        assert sa.st_ino != sb.st_ino or sa.st_dev != sb.st_dev, rel
        assert sa.st_mode == sb.st_mode, f"{rel}: {sa.st_mode:o} != {sb.st_mode:o}"
        assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), rel
        assert sa.st_mtime_ns == sb.st_mtime_ns, rel
        if atime and stat.S_ISREG(sa.st_mode):
            assert sa.st_atime_ns == sb.st_atime_ns, rel
        assert _xattrs(a) == _xattrs(b), rel
        if stat.S_ISREG(sa.st_mode):
            assert a.read_bytes() == b.read_bytes(), rel
        elif stat.S_ISLNK(sa.st_mode):
            assert os.readlink(a) == os.readlink(b), rel
        elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
            assert sa.st_rdev == sb.st_rdev, rel


def run_unprivileged(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a child process as nobody (65534) and return its result."""
    if not IS_ROOT:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        code = 0
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:
            payload = pickle.dumps(("error", repr(exc)))
            code = 1
        with os.fdopen(write_end, "wb") as f:
            f.write(payload)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"unprivileged child failed: {value}")
    return value


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A scratch directory that an unprivileged child can also reach."""
    path = Path(tempfile.mkdtemp(prefix="lamina-copy-", dir="/var/tmp"))
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- file data ---------------------------------------------------------------


def _one_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(size).randbytes(size)
    (src / "f").write_bytes(data)
    return src, data


def test_copy_regular_file_content(tmp_path: Path) -> None:
    src, data = _one_file(tmp_path, 1024)
    stats = copy_tree(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "f").read_bytes() == data
    assert stats.files == 1 and stats.bytes == 1024
    assert stats.method in ("reflink", "copy_file_range")


def test_copy_without_clone_or_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_clone(*_: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "no clone")

    def no_cfr(*_: Any) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(fcntl, "ioctl", no_clone)
    monkeypatch.setattr(os, "copy_file_range", no_cfr)
    src, data = _one_file(tmp_path, 3 * 1024 * 1024 + 17)
    stats = copy_tree(src, tmp_path / "dst")
    assert stats.method == "sendfile"
    assert (tmp_path / "dst" / "f").read_bytes() == data


def test_copy_read_write_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: Any) -> int:
        raise OSError(errno.EINVAL, "not here")

    monkeypatch.setattr(fcntl, "ioctl", fail)
    monkeypatch.setattr(os, "copy_file_range", fail)
    monkeypatch.setattr(os, "sendfile", fail)
    src, data = _one_file(tmp_path, 2 * 1024 * 1024 + 5)
    stats = copy_tree(src, tmp_path / "dst")
    assert stats.method == "read/write"
    assert (tmp_path / "dst" / "f").read_bytes() == data


def test_fallback_in_the_middle_of_a_file_keeps_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range copies part of the file, then gives up: the rest comes by sendfile."""
    real = os.copy_file_range
    calls = []

    def partial(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        calls.append(offset_src)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "cross-device")
        return real(src, dst, min(count, 1000), offset_src, offset_dst)

    def no_clone(*_: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "no clone")

    monkeypatch.setattr(fcntl, "ioctl", no_clone)
    monkeypatch.setattr(os, "copy_file_range", partial)
    src, data = _one_file(tmp_path, 100_000)
    copy_tree(src, tmp_path / "dst")
    assert calls == [0, 1000]
    assert (tmp_path / "dst" / "f").read_bytes() == data


def test_failed_method_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clones = []

    def no_clone(*args: Any) -> None:
        clones.append(args)
        raise OSError(errno.EOPNOTSUPP, "no clone")

    monkeypatch.setattr(fcntl, "ioctl", no_clone)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"x" * (i + 1))
    copy_tree(src, tmp_path / "dst")
    assert len(clones) == 1


def test_data_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_clone(*_: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "no clone")

    monkeypatch.setattr(fcntl, "ioctl", no_clone)
    monkeypatch.setattr(os, "copy_file_range", full)
    src, _ = _one_file(tmp_path, 10)
    with pytest.raises(OSError) as info:
        copy_tree(src, tmp_path / "dst")
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "read/write"])
def test_sparse_files_keep_their_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    def fail(*_: Any) -> int:
        raise OSError(errno.EINVAL, "not here")

    monkeypatch.setattr(fcntl, "ioctl", fail)
    if method != "copy_file_range":
        monkeypatch.setattr(os, "copy_file_range", fail)
    if method == "read/write":
        monkeypatch.setattr(os, "sendfile", fail)
    src = tmp_path / "src"
    src.mkdir()
    size = 256 << 20  # mostly hole, like lastlog after a large uid (kept small: a broken
    # copy must not fill the disk)
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(100 << 20)
        f.write(b"middle" * 1000)
        f.truncate(size)
    stats = copy_tree(src, tmp_path / "dst")
    assert stats.method == method
    copied = tmp_path / "dst" / "sparse"
    st = os.stat(copied)
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20
    with open(copied, "rb") as g:
        assert g.read(8) == b"head\0\0\0\0"
        g.seek((100 << 20) - 2)
        assert g.read(6008) == b"\0\0" + b"middle" * 1000 + b"\0" * 6
        g.seek(size - 4)
        assert g.read() == b"\0" * 4


def test_reflink_on_xfs(mount_fs: Callable[..., Path]) -> None:
    mnt = mount_fs("xfs", 400, ["-m", "reflink=1"])
    src = mnt / "src"
    src.mkdir()
    data = os.urandom(1 << 20)
    (src / "f").write_bytes(data)
    os.sync()
    stats = copy_tree(src, mnt / "dst")
    assert stats.method == "reflink"
    assert (mnt / "dst" / "f").read_bytes() == data
    filefrag = shutil.which("filefrag")
    if filefrag:
        out = subprocess.run(
            [filefrag, "-v", str(mnt / "dst" / "f")], capture_output=True, text=True, check=True
        ).stdout
        assert "shared" in out


# -- Docker's TestCopyDir / TestCopyHardlink -------------------------------------


def _populate_random(src: Path, rng: random.Random, depth: int = 3) -> None:
    src.mkdir()
    dirs = [src]
    for _ in range(depth):
        nxt = []
        for parent in dirs:
            for i in range(10):
                d = parent / f"srcdir{i}"
                d.mkdir()
                nxt.append(d)
                f = parent / f"srcfile{i}"
                f.touch()
                # random permission bits, special bits included; dirs keep u+rwx unprivileged
                mode = rng.randrange(0o10000) | (0 if IS_ROOT else 0o400)
                os.chmod(f, mode)
                if IS_ROOT:
                    os.lchown(f, rng.randrange(3000), rng.randrange(3000))
                os.utime(f, ns=(rng.randrange(1 << 60), rng.randrange(1 << 60)))
        dirs = nxt
    for d in sorted(_walk(src), key=lambda p: -len(p.parts)):
        if d.is_dir() and not d.is_symlink():
            mode = rng.randrange(0o10000) | (0 if IS_ROOT else 0o700)
            if IS_ROOT:
                os.lchown(d, rng.randrange(3000), rng.randrange(3000))
            os.chmod(d, mode)
            os.utime(d, ns=(rng.randrange(1 << 60), rng.randrange(1 << 60)))


def test_copy_dir_random_modes_owners_times(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _populate_random(src, random.Random(42))
    stats = copy_tree(src, dst)
    assert stats.dirs == 1 + 10 + 100 + 1000
    assert stats.files == 10 + 100 + 1000
    assert_same_tree(src, dst, atime=IS_ROOT)


def test_copy_hardlinks_stay_hardlinks(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"data")
    os.link(src / "a" / "f", src / "g")
    os.link(src / "a" / "f", src / "a" / "b" / "h")
    os.symlink("target", src / "ln")
    os.link(src / "ln", src / "ln2", follow_symlinks=False)
    os.mkfifo(src / "fifo")
    os.link(src / "fifo", src / "fifo2")
    (src / "lonely").write_bytes(b"x")
    stats = copy_tree(src, dst)
    f, g, h = (os.lstat(dst / p) for p in ("a/f", "g", "a/b/h"))
    assert f.st_ino == g.st_ino == h.st_ino
    assert f.st_nlink == 3
    assert f.st_ino != os.lstat(src / "a" / "f").st_ino
    assert os.lstat(dst / "ln").st_ino == os.lstat(dst / "ln2").st_ino
    assert os.path.islink(dst / "ln2")
    assert os.lstat(dst / "fifo").st_ino == os.lstat(dst / "fifo2").st_ino
    assert os.lstat(dst / "lonely").st_nlink == 1
    assert stats.hardlinks == 4
    assert_same_tree(src, dst)


# -- metadata ------------------------------------------------------------------


def test_special_bits_survive_chown(tmp_path: Path, needs_root: None) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    f = src / "suid"
    f.write_bytes(b"#!/bin/sh\n")
    os.chown(f, 1, 2)
    os.chmod(f, 0o6755)
    d = src / "shared"
    d.mkdir()
    os.chown(d, 3, 4)
    os.chmod(d, 0o3775)
    (d / "inside").write_bytes(b"")
    (d / "sub").mkdir()
    copy_tree(src, dst)
    assert stat.S_IMODE(os.lstat(dst / "suid").st_mode) == 0o6755
    assert os.lstat(dst / "suid")[stat.ST_UID : stat.ST_GID + 1] == (1, 2)
    assert stat.S_IMODE(os.lstat(dst / "shared").st_mode) == 0o3775
    assert_same_tree(src, dst)


def test_xattrs_user_trusted_and_capability(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    f = src / "ping"
    f.write_bytes(b"\x7fELF")
    os.setxattr(f, "user.note", b"hello")
    os.setxattr(src, "user.dir", b"on the root")
    (src / "d").mkdir()
    os.setxattr(src / "d", "user.big", os.urandom(3000))
    (src / "empty").touch()
    os.setxattr(src / "empty", "user.e", b"")
    if IS_ROOT:
        os.chown(f, 0, 5)
        os.setxattr(f, "security.capability", CAP_NET_RAW)
        os.setxattr(f, "trusted.overlay.opaque", b"y")
        os.symlink("ping", src / "sym")
        os.setxattr(src / "sym", "trusted.sym", b"link", follow_symlinks=False)
    copy_tree(src, dst)
    assert os.getxattr(dst / "ping", "user.note") == b"hello"
    assert os.getxattr(dst, "user.dir") == b"on the root"
    if IS_ROOT:
        assert os.getxattr(dst / "ping", "security.capability") == CAP_NET_RAW
        assert os.getxattr(dst / "sym", "trusted.sym", follow_symlinks=False) == b"link"
    assert_same_tree(src, dst)


def test_xattrs_unsupported_by_destination(tmp_path: Path, mount_fs: Callable[..., Path]) -> None:
    """ramfs has no xattrs: an error by default, skipped and reported when best effort."""
    ramfs = mount_fs("ramfs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    os.setxattr(src / "f", "user.test", b"helloxattr")
    with pytest.raises(OSError) as info:
        copy_tree(src, ramfs / "strict")
    assert info.value.errno in (errno.EOPNOTSUPP, errno.ENOTSUP)
    assert "user.test" in str(info.value)
    stats = copy_tree(src, ramfs / "lenient", best_effort_xattrs=True)
    assert (ramfs / "lenient" / "f").read_bytes() == b"data"
    assert stats.skipped_xattrs == ["f: user.test"]


def test_symlinks_are_copied_not_followed(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "real").mkdir()
    (src / "real" / "x").write_bytes(b"1")
    os.symlink("real", src / "to-dir")
    os.symlink("/etc/passwd", src / "absolute")
    os.symlink("nowhere", src / "dangling")
    os.utime(src / "dangling", ns=(111_111_111, 222_222_223), follow_symlinks=False)
    copy_tree(src, dst)
    assert os.path.islink(dst / "to-dir") and os.readlink(dst / "to-dir") == "real"
    assert os.readlink(dst / "absolute") == "/etc/passwd"
    assert os.lstat(dst / "dangling").st_mtime_ns == 222_222_223
    assert os.lstat(dst / "dangling").st_atime_ns == 111_111_111
    assert_same_tree(src, dst)


def test_devices_fifos_sockets(tmp_path: Path, needs_root: None) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chown(src / "loop9", 0, 6)
    os.mknod(src / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
    os.mkfifo(src / "fifo", 0o620)
    os.mknod(src / "sock", stat.S_IFSOCK | 0o755)
    stats = copy_tree(src, dst)
    assert stats.specials == 5 and not stats.skipped_devices
    assert stat.S_ISSOCK(os.lstat(dst / "sock").st_mode)
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    assert_same_tree(src, dst)


def test_unprivileged_copy_skips_devices_and_ownership(shared_tmp: Path, needs_root: None) -> None:
    src = shared_tmp / "src"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (src / "owned").write_bytes(b"x")
    os.chown(src / "owned", 1234, 1234)
    os.setxattr(src / "owned", "trusted.secret", b"not for nobody")
    (src / "ro").mkdir()
    (src / "ro" / "inside").write_bytes(b"y")
    os.chmod(src / "ro", 0o555)
    os.chmod(src, 0o755)
    dst = shared_tmp / "dst"

    def copy() -> tuple[list[str], int]:
        stats = copy_tree(src, dst)
        return stats.skipped_devices, os.geteuid()

    skipped, uid = run_unprivileged(copy)
    assert skipped == ["null"]
    assert not os.path.lexists(dst / "null")
    st = os.lstat(dst / "owned")
    assert (st.st_uid, st.st_gid) == (uid, uid)
    assert (dst / "ro" / "inside").read_bytes() == b"y"
    assert stat.S_IMODE(os.lstat(dst / "ro").st_mode) == 0o555
    assert "trusted.secret" not in os.listxattr(dst / "owned")


def test_directory_times_are_set_after_contents(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "f").write_bytes(b"1")
    for i, d in enumerate(["a/b/c", "a/b", "a", ""]):
        os.utime(src / d, ns=(1_000_000_001 + i, 2_000_000_003 + i))
    copy_tree(src, dst)
    for i, d in enumerate(["a/b/c", "a/b", "a", ""]):
        assert os.lstat(dst / d).st_mtime_ns == 2_000_000_003 + i


def test_names_that_are_not_utf8(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    name = b"caf\xe9-\xff"
    with open(os.path.join(os.fsencode(src), name), "wb") as f:
        f.write(b"latin-1")
    os.symlink(b"caf\xe9-\xff", os.path.join(os.fsencode(src), b"ln\xfe"))
    copy_tree(src, dst)
    with open(os.path.join(os.fsencode(dst), name), "rb") as f:
        assert f.read() == b"latin-1"
    assert os.readlink(os.path.join(os.fsencode(dst), b"ln\xfe")) == name


def test_deep_tree(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY)
    try:
        for _ in range(300):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    stats = copy_tree(src, dst)
    assert stats.dirs == 301 and stats.files == 1
    assert os.path.exists(os.path.join(dst, *["d"] * 300, "leaf"))


def test_destination_rules(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    os.chmod(src, 0o751)
    empty = tmp_path / "empty"
    empty.mkdir()
    copy_tree(src, empty)
    assert (empty / "f").read_bytes() == b"1"
    assert stat.S_IMODE(os.lstat(empty).st_mode) == 0o751
    with pytest.raises(OSError) as info:
        copy_tree(src, empty)
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        copy_tree(tmp_path / "missing", tmp_path / "out")


def test_a_failure_deep_in_the_walk_closes_every_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "f").write_bytes(b"1")
    os.symlink("f", src / "a" / "b" / "c" / "zlink")

    def broken(*_: Any, **__: Any) -> str:
        raise OSError(errno.EIO, "Input/output error")

    before = sorted(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "readlink", broken)
    with pytest.raises(OSError) as info:
        copy_tree(src, tmp_path / "dst")
    assert info.value.errno == errno.EIO
    assert sorted(os.listdir("/proc/self/fd")) == before
