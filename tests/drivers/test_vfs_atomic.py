"""vfs apply_diff is all or nothing: failures and kill -9 leave the layer as it was."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from lamina import drivers
from lamina.errors import ArchiveError, LaminaError, StateError


def _tar(files: dict[str, bytes], *, bad_tail: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if bad_tail:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            last = tf.getmembers()[-1]
        raw = raw[: last.offset_data + last.size // 2]  # cut inside the last file's data
    return raw


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st.st_mode, data)
    return out


@pytest.fixture
def vfs(tmp_path: Path) -> drivers.Driver:
    d = drivers.new_driver("vfs", tmp_path)
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(_tar({"etc/os": b"base", "keep": b"k"})))
    return d


def test_failed_apply_on_a_fresh_layer_leaves_the_parent_content(vfs: drivers.Driver) -> None:
    vfs.create("child", "base")
    with vfs.mounted("base") as base_root:
        expected = _snapshot(base_root)
    bad = _tar({"new": b"n" * 5000, "etc/os": b"x" * 3000}, bad_tail=True)
    with pytest.raises(LaminaError):
        vfs.apply_diff("child", "base", io.BytesIO(bad))
    with vfs.mounted("child") as root:
        assert _snapshot(root) == expected
    # retrying with a good tar works
    vfs.apply_diff("child", "base", io.BytesIO(_tar({"new": b"n"})))
    with vfs.mounted("child") as root:
        assert (root / "new").read_bytes() == b"n"


def test_failed_apply_on_a_changed_layer_leaves_it_unchanged(vfs: drivers.Driver) -> None:
    vfs.create_read_write("rw", "base")
    with vfs.mounted("rw") as root:
        (root / "mine").write_bytes(b"container data")
        expected = _snapshot(root)
    bad = _tar({"mine": b"z" * 5000, "other": b"o" * 5000}, bad_tail=True)
    with pytest.raises(LaminaError):
        vfs.apply_diff("rw", "base", io.BytesIO(bad))
    with vfs.mounted("rw") as root:
        assert _snapshot(root) == expected


def test_failed_apply_on_a_base_layer_leaves_it_empty(tmp_path: Path) -> None:
    d = drivers.new_driver("vfs", tmp_path)
    d.create("b")
    with pytest.raises(LaminaError):
        d.apply_diff("b", None, io.BytesIO(_tar({"a": b"a" * 9000}, bad_tail=True)))
    with d.mounted("b") as root:
        assert os.listdir(root) == []


_APPLIER = textwrap.dedent(
    """
    import sys
    from lamina import drivers
    d = drivers.new_driver("vfs", sys.argv[1])
    print("ready", flush=True)
    d.apply_diff(sys.argv[2], None, sys.stdin.buffer)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("fresh", [True, False])
def test_kill_during_apply_then_cleanup_rolls_back(tmp_path: Path, fresh: bool) -> None:
    d = drivers.new_driver("vfs", tmp_path)
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(_tar({"etc/os": b"base"})))
    d.create("child", "base")
    if fresh:
        with d.mounted("base") as root:  # the child is still pristine: equal to its parent
            expected = _snapshot(root)
    else:
        with d.mounted("child") as root:  # no longer pristine: the copy path is used
            (root / "mine").write_bytes(b"m")
            expected = _snapshot(root)
    big = _tar({f"f{i:04d}": b"x" * 4096 for i in range(400)})
    proc = subprocess.Popen(
        [sys.executable, "-c", _APPLIER, str(tmp_path), "child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    proc.stdin.write(big[: len(big) // 2])  # half the layer, then the writer dies
    proc.stdin.flush()
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    d2 = drivers.new_driver("vfs", tmp_path)
    if fresh:
        with pytest.raises(StateError):
            d2.get("child")  # an interrupted apply is never handed out
    d2.cleanup()
    with d2.mounted("child") as root:
        assert _snapshot(root) == expected
    assert os.listdir(tmp_path / "vfs" / "staging") == []


def test_disk_full_rolls_back_and_a_retry_that_fits_works(mount_fs: Any) -> None:
    small = mount_fs("ext4", 16)
    d = drivers.new_driver("vfs", small / "store")
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(_tar({"etc/os": b"base"})))
    d.create("child", "base")
    too_big = _tar({f"blob{i}": os.urandom(1 << 20) for i in range(24)})  # 24 MiB into 16
    with pytest.raises(ArchiveError) as info:
        d.apply_diff("child", "base", io.BytesIO(too_big))
    assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
    with d.mounted("child") as root:
        assert sorted(os.listdir(root)) == ["etc"]  # as before the call: the parent's tree
    assert os.listdir(small / "store" / "vfs" / "staging") == []
    d.apply_diff("child", "base", io.BytesIO(_tar({"fits": b"f" * 4096})))
    with d.mounted("child") as root:
        assert (root / "fits").stat().st_size == 4096
