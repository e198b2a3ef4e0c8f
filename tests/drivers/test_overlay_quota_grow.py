"""Growing a read-write layer's size limit: ``OverlayDriver.expand_sandbox_size`` (as root).

The loop-image tests run wherever loop devices and e2fsprogs exist.  Growing
an image while its view is held needs ext4 online resize, which the kernel
only allows with ``CAP_SYS_RESOURCE``; one test covers each side of that.
The XFS project-quota test needs a kernel with ``CONFIG_XFS_QUOTA``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina._fs._loopimage import image_is_mounted
from lamina._fs._mount import mounts_below
from lamina.drivers import new_driver
from lamina.drivers.overlay import OverlayDriver
from lamina.errors import InUseError, InvalidArgumentError, NotFoundError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts, loops")

MIB = 1 << 20
_CAP_SYS_RESOURCE = 24


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    return False


_NO_ONLINE_RESIZE = "ext4 online resize needs CAP_SYS_RESOURCE, which this process lacks"


def _fill(path: Path, size: int, seed: bytes = b"") -> str:
    """Write ``size`` bytes of varied data and fsync; returns their sha256."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(size // MIB):
            chunk = hashlib.sha256(seed + path.name.encode() + i.to_bytes(4, "big")).digest()
            block = chunk * (MIB // len(chunk))
            digest.update(block)
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)  # delayed allocation may only fail here
    finally:
        os.close(fd)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _fill_fails(path: Path, size: int) -> None:
    with pytest.raises(OSError) as info:
        _fill(path, size)
    assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
    os.unlink(path)


def _e2fsck_clean(image: Path) -> None:
    e2fsck = shutil.which("e2fsck") or shutil.which("e2fsck", path="/sbin:/usr/sbin")
    assert e2fsck is not None
    proc = subprocess.run([e2fsck, "-f", "-n", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[OverlayDriver]:
    d = new_driver("overlay", tmp_path / "root", {"quota": "loop"})
    assert isinstance(d, OverlayDriver)
    quota = dict(d.status())["Quota"]
    if quota.startswith("unsupported"):
        pytest.skip(f"no loop-image quota here: {quota}")
    if shutil.which("resize2fs", path="/sbin:/usr/sbin:" + os.environ.get("PATH", "")) is None:
        pytest.skip("resize2fs not installed (e2fsprogs)")
    d.create("base")
    yield d
    d.cleanup()
    assert mounts_below(tmp_path) == []


def _limited(driver: OverlayDriver, size: str = "50M") -> tuple[Path, str]:
    """A size-limited read-write layer ``c`` holding a 40 MiB file; and that file's digest."""
    driver.create_read_write("c", "base", storage_opt={"size": size})
    with driver.mounted("c") as root:
        digest = _fill(root / "first", 40 * MIB)
        _fill_fails(root / "more", 20 * MIB)
    return driver.home / "c" / "quota.img", digest


def test_expand_grows_an_unmounted_image(driver: OverlayDriver) -> None:
    image, digest = _limited(driver)
    assert image.stat().st_size == 50 * MIB
    driver.cleanup()  # nothing held: the image is unmounted
    assert not image_is_mounted(driver.home / "c" / "quota")
    driver.expand_sandbox_size("c", "100M")
    assert image.stat().st_size == 100 * MIB
    assert image.stat().st_blocks * 512 < 60 * MIB  # still sparse: 40 MiB of data
    _e2fsck_clean(image)
    with driver.mounted("c") as root:
        assert _sha256(root / "first") == digest
        more = _fill(root / "more", 20 * MIB)
        st = os.statvfs(root)
        assert st.f_blocks * st.f_frsize > 90 * MIB
    with driver.mounted("c") as root:
        assert _sha256(root / "more") == more
    assert [str(c) for c in driver.changes("c", "base")] == ["A /first", "A /more"]


def test_expand_while_the_image_is_mounted_but_no_view_is_held(driver: OverlayDriver) -> None:
    image, digest = _limited(driver)
    quota = driver.home / "c" / "quota"
    assert image_is_mounted(quota)  # stays mounted after the last put
    driver.expand_sandbox_size("c", "100M")
    assert image_is_mounted(quota)  # grown online, or unmounted, grown and mounted again
    assert image.stat().st_size == 100 * MIB
    with driver.mounted("c") as root:
        assert _sha256(root / "first") == digest
        _fill(root / "more", 20 * MIB)


@pytest.mark.skipif(not _has_cap_sys_resource(), reason=_NO_ONLINE_RESIZE)
def test_expand_while_the_view_is_held(driver: OverlayDriver) -> None:
    driver.create_read_write("c", "base", storage_opt={"size": "50M"})
    root = driver.get("c")
    try:
        digest = _fill(root / "first", 40 * MIB)
        _fill_fails(root / "more", 20 * MIB)
        with open(root / "open-while-growing", "wb") as held:
            held.write(b"before")
            driver.expand_sandbox_size("c", "100M")
            held.write(b" after")
        assert (driver.home / "c" / "quota.img").stat().st_size == 100 * MIB
        more = _fill(root / "more", 20 * MIB)
        assert _sha256(root / "first") == digest
        assert (root / "open-while-growing").read_bytes() == b"before after"
    finally:
        driver.put("c")
    with driver.mounted("c") as root:
        assert _sha256(root / "more") == more
    driver.cleanup()
    _e2fsck_clean(driver.home / "c" / "quota.img")


@pytest.mark.skipif(_has_cap_sys_resource(), reason="this process may resize ext4 online")
def test_expand_while_the_view_is_held_without_online_resize(driver: OverlayDriver) -> None:
    """Without CAP_SYS_RESOURCE, a held view: InUseError, nothing changed; after put it works."""
    image, digest = _limited(driver)
    root = driver.get("c")
    try:
        with pytest.raises(InUseError):
            driver.expand_sandbox_size("c", "100M")
        assert image.stat().st_size == 50 * MIB
        assert _sha256(root / "first") == digest
        _fill_fails(root / "more", 20 * MIB)  # still the old limit
    finally:
        driver.put("c")
    driver.expand_sandbox_size("c", "100M")
    with driver.mounted("c") as root:
        assert _sha256(root / "first") == digest
        _fill(root / "more", 20 * MIB)


def test_expand_without_parent_while_its_direct_view_is_held(driver: OverlayDriver) -> None:
    """A layer without parent is served as its own ``diff/``: no mount shows that it is held."""
    driver.create_read_write("solo", None, storage_opt={"size": "8M"})
    root = driver.get("solo")
    try:
        (root / "kept").write_bytes(b"data")
        if _has_cap_sys_resource():
            driver.expand_sandbox_size("solo", "16M")
        else:
            with pytest.raises(InUseError):
                driver.expand_sandbox_size("solo", "16M")
        assert (root / "kept").read_bytes() == b"data"
    finally:
        driver.put("solo")
    driver.expand_sandbox_size("solo", "16M")
    assert (driver.home / "solo" / "quota.img").stat().st_size == 16 * MIB
    with driver.mounted("solo") as root:
        assert (root / "kept").read_bytes() == b"data"


def test_expand_refuses_to_shrink_and_bad_sizes(driver: OverlayDriver) -> None:
    driver.create_read_write("c", "base", storage_opt={"size": "50M"})
    image = driver.home / "c" / "quota.img"
    for smaller in ("20M", 50 * MIB - 1, "0"):
        with pytest.raises(InvalidArgumentError):
            driver.expand_sandbox_size("c", smaller)
    for bad in ("lots", "-5M", -1, True, 1.5):
        with pytest.raises(InvalidArgumentError):
            driver.expand_sandbox_size("c", bad)  # type: ignore[arg-type]
    assert image.stat().st_size == 50 * MIB
    driver.expand_sandbox_size("c", "50M")  # the same size: nothing to do
    driver.expand_sandbox_size("c", 64 * MIB)  # plain bytes
    assert image.stat().st_size == 64 * MIB
    driver.expand_sandbox_size("c", "0.0625 GiB")  # Docker units: 64 MiB again
    assert image.stat().st_size == 64 * MIB
    with pytest.raises(NotFoundError):
        driver.expand_sandbox_size("missing", "1G")
    driver.create_read_write("unlimited", "base")
    with pytest.raises(InvalidArgumentError):
        driver.expand_sandbox_size("unlimited", "1G")
    with pytest.raises(InvalidArgumentError):
        driver.expand_sandbox_size("base", "1G")


def test_expand_finishes_a_grow_a_crash_interrupted(driver: OverlayDriver) -> None:
    """A crash after the image file grew but before its filesystem did: the same call finishes."""
    image, digest = _limited(driver)
    driver.cleanup()
    os.truncate(image, 100 * MIB)  # the first step of a grow, then the crash
    with driver.mounted("c") as root:
        st = os.statvfs(root)
        assert st.f_blocks * st.f_frsize < 50 * MIB  # the filesystem did not grow
    driver.cleanup()
    driver.expand_sandbox_size("c", "100M")
    with driver.mounted("c") as root:
        st = os.statvfs(root)
        assert st.f_blocks * st.f_frsize > 90 * MIB
        assert _sha256(root / "first") == digest
        _fill(root / "more", 20 * MIB)


def test_expand_a_project_quota_while_the_view_is_held(xfs_pquota: Path) -> None:
    """On XFS with pquota the limit is a project quota: raised in place, view mounted."""
    mnt = xfs_pquota
    driver = new_driver("overlay", mnt / "root", {"quota": "project"})
    assert isinstance(driver, OverlayDriver)
    try:
        driver.create("base")
        driver.create_read_write("c", "base", storage_opt={"size": "50M"})
        record = driver.home / "c" / "quota"
        root = driver.get("c")
        try:
            digest = _fill(root / "first", 40 * MIB)
            _fill_fails(root / "more", 20 * MIB)
            with pytest.raises(InvalidArgumentError):
                driver.expand_sandbox_size("c", "20M")
            driver.expand_sandbox_size("c", "100M")
            assert record.read_text() == f"project {100 * MIB}\n"
            more = _fill(root / "more", 20 * MIB)
            assert _sha256(root / "first") == digest
        finally:
            driver.put("c")
        with driver.mounted("c") as root:
            assert _sha256(root / "more") == more
    finally:
        driver.cleanup()
