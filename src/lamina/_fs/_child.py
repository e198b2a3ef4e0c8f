"""Child processes that cannot outlive the process that started them.

A driver that is killed (``kill -9``) while ``mkfs.ext4``, ``e2fsck`` or
``resize2fs`` works on one of its images must not leave the tool running:
an orphaned ``resize2fs`` can still be rewriting an image that the next
``cleanup`` or ``get`` mounts again.  Every tool a driver starts therefore
asks the kernel for ``SIGKILL`` when its parent goes
(``PR_SET_PDEATHSIG``), and exits at once if the parent already went
between the fork and the request.  The kernel's "parent" is the *thread*
that forked: :func:`run_tool` waits for the tool in that same thread.

The windowsfilter import helper calls :func:`die_with_parent` itself, first
thing after its exec; tools that are not ours get it from :func:`run_tool`
before their exec.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

__all__ = ["die_with_parent", "run_tool", "tool_path"]

_PR_SET_PDEATHSIG = 1
_SIGKILL = 9  # Linux's number; these helpers exist on Linux only

_libc: Any = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
_prctl = _libc.prctl  # looked up here: a forked child should do as little as it can


def die_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this process when its parent ends; exit now if it already has."""
    if _prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)  # orphaned before the request: nobody waits for our answer


def tool_path(name: str) -> str | None:
    """Where a system tool is (root's tools are often outside a non-root ``PATH``)."""
    import shutil  # cold path: only image creation and growth run tools

    return shutil.which(name) or shutil.which(name, path="/sbin:/usr/sbin")


def run_tool(argv: list[str], *, ok: tuple[int, ...] = (0,)) -> str:
    """Run a tool to completion, killed with this process; returns its output.

    An exit status outside ``ok`` is an OSError (EIO) quoting the tool's
    own message.
    """
    import subprocess  # cold path, as above

    parent = os.getpid()
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: die_with_parent(parent),
    )
    if proc.returncode not in ok:
        said = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise OSError(errno.EIO, f"{os.path.basename(argv[0])} failed ({proc.returncode}): {said}")
    return proc.stdout
