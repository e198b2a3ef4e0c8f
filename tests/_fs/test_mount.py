"""Kernel mounts through ctypes: mount(2), the new mount API, mountinfo parsing."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lamina._fs import Mount
from lamina._fs._mount import (
    _split_lowerdir,
    is_mounted,
    is_mountpoint,
    mount,
    mount_spec,
    mountinfo,
    mounts_below,
    new_mount_api_supported,
    run_in_dir,
    umount,
    unmount_below,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def test_mountinfo_parses_escaped_fields(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_bytes(
        b"36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - "
        b"ext3 /dev/root rw,errors=continue\n"
        b"37 36 0:42 / /a\\134b\\011c rw - overlay overlay rw,lowerdir=x\n"
        b"38 36 0:43 / /plain rw shared:5 master:7 - tmpfs tmpfs rw\n"
    )
    rows = mountinfo(str(table))
    assert [r.mountpoint for r in rows] == ["/mnt/with space", "/a\\b\tc", "/plain"]
    assert rows[0].root == "/mnt1"
    assert rows[0].fstype == "ext3"
    assert rows[0].source == "/dev/root"
    assert rows[0].super_options == "rw,errors=continue"
    assert rows[1].fstype == "overlay" and rows[1].super_options == "rw,lowerdir=x"
    assert rows[2].fstype == "tmpfs" and rows[2].parent_id == 36 and rows[2].mount_id == 38


def test_is_mounted_matches_escaped_mount_points_exactly(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_bytes(
        b"36 35 98:0 /mnt/with\\040space /other rw - ext3 /dev/root rw\n"
        b"37 36 0:42 / /a\\134b\\011c rw - overlay overlay rw,lowerdir=x\n"
        b"38 36 0:43 / /plain rw shared:5 - tmpfs tmpfs rw\n"
    )
    path = str(table)
    assert is_mounted("/a\\b\tc", path)
    assert is_mounted("/plain", path) and is_mounted("/other", path)
    # the escaped text of /mnt/with space occurs, but as a root, not a mount point
    assert not is_mounted("/mnt/with space", path)
    assert not is_mounted("/pla", path) and not is_mounted("/plain/x", path)
    assert is_mounted("/") and not is_mounted(str(tmp_path))


def test_mountinfo_of_this_process_has_the_root() -> None:
    assert any(m.mountpoint == "/" for m in mountinfo())
    assert is_mountpoint("/")


def test_lowerdir_list_syntax() -> None:
    assert _split_lowerdir("a:b:c") == ["a", "b", "c"]
    assert _split_lowerdir("l/A\\:B:c") == ["l/A:B", "c"]
    assert _split_lowerdir("x\\\\:y") == ["x\\", "y"]


def test_run_in_dir_resolves_relative_paths_without_moving_the_process(tmp_path: Path) -> None:
    (tmp_path / "here").write_text("found")
    before = os.getcwd()
    assert run_in_dir(tmp_path, lambda: Path("here").read_text()) == "found"
    assert os.getcwd() == before
    with pytest.raises(FileNotFoundError):
        run_in_dir(tmp_path, lambda: Path("missing").read_text())
    assert os.getcwd() == before


@root_only
@pytest.mark.parametrize("new_api", [False, True])
def test_tmpfs_mount_and_unmount(tmp_path: Path, new_api: bool) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    mount_spec(Mount("tmpfs", "tmpfs", target, ("size=1m", "mode=0750")), new_api=new_api)
    try:
        assert is_mountpoint(target)
        assert oct(os.stat(target).st_mode & 0o777) == oct(0o750)
        (target / "f").write_bytes(b"x")
        assert [m.fstype for m in mounts_below(tmp_path)] == ["tmpfs"]
    finally:
        umount(target)
    assert not is_mountpoint(target)
    assert not (target / "f").exists()


def _overlay_dirs(base: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        d = base / f"lower{i:03d}"
        d.mkdir()
        (d / f"file{i}").write_text(str(i))
        names.append(d.name)
    for name in ("upper", "work", "merged"):
        (base / name).mkdir()
    return names


@root_only
@pytest.mark.parametrize("new_api", [False, True])
def test_overlay_with_relative_paths_from_cwd(tmp_path: Path, new_api: bool) -> None:
    if new_api and not new_mount_api_supported("overlay"):
        pytest.skip("kernel has no fsconfig lowerdir+ (Linux >= 6.8)")
    lowers = _overlay_dirs(tmp_path, 3)
    spec = Mount(
        "overlay",
        "overlay",
        tmp_path / "merged",
        ("lowerdir=" + ":".join(lowers), "upperdir=upper", "workdir=work"),
        cwd=tmp_path,
    )
    before = os.getcwd()
    mount_spec(spec, new_api=new_api)
    try:
        assert os.getcwd() == before
        assert sorted(os.listdir(tmp_path / "merged")) == ["file0", "file1", "file2"]
        (tmp_path / "merged" / "new").write_text("n")
        assert (tmp_path / "upper" / "new").read_text() == "n"
    finally:
        umount(tmp_path / "merged")


@root_only
def test_new_api_reports_the_kernel_message(tmp_path: Path) -> None:
    if not new_mount_api_supported("overlay"):
        pytest.skip("kernel has no fsconfig lowerdir+ (Linux >= 6.8)")
    (tmp_path / "merged").mkdir()
    spec = Mount("overlay", "overlay", tmp_path / "merged", ("lowerdir=" + ":".join(["/"] * 2000),))
    with pytest.raises(OSError) as info:
        mount_spec(spec, new_api=True)
    assert info.value.errno == errno.EINVAL
    assert "too many lower" in str(info.value)
    assert not is_mountpoint(tmp_path / "merged")


@root_only
def test_classic_mount_refuses_more_than_a_page(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(OSError) as info:
        mount("tmpfs", tmp_path / "m", "tmpfs", 0, "mode=0755," * 1000)
    assert info.value.errno == errno.E2BIG
    assert not is_mountpoint(tmp_path / "m")


def test_new_api_probe_matches_the_kernel() -> None:
    supported = new_mount_api_supported("overlay")
    assert isinstance(supported, bool)
    if os.geteuid() == 0 and _kernel() >= (6, 8):
        assert supported


@root_only
def test_unmount_below_deepest_first(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    mount("tmpfs", outer, "tmpfs", 0, "size=1m")
    try:
        inner = outer / "inner"
        inner.mkdir()
        mount("tmpfs", inner, "tmpfs", 0, "size=1m")
        found = [m.mountpoint for m in mounts_below(tmp_path)]
        assert found == [str(inner), str(outer)]
        assert unmount_below(tmp_path) == 2
    finally:
        for path in (outer / "inner", outer):
            if is_mountpoint(path):
                umount(path)
    assert mounts_below(tmp_path) == []
