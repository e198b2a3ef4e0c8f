"""The vfs driver: the conformance suite plus vfs's own layout, options and crash safety."""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina._fs import copy_tree
from lamina.drivers import new_driver
from lamina.drivers.testsuite import make_conformance_tests
from lamina.drivers.vfs import VfsDriver
from lamina.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    LaminaError,
    NotFoundError,
    QuotaNotSupportedError,
)

globals().update(make_conformance_tests("vfs", deep_layers=(128,), diff_apply=(10,)))


@pytest.fixture
def driver(tmp_path: Path) -> VfsDriver:
    d = new_driver("vfs", tmp_path / "root")
    assert isinstance(d, VfsDriver)
    return d


def test_layout_and_home_mode(driver: VfsDriver, tmp_path: Path) -> None:
    assert driver.home == tmp_path / "root" / "vfs"
    assert stat.S_IMODE(os.stat(driver.home).st_mode) == 0o700
    assert os.listdir(driver.home) == []  # no state until the first layer
    driver.create("base")
    assert (driver.home / "dir" / "base").is_dir()
    assert driver.get("base") == driver.home / "dir" / "base"
    driver.put("base")
    assert driver.get_metadata("base") == {"Dir": str(driver.home / "dir" / "base")}
    with pytest.raises(NotFoundError):
        driver.get_metadata("missing")


def test_child_starts_as_a_faithful_copy(driver: VfsDriver) -> None:
    driver.create("base")
    with driver.mounted("base") as root:
        (root / "etc").mkdir()
        (root / "etc" / "conf").write_bytes(b"x=1\n")
        os.link(root / "etc" / "conf", root / "etc" / "conf.link")
        os.setxattr(root / "etc" / "conf", "user.origin", b"base")
        os.symlink("etc/conf", root / "conf")
        os.utime(root / "etc" / "conf", ns=(5, 123_456_789_123))
    driver.create_read_write("child", "base")
    with driver.mounted("child") as root:
        assert (root / "etc" / "conf").read_bytes() == b"x=1\n"
        assert os.getxattr(root / "etc" / "conf", "user.origin") == b"base"
        assert os.stat(root / "etc" / "conf").st_ino == os.stat(root / "etc" / "conf.link").st_ino
        assert os.stat(root / "etc" / "conf").st_mtime_ns == 123_456_789_123
        assert os.readlink(root / "conf") == "etc/conf"
        (root / "etc" / "conf").write_bytes(b"x=2\n")
    with driver.mounted("base") as root:
        assert (root / "etc" / "conf").read_bytes() == b"x=1\n"


def test_longest_id(driver: VfsDriver) -> None:
    long_id = "f" * 255
    driver.create(long_id)
    driver.create("child", long_id)
    driver.create_read_write("e" * 255, "child")
    driver.remove(long_id)
    assert not driver.exists(long_id)
    assert driver.exists("e" * 255)


def test_create_errors(driver: VfsDriver) -> None:
    driver.create("a")
    with pytest.raises(AlreadyExistsError):
        driver.create("a")
    with pytest.raises(AlreadyExistsError):
        driver.create_read_write("a", None)
    with pytest.raises(NotFoundError):
        driver.create("b", "missing")
    assert not driver.exists("b")
    for bad in ("", "..", "x/y"):
        with pytest.raises(InvalidArgumentError):
            driver.create(bad)
    with pytest.raises(InvalidArgumentError):
        driver.create("c", "../a")
    assert os.listdir(driver.home / "staging") == []


def test_storage_options(driver: VfsDriver) -> None:
    with pytest.raises(InvalidArgumentError):
        driver.create("ro", storage_opt={"size": "10M"})
    with pytest.raises(InvalidArgumentError):
        driver.create("ro", storage_opt={"anything": "1"})
    with pytest.raises(QuotaNotSupportedError):
        driver.create_read_write("rw", storage_opt={"size": "10M"})
    with pytest.raises(InvalidArgumentError):
        driver.create_read_write("rw", storage_opt={"size": "ten"})
    with pytest.raises(InvalidArgumentError):
        driver.create_read_write("rw", storage_opt={"inodes": "10"})
    assert not driver.exists("ro") and not driver.exists("rw")
    driver.create("ro", storage_opt={})
    driver.create_read_write("rw", storage_opt={})


def test_driver_options(tmp_path: Path) -> None:
    with pytest.raises(QuotaNotSupportedError):
        VfsDriver(tmp_path / "a", {"size": "1G"})
    with pytest.raises(InvalidArgumentError):
        VfsDriver(tmp_path / "b", {"vfs.xattrs": "true"})
    with pytest.raises(InvalidArgumentError):
        VfsDriver(tmp_path / "c", {"overlay.mountopt": "nodev"})
    lenient = VfsDriver(tmp_path / "d", {"vfs.xattrs": "i_want_broken_containers"})
    assert ("Extended file attributes", "best-effort") in lenient.status()


def test_remove(driver: VfsDriver) -> None:
    driver.remove("never-existed")
    driver.create("a")
    with driver.mounted("a") as root:
        (root / "ro").mkdir()
        (root / "ro" / "f").write_bytes(b"1")
        os.chmod(root / "ro", 0o555)
    driver.remove("a")
    assert not driver.exists("a")
    assert os.listdir(driver.home / "removing") == []
    driver.remove("a")
    driver.create("a")  # the id is free again
    with pytest.raises(InvalidArgumentError):
        driver.remove("")


def test_status(driver: VfsDriver) -> None:
    status = dict(driver.status())
    assert status["Layers"] == "0"
    assert status["Backing Filesystem"] not in ("", "unknown")
    driver.create("a")
    with driver.mounted("a") as root:
        (root / "f").write_bytes(b"data")
    driver.create("b", "a")
    status = dict(driver.status())
    assert status["Layers"] == "2"
    assert status["Copy method"] in ("reflink", "copy_file_range", "sendfile", "read/write")


def test_failed_copy_leaves_nothing_visible(
    driver: VfsDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full in the middle of the copy: no layer, no staging leftover, id free."""
    driver.create("base")
    with driver.mounted("base") as root:
        for i in range(20):
            (root / f"f{i}").write_bytes(b"x" * 100)
    real_copy = copy_tree

    def copy_then_fail(src: Any, dst: Any, **kwargs: Any) -> Any:
        real_copy(src, dst, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lamina.drivers.vfs.copy_tree", copy_then_fail)
    with pytest.raises(OSError):
        driver.create("child", "base")
    assert not driver.exists("child")
    assert os.listdir(driver.home / "staging") == []
    monkeypatch.undo()
    driver.create("child", "base")
    with driver.mounted("child") as root:
        assert len(os.listdir(root)) == 20


_CRASH_CHILD = textwrap.dedent(
    """
    import sys
    from lamina.drivers.vfs import VfsDriver
    d = VfsDriver(sys.argv[1], {})
    print("ready", flush=True)
    if sys.argv[2] == "create":
        d.create("child", "base")
    else:
        d.remove("base")
    print("done", flush=True)
    """
)


def _big_base(driver: VfsDriver) -> None:
    driver.create("base")
    with driver.mounted("base") as root:
        for i in range(40):
            d = root / f"d{i}"
            d.mkdir()
            for j in range(100):
                (d / f"f{j}").write_bytes(b"%d" % j)


def _kill_during(driver: VfsDriver, action: str, watch: Path) -> bool:
    """Run ``action`` in a child and kill -9 it once ``watch`` has an entry; True if killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(driver.home), action],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if os.listdir(watch):
                time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        except FileNotFoundError:
            pass
    proc.wait()
    return killed and proc.returncode == -signal.SIGKILL


def test_kill_during_create_then_cleanup(driver: VfsDriver) -> None:
    _big_base(driver)
    killed = _kill_during(driver, "create", driver.home / "staging")
    if not killed:
        pytest.skip("the copy finished before the kill landed")
    if driver.exists("child"):  # killed after the rename: must be complete
        with driver.mounted("child") as root:
            assert len(os.listdir(root)) == 40
            assert all(len(os.listdir(root / f"d{i}")) == 100 for i in range(40))
    else:
        assert os.listdir(driver.home / "staging") != []
    driver.cleanup()
    assert os.listdir(driver.home / "staging") == []
    assert set(os.listdir(driver.home / "dir")) in ({"base"}, {"base", "child"})


def test_kill_during_remove_then_cleanup(driver: VfsDriver) -> None:
    _big_base(driver)
    killed = _kill_during(driver, "remove", driver.home / "removing")
    if not killed:
        pytest.skip("the removal finished before the kill landed")
    assert not driver.exists("base")
    driver.cleanup()
    assert os.listdir(driver.home / "removing") == []
    assert os.listdir(driver.home / "dir") == []


def test_cleanup_spares_other_live_processes(driver: VfsDriver) -> None:
    live = driver.home / "staging" / f"x.{os.getppid()}.abcdef"
    dead_pid = 2**22 + 12345  # above pid_max on default systems
    dead = driver.home / "staging" / f"y.{dead_pid}.abcdef"
    own = driver.home / "staging" / f"z.{os.getpid()}.abcdef"
    for path in (live, dead, own):
        path.mkdir(parents=True)
        (path / "partial").write_bytes(b"half a layer")
    driver.cleanup()
    assert live.exists()
    assert not dead.exists()
    assert not own.exists()  # not in flight in this process: a leftover


def _xattr_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("test.txt")
        data = b"hello world\n"
        info.size = len(data)
        info.mode = 0o644
        info.pax_headers = {"SCHILY.xattr.user.test": "helloxattr"}
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_xattr_unsupported_by_backing_fs(mount_fs: Callable[..., Path]) -> None:
    """Docker's TestXattrUnsupportedByBackingFS: ramfs has no xattrs."""
    ramfs = mount_fs("ramfs")
    strict = VfsDriver(ramfs / "Default", {})
    strict.create("test")
    with pytest.raises((LaminaError, OSError)) as info:
        strict.apply_diff("test", None, io.BytesIO(_xattr_tar()))
    assert getattr(info.value, "errno", None) in (errno.EOPNOTSUPP, errno.ENOTSUP)

    lenient = VfsDriver(ramfs / "best-effort", {"vfs.xattrs": "i_want_broken_containers"})
    lenient.create("test")
    lenient.apply_diff("test", None, io.BytesIO(_xattr_tar()))
    with lenient.mounted("test") as root:
        assert (root / "test.txt").read_bytes() == b"hello world\n"
