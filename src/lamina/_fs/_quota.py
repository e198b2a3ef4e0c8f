"""Size limits for a directory: XFS project quotas, or a loop-mounted image.

Two mechanisms, chosen by the caller:

* **XFS project quota** (Docker's ``quota.Control``): the directory gets a
  fresh project id with the inherit flag, and the id gets a hard block limit.
  Needs an XFS mounted with ``pquota``/``prjquota``.  We talk to the kernel
  with ``quotactl_fd`` (Linux >= 5.14) on a descriptor of the directory, so
  no block-device node has to be made next to the data as Docker does; older
  kernels fall back to ``quotactl`` on the filesystem's device.
* **A filesystem image** (the Linux counterpart of the Windows driver's
  ``sandbox.vhdx``): a sparse file of exactly the requested size, formatted
  with ``mkfs.ext4`` and mounted through a loop device.  The loop device is
  configured with autoclear, so unmounting the image is all it takes to
  release the device: a crashed process cannot leak one.  The file's size
  is the limit; growing it (``ExpandSandboxSize``) is a ``truncate`` plus an
  ext4 resize, online through the kernel while mounted
  (:func:`grow_mounted_image`, which needs ``CAP_SYS_RESOURCE``) or with
  ``e2fsck`` and ``resize2fs`` while not (:func:`grow_image`).

Errors are :class:`OSError` (with the kernel's errno) or
:class:`~lamina.errors.QuotaNotSupportedError` when a mechanism is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import time
from pathlib import Path
from typing import Any

from lamina._frozen import Frozen
from lamina._fs._mount import MNT_DETACH, mount, mountinfo, umount
from lamina.errors import QuotaNotSupportedError

__all__ = [
    "ProjectQuota",
    "QuotaUsage",
    "create_image",
    "grow_image",
    "grow_mounted_image",
    "image_is_mounted",
    "mount_image",
    "unmount_image",
]

_libc: Any = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
_libc.quotactl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long

_SYS_QUOTACTL_FD = 443
_PRJQUOTA = 2
_Q_XGETQUOTA = 0x5803
_Q_XSETQLIM = 0x5804
_Q_XGETQSTAT = 0x5805
_FS_QUOTA_PDQ_ACCT = 1 << 4
_FS_QUOTA_PDQ_ENFD = 1 << 5
_FS_DQUOT_VERSION = 1
_FS_PROJ_QUOTA = 2
_FS_DQ_BSOFT = 1 << 2
_FS_DQ_BHARD = 1 << 3
_BASIC_BLOCK = 512

# struct fs_disk_quota (linux/dqblk_xfs.h), 112 bytes
_DQUOT = struct.Struct("=bbHI6Q2i2H4b3QiHh8s")
# struct fsxattr (linux/fs.h), 28 bytes, and its ioctls
_FSXATTR = struct.Struct("=5I8s")
_FS_IOC_FSGETXATTR = 0x801C581F
_FS_IOC_FSSETXATTR = 0x401C5820
_FS_XFLAG_PROJINHERIT = 0x200


def _qcmd(cmd: int) -> int:
    return (cmd << 8) | _PRJQUOTA


class QuotaUsage(Frozen):
    """A project's hard limit and current use, in bytes."""

    __slots__ = ("limit", "project_id", "used")
    __match_args__ = _fields = ("project_id", "limit", "used")

    project_id: int
    limit: int
    used: int

    def __init__(self, project_id: int, limit: int, used: int) -> None:
        object.__setattr__(self, "project_id", project_id)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "used", used)


class ProjectQuota:
    """Project quotas on the XFS filesystem holding ``base``.

    Construction checks that project quota accounting *and* enforcement are
    on; otherwise it raises QuotaNotSupportedError saying what is missing.
    """

    def __init__(self, base: str | os.PathLike[str]) -> None:
        self.base = Path(base)
        self._device: str | None = None
        buf = ctypes.create_string_buffer(128)
        try:
            self._quotactl(_Q_XGETQSTAT, 0, buf)
        except OSError as exc:
            raise QuotaNotSupportedError(
                f"no project quota on {base}: {exc.strerror}", errno=exc.errno
            ) from exc
        flags = struct.unpack_from("=H", buf.raw, 2)[0]
        if not (flags & _FS_QUOTA_PDQ_ACCT and flags & _FS_QUOTA_PDQ_ENFD):
            raise QuotaNotSupportedError(
                f"project quota is not enforced on {base}: mount it with the pquota option"
            )
        self.base_project = _get_fsxattr(self.base)[3]

    def _block_device(self) -> str:
        """The device special file of the filesystem (old kernels' quotactl needs a path)."""
        if self._device is None:
            dev = os.stat(self.base).st_dev
            major, minor = os.major(dev), os.minor(dev)
            for m in mountinfo():
                if m.device == f"{major}:{minor}" and m.source.startswith("/dev/"):
                    self._device = m.source
                    break
            else:
                raise OSError(errno.ENODEV, "no block device for the quota filesystem")
        return self._device

    def _quotactl(self, cmd: int, ident: int, buf: Any) -> None:
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rc = _libc.syscall(
                ctypes.c_long(_SYS_QUOTACTL_FD),
                ctypes.c_uint(fd),
                ctypes.c_uint(_qcmd(cmd)),
                ctypes.c_int(ident),
                buf,
            )
        finally:
            os.close(fd)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            device = self._block_device()
            if _libc.quotactl(_qcmd(cmd), os.fsencode(device), ident, buf) == 0:
                return
            err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(self.base))

    def _used_project_ids(self) -> set[int]:
        """Project ids on the directories one and two levels below ``base``.

        Two levels, as Docker scans: limited directories may sit in a
        staging area below ``base`` before they are renamed into place.
        """
        ids = set()
        level = [os.fspath(self.base)]
        for _depth in range(2):
            below = []
            for parent in level:
                try:
                    entries = list(os.scandir(parent))
                except OSError:
                    continue
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    below.append(entry.path)
                    try:
                        ids.add(_get_fsxattr(Path(entry.path))[3])
                    except OSError:
                        continue
            level = below
        return ids

    def set_quota(self, directory: str | os.PathLike[str], size: int) -> int:
        """Give ``directory`` (a child of ``base``) its own project limited to ``size`` bytes.

        Files created below it later inherit the project.  The caller
        serialises calls across processes (the next free id is computed by
        scanning ``base``).  Returns the project id.
        """
        directory = Path(directory)
        current = _get_fsxattr(directory)[3]
        if current and current != self.base_project:
            project = current
        else:
            project = max(self._used_project_ids() | {self.base_project}) + 1
        self._set_limit(project, size)
        xflags, extsize, nextents, _, cow, pad = _get_fsxattr(directory)
        flags = xflags | _FS_XFLAG_PROJINHERIT
        _set_fsxattr(directory, (flags, extsize, nextents, project, cow, pad))
        return project

    def set_limit(self, directory: str | os.PathLike[str], size: int) -> int:
        """Change the limit of the project ``directory`` already has (see :meth:`set_quota`).

        Raising a limit takes effect at once, also for files open for
        writing.  Returns the project id.
        """
        project = _get_fsxattr(Path(directory))[3]
        if not project or project == self.base_project:
            raise OSError(errno.EINVAL, "the directory has no project quota of its own", directory)
        self._set_limit(project, size)
        return project

    def _set_limit(self, project: int, size: int) -> None:
        blocks = (size + _BASIC_BLOCK - 1) // _BASIC_BLOCK
        data = _DQUOT.pack(
            _FS_DQUOT_VERSION,
            _FS_PROJ_QUOTA,
            _FS_DQ_BSOFT | _FS_DQ_BHARD,
            project,
            blocks,
            blocks,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            b"",
        )
        buf = ctypes.create_string_buffer(data, _DQUOT.size)
        self._quotactl(_Q_XSETQLIM, project, buf)

    def usage(self, directory: str | os.PathLike[str]) -> QuotaUsage:
        """The limit and use of ``directory``'s project."""
        project = _get_fsxattr(Path(directory))[3]
        buf = ctypes.create_string_buffer(_DQUOT.size)
        self._quotactl(_Q_XGETQUOTA, project, buf)
        fields = _DQUOT.unpack(buf.raw)
        return QuotaUsage(project, fields[4] * _BASIC_BLOCK, fields[8] * _BASIC_BLOCK)


def _get_fsxattr(path: Path) -> tuple[int, int, int, int, int, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(_FSXATTR.size)
        fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, buf)
    finally:
        os.close(fd)
    values: tuple[int, int, int, int, int, bytes] = _FSXATTR.unpack(bytes(buf))
    return values


def _set_fsxattr(path: Path, values: tuple[int, int, int, int, int, bytes]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _FS_IOC_FSSETXATTR, _FSXATTR.pack(*values))
    finally:
        os.close(fd)


# -- loop-mounted filesystem images --------------------------------------------------

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { __u32 fd; __u32 block_size; struct loop_info64 info; __u64 reserved[8]; }
# struct loop_info64: 5 x u64, 4 x u32, 64 + 64 + 32 bytes, 2 x u64 (232 bytes)
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q64x")


def _tool(name: str) -> str:
    """The path of an e2fsprogs / xfsprogs program (often outside a non-root PATH)."""
    import shutil  # cold path (image creation and growth): kept off the driver's import

    found = shutil.which(name) or shutil.which(name, path="/sbin:/usr/sbin")
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
        # reserved blocks, root-owned root: the container gets the space.
        args = ["-q", "-F", "-T", "default", "-m", "0", "-E", "nodiscard,root_owner=0:0"]
    else:
        args = ["-q", "-f"]
    import subprocess  # cold path: only image creation runs a tool

    proc = subprocess.run(
        [mkfs, *args, os.fspath(image)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise OSError(errno.EINVAL, f"mkfs.{fstype} failed: {proc.stderr.strip()}", str(image))


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
    """Mount a filesystem image on ``mountpoint`` through an autoclearing loop device."""
    loop, device = _attach_loop(Path(image))
    try:
        mount(device, mountpoint, fstype, 0, "")
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
    import subprocess  # cold path: only an offline grow runs tools

    check = subprocess.run(
        [_tool("e2fsck"), "-f", "-p", path], capture_output=True, text=True, check=False
    )
    if check.returncode & ~1:  # 1: errors corrected; anything else: not fit to resize
        raise OSError(errno.EIO, f"e2fsck failed ({check.returncode}): {check.stdout.strip()}")
    resize = subprocess.run(
        [_tool("resize2fs"), path, str(target)], capture_output=True, text=True, check=False
    )
    if resize.returncode != 0:
        raise OSError(errno.EIO, f"resize2fs failed: {resize.stderr.strip()}", path)


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
