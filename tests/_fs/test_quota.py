"""Size limits: loop-mounted filesystem images and XFS project quotas (as root)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina._fs import _loopimage as loop_module
from lamina._fs import _quota as quota_module
from lamina._fs._loopimage import (
    create_image,
    grow_image,
    grow_mounted_image,
    image_is_mounted,
    mount_image,
    unmount_image,
)
from lamina._fs._quota import ProjectQuota
from lamina.errors import QuotaNotSupportedError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts")

MIB = 1 << 20


def _loop_backing_files() -> list[str]:
    """Backing files of every attached loop device, from sysfs."""
    found = []
    for path in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.append(path.read_text().strip())
        except OSError:
            continue
    return found


def _write(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left:
            left -= os.write(fd, b"\xa5" * min(MIB, left))
        os.fsync(fd)
    finally:
        os.close(fd)


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


def test_kernel_structures_have_the_uapi_sizes() -> None:
    """The layouts the kernel headers give (linux/dqblk_xfs.h, linux/fs.h, linux/loop.h)."""
    assert quota_module._DQUOT.size == 112  # struct fs_disk_quota
    assert quota_module._FSXATTR.size == 28  # struct fsxattr
    assert loop_module._LOOP_CONFIG.size == 304  # struct loop_config
    assert _ioc(2, "X", 31, 28) == quota_module._FS_IOC_FSGETXATTR  # _IOR
    assert _ioc(1, "X", 32, 28) == quota_module._FS_IOC_FSSETXATTR  # _IOW
    assert (ord("X") << 8) + 4 == quota_module._Q_XSETQLIM
    assert (ord("X") << 8) + 5 == quota_module._Q_XGETQSTAT
    # the hard limit lands in d_blk_hardlimit (offset 8) in 512-byte blocks
    packed = quota_module._DQUOT.pack(1, 2, 12, 77, 100, 100, *([0] * 18), b"")
    assert int.from_bytes(packed[8:16], "little") == 100
    assert int.from_bytes(packed[4:8], "little") == 77


@root_only
def test_image_limits_writes_and_unmount_releases_the_loop_device(tmp_path: Path) -> None:
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control")
    image, mnt = tmp_path / "layer.img", tmp_path / "mnt"
    mnt.mkdir()
    create_image(image, 20 * MIB)
    assert image.stat().st_size == 20 * MIB
    assert image.stat().st_blocks * 512 < 20 * MIB  # sparse
    mount_image(image, mnt)
    try:
        assert image_is_mounted(mnt)
        assert str(image) in _loop_backing_files()
        _write(mnt / "fits", 10 * MIB)
        with pytest.raises(OSError) as info:
            _write(mnt / "too-big", 20 * MIB)
        assert info.value.errno == errno.ENOSPC
    finally:
        unmount_image(mnt)
    assert not image_is_mounted(mnt)
    assert str(image) not in _loop_backing_files()  # autoclear: nothing to detach
    mount_image(image, mnt)  # the data is in the image, mountable again
    try:
        assert (mnt / "fits").stat().st_size == 10 * MIB
    finally:
        unmount_image(mnt)
    unmount_image(mnt)  # not mounted: fine


@root_only
def test_image_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "x.img").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        create_image(tmp_path / "x.img", 8 * MIB)
    assert (tmp_path / "x.img").read_bytes() == b"precious"


@root_only
def test_loop_device_is_cleared_when_the_mount_fails(tmp_path: Path) -> None:
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control")
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * MIB)  # no filesystem in it
    (tmp_path / "mnt").mkdir()
    with pytest.raises(OSError):
        mount_image(junk, tmp_path / "mnt")
    assert str(junk) not in _loop_backing_files()


@root_only
def test_project_quota_refused_where_not_enforced(tmp_path: Path) -> None:
    with pytest.raises(QuotaNotSupportedError):
        ProjectQuota(tmp_path)


@root_only
def test_project_quota_limits_a_directory(xfs_pquota: Path) -> None:
    try:
        quota = ProjectQuota(xfs_pquota)
    except QuotaNotSupportedError as exc:
        pytest.skip(f"project quota not available: {exc}")
    a, b = xfs_pquota / "a", xfs_pquota / "b"
    a.mkdir()
    b.mkdir()
    pa = quota.set_quota(a, 20 * MIB)
    pb = quota.set_quota(b, 10 * MIB)
    assert pa != pb and quota.base_project not in (pa, pb)
    assert quota.set_quota(a, 20 * MIB) == pa  # idempotent per directory
    (a / "sub").mkdir()  # inherits the project
    _write(a / "sub" / "fits", 10 * MIB)
    with pytest.raises(OSError) as info:
        _write(a / "sub" / "too-big", 20 * MIB)
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    usage = quota.usage(a)
    assert usage.limit == 20 * MIB
    assert usage.used >= 10 * MIB
    _write(b / "fits", 5 * MIB)  # b has its own budget


@root_only
def test_project_quota_limit_can_be_raised(xfs_pquota: Path) -> None:
    try:
        quota = ProjectQuota(xfs_pquota)
    except QuotaNotSupportedError as exc:
        pytest.skip(f"project quota not available: {exc}")
    a = xfs_pquota / "a"
    a.mkdir()
    project = quota.set_quota(a, 10 * MIB)
    _write(a / "fits", 8 * MIB)
    with pytest.raises(OSError):
        _write(a / "too-big", 4 * MIB)
    assert quota.set_limit(a, 30 * MIB) == project
    assert quota.usage(a).limit == 30 * MIB
    _write(a / "too-big", 4 * MIB)
    (xfs_pquota / "plain").mkdir()
    with pytest.raises(OSError) as info:
        quota.set_limit(xfs_pquota / "plain", 30 * MIB)  # no project of its own
    assert info.value.errno == errno.EINVAL


def _has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    cap_eff = next(line for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(cap_eff.split()[1], 16) >> 24 & 1)


def _geometry(image: Path) -> tuple[int, int]:
    fd = os.open(image, os.O_RDONLY)
    try:
        return loop_module._ext4_geometry(fd)
    finally:
        os.close(fd)


@pytest.fixture
def image_with_data(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 20 MiB ext4 image holding a 10 MiB file, and its (unmounted) mount point."""
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control")
    image, mnt = tmp_path / "layer.img", tmp_path / "mnt"
    mnt.mkdir()
    create_image(image, 20 * MIB)
    mount_image(image, mnt)
    try:
        _write(mnt / "kept", 10 * MIB)
    finally:
        unmount_image(mnt)
    yield image, mnt
    unmount_image(mnt)


@root_only
def test_grow_image_offline(image_with_data: tuple[Path, Path]) -> None:
    image, mnt = image_with_data
    assert _geometry(image) == (4096, 20 * MIB // 4096)
    grow_image(image, 40 * MIB)
    assert image.stat().st_size == 40 * MIB
    assert _geometry(image) == (4096, 40 * MIB // 4096)
    assert image.stat().st_blocks * 512 < 20 * MIB  # the new end stays a hole
    proc = subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    mtime = image.stat().st_mtime_ns
    grow_image(image, 40 * MIB)  # already that size: untouched
    grow_image(image, 30 * MIB)  # never shrinks
    assert image.stat().st_mtime_ns == mtime and image.stat().st_size == 40 * MIB
    mount_image(image, mnt)
    try:
        assert (mnt / "kept").stat().st_size == 10 * MIB
        _write(mnt / "more", 20 * MIB)  # would not have fitted in 20 MiB
    finally:
        unmount_image(mnt)


@root_only
@pytest.mark.skipif(_has_cap_sys_resource(), reason="this process may resize ext4 online")
def test_grow_mounted_image_is_refused_before_any_change_without_cap(
    image_with_data: tuple[Path, Path],
) -> None:
    image, mnt = image_with_data
    mount_image(image, mnt)
    with pytest.raises(PermissionError):
        grow_mounted_image(image, mnt, 40 * MIB)
    assert image.stat().st_size == 20 * MIB
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize < 20 * MIB
    unmount_image(mnt)
    assert _geometry(image) == (4096, 20 * MIB // 4096)


@root_only
@pytest.mark.skipif(
    not _has_cap_sys_resource(),
    reason="ext4 online resize needs CAP_SYS_RESOURCE, which this process lacks",
)
def test_grow_mounted_image_online_with_a_file_open(image_with_data: tuple[Path, Path]) -> None:
    image, mnt = image_with_data
    mount_image(image, mnt)
    try:
        with open(mnt / "open", "wb") as f:
            grow_mounted_image(image, mnt, 40 * MIB)
            f.write(b"x" * (15 * MIB))
            f.flush()
            os.fsync(f.fileno())
        st = os.statvfs(mnt)
        assert st.f_blocks * st.f_frsize > 35 * MIB
        assert (mnt / "kept").stat().st_size == 10 * MIB
        grow_mounted_image(image, mnt, 40 * MIB)  # already that size
    finally:
        unmount_image(mnt)
    assert image.stat().st_size == 40 * MIB
    proc = subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@root_only
def test_the_loop_device_must_be_backed_by_the_image(
    image_with_data: tuple[Path, Path], tmp_path: Path
) -> None:
    image, mnt = image_with_data
    other = tmp_path / "other.img"
    create_image(other, 8 * MIB)
    mount_image(image, mnt)
    try:
        with pytest.raises(OSError) as info:
            grow_mounted_image(other, mnt, 16 * MIB)  # mnt holds image, not other
        assert info.value.errno == errno.EXDEV
        assert other.stat().st_size == 8 * MIB
    finally:
        unmount_image(mnt)


@root_only
def test_unmount_image_not_lazily_refuses_while_in_use(image_with_data: tuple[Path, Path]) -> None:
    image, mnt = image_with_data
    mount_image(image, mnt)
    with open(mnt / "kept", "rb"):
        with pytest.raises(OSError) as info:
            unmount_image(mnt, lazy=False)
        assert info.value.errno == errno.EBUSY
        assert image_is_mounted(mnt)
    unmount_image(mnt, lazy=False)
    assert not image_is_mounted(mnt)
    assert str(image) not in _loop_backing_files()
