"""Kernel mounts through ctypes: mount(2), umount2(2) and the new mount API.

Two ways to mount a :class:`~lamina._fs.Mount` spec:

* the **new mount API** (``fsopen``/``fsconfig``/``fsmount``/``move_mount``,
  Linux >= 5.2): every option is one ``fsconfig`` call, so there is no
  one-page limit on the option string; overlayfs (Linux >= 6.8) takes one
  lower directory per ``lowerdir+`` call, which is how a 500-layer chain
  mounts.  The kernel also explains failures in the context's log, which we
  read back into the error message;
* classic **mount(2)**, whose option string must fit in one page.

``Mount.cwd`` makes relative paths in the options resolve against a
directory without changing the process's working directory: the mount runs
in a short-lived thread that has unshared its filesystem context
(``unshare(CLONE_FS)``) and ``chdir``-ed there, as Docker's ``mountFrom``
does with a locked OS thread.

Every function here raises :class:`OSError` with the kernel's errno; the
caller decides which :mod:`lamina.errors` class that is.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from lamina._frozen import Frozen
from lamina._fs._mounter import Mount

__all__ = [
    "MNT_DETACH",
    "MS_RDONLY",
    "MountInfo",
    "fs_type",
    "is_mounted",
    "is_mountpoint",
    "mount",
    "mount_spec",
    "mountinfo",
    "mounts_below",
    "new_mount_api_supported",
    "run_in_dir",
    "umount",
    "unmount_below",
]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_FORCE = 0x1
MNT_DETACH = 0x2
_CLONE_FS = 0x200

# Syscall numbers of the new mount API are the same on every architecture
# that uses the generic table (x86_64, aarch64, riscv64, ...).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432

_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_AT_FDCWD = -100

_libc: Any = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.syscall.restype = ctypes.c_long

T = TypeVar("T")


def _check(rc: int, *paths: str | os.PathLike[str] | None) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        names = [os.fspath(p) for p in paths if p is not None]
        raise OSError(err, os.strerror(err), *names[:1])
    return rc


def _b(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    fstype: str,
    flags: int = 0,
    data: str = "",
) -> None:
    """mount(2); ``data`` must fit in one page (the kernel copies at most that)."""
    encoded = data.encode()
    if len(encoded) >= os.sysconf("SC_PAGESIZE"):
        raise OSError(errno.E2BIG, "mount options longer than one page", os.fspath(target))
    _check(_libc.mount(_b(source), _b(target), fstype.encode(), flags, encoded or None), target)


def umount(target: str | os.PathLike[str], flags: int = MNT_DETACH) -> None:
    """umount2(2); detaching by default, as Docker does for layer views."""
    _check(_libc.umount2(_b(target), flags), target)


# -- running with another working directory -------------------------------------


def run_in_dir(cwd: str | os.PathLike[str] | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` with relative paths resolving against ``cwd``.

    The process's working directory is shared by all threads, so the call
    runs on a fresh thread that first gets a private filesystem context
    (``unshare(CLONE_FS)``); the thread ends afterwards, taking that context
    with it.
    """
    if cwd is None:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            _check(_libc.unshare(_CLONE_FS))
            os.chdir(cwd)
            result.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name="lamina-mount", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


# -- the new mount API --------------------------------------------------------------


def _sys(number: int, *args: Any) -> int:
    return _check(_libc.syscall(ctypes.c_long(number), *args))


def _fs_log(fd: int) -> str:
    """Messages the kernel left in an fs context ("e overlayfs: ..."), joined."""
    messages = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        messages.append(data.decode(errors="replace").strip())
    return "; ".join(m[2:] if m[1:2] == " " else m for m in messages)


def _fsconfig(fd: int, cmd: int, key: str | None, value: str | None) -> None:
    rc = _libc.syscall(
        ctypes.c_long(_SYS_FSCONFIG),
        ctypes.c_int(fd),
        ctypes.c_uint(cmd),
        ctypes.c_char_p(key.encode() if key is not None else None),
        ctypes.c_char_p(os.fsencode(value) if value is not None else None),
        ctypes.c_int(0),
    )
    if rc < 0:
        err = ctypes.get_errno()
        detail = _fs_log(fd)
        what = key if value is None else f"{key}={value}"
        msg = os.strerror(err) + (f" ({detail})" if detail else "")
        raise OSError(err, msg, what or "create")


def _fsopen(fstype: str) -> int:
    return _sys(_SYS_FSOPEN, ctypes.c_char_p(fstype.encode()), ctypes.c_uint(_FSOPEN_CLOEXEC))


_new_api_cache: dict[str, bool] = {}
_new_api_lock = threading.Lock()


def new_mount_api_supported(fstype: str = "overlay", list_key: str = "lowerdir+") -> bool:
    """Whether ``fsopen(fstype)`` works and accepts ``list_key`` (cached per process).

    For overlayfs ``lowerdir+`` (Linux >= 6.8) is what lifts the page limit,
    so it is probed with "/" as a harmless value on a context that is then
    thrown away.
    """
    key = f"{fstype}:{list_key}"
    with _new_api_lock:
        if key in _new_api_cache:
            return _new_api_cache[key]
        try:
            fd = _fsopen(fstype)
        except OSError:
            ok = False
        else:
            try:
                _fsconfig(fd, _FSCONFIG_SET_STRING, list_key, "/")
                ok = True
            except OSError:
                ok = False
            finally:
                os.close(fd)
        _new_api_cache[key] = ok
        return ok


def _split_lowerdir(value: str) -> list[str]:
    """Split overlayfs's ``a:b\\:c`` list syntax into paths."""
    parts: list[str] = []
    cur: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


_PATH_KEYS = frozenset({"lowerdir+", "upperdir", "workdir", "datadir+"})
_MAX_VALUE = 255  # fsconfig copies at most 256 bytes of a string, NUL included


def _set_string(fd: int, key: str, value: str) -> None:
    """One ``fsconfig`` string; a path too long for it goes as ``/proc/self/fd/N``."""
    if key not in _PATH_KEYS or len(os.fsencode(value)) <= _MAX_VALUE:
        _fsconfig(fd, _FSCONFIG_SET_STRING, key, value)
        return
    dirfd = os.open(value, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _fsconfig(fd, _FSCONFIG_SET_STRING, key, f"/proc/self/fd/{dirfd}")
    finally:
        os.close(dirfd)


def _mount_new_api(spec: Mount, readonly: bool) -> None:
    fd = _fsopen(spec.type)
    try:
        if spec.source:
            _fsconfig(fd, _FSCONFIG_SET_STRING, "source", spec.source)
        for option in spec.options:
            key, sep, value = option.partition("=")
            if not sep:
                _fsconfig(fd, _FSCONFIG_SET_FLAG, key, None)
            elif key == "lowerdir" and spec.type == "overlay":
                for lower in _split_lowerdir(value):
                    _set_string(fd, "lowerdir+", lower)
            else:
                _set_string(fd, key, value)
        _fsconfig(fd, _FSCONFIG_CMD_CREATE, None, None)
        attrs = _MOUNT_ATTR_RDONLY if readonly else 0
        mfd = _sys(
            _SYS_FSMOUNT, ctypes.c_int(fd), ctypes.c_uint(_FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)
        )
    finally:
        os.close(fd)
    try:
        _sys(
            _SYS_MOVE_MOUNT,
            ctypes.c_int(mfd),
            ctypes.c_char_p(b""),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(os.fsencode(spec.target)),
            ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
        )
    finally:
        os.close(mfd)


def mount_spec(spec: Mount, *, readonly: bool = False, new_api: bool | None = None) -> None:
    """Perform a :class:`Mount` (not a direct one) at ``spec.target``.

    ``new_api=None`` uses the new mount API when the kernel supports it for
    this filesystem type (for overlay: with ``lowerdir+``), else mount(2).
    Relative paths in the options resolve against ``spec.cwd``; the target
    is made absolute first so it does not.
    """
    if spec.is_direct:
        raise ValueError("a direct mount is served without a mount")
    target = Path(spec.target).absolute()
    spec = Mount(spec.type, spec.source, target, spec.options, spec.cwd)
    use_new = new_api
    if use_new is None:
        use_new = new_mount_api_supported(spec.type) if spec.type == "overlay" else False
    if use_new:
        run_in_dir(spec.cwd, lambda: _mount_new_api(spec, readonly))
        return
    data = ",".join(spec.options)
    flags = MS_RDONLY if readonly else 0
    run_in_dir(spec.cwd, lambda: mount(spec.source or "none", target, spec.type, flags, data))


# -- /proc/self/mountinfo -------------------------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = os.fsencode(field)
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and len(raw[i + 1 : i + 4]) == 3 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


class MountInfo(Frozen):
    """One line of /proc/self/mountinfo."""

    __slots__ = _fields = (
        "mount_id",
        "parent_id",
        "device",
        "root",
        "mountpoint",
        "options",
        "fstype",
        "source",
        "super_options",
    )

    mount_id: int
    parent_id: int
    device: str
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str

    def __init__(
        self,
        mount_id: int,
        parent_id: int,
        device: str,
        root: str,
        mountpoint: str,
        options: str,
        fstype: str,
        source: str,
        super_options: str,
    ) -> None:
        for name, value in zip(
            self._fields,
            (mount_id, parent_id, device, root, mountpoint, options, fstype, source, super_options),
            strict=True,
        ):
            object.__setattr__(self, name, value)


def _escape(path: str) -> bytes:
    """A path as mountinfo writes it: space, tab, newline and backslash as \\ooo octal."""
    raw = os.fsencode(path)
    for ch in b"\\ \t\n":
        raw = raw.replace(bytes([ch]), b"\\%03o" % ch)
    return raw


def _read_all(path: str) -> bytes:
    """The whole of a (proc) file, in as few read calls as its size allows."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def is_mounted(target: str, path: str = "/proc/self/mountinfo") -> bool:
    """Whether something is mounted exactly at the absolute, resolved path ``target``.

    The hot-path form of :func:`is_mountpoint` (every shared ``get`` and
    ``put`` asks): one read of mountinfo and a byte search, parsed only
    when the escaped path occurs at all.
    """
    data = _read_all(path)
    if b" " + _escape(target) + b" " not in data:
        return False
    return any(m.mountpoint == target for m in _parse_mountinfo(data))


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """Parse the mount table of this process's mount namespace."""
    return _parse_mountinfo(_read_all(path))


def _parse_mountinfo(data: bytes) -> list[MountInfo]:
    result = []
    for raw in data.decode(errors="surrogateescape").splitlines():
        fields = raw.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        result.append(
            MountInfo(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2],
                root=_unescape(fields[3]),
                mountpoint=_unescape(fields[4]),
                options=fields[5],
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return result


def fs_type(path: str | os.PathLike[str], table: Iterable[MountInfo] | None = None) -> str:
    """The filesystem type (mountinfo's name: ``ext4``, ``tmpfs``...) of the mount holding ``path``.

    The deepest mount point at or above the resolved path wins, the last
    mounted of equal ones (what the path resolves through); ``"unknown"``
    when the table cannot be read.  Mount points come from
    :func:`mountinfo`, which decodes its octal escapes into the bytes the
    kernel has, so a non-ASCII or space-holding mount point matches.
    """
    target = os.path.realpath(path)
    try:
        mounts = list(table) if table is not None else mountinfo()
    except OSError:
        return "unknown"
    best, found = -1, "unknown"
    for m in mounts:
        point = m.mountpoint
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, found = len(point), m.fstype
    return found


def read_only(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (or its nearest existing ancestor) is on a read-only mount.

    Asked by drivers before a query would touch state (a lock file, a
    record), so that a store on a read-only disk still answers.  A path
    that cannot be examined at all counts as writable: the write that
    follows then reports what is wrong.
    """
    current = Path(path).absolute()
    while True:
        try:
            return bool(os.statvfs(current).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            if current.parent == current:
                return False
            current = current.parent
        except OSError:
            return False


def is_mountpoint(path: str | os.PathLike[str], table: Iterable[MountInfo] | None = None) -> bool:
    """Whether something is mounted exactly at ``path`` (absolute, symlinks resolved)."""
    target = os.path.realpath(path)
    return any(m.mountpoint == target for m in (table if table is not None else mountinfo()))


def mounts_below(
    path: str | os.PathLike[str], table: Iterable[MountInfo] | None = None
) -> list[MountInfo]:
    """Mounts at or under ``path``, deepest first (the order to unmount them in)."""
    root = os.path.realpath(path)
    prefix = root.rstrip("/") + "/"
    found = [
        m
        for m in (table if table is not None else mountinfo())
        if m.mountpoint == root or m.mountpoint.startswith(prefix)
    ]
    found.sort(key=lambda m: (m.mountpoint.count("/"), m.mount_id), reverse=True)
    return found


def unmount_below(path: str | os.PathLike[str]) -> int:
    """Detach everything mounted at or under ``path``; returns how many were detached."""
    count = 0
    for m in mounts_below(path):
        try:
            umount(m.mountpoint, MNT_DETACH)
            count += 1
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
    return count
