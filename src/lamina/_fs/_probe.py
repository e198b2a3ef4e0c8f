"""What the kernel and the backing filesystem can do, found by trying (cached).

Reading version numbers or module parameters is not enough: distributions
backport overlayfs features and mount options change behaviour, so, like
Docker's and containers/storage's ``check.go``, these probes make a tiny
overlay mount and look at what the kernel actually did.  Results are cached
per process (keyed by device and mount options); the native-diff verdict is
also cached in a small JSON file keyed by boot id, kernel release and mount
options, because it costs a mount and the answer only changes with those.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lamina._frozen import Frozen
from lamina._fs._atomic import make_staging_dir, remove_tree
from lamina._fs._mount import (
    _FSCONFIG_SET_STRING,
    _fsconfig,
    _fsopen,
    mount_spec,
    new_mount_api_supported,
    umount,
)
from lamina._fs._mounter import Mount

__all__ = [
    "FS_NAMES",
    "NativeDiffProbe",
    "ProbeFile",
    "backing_fs",
    "boot_id",
    "fs_identity",
    "fs_name",
    "is_dir_on_own_fs",
    "overlay_max_lowers",
    "probe_native_diff",
    "probe_overlay_mount",
    "statfs_magic",
    "supports_d_type",
]

#: statfs f_type magic numbers, named as Docker's ``graphdriver.FsNames``.
FS_NAMES: dict[int, str] = {
    0x61756673: "aufs",
    0x9123683E: "btrfs",
    0x28CD3D45: "cramfs",
    0x64626720: "debugfs",
    0xF15F: "ecryptfs",
    0xEF53: "extfs",
    0xF2F52010: "f2fs",
    0x65735546: "fuse",
    0x4244: "hfs",
    0x794C7630: "overlayfs",
    0x858458F6: "ramfs",
    0x52654973: "reiserfs",
    0x73717368: "squashfs",
    0x01021994: "tmpfs",
    0x58465342: "xfs",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0xE0F5E1E2: "erofs",
    0x9FA0: "proc",
}

_libc: Any = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_SYS_GETDENTS64 = 217 if os.uname().machine == "x86_64" else 61
_DT_UNKNOWN = 0


def statfs_magic(path: str | os.PathLike[str]) -> int:
    """The ``f_type`` of the filesystem holding ``path``."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(path))
    magic: int = struct.unpack_from("l", buf.raw)[0]
    return magic & 0xFFFFFFFF


def fs_name(magic: int) -> str:
    """Docker's name for a filesystem magic number ("extfs", "xfs", ...)."""
    return FS_NAMES.get(magic, f"<unknown 0x{magic:x}>")


def backing_fs(path: str | os.PathLike[str]) -> str:
    """Docker's name for the filesystem holding ``path`` ("extfs", "xfs", ...)."""
    return fs_name(statfs_magic(path))


_boot_id: list[str] = []


def boot_id() -> str:
    """This boot's random id: state that does not survive a reboot is keyed by it.

    Read once per process (a process does not outlive its boot).
    """
    if not _boot_id:
        try:
            fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _boot_id.append(os.read(fd, 256).decode("ascii").strip() or "unknown")
            finally:
                os.close(fd)
        except (OSError, UnicodeDecodeError):
            return "unknown"
    return _boot_id[0]


def _fs_identity(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Which filesystem holds ``path``: device number and ``f_fsid``.

    The device number alone is not enough: loop and anonymous device
    numbers are reused as soon as a filesystem is unmounted, and a fresh
    filesystem on the same loop device may behave differently.  ext4, XFS
    and btrfs derive ``f_fsid`` from the filesystem's UUID.
    """
    return os.stat(path).st_dev, os.statvfs(path).f_fsid


def fs_identity(path: str | os.PathLike[str]) -> str:
    """:func:`_fs_identity` as text, for keys of persisted probe results."""
    dev, fsid = _fs_identity(path)
    return f"{dev}:{fsid}"


class ProbeFile:
    """Probe verdicts persisted in a small text file, valid while its key holds.

    Every process of a store would otherwise repeat the same probes (a
    scratch overlay mount, a d_type listing, 500 ``fsconfig`` calls for the
    depth limit) although their answers only change with the boot, the
    kernel, the filesystem and the mount options: the key is made of those.
    The file is a key line and ``name value`` lines; it is replaced whole
    (write to a temporary name, rename), and a lost race only costs a
    probe, so it needs no lock.  Unreadable or stale files read as empty.
    """

    def __init__(self, path: str | os.PathLike[str], *key_parts: str) -> None:
        self.path = os.fspath(path)
        key = " ".join((boot_id(), os.uname().release, *key_parts))
        self.key = key.replace("\n", " ")
        self._values: dict[str, str] | None = None
        self._dirty = False

    def _load(self) -> dict[str, str]:
        if self._values is None:
            values: dict[str, str] = {}
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    data = os.read(fd, 1 << 16)
                finally:
                    os.close(fd)
            except OSError:
                data = b""
            lines = data.decode("utf-8", errors="replace").split("\n")
            if lines[0] == f"key {self.key}":
                for line in lines[1:]:
                    name, sep, value = line.partition(" ")
                    if sep:
                        values[name] = value
            self._values = values
        return self._values

    def get(self, name: str) -> str | None:
        """The stored value of ``name`` for this key, or None."""
        return self._load().get(name)

    def put(self, name: str, value: str) -> None:
        """Remember ``name`` (kept in memory until :meth:`save`)."""
        values = self._load()
        if values.get(name) != value:
            values[name] = value
            self._dirty = True

    def save(self) -> None:
        """Write the values if any changed; failures only mean probing again."""
        if not self._dirty or self._values is None:
            return
        text = "".join(
            [f"key {self.key}\n", *(f"{n} {v}\n" for n, v in sorted(self._values.items()))]
        )
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


_cache: dict[tuple[Any, ...], Any] = {}
_cache_lock = threading.Lock()


@contextlib.contextmanager
def _scratch(testdir: str | os.PathLike[str]) -> Iterator[Path]:
    """A private scratch directory next to the data, removed with everything mounted in it."""
    path = make_staging_dir(testdir, ".lamina-probe")
    try:
        yield path
    finally:
        for name in ("merged",):
            with contextlib.suppress(OSError):
                umount(path / name)
        remove_tree(path)


def _d_type_of(directory: Path, name: str) -> int:
    """The d_type getdents64 reports for ``name`` in ``directory``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = ctypes.create_string_buffer(32768)
        while True:
            n = _libc.syscall(ctypes.c_long(_SYS_GETDENTS64), ctypes.c_int(fd), buf, len(buf))
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), os.fspath(directory))
            if n == 0:
                raise FileNotFoundError(errno.ENOENT, "entry not listed", name)
            data = buf.raw[:n]
            off = 0
            while off < n:
                reclen = struct.unpack_from("H", data, off + 16)[0]
                d_type = data[off + 18]
                entry = data[off + 19 : off + reclen].split(b"\0", 1)[0]
                if entry == os.fsencode(name):
                    return int(d_type)
                off += reclen
    finally:
        os.close(fd)


def supports_d_type(testdir: str | os.PathLike[str]) -> bool:
    """Whether directory listings carry file types (overlayfs needs them for whiteouts)."""
    key = ("d_type", _fs_identity(testdir))
    with _cache_lock:
        if key in _cache:
            return bool(_cache[key])
    with _scratch(testdir) as scratch:
        (scratch / "f").touch()
        ok = _d_type_of(scratch, "f") != _DT_UNKNOWN
    with _cache_lock:
        _cache[key] = ok
    return ok


def overlay_max_lowers() -> int | None:
    """How many lower layers this kernel's overlayfs stacks (OVL_MAX_STACK), or None.

    Counted with ``lowerdir+`` on a throwaway context until the kernel says
    "too many lower directories" (about 2 ms for 500); None when the new
    mount API or ``lowerdir+`` is unavailable.
    """
    key = ("max_lowers",)
    with _cache_lock:
        if key in _cache:
            cached: int | None = _cache[key]
            return cached
    result: int | None = None
    if new_mount_api_supported("overlay"):
        fd = _fsopen("overlay")
        try:
            count = 0
            while count < 100_000:
                try:
                    _fsconfig(fd, _FSCONFIG_SET_STRING, "lowerdir+", "/")
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        result = count
                    break
                count += 1
        finally:
            os.close(fd)
    with _cache_lock:
        _cache[key] = result
    return result


def probe_overlay_mount(testdir: str | os.PathLike[str], options: Sequence[str] = ()) -> None:
    """Mount overlay with two lowers, an upper and a work dir on ``testdir``'s filesystem.

    Raises the kernel's OSError when it refuses (ENODEV: no overlayfs at all;
    EINVAL with a message: this filesystem cannot be an upper layer, an
    option is unknown, ...).  Success is cached per device and options.
    """
    key = ("mount", _fs_identity(testdir), tuple(options))
    with _cache_lock:
        if key in _cache:
            return
    with _scratch(testdir) as scratch:
        for name in ("lower1", "lower2", "upper", "work", "merged"):
            (scratch / name).mkdir()
        (scratch / "lower1" / "a").write_bytes(b"1")
        (scratch / "lower2" / "b").write_bytes(b"2")
        spec = Mount(
            "overlay",
            "overlay",
            scratch / "merged",
            (
                *options,
                "lowerdir=lower2:lower1",
                "upperdir=upper",
                "workdir=work",
            ),
            cwd=scratch,
        )
        mount_spec(spec)
        try:
            if sorted(os.listdir(scratch / "merged")) != ["a", "b"]:
                raise OSError(errno.EIO, "overlay probe mount shows the wrong content")
            (scratch / "merged" / "c").write_bytes(b"3")
        finally:
            umount(scratch / "merged")
    with _cache_lock:
        _cache[key] = True


class NativeDiffProbe(Frozen):
    """Whether a layer's upper directory alone describes its changes.

    ``native`` False comes with the ``reason``; ``metacopy`` reports whether
    the kernel copied up metadata only (which also rules native diff out).
    """

    __slots__ = ("metacopy", "native", "reason")
    __match_args__ = _fields = ("native", "reason", "metacopy")

    native: bool
    reason: str
    metacopy: bool

    def __init__(self, native: bool, reason: str, metacopy: bool) -> None:
        object.__setattr__(self, "native", native)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "metacopy", metacopy)


def _getxattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return None
        raise


def _run_native_diff_probe(testdir: Path, options: Sequence[str]) -> NativeDiffProbe:
    with _scratch(testdir) as scratch:
        l1, l2, l3 = scratch / "l1", scratch / "l2", scratch / "l3"
        work, merged = scratch / "work", scratch / "merged"
        for p in (l1 / "d", l1 / "d1", l2 / "d", l3, work, merged):
            p.mkdir(parents=True)
        (l1 / "f").write_bytes(b"metacopy probe")
        os.chmod(l1 / "f", 0o644)
        os.setxattr(l2 / "d", "trusted.overlay.opaque", b"y")
        spec = Mount(
            "overlay",
            "overlay",
            merged,
            (*options, "lowerdir=l2:l1", "upperdir=l3", "workdir=work"),
            cwd=scratch,
        )
        mount_spec(spec)
        problems: list[str] = []
        metacopy = False
        try:
            (merged / "d" / "f").write_bytes(b"x")
            if _getxattr(l3 / "d", "trusted.overlay.opaque") == b"y":
                problems.append("the kernel copies up the opaque flag (needs Linux >= 4.8)")
            try:
                os.rename(merged / "d1", merged / "d2")
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                if _getxattr(l3 / "d2", "trusted.overlay.redirect") is not None:
                    problems.append("renamed directories become redirects (redirect_dir is on)")
            os.chmod(merged / "f", 0o600)
            if _getxattr(l3 / "f", "trusted.overlay.metacopy") is not None:
                metacopy = True
                problems.append("copy-up copies metadata only (metacopy is on)")
        finally:
            umount(merged)
    return NativeDiffProbe(not problems, "; ".join(problems), metacopy)


def probe_native_diff(
    testdir: str | os.PathLike[str],
    options: Sequence[str] = (),
    cache_file: str | os.PathLike[str] | None = None,
) -> NativeDiffProbe:
    """Docker's ``doesSupportNativeDiff`` plus the metacopy check, on these mount options."""
    import json  # only this probe keeps JSON

    key_data = {
        "boot_id": boot_id(),
        "kernel": os.uname().release,
        "options": list(options),
        "fs": list(_fs_identity(testdir)),
    }
    key = ("native", json.dumps(key_data, sort_keys=True))
    with _cache_lock:
        if key in _cache:
            cached: NativeDiffProbe = _cache[key]
            return cached
    result: NativeDiffProbe | None = None
    if cache_file is not None:
        try:
            with open(cache_file, encoding="utf-8") as f:
                stored = json.load(f)
            if stored.get("key") == key_data:
                result = NativeDiffProbe(**stored["result"])
        except (OSError, ValueError, TypeError, KeyError):
            result = None
    if result is None:
        try:
            result = _run_native_diff_probe(Path(testdir), options)
        except OSError as exc:
            result = NativeDiffProbe(False, f"native diff probe failed: {exc}", False)
        if cache_file is not None:
            tmp = f"{os.fspath(cache_file)}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump({"key": key_data, "result": result.as_dict()}, f)
                os.replace(tmp, cache_file)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    with _cache_lock:
        _cache[key] = result
    return result


def is_dir_on_own_fs(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the root of a filesystem (a different device from its parent)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return False
    parent = os.lstat(os.path.join(path, ".."))
    return st.st_dev != parent.st_dev or st.st_ino == parent.st_ino
