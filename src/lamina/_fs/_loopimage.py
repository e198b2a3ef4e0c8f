"""Filesystem images mounted through loop devices: the one place that makes, mounts and grows them.

Both size-limited layers use it: the overlay driver's per-layer quota
image (when the backing filesystem has no project quota) and the
windowsfilter sandbox (the Linux counterpart of the seed's
``sandbox.vhdx``, 127 GB by default, grown with ``ExpandSandboxSize``).

* **Making**: a sparse file of exactly the requested size, formatted with
  ``mkfs.ext4`` (4 KiB blocks and the usual inode ratio even for small
  images, no reserved blocks, root-owned root, inode tables and journal
  initialised lazily).  The file's size is the limit and it only takes
  the space its data uses.
* **Mounting**: the image is bound to a free loop device with
  ``LOOP_CONFIGURE`` and autoclear, then mounted with mount(2) — no
  ``mount`` tool.  With autoclear, unmounting is all it takes to release
  the device: a crashed process cannot leak one.  ext4 is mounted with
  ``noinit_itable``, so the kernel does not zero the inode tables in the
  background, which would make the sparse file dense.
* **Growing** never shrinks and is idempotent (after a crash between the
  steps the same call finishes the job): online through the kernel while
  mounted (:func:`grow_mounted_image`, which needs ``CAP_SYS_RESOURCE``),
  or with ``e2fsck`` and ``resize2fs`` while not (:func:`grow_image`).

Tools (``mkfs.*``, ``e2fsck``, ``resize2fs``) run through
:func:`lamina._fs._child.run_tool`, so they die with the process that
started them.  Errors are :class:`OSError` (with the kernel's errno) or
:class:`~lamina.errors.QuotaNotSupportedError` when a mechanism is missing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from lamina._fs._child import run_tool, tool_path
from lamina._fs._mount import MNT_DETACH, mount, umount
from lamina.errors import QuotaNotSupportedError

__all__ = [
    "create_image",
    "grow_image",
    "grow_mounted_image",
    "image_is_mounted",
    "loop_supported",
    "mount_image",
    "unmount_image",
]


def loop_supported() -> bool:
    """Whether images can be made and mounted here (root, a loop driver, mkfs.ext4)."""
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/loop-control")
        and tool_path("mkfs.ext4") is not None
    )


# -- loop-mounted filesystem images --------------------------------------------------

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { __u32 fd; __u32 block_size; struct loop_info64 info; __u64 reserved[8]; }
# struct loop_info64: 5 x u64, 4 x u32, 64 + 64 + 32 bytes, 2 x u64 (232 bytes)
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q64x")


def _tool(name: str) -> str:
    """The path of an e2fsprogs / xfsprogs program."""
    found = tool_path(name)
    if found is None:
        package = "xfsprogs" if "xfs" in name else "e2fsprogs"
        raise QuotaNotSupportedError(f"{name} is not installed ({package})")
    return found


def create_image(image: str | os.PathLike[str], size: int, fstype: str = "ext4") -> None:
    """Make a sparse file of ``size`` bytes holding an empty ``fstype`` filesystem."""
    mkfs = _tool(f"mkfs.{fstype}")
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    if fstype.startswith("ext"):
        # 4 KiB blocks and the usual inode ratio even for small images, no
        # reserved blocks, root-owned root: the container gets the space;
        # lazy inode tables and journal: the sparse file stays sparse.
        extended = "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0"
        args = ["-q", "-F", "-T", "default", "-m", "0", "-E", extended]
    else:
        args = ["-q", "-f"]
    try:
        run_tool([mkfs, *args, os.fspath(image)])
    except OSError as exc:
        raise OSError(errno.EINVAL, exc.strerror, str(image)) from exc


def _attach_loop(image: Path, readonly: bool = False) -> tuple[int, str]:
    """Bind ``image`` to a free loop device with autoclear; returns (open fd, device path)."""
    backing = os.open(image, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    try:
        try:
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise QuotaNotSupportedError(
                f"no loop devices here (/dev/loop-control: {exc.strerror})", errno=exc.errno
            ) from exc
        try:
            for _attempt in range(64):
                number = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                try:
                    loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    time.sleep(0.01)  # udev/devtmpfs has not made the node yet
                    loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                name = os.fsencode(image)[-63:]
                config = _LOOP_CONFIG.pack(
                    backing, 0, 0, 0, 0, 0, 0, 0, 0, 0, _LO_FLAGS_AUTOCLEAR, name, b"", b"", 0, 0
                )
                try:
                    fcntl.ioctl(loop, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(loop)
                    if exc.errno == errno.EBUSY:
                        continue  # another process took this device first
                    raise
                return loop, device
            raise OSError(errno.EBUSY, "no free loop device", str(image))
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def mount_image(
    image: str | os.PathLike[str], mountpoint: str | os.PathLike[str], fstype: str = "ext4"
) -> None:
    """Mount an image on ``mountpoint`` (made if missing) through an autoclearing loop device."""
    os.makedirs(mountpoint, mode=0o700, exist_ok=True)
    loop, device = _attach_loop(Path(image))
    try:
        mount(device, mountpoint, fstype, 0, "noinit_itable" if fstype.startswith("ext") else "")
    finally:
        os.close(loop)  # with autoclear, the device goes away with the last user


def image_is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """Whether ``mountpoint`` has a filesystem of its own mounted on it."""
    try:
        st = os.lstat(mountpoint)
        parent = os.lstat(os.path.join(mountpoint, ".."))
    except FileNotFoundError:
        return False
    return st.st_dev != parent.st_dev


def unmount_image(mountpoint: str | os.PathLike[str], *, lazy: bool = True) -> None:
    """Unmount an image (the loop device clears itself); not mounted is fine.

    ``lazy=False`` refuses (OSError EBUSY) while anything still uses the
    filesystem, instead of detaching it: after a lazy unmount a user that
    still has a file open keeps writing to the image, so nothing else may
    mount or resize it then.
    """
    while image_is_mounted(mountpoint):
        try:
            umount(mountpoint, MNT_DETACH if lazy else 0)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


# -- growing an image ------------------------------------------------------------------

_LOOP_SET_CAPACITY = 0x4C07
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")  # struct loop_info64, 232 bytes
_EXT4_IOC_RESIZE_FS = 0x40086610  # _IOW('f', 16, __u64)
_EXT4_MAGIC = 0xEF53
_EXT4_INCOMPAT_64BIT = 0x80


def _ext4_geometry(fd: int) -> tuple[int, int]:
    """(block size, block count) from the ext4 superblock that ``fd`` (image or device) holds.

    Read through the block device of a mounted filesystem, this is the
    kernel's live superblock (it shares the device's page cache).
    """
    sb = os.pread(fd, 1024, 1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != _EXT4_MAGIC:
        raise OSError(errno.EINVAL, "not an ext4 filesystem image")
    log_block_size = struct.unpack_from("<I", sb, 0x18)[0]
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    count = struct.unpack_from("<I", sb, 0x04)[0]
    if incompat & _EXT4_INCOMPAT_64BIT:
        count |= struct.unpack_from("<I", sb, 0x150)[0] << 32
    return 1024 << log_block_size, count


def grow_image(image: str | os.PathLike[str], size: int) -> None:
    """Grow an *unmounted* ext4 image and its filesystem to ``size`` bytes (never shrinks).

    ``truncate``, ``e2fsck -f -p`` (``resize2fs`` insists on a freshly
    checked filesystem) and ``resize2fs``.  Idempotent: after a crash
    between the steps, the same call finishes the job; a filesystem that
    already has the size is not touched.
    """
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        block_size, blocks = _ext4_geometry(fd)
        target = size // block_size
        if blocks >= target and os.fstat(fd).st_size >= size:
            return
        if blocks > target:
            raise OSError(errno.EINVAL, f"the filesystem is larger than {size} bytes", str(image))
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    if blocks == target:
        return
    path = os.fspath(image)
    run_tool([_tool("e2fsck"), "-f", "-p", path], ok=(0, 1))  # 1: errors corrected
    run_tool([_tool("resize2fs"), path, str(target)])


def _open_loop_device(dev: int, backing: os.stat_result) -> int:
    """Open the loop device numbered ``dev``, checking it is backed by that very file."""
    major, minor = os.major(dev), os.minor(dev)
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
    except OSError as exc:
        raise OSError(errno.ENODEV, f"no block device {major}:{minor}") from exc
    # read-only: LOOP_SET_CAPACITY needs write access *or* CAP_SYS_ADMIN, and kernels
    # built without CONFIG_BLK_DEV_WRITE_MOUNTED refuse to open a mounted device for writing
    fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_rdev != dev:
            raise OSError(errno.ENODEV, f"/dev/{name} is not device {major}:{minor}")
        info = bytearray(_LOOP_INFO64.size)
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, info)
        lo_device, lo_inode = struct.unpack_from("=2Q", info)
        if (lo_device, lo_inode) != (backing.st_dev, backing.st_ino):
            raise OSError(errno.EXDEV, f"/dev/{name} is not backed by the image")
    except BaseException:
        os.close(fd)
        raise
    return fd


def grow_mounted_image(
    image: str | os.PathLike[str], mountpoint: str | os.PathLike[str], size: int
) -> None:
    """Grow a *mounted* ext4 image and its filesystem to ``size`` bytes, online.

    The image file is extended, the loop device told its new capacity
    (``LOOP_SET_CAPACITY``) and ext4 resized by the kernel
    (``EXT4_IOC_RESIZE_FS``, what ``resize2fs`` does online), while files
    stay open.  The kernel allows that only with ``CAP_SYS_RESOURCE``: it
    is asked first with the current size, so a PermissionError comes
    before anything has changed.  Idempotent, like :func:`grow_image`.
    """
    backing = os.stat(image)
    loop = _open_loop_device(os.stat(mountpoint).st_dev, backing)
    try:
        mnt = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            block_size, blocks = _ext4_geometry(loop)
            target = size // block_size
            if blocks >= target and backing.st_size >= size:
                return
            if blocks > target:
                raise OSError(errno.EINVAL, f"the filesystem is larger than {size} bytes")
            if blocks == target:  # less than a block more: only the file grows
                os.truncate(image, size)
                return
            fcntl.ioctl(mnt, _EXT4_IOC_RESIZE_FS, struct.pack("=Q", blocks))  # allowed at all?
            extended = backing.st_size < size
            if extended:
                os.truncate(image, size)
            try:
                fcntl.ioctl(loop, _LOOP_SET_CAPACITY, 0)
                fcntl.ioctl(mnt, _EXT4_IOC_RESIZE_FS, struct.pack("=Q", target))
            except OSError:
                if extended and _ext4_geometry(loop)[1] == blocks:  # nothing uses the new end
                    os.truncate(image, backing.st_size)
                    with contextlib.suppress(OSError):
                        fcntl.ioctl(loop, _LOOP_SET_CAPACITY, 0)
                raise
        finally:
            os.close(mnt)
    finally:
        os.close(loop)
