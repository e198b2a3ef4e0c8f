"""A jail for hostile layers: a layer root next to a sentinel tree that must never change.

Every hostile tar is applied into ``<base>/dest`` while ``<base>/sentinel``
holds files, a directory, a symlink and a private file with known bytes,
modes and times.  After each apply the jail checks what a breakout would
disturb:

* the sentinel tree, entry by entry (type, mode, owner, size, mtime, inode,
  symlink target, sha256 of the bytes) and ``/etc/passwd``;
* the listing of ``<base>`` and of its parent (nothing created next to the root);
* that no file under the root is a hardlink to a sentinel file or to ``/etc/passwd``;
* that the engine left no descriptor open and no decompression thread running;
* that a failure is a :class:`lamina.errors.LaminaError` — anything else propagates
  and fails the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.archive import ApplyOptions, _apply, apply_layer
from lamina.errors import LaminaError

SENTINEL_BYTES = b"sentinel: must never change\n"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _raise_fd_limit() -> None:
    """Deep trees are walked with one descriptor per level in these checks."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def walk_fd(root: str | os.PathLike[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under ``root``, iteratively and descriptor-relative.

    ``os.walk`` recurses (and 3.11's does so in Python) and absolute paths of a
    10,000-deep tree exceed PATH_MAX, so the checks walk by descriptors.
    """
    top = os.open(root, _DIR_FLAGS)
    stack: list[tuple[int, str, Iterator[str]]] = [(top, "", iter(sorted(os.listdir(top))))]
    try:
        while stack:
            fd, rel, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            path = f"{rel}/{name}" if rel else name
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except PermissionError:
                    continue
                stack.append((child, path, iter(sorted(os.listdir(child)))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a tree of any depth (``shutil.rmtree`` recurses; 10,000 levels overflow it)."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", os.fspath(path)], check=True)


def _record(path: Path) -> tuple[object, ...]:
    st = path.lstat()
    body: object = None
    if stat.S_ISREG(st.st_mode):
        body = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        body = os.readlink(path)
    return (
        stat.S_IFMT(st.st_mode),
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        st.st_nlink,
        body,
    )


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> set[str]:
    """Pids of this process's children, reaped or not (``/proc/.../children``)."""
    found: set[str] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            found.update(Path(f"/proc/self/task/{tid}/children").read_text().split())
    return found


#: one entry per apply that started helper processes (appended by the wrapper below)
_STARTED: list[int] = []


@contextlib.contextmanager
def _helpers_from_the_start(on: bool) -> Iterator[None]:
    """Helpers from the first regular file (not after 256), and a count of their starts."""
    if not on:
        yield
        return
    saved_after, saved_start = _apply.helper_after, _apply._Applier._start_writer

    def start(applier: _apply._Applier) -> None:
        saved_start(applier)
        if applier.writers:
            _STARTED.append(len(applier.writers))

    _apply.helper_after = 0
    _apply._Applier._start_writer = start  # type: ignore[method-assign]
    try:
        yield
    finally:
        _apply.helper_after = saved_after
        _apply._Applier._start_writer = saved_start  # type: ignore[method-assign]


class Jail:
    """A layer root (``dest``) beside a sentinel tree; see the module docstring."""

    def __init__(self, base: Path, *, via_file: bool = False, helpers: bool = False) -> None:
        #: hand the layer over as an open regular file (the engine then reads its
        #: descriptor directly and copies bodies with sendfile) instead of a stream
        self.via_file = via_file
        #: have helper processes create the regular files from the first one
        self.helpers = helpers
        #: applies in which helper processes were started
        self.helper_runs = 0
        self.base = base
        self.dest = base / "dest"
        self.sentinel = base / "sentinel"
        self.dest.mkdir(parents=True)
        self._make_sentinel()
        self._before = self._outside()

    def _make_sentinel(self) -> None:
        s = self.sentinel
        s.mkdir()
        (s / "hello").write_bytes(SENTINEL_BYTES)
        (s / "secret").write_bytes(b"private\n")
        (s / "secret").chmod(0o600)
        (s / "sub").mkdir(mode=0o750)
        (s / "sub" / "inner").write_bytes(b"inner\n")
        (s / "link").symlink_to("hello")
        for i, p in enumerate([s / "hello", s / "secret", s / "sub" / "inner", s / "sub", s]):
            os.utime(p, ns=(1_500_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i))
        os.utime(s / "link", ns=(1_400_000_000_000_000_000,) * 2, follow_symlinks=False)

    def _outside(self) -> dict[str, object]:
        state: dict[str, object] = {
            "base": sorted(os.listdir(self.base)),
            "parent": sorted(os.listdir(self.base.parent)),
            "/etc/passwd": _record(Path("/etc/passwd")),
        }
        for rel, _ in walk_fd(self.sentinel):
            state[rel] = _record(self.sentinel / rel)
        state["."] = _record(self.sentinel)
        return state

    def protected_inodes(self) -> set[tuple[int, int]]:
        found = {(st.st_dev, st.st_ino) for _, st in walk_fd(self.sentinel)}
        pw = os.stat("/etc/passwd")
        found.add((pw.st_dev, pw.st_ino))
        return found

    def check(self) -> None:
        """Assert that nothing outside ``dest`` changed and no host file is linked inside."""
        assert self._outside() == self._before, "something outside the layer root changed"
        protected = self.protected_inodes()
        for rel, st in walk_fd(self.dest):
            if not stat.S_ISDIR(st.st_mode):
                assert (st.st_dev, st.st_ino) not in protected, f"{rel} is a host file"

    def apply(self, raw: bytes, **opts: Any) -> int | LaminaError:
        """Apply ``raw``; the size on success, the typed error on failure; then check."""
        fds, threads, children = _open_fds(), threading.active_count(), _children()
        result: int | LaminaError
        started = len(_STARTED)
        try:
            with _helpers_from_the_start(self.helpers):
                if self.via_file:
                    with tempfile.TemporaryFile() as tmp:
                        tmp.write(raw)
                        tmp.flush()
                        with open(f"/proc/self/fd/{tmp.fileno()}", "rb") as src:
                            result = apply_layer(src, self.dest, ApplyOptions(**opts))
                else:
                    result = apply_layer(io.BytesIO(raw), self.dest, ApplyOptions(**opts))
        except LaminaError as exc:
            result = exc
        self.helper_runs += len(_STARTED) > started
        leaked = _open_fds() - fds
        assert not leaked, f"descriptors left open: {leaked}"
        assert threading.active_count() == threads, "a decompression thread is still running"
        assert _children() == children, "a helper process outlived the apply"
        self.check()
        return result

    def discard(self) -> None:
        """Delete the whole jail (the sentinel too); it cannot be used afterwards."""
        remove_tree(self.base)

    def reset(self) -> None:
        """An empty layer root again (for tests that apply many layers)."""
        remove_tree(self.dest)
        self.dest.mkdir()


@contextlib.contextmanager
def loop_ext4(base: Path, size: int, *, inodes: int | None = None) -> Iterator[Path]:
    """A fresh ext4 of ``size`` bytes on a loop device, mounted below ``base`` (root only).

    Skips the calling test without root or mkfs.ext4.  Removing deep trees on
    the root filesystem of these machines (ext4 without a journal) is very
    slow, and a full filesystem must not be the one everybody shares.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a loop filesystem")
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    if mkfs is None:
        pytest.skip("mkfs.ext4 (package e2fsprogs) is not installed")
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir(parents=True)
    with open(image, "wb") as f:
        f.truncate(size)
    cmd = [
        mkfs,
        "-q",
        "-F",
        "-E",
        "nodiscard",
        *(["-N", str(inodes)] if inodes else []),
        str(image),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        image.unlink()
        pytest.skip(f"cannot mount a loop filesystem: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        image.unlink()


@pytest.fixture(scope="session")
def scratch_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide 1 GiB (sparse) loop ext4 for trees too deep for the root filesystem."""
    with loop_ext4(tmp_path_factory.mktemp("scratch"), 1 << 30) as mnt:
        yield mnt


@pytest.fixture
def fresh_fs(tmp_path: Path) -> Callable[..., contextlib.AbstractContextManager[Path]]:
    """``fresh_fs(size, inodes=None)``: a context manager giving a new small loop ext4."""

    def make(size: int, *, inodes: int | None = None) -> contextlib.AbstractContextManager[Path]:
        return loop_ext4(Path(tempfile.mkdtemp(dir=tmp_path)), size, inodes=inodes)

    return make


@pytest.fixture(scope="session", autouse=True)
def _fd_limit() -> None:
    _raise_fd_limit()


@pytest.fixture(params=["stream", "file", "file+helpers", "stream+helpers"])
def jail(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Jail]:
    mode = request.param
    j = Jail(tmp_path / "jail", via_file=mode.startswith("file"), helpers=mode.endswith("helpers"))
    yield j
    remove_tree(j.base)


@pytest.fixture(scope="session")
def jail_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Jail]]:
    """Fresh jails for hypothesis examples (function fixtures are not reset per example)."""
    made: list[Jail] = []

    def make() -> Jail:
        # examples take turns: a stream or a file, without or with helper processes
        turn = len(made) % 4
        j = Jail(tmp_path_factory.mktemp("jail") / "j", via_file=turn % 2 == 1, helpers=turn >= 2)
        made.append(j)
        return j

    yield make
    for j in made:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            remove_tree(j.base)


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory an unprivileged child process can reach (pytest's tmp is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="lamina-sec-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    remove_tree(base)


@pytest.fixture
def jail_at() -> Callable[[Path], Jail]:
    """Make a jail at a given base (for jails an unprivileged child must reach)."""
    return Jail
