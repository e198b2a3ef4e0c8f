"""One mountinfo reader: ``fs_type`` in ``_fs``, used by vfs and windowsfilter.

The drivers used to parse /proc/self/mountinfo by hand and decode mount
points with ``unicode_escape``, which reads UTF-8 bytes as Latin-1: a store
under a non-ASCII mount point was reported on the filesystem *above* it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina._fs import MountInfo, fs_type
from lamina.drivers.vfs import VfsDriver
from lamina.drivers.windowsfilter import WindowsFilterDriver


def _info(point: str, fstype: str) -> MountInfo:
    return MountInfo(1, 0, "0:1", "/", point, "rw", fstype, "none", "rw")


def test_deepest_mount_point_wins_and_prefixes_are_whole_components() -> None:
    table = [_info("/", "ext4"), _info("/srv", "xfs"), _info("/srv/a b", "tmpfs")]
    assert fs_type("/srv/a b/x", table) == "tmpfs"
    assert fs_type("/srv/a bc", table) == "xfs"
    assert fs_type("/srvx", table) == "ext4"
    assert fs_type("/", table) == "ext4"


@pytest.fixture
def non_ascii_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    point = tmp_path / "störe dir"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_non_ascii_mount_point_is_found(non_ascii_tmpfs: Path) -> None:
    assert fs_type(non_ascii_tmpfs / "x") == "tmpfs"


def test_drivers_report_the_filesystem_of_a_non_ascii_mount_point(non_ascii_tmpfs: Path) -> None:
    wf = WindowsFilterDriver(non_ascii_tmpfs / "wf")
    assert wf.backing_fs == "tmpfs"
    vfs = VfsDriver(non_ascii_tmpfs / "vfs")
    assert ("Backing Filesystem", "tmpfs") in vfs.status()
