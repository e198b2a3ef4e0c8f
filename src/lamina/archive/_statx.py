"""Birth time of a file through Linux ``statx`` (Python 3.11 has no ``os.statx``).

Change detection needs one fact that ``lstat`` does not give: when a file
came into being.  glibc (>= 2.28) exports ``statx``; we call it through
ctypes, descriptor-relative and without following symlinks.  Anything that
cannot give a birth time (old libc, old kernel, a filesystem without
``STATX_BTIME``) answers None, and the caller falls back to the safe path.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading

__all__ = ["birth_time_ns", "statx_available"]

_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BTIME = 0x800
_STRUCT_STATX_SIZE = 256
_BTIME_OFFSET = 80  # struct statx_timestamp stx_btime: {s64 tv_sec; u32 tv_nsec; s32 pad}
_MASK = struct.Struct("=I")
_TIMESTAMP = struct.Struct("=qI")

_local = threading.local()


def _load() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.statx
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_statx = _load()


def statx_available() -> bool:
    """Whether libc has ``statx`` at all (the filesystem may still lack birth times)."""
    return _statx is not None


def _buffer() -> ctypes.Array[ctypes.c_char]:
    buf: ctypes.Array[ctypes.c_char] | None = getattr(_local, "buf", None)
    if buf is None:
        buf = ctypes.create_string_buffer(_STRUCT_STATX_SIZE)
        _local.buf = buf
    return buf


def birth_time_ns(dir_fd: int, name: str) -> int | None:
    """Birth time of ``name`` in ``dir_fd`` (not following a final symlink), or None.

    None means "unknown": no statx, the filesystem does not record birth
    times, or the call failed (the file vanished, ...).
    """
    if _statx is None:
        return None
    buf = _buffer()
    rc = _statx(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf)
    if rc != 0:
        return None
    (mask,) = _MASK.unpack_from(buf, 0)
    if not mask & _STATX_BTIME:
        return None
    sec, nsec = _TIMESTAMP.unpack_from(buf, _BTIME_OFFSET)
    return int(sec * 1_000_000_000 + nsec)
