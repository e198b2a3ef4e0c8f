"""Mounter: one reference count per view, mounts on first use, unmounts on last."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina._fs import Mount, Mounter
from lamina.errors import InUseError


class Recorder:
    """mount/unmount functions that record their calls (and may really mount)."""

    def __init__(self, real: bool = False) -> None:
        self.real = real
        self.mounted: list[Path] = []
        self.unmounted: list[Path] = []
        self.lock = threading.Lock()

    def mount(self, m: Mount) -> None:
        if self.real:
            m.target.mkdir(exist_ok=True)
            subprocess.run(
                ["mount", "-t", m.type, "-o", ",".join(m.options), m.source, str(m.target)],
                check=True,
                capture_output=True,
            )
        with self.lock:
            self.mounted.append(m.target)

    def unmount(self, m: Mount) -> None:
        if self.real:
            subprocess.run(["umount", str(m.target)], check=True, capture_output=True)
        with self.lock:
            self.unmounted.append(m.target)


def tmpfs(target: Path) -> Callable[[], Mount]:
    return lambda: Mount("tmpfs", "lamina-test", target, ("size=1m",))


def test_direct_view_needs_no_mount(tmp_path: Path) -> None:
    rec = Recorder()
    mounter = Mounter(rec.mount, rec.unmount)
    described = []

    def describe() -> Mount:
        described.append(1)
        return Mount("direct", str(tmp_path), tmp_path)

    assert mounter.acquire("a", describe) == tmp_path
    assert mounter.acquire("a", describe) == tmp_path
    assert described == [1]
    assert mounter.count("a") == 2
    mounter.release("a")
    mounter.release("a")
    assert mounter.count("a") == 0
    assert rec.mounted == rec.unmounted == []


def test_mount_on_first_unmount_on_last(tmp_path: Path) -> None:
    rec = Recorder()
    mounter = Mounter(rec.mount, rec.unmount)
    target = tmp_path / "m"
    for _ in range(3):
        mounter.acquire("a", tmpfs(target))
    assert rec.mounted == [target]
    mounter.release("a")
    mounter.release("a")
    assert rec.unmounted == []
    assert mounter.held() == ["a"]
    mounter.release("a")
    assert rec.unmounted == [target]
    assert mounter.held() == []
    mounter.acquire("a", tmpfs(target))
    assert rec.mounted == [target, target]


def test_release_without_acquire_is_an_error(tmp_path: Path) -> None:
    mounter = Mounter()
    with pytest.raises(InUseError):
        mounter.release("never")
    mounter.acquire("a", lambda: Mount("direct", "", tmp_path))
    mounter.release("a")
    with pytest.raises(InUseError):
        mounter.release("a")


def test_failed_mount_counts_nothing(tmp_path: Path) -> None:
    attempts = []

    def failing(m: Mount) -> None:
        attempts.append(m)
        raise OSError("mount failed")

    mounter = Mounter(failing)
    with pytest.raises(OSError):
        mounter.acquire("a", tmpfs(tmp_path / "m"))
    assert mounter.count("a") == 0
    with pytest.raises(OSError):
        mounter.acquire("a", tmpfs(tmp_path / "m"))
    assert len(attempts) == 2
    with pytest.raises(InUseError):
        mounter.release("a")


def test_failed_describe_counts_nothing() -> None:
    def describe() -> Mount:
        raise FileNotFoundError("no such layer")

    mounter = Mounter()
    with pytest.raises(FileNotFoundError):
        mounter.acquire("a", describe)
    assert mounter.held() == []


def test_release_all_unmounts_everything(tmp_path: Path) -> None:
    rec = Recorder()
    mounter = Mounter(rec.mount, rec.unmount)
    mounter.acquire("a", tmpfs(tmp_path / "a"))
    mounter.acquire("a", tmpfs(tmp_path / "a"))
    mounter.acquire("b", tmpfs(tmp_path / "b"))
    mounter.acquire("c", lambda: Mount("direct", "", tmp_path))
    mounter.release_all()
    assert sorted(rec.unmounted) == [tmp_path / "a", tmp_path / "b"]
    assert mounter.held() == []
    with pytest.raises(InUseError):
        mounter.release("a")


def test_concurrent_acquire_release_balance(tmp_path: Path) -> None:
    rec = Recorder()
    mounter = Mounter(rec.mount, rec.unmount)
    keys = ["k0", "k1", "k2"]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(400):
                key = keys[(n + i) % len(keys)]
                mounter.acquire(key, tmpfs(tmp_path / key))
                mounter.acquire(key, tmpfs(tmp_path / key))
                mounter.release(key)
                mounter.release(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mounter.held() == []
    assert all(mounter.count(k) == 0 for k in keys)
    assert len(rec.mounted) == len(rec.unmounted) > 0
    for key in keys:
        assert rec.mounted.count(tmp_path / key) == rec.unmounted.count(tmp_path / key)


def test_real_kernel_mounts_follow_the_count(tmp_path: Path, needs_root: None) -> None:
    rec = Recorder(real=True)
    mounter = Mounter(rec.mount, rec.unmount)
    target = tmp_path / "view"
    try:
        path = mounter.acquire("a", tmpfs(target))
        assert os.path.ismount(path)
        (path / "file").write_bytes(b"in tmpfs")
        mounter.acquire("a", tmpfs(target))
        mounter.release("a")
        assert os.path.ismount(target)
        assert (target / "file").read_bytes() == b"in tmpfs"
        mounter.release("a")
        assert not os.path.ismount(target)
        assert not (target / "file").exists()
    finally:
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], check=False)
