"""Keeping the import helper process on a short leash (Linux).

The helper writes an untrusted tar into a staging folder.  Two things must
hold whatever happens to the driver's process:

* **it dies with its parent.**  ``cleanup`` sweeps the staging folders of
  dead processes; a helper that outlived a ``kill -9`` of the driver would
  go on writing into a folder being swept (or into one that a new import
  reuses).  :func:`die_with_parent` asks the kernel for SIGKILL when the
  parent goes (``PR_SET_PDEATHSIG``) and exits at once if the parent is
  already gone (the request only covers a parent alive when it is made).
  The kernel sends the signal when the *thread* that forked the helper
  ends, so the driver starts it from the thread that waits for it;
* **it can only write into the staging folder.**  :func:`confine` changes
  root to it: directly as root, else inside a new user and mount namespace
  in which the caller's uid is root (unprivileged user namespaces; where
  the kernel forbids them, e.g. ``kernel.unprivileged_userns_clone=0`` or
  an AppArmor restriction, the helper runs unconfined and says so).  Then
  every capability is dropped and ``no_new_privs`` set, so the helper
  cannot ``chroot`` its way out again, mount, make devices or regain
  privileges.  The parent layers it may hard-link from are opened before
  and stay reachable through those descriptors only: this guards against
  path-handling bugs in the writer, not against code execution in it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from typing import Any

from lamina._fs import die_with_parent

__all__ = ["PARENT_PID_ENV", "confine", "die_with_parent", "drop_capabilities"]

#: The driver's pid, handed to the helper so it can tell whether it was orphaned early.
PARENT_PID_ENV = "LAMINA_WINDOWSFILTER_PARENT_PID"

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc: Any = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def drop_capabilities() -> None:
    """Clear every capability set and forbid gaining privileges by exec."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_user_namespace() -> str:
    """Become root of a fresh user (and mount) namespace; "" or why not."""
    uid, gid = os.geteuid(), os.getegid()
    # A process that changed its uid is not "dumpable", which makes its
    # /proc/self files root's: it could not write its own uid_map.
    if _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_DUMPABLE)")
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        return f"unprivileged user namespaces are not available here ({os.strerror(err)})"
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    return ""


def confine(root: str) -> str:
    """Make ``root`` this process's ``/`` and drop privileges; returns what was done.

    Libraries that load lazily (the hash functions) are loaded first,
    since nothing outside ``root`` can be found afterwards.
    """
    hashlib.sha256(b"load the hash functions before the root changes").digest()
    how = "chroot"
    if os.geteuid() != 0:
        why_not = _enter_user_namespace()
        if why_not:
            return f"none: {why_not}"
        how = "user namespace, chroot"
    os.chroot(root)
    os.chdir("/")
    drop_capabilities()
    return f"{how}, no capabilities"
