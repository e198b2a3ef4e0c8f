"""Shared fixtures: privilege checks and real scratch filesystems.

* ``needs_root`` skips the test (with a reason) when not running as root;
* ``mount_fs(fstype, size_mb=...)`` mounts a fresh filesystem and returns its
  mount point: ``tmpfs``/``ramfs`` directly, anything else (``ext4``,
  ``xfs``, ...) as a loop-mounted image made with ``mkfs.<fstype>``.  It
  needs root and skips otherwise; everything is unmounted at teardown;
* ``xfs_pquota`` is a fresh XFS mounted with project quotas, or a skip
  saying why the kernel cannot give one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from lamina._fs._loopimage import _attach_loop
from lamina._fs._mount import is_mountpoint, mount, umount

MountFs = Callable[..., Path]


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


@pytest.fixture
def mount_fs(tmp_path: Path) -> Iterator[MountFs]:
    mounted: list[Path] = []

    def mount(fstype: str, size_mb: int = 300, mkfs_args: Sequence[str] = ()) -> Path:
        if os.geteuid() != 0:
            pytest.skip(f"mounting {fstype} needs root")
        target = tmp_path / f"mnt-{fstype}-{len(mounted)}"
        target.mkdir()
        if fstype in ("tmpfs", "ramfs"):
            opts = f"size={size_mb}m" if fstype == "tmpfs" else "mode=0755"
            cmd = ["mount", "-t", fstype, "-o", opts, fstype, str(target)]
        else:
            mkfs = shutil.which(f"mkfs.{fstype}")
            if mkfs is None:
                pytest.skip(f"mkfs.{fstype} is not installed")
            image = tmp_path / f"{fstype}-{len(mounted)}.img"
            with open(image, "wb") as f:
                f.truncate(size_mb << 20)
            quiet = ["-q"] if fstype in ("ext4", "ext3", "ext2", "xfs") else []
            _run([mkfs, *quiet, *mkfs_args, str(image)])
            cmd = ["mount", "-o", "loop", str(image), str(target)]
        try:
            _run(cmd)
        except RuntimeError as exc:
            pytest.skip(f"cannot mount {fstype} here: {exc}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def xfs_pquota(tmp_path: Path) -> Iterator[Path]:
    """A fresh XFS mounted with pquota, or a skip saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("mounting XFS needs root")
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        pytest.skip("mkfs.xfs not installed (apt-get install xfsprogs)")
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)  # mkfs.xfs refuses less than 300 MB
    subprocess.run([mkfs, "-q", "-f", str(image)], check=True)
    loop, device = _attach_loop(image)
    try:
        try:
            mount(device, mnt, "xfs", 0, "pquota")
        except OSError as exc:
            pytest.skip(
                f"cannot mount XFS with pquota ({exc.strerror}): "
                "this kernel lacks XFS quota support (CONFIG_XFS_QUOTA)"
            )
    finally:
        os.close(loop)
    try:
        yield mnt
    finally:
        while is_mountpoint(mnt):
            umount(mnt)


# -- deep test trees vs pytest's own clean-up -------------------------------------------

_PRUNE_DEPTH = 48  # directories this far below a test's tmp_path are removed at session end


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the deep parts of this session's temporary trees with lamina's own remover.

    Several tests build 1,500-deep directory chains.  pytest deletes old
    temporary roots with ``shutil.rmtree``, which recurses once per level and
    dies with ``RecursionError`` in a later session's clean-up (failing that
    session after its tests ran).  Pruning below a fixed depth keeps what a
    failed test left for inspection near its top, and leaves nothing that the
    recursive clean-up cannot take.
    """
    from lamina._tree import remove_tree
    from lamina.errors import LaminaError

    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or not os.path.isdir(basetemp):
        return
    stack: list[tuple[str, int]] = [(str(basetemp), 0)]
    while stack:
        path, depth = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if depth + 1 >= _PRUNE_DEPTH:
                # a mount left behind (InUseError): pytest reports its own trouble with it
                with contextlib.suppress(OSError, LaminaError):
                    remove_tree(entry.path)
            else:
                stack.append((entry.path, depth + 1))
