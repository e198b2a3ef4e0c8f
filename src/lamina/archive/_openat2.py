"""``openat2(2)`` through ctypes: resolve a relative path beneath a directory in one call.

The kernel walks ``path`` from ``dir_fd`` with ``RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``: any ``..`` that would leave
``dir_fd``, any symlink and any ``/proc`` magic link anywhere in the path
fails the call instead of being followed.  That is exactly the rule the
apply engine enforces with its per-component ``O_NOFOLLOW`` walk, done in
one system call instead of one per component (plus the Python around them).

Linux >= 5.6 only; :data:`AVAILABLE` is False elsewhere (other OS, other
libc, a kernel or seccomp filter that rejects the call), and callers fall
back to the per-component walk.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["AVAILABLE", "open_dir_beneath"]

_SYS_OPENAT2 = 437  # the same number on every architecture that has the generic table
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_HOW = _OpenHow(_DIR_FLAGS, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
_HOW_SIZE = ctypes.sizeof(_HOW)


def _load() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
        func = libc.syscall
    except (OSError, AttributeError):
        return None
    func.restype = ctypes.c_long
    func.argtypes = (
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.POINTER(_OpenHow),
        ctypes.c_size_t,
    )
    return func


_syscall = _load()


def _raw_open(dir_fd: int, path: bytes) -> int:
    assert _syscall is not None
    fd = int(_syscall(_SYS_OPENAT2, dir_fd, path, ctypes.byref(_HOW), _HOW_SIZE))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return fd


def _probe() -> bool:
    """Whether the call works here (kernel >= 5.6, not refused by a seccomp filter)."""
    if _syscall is None:
        return False
    root = os.open("/", _DIR_FLAGS)
    try:
        os.close(_raw_open(root, b"."))
    except OSError:
        return False
    finally:
        os.close(root)
    return True


#: True when ``openat2`` with the resolve flags above works on this machine.
AVAILABLE: bool = _probe()


def open_dir_beneath(dir_fd: int, path: str) -> int:
    """A read-only descriptor of directory ``path`` beneath ``dir_fd``, never crossing a symlink.

    Raises ``OSError``: ``ELOOP`` for a symlink in the path, ``ENOTDIR`` for
    a non-directory, ``EXDEV`` for an escape, ``ENOENT`` for a missing
    component, ``EAGAIN`` when a concurrent rename made the kernel give up.
    """
    return _raw_open(dir_fd, os.fsencode(path))
