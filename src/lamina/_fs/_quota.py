"""Size limits for a directory with XFS project quotas (Docker's ``quota.Control``).

The directory gets a fresh project id with the inherit flag, and the id
gets a hard block limit.  Needs an XFS mounted with ``pquota``/``prjquota``.
We talk to the kernel with ``quotactl_fd`` (Linux >= 5.14) on a descriptor
of the directory, so no block-device node has to be made next to the data
as Docker does; older kernels fall back to ``quotactl`` on the
filesystem's device.

Where there is no project quota, a size is enforced with a filesystem
image instead: :mod:`lamina._fs._loopimage`.

Errors are :class:`OSError` (with the kernel's errno) or
:class:`~lamina.errors.QuotaNotSupportedError` when quotas are missing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Any

from lamina._frozen import Frozen
from lamina._fs._mount import mountinfo
from lamina.errors import QuotaNotSupportedError

__all__ = ["ProjectQuota", "QuotaUsage"]

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
