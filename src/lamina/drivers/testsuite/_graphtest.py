"""Docker's graph-driver conformance suite (``graphtest``), for any lamina driver.

Every test and benchmark of Docker's ``daemon/graphdriver/graphtest`` is
here, with its helpers, so that a driver's test file is two lines::

    from lamina.drivers.testsuite import make_conformance_tests

    globals().update(make_conformance_tests("vfs", deep_layers=(128,)))

The generated functions are pytest tests (they take pytest's ``tmp_path``)
but the module needs pytest only when it is there: a skip is pytest's own
when pytest is installed, else a :class:`unittest.SkipTest` (which pytest
and unittest both honour), so the library has no test-only dependency.
Each test starts a fresh driver in its own root, calls ``cleanup`` at the
end, checks that cleanup left no mount behind and deletes the root
(Docker's ``GetDriver``/``PutDriver``).

Differences from Docker, on purpose:

* tests that need root (``lchown 1:2``, device nodes, mounts) skip with a
  reason when not root, instead of failing; a driver whose start-up raises
  :class:`~lamina.errors.NotSupportedError` skips with
  ``driver X not supported: <reason>``;
* ``CreateEmpty`` expects the layer root to be owned by the caller's
  effective uid/gid (0:0 when root, as Docker checks), so it also runs
  unprivileged;
* ``Changes`` runs for every driver (Docker disables it because its
  metadata-only change detection misses same-size rewrites within one
  timestamp tick; ours must not), and ``DiffApply`` runs on naive drivers
  too (the sizes agree: both are the sum of the regular files' sizes);
* the content generator is SHAKE-256 of the seed rather than Go's
  ``math/rand``: the suite only ever compares the generator with itself.

Benchmarks are plain functions taking a source of fresh drivers and an
iteration count and returning per-iteration timings of the region Docker
times; ``bench/graphbench.py`` runs them on a fresh filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import secrets
import stat
import tempfile
import time
import unittest
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lamina._change import Change, ChangeKind
from lamina._fs import remove_tree
from lamina.drivers import new_driver
from lamina.drivers._base import Driver
from lamina.errors import NotSupportedError, QuotaExceededError, QuotaNotSupportedError

__all__ = [
    "STANDARD_BENCHMARKS",
    "BenchResult",
    "Benchmark",
    "DriverMaker",
    "DriverSource",
    "add_directory",
    "add_file",
    "add_files",
    "add_layer_files",
    "add_many_files",
    "add_many_layers",
    "bench_deep_layer_diff",
    "bench_deep_layer_read",
    "bench_diff_apply_n",
    "bench_diff_base",
    "bench_diff_n",
    "bench_exists",
    "bench_get_empty",
    "change_many_files",
    "check_changes",
    "check_file",
    "check_file_removed",
    "check_many_files",
    "check_many_layers",
    "create_base",
    "driver_session",
    "driver_source",
    "make_conformance_tests",
    "mounts_under",
    "random_content",
    "random_id",
    "read_dir",
    "remove_all",
    "run_changes",
    "run_create_base",
    "run_create_empty",
    "run_create_snap",
    "run_deep_layer_read",
    "run_diff_apply",
    "run_set_quota",
    "verify_base",
    "verify_file",
]

#: Builds a driver whose home is under the given root (default: ``new_driver(name, root)``).
DriverMaker = Callable[[Path], Driver]
#: Each call gives a context manager holding a fresh driver in a fresh root.
DriverSource = Callable[[], contextlib.AbstractContextManager[Driver]]

_FILE_MODE = 0o755


def skip(reason: str) -> BaseException:
    """pytest's own skip when pytest runs us (its report names our line), else unittest's."""
    try:
        import pytest
    except ImportError:
        return unittest.SkipTest(reason)
    return pytest.skip.Exception(reason)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise skip(f"needs root ({what})")


# -- helpers (Docker's testutil.go / testutil_unix.go) --------------------------


def random_content(size: int, seed: int) -> bytes:
    """``size`` bytes that depend only on (size, seed); different seeds differ."""
    return hashlib.shake_256(b"lamina-graphtest-%d" % seed).digest(size)


def random_id() -> str:
    """64 hex digits whose 12-character short form is never all digits (like Docker)."""
    while True:
        candidate = secrets.token_hex(32)
        if not candidate[:12].isdigit():
            return candidate


def _write(path: Path, content: bytes, mode: int = _FILE_MODE) -> None:
    """Go's ``os.WriteFile``: create with ``mode`` (umask applies) or truncate."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def add_file(driver: Driver, layer: str, name: str, content: bytes) -> None:
    """Write ``name`` in the layer (mode 0755)."""
    with driver.mounted(layer) as root:
        _write(root / name, content)


def add_files(driver: Driver, layer: str, seed: int) -> None:
    """``file-a`` (64 B), ``dir-b/file-b`` (128 B), ``file-c`` (16 KiB)."""
    with driver.mounted(layer) as root:
        _write(root / "file-a", random_content(64, seed))
        os.makedirs(root / "dir-b", 0o755, exist_ok=True)
        _write(root / "dir-b" / "file-b", random_content(128, seed + 1))
        _write(root / "file-c", random_content(128 * 128, seed + 2))


def check_file(driver: Driver, layer: str, name: str, content: bytes) -> None:
    """The file's bytes must be exactly ``content``."""
    with driver.mounted(layer) as root:
        data = (root / name).read_bytes()
    if data != content:
        raise AssertionError(f"{layer}:{name}: mismatched file content")


def add_directory(driver: Driver, layer: str, directory: str) -> None:
    """``mkdir -p`` (0755) in the layer."""
    with driver.mounted(layer) as root:
        os.makedirs(root / directory, 0o755, exist_ok=True)


def remove_all(driver: Driver, layer: str, *names: str) -> None:
    """``rm -rf`` each name in the layer."""
    with driver.mounted(layer) as root:
        for name in names:
            remove_tree(root / name)


def check_file_removed(driver: Driver, layer: str, name: str) -> None:
    """``stat`` of ``name`` must fail with ENOENT."""
    with driver.mounted(layer) as root:
        try:
            os.stat(root / name)
        except FileNotFoundError:
            return
    raise AssertionError(f"{layer}:{name}: file still exists")


def _many_files(count: int) -> Iterator[tuple[int, int]]:
    for i in range(0, count, 100):
        for j in range(min(100, count - i)):
            yield i, j


def add_many_files(driver: Driver, layer: str, count: int, seed: int) -> None:
    """``directory-<i>/file-<i+j>``, 100 files per directory, 64 B each."""
    with driver.mounted(layer) as root:
        for i, j in _many_files(count):
            directory = root / f"directory-{i}"
            if j == 0:
                os.makedirs(directory, 0o755, exist_ok=True)
            _write(directory / f"file-{i + j}", random_content(64, seed + i + j))


def check_many_files(driver: Driver, layer: str, count: int, seed: int) -> None:
    """Every file of :func:`add_many_files` must hold its content for ``seed``."""
    with driver.mounted(layer) as root:
        for i, j in _many_files(count):
            name = f"directory-{i}/file-{i + j}"
            if (root / name).read_bytes() != random_content(64, seed + i + j):
                raise AssertionError(f"{layer}:{name}: mismatched file content")


def change_many_files(driver: Driver, layer: str, count: int, seed: int) -> list[Change]:
    """Modify every third file, add one, delete one; return the expected changes."""
    expected: list[Change] = []
    with driver.mounted(layer) as root:
        for i, j in _many_files(count):
            archive_root = f"/directory-{i}"
            directory = root / archive_root[1:]
            if j == 0:
                os.makedirs(directory, 0o755, exist_ok=True)
                expected.append(Change(archive_root, ChangeKind.MODIFY))
            content = random_content(64, seed + i + j)
            if j % 3 == 0:
                name = f"file-{i + j}"
                _write(directory / name, content)
                expected.append(Change(f"{archive_root}/{name}", ChangeKind.MODIFY))
            elif j % 3 == 1:
                name = f"file-{seed}-{i + j}"
                _write(directory / name, content)
                expected.append(Change(f"{archive_root}/{name}", ChangeKind.ADD))
            else:
                name = f"file-{i + j}"
                os.remove(directory / name)
                expected.append(Change(f"{archive_root}/{name}", ChangeKind.DELETE))
    return expected


def check_changes(expected: Sequence[Change], actual: Sequence[Change]) -> None:
    """Same changes, compared after sorting by (path, kind) like Docker."""
    if len(expected) != len(actual):
        raise AssertionError(
            f"unexpected number of changes, expected {len(expected)}, got {len(actual)}: "
            f"missing {sorted(set(expected) - set(actual))}, "
            f"unexpected {sorted(set(actual) - set(expected))}"
        )
    for want, got in zip(sorted(expected), sorted(actual), strict=True):
        if want != got:
            raise AssertionError(f"unexpected change: expected {want}, got {got}")


def add_layer_files(driver: Driver, layer: str, parent: str, i: int) -> None:
    """``top-id`` plus the private ``layer-<i>/{layer-id,parent-id}``."""
    with driver.mounted(layer) as root:
        _write(root / "top-id", layer.encode())
        os.makedirs(root / f"layer-{i}", 0o755, exist_ok=True)
        _write(root / f"layer-{i}" / "layer-id", layer.encode())
        _write(root / f"layer-{i}" / "parent-id", parent.encode())


def add_many_layers(driver: Driver, base: str, count: int) -> str:
    """Stack ``count`` layers on ``base``, each marking itself; returns the top id."""
    last = base
    for i in range(1, count + 1):
        nxt = random_id()
        driver.create(nxt, last)
        add_layer_files(driver, nxt, last, i)
        last = nxt
    return last


def check_many_layers(driver: Driver, top: str, count: int) -> None:
    """Every layer's private files are visible from the top and chain correctly."""
    with driver.mounted(top) as root:
        expected = (root / "top-id").read_bytes()
        if expected != top.encode():
            raise AssertionError(f"top-id is {expected!r}, expected {top!r}")
        for i in range(count, 0, -1):
            got = (root / f"layer-{i}" / "layer-id").read_bytes()
            if got != expected:
                raise AssertionError(f"layer-{i}/layer-id is {got!r}, expected {expected!r}")
            expected = (root / f"layer-{i}" / "parent-id").read_bytes()


def read_dir(path: Path) -> list[str]:
    """Directory entries, without ``lost+found``."""
    return sorted(name for name in os.listdir(path) if name != "lost+found")


def verify_file(path: Path, mode: int, uid: int, gid: int) -> None:
    """``stat`` (following symlinks) must show this type, permissions and owner."""
    st = os.stat(path)
    checks = (
        ("file type", stat.S_IFMT(st.st_mode), stat.S_IFMT(mode)),
        ("permissions", st.st_mode & 0o777, mode & 0o777),
        ("sticky bit", st.st_mode & stat.S_ISVTX, mode & stat.S_ISVTX),
        ("setuid bit", st.st_mode & stat.S_ISUID, mode & stat.S_ISUID),
        ("setgid bit", st.st_mode & stat.S_ISGID, mode & stat.S_ISGID),
        ("uid", st.st_uid, uid),
        ("gid", st.st_gid, gid),
    )
    for what, got, want in checks:
        if got != want:
            raise AssertionError(f"{path}: {what} is {got:#o}, expected {want:#o}")


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def create_base(driver: Driver, name: str) -> None:
    """A read-write layer with ``a subdir`` (01705, 1:2) and ``a file`` (04222)."""
    with _umask(0):
        driver.create_read_write(name, None)
        with driver.mounted(name) as root:
            subdir = root / "a subdir"
            os.mkdir(subdir, 0o705 | stat.S_ISVTX)
            os.lchown(subdir, 1, 2)
            _write(root / "a file", b"Some data", 0o222 | stat.S_ISUID)


def verify_base(driver: Driver, name: str) -> None:
    """The layer shows exactly :func:`create_base`'s two entries, modes and owners."""
    with driver.mounted(name) as root:
        verify_file(root / "a subdir", stat.S_IFDIR | 0o705 | stat.S_ISVTX, 1, 2)
        verify_file(root / "a file", stat.S_IFREG | 0o222 | stat.S_ISUID, 0, 0)
        entries = read_dir(root)
        if len(entries) != 2:
            raise AssertionError(f"expected 2 entries in the layer, got {entries}")


# -- driver sessions (Docker's GetDriver / PutDriver) ----------------------------


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (the mount table decoded once, in ``_fs``)."""
    from lamina._fs import mounts_below

    try:
        return [m.mountpoint for m in mounts_below(root)]
    except OSError:
        return []


@contextlib.contextmanager
def driver_session(
    name: str,
    root: Path,
    options: Mapping[str, str] | None = None,
    maker: DriverMaker | None = None,
) -> Iterator[Driver]:
    """A fresh driver under ``root``; on exit ``cleanup``, no mount left, ``root`` deleted.

    A :class:`~lamina.errors.NotSupportedError` at start-up becomes a skip.
    """
    os.makedirs(root, 0o755, exist_ok=True)
    try:
        driver = maker(root) if maker else new_driver(name, root, options or {})
    except NotSupportedError as exc:
        remove_tree(root)
        raise skip(f"driver {name} not supported: {exc}") from exc
    try:
        yield driver
    finally:
        driver.cleanup()
        leaked = mounts_under(root)
        if leaked:
            raise AssertionError(f"cleanup of {name} left mounts behind: {leaked}")
        remove_tree(root)


def driver_source(
    name: str,
    base_dir: Path | None = None,
    options: Mapping[str, str] | None = None,
    maker: DriverMaker | None = None,
) -> DriverSource:
    """Fresh drivers in fresh roots under ``base_dir``, for the benchmarks."""

    def source() -> contextlib.AbstractContextManager[Driver]:
        root = Path(tempfile.mkdtemp(prefix=f"lamina-graphbench-{name}-", dir=base_dir))
        return driver_session(name, root, options, maker)

    return source


# -- tests (Docker's graphtest_unix.go) ---------------------------------------------


def run_create_empty(driver: Driver) -> None:
    """An empty layer exists, is a caller-owned 0755 directory with no entries."""
    driver.create("empty", None)
    if not driver.exists("empty"):
        raise AssertionError("newly created image doesn't exist")
    with driver.mounted("empty") as root:
        verify_file(root, stat.S_IFDIR | 0o755, os.geteuid(), os.getegid())
        entries = read_dir(root)
        if entries:
            raise AssertionError(f"new layer is not empty: {entries}")
    driver.remove("empty")
    if driver.exists("empty"):
        raise AssertionError("removed layer still exists")


def run_create_base(driver: Driver) -> None:
    """Special modes and owners written into a layer read back unchanged."""
    require_root("lchown 1:2")
    create_base(driver, "Base")
    verify_base(driver, "Base")
    driver.remove("Base")


def run_create_snap(driver: Driver) -> None:
    """A child shows its parent's entries with identical modes and owners."""
    require_root("lchown 1:2")
    create_base(driver, "Base")
    driver.create("Snap", "Base")
    verify_base(driver, "Snap")
    driver.remove("Snap")
    driver.remove("Base")


def run_deep_layer_read(driver: Driver, layer_count: int) -> None:
    """``layer_count`` stacked layers all show through the top one."""
    base = random_id()
    driver.create(base, None)
    content = b"test content"
    add_file(driver, base, "testfile.txt", content)
    top = add_many_layers(driver, base, layer_count)
    check_many_layers(driver, top, layer_count)
    check_file(driver, top, "testfile.txt", content)


def _read_all(stream: BinaryIO) -> bytes:
    buf = io.BytesIO()
    while chunk := stream.read(1 << 20):
        buf.write(chunk)
    return buf.getvalue()


def run_diff_apply(driver: Driver, file_count: int) -> None:
    """``apply_diff(diff(upper, base))`` onto a copy of base reproduces upper."""
    base, upper = random_id(), random_id()
    delete_file = "file-remove.txt"
    delete_content = b"This file should get removed in upper!"
    delete_dir = "var/lib"

    driver.create(base, None)
    add_many_files(driver, base, file_count, 3)
    add_file(driver, base, delete_file, delete_content)
    add_directory(driver, base, delete_dir)

    driver.create(upper, base)
    add_many_files(driver, upper, file_count, 6)
    remove_all(driver, upper, delete_file, delete_dir)

    diff_size = driver.diff_size(upper, None)

    diff = random_id()
    driver.create(diff, base)
    check_many_files(driver, diff, file_count, 3)
    check_file(driver, diff, delete_file, delete_content)

    with driver.diff(upper, base) as arch:
        data = _read_all(arch)
    apply_size = driver.apply_diff(diff, base, io.BytesIO(data))
    if apply_size != diff_size:
        raise AssertionError(f"apply diff size different, got {apply_size}, expected {diff_size}")

    check_many_files(driver, diff, file_count, 6)
    check_file_removed(driver, diff, delete_file)
    check_file_removed(driver, diff, delete_dir)


def run_changes(driver: Driver) -> None:
    """Modified, added and deleted files in a child are reported exactly."""
    base, upper = random_id(), random_id()
    driver.create(base, None)
    add_many_files(driver, base, 20, 3)
    driver.create(upper, base)
    expected = change_many_files(driver, upper, 20, 6)
    check_changes(expected, driver.changes(upper, base))


_MIB = 1 << 20


def _write_random_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o700)
    try:
        written = 0
        while written < size:
            written += os.write(fd, os.urandom(min(_MIB, size - written)))
        os.fsync(fd)  # delayed allocation may report the quota only here
    finally:
        os.close(fd)


def run_set_quota(driver: Driver, name: str, required: bool) -> None:
    """A 50M ``size`` lets 25 MiB in and stops 50 MiB with EDQUOT or ENOSPC."""
    require_root("lchown 1:2")
    create_base(driver, "Base")
    layer = f"{name}Test"
    try:
        driver.create_read_write(layer, "Base", storage_opt={"size": "50M"})
    except QuotaNotSupportedError as exc:
        if required:
            raise AssertionError(f"quota required but not supported: {exc}") from exc
        raise skip(f"driver {name}: quota not supported: {exc}") from exc
    with driver.mounted(layer) as root:
        _write_random_file(root / "smallfile", 25 * _MIB)
        try:
            _write_random_file(root / "bigfile", 50 * _MIB)
        except QuotaExceededError:
            return
        except OSError as exc:
            if exc.errno in (errno.EDQUOT, errno.ENOSPC):
                return
            raise AssertionError(f"expected EDQUOT or ENOSPC, got {exc!r}") from exc
    raise AssertionError("a 50 MiB write into a 50M layer succeeded")


# -- benchmarks (Docker's graphbench_unix.go) -----------------------------------------


@dataclass
class BenchResult:
    """Per-iteration seconds of the region Docker times."""

    name: str
    iterations: int
    seconds: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.seconds)

    @property
    def median(self) -> float:
        ordered = sorted(self.seconds)
        if not ordered:
            return 0.0
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _drain(stream: BinaryIO) -> None:
    while stream.read(1 << 20):
        pass


def bench_exists(source: DriverSource, iterations: int) -> BenchResult:
    """``exists`` of one layer."""
    result = BenchResult("Exists", iterations)
    clock = time.perf_counter
    with source() as driver:
        base = random_id()
        driver.create(base, None)
        for _ in range(iterations):
            t0 = clock()
            found = driver.exists(base)
            result.seconds.append(clock() - t0)
            if not found:
                raise AssertionError("newly created image doesn't exist")
    return result


def bench_get_empty(source: DriverSource, iterations: int) -> BenchResult:
    """``get`` of an empty layer (``put`` untimed)."""
    result = BenchResult("GetEmpty", iterations)
    clock = time.perf_counter
    with source() as driver:
        base = random_id()
        driver.create(base, None)
        for _ in range(iterations):
            t0 = clock()
            driver.get(base)
            result.seconds.append(clock() - t0)
            driver.put(base)
    return result


def bench_diff_base(source: DriverSource, iterations: int) -> BenchResult:
    """Full tar of a three-file layer."""
    result = BenchResult("DiffBase", iterations)
    clock = time.perf_counter
    with source() as driver:
        base = random_id()
        driver.create(base, None)
        add_files(driver, base, 3)
        for _ in range(iterations):
            t0 = clock()
            with driver.diff(base, None) as arch:
                _drain(arch)
            result.seconds.append(clock() - t0)
    return result


def bench_diff_n(source: DriverSource, iterations: int, bottom: int, top: int) -> BenchResult:
    """Full tar of an upper layer (``top`` files) over a lower one (``bottom`` files)."""
    result = BenchResult(f"DiffN({bottom},{top})", iterations)
    clock = time.perf_counter
    with source() as driver:
        base, upper = random_id(), random_id()
        driver.create(base, None)
        add_many_files(driver, base, bottom, 3)
        driver.create(upper, base)
        add_many_files(driver, upper, top, 6)
        for _ in range(iterations):
            t0 = clock()
            with driver.diff(upper, None) as arch:
                _drain(arch)
            result.seconds.append(clock() - t0)
    return result


def bench_diff_apply_n(source: DriverSource, iterations: int, file_count: int) -> BenchResult:
    """``diff`` of an upper layer streamed into ``apply_diff`` on a fresh copy of its base."""
    result = BenchResult(f"DiffApply({file_count})", iterations)
    clock = time.perf_counter
    with source() as driver:
        base, upper = random_id(), random_id()
        driver.create(base, None)
        add_many_files(driver, base, file_count, 3)
        driver.create(upper, base)
        add_many_files(driver, upper, file_count, 6)
        driver.diff_size(upper, None)
        for _ in range(iterations):
            diff = random_id()
            driver.create(diff, base)
            check_many_files(driver, diff, file_count, 3)
            t0 = clock()
            arch = driver.diff(upper, None)
            try:
                driver.apply_diff(diff, None, arch)
                result.seconds.append(clock() - t0)
            finally:
                arch.close()
            check_many_files(driver, diff, file_count, 6)
    return result


def bench_deep_layer_diff(source: DriverSource, iterations: int, layer_count: int) -> BenchResult:
    """Full tar of the top of a ``layer_count``-deep chain."""
    result = BenchResult(f"DeepLayerDiff({layer_count})", iterations)
    clock = time.perf_counter
    with source() as driver:
        base = random_id()
        driver.create(base, None)
        add_files(driver, base, 50)
        top = add_many_layers(driver, base, layer_count)
        for _ in range(iterations):
            t0 = clock()
            with driver.diff(top, None) as arch:
                _drain(arch)
            result.seconds.append(clock() - t0)
    return result


def bench_deep_layer_read(source: DriverSource, iterations: int, layer_count: int) -> BenchResult:
    """Reading a bottom-layer file through a ``layer_count``-deep chain."""
    result = BenchResult(f"DeepLayerRead({layer_count})", iterations)
    clock = time.perf_counter
    content = b"test content"
    with source() as driver:
        base = random_id()
        driver.create(base, None)
        add_file(driver, base, "testfile.txt", content)
        top = add_many_layers(driver, base, layer_count)
        with driver.mounted(top) as root:
            path = root / "testfile.txt"
            for _ in range(iterations):
                t0 = clock()
                data = path.read_bytes()
                result.seconds.append(clock() - t0)
                if data != content:
                    raise AssertionError("mismatched file content")
    return result


@dataclass(frozen=True)
class Benchmark:
    """One of Docker's named benchmark runs: a function, its arguments, default iterations."""

    name: str
    function: Callable[..., BenchResult]
    kwargs: Mapping[str, int]
    iterations: int
    smoke_kwargs: Mapping[str, int]

    def run(self, source: DriverSource, iterations: int | None = None) -> BenchResult:
        result = self.function(source, iterations or self.iterations, **self.kwargs)
        result.name = self.name
        return result

    def smoke(self, source: DriverSource) -> BenchResult:
        """One iteration at a tiny size: does it work at all."""
        return self.function(source, 1, **self.smoke_kwargs)


#: The benchmarks Docker's overlay2 test file runs, with its names and sizes.
STANDARD_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("Exists", bench_exists, {}, 20000, {}),
    Benchmark("GetEmpty", bench_get_empty, {}, 20000, {}),
    Benchmark("DiffBase", bench_diff_base, {}, 200, {}),
    Benchmark(
        "DiffSmallUpper", bench_diff_n, {"bottom": 10, "top": 10}, 200, {"bottom": 3, "top": 3}
    ),
    Benchmark(
        "Diff10KFileUpper", bench_diff_n, {"bottom": 10, "top": 10000}, 5, {"bottom": 3, "top": 5}
    ),
    Benchmark(
        "Diff10KFilesBottom", bench_diff_n, {"bottom": 10000, "top": 10}, 5, {"bottom": 5, "top": 3}
    ),
    Benchmark("DiffApply100", bench_diff_apply_n, {"file_count": 100}, 20, {"file_count": 3}),
    Benchmark("Diff20Layers", bench_deep_layer_diff, {"layer_count": 20}, 50, {"layer_count": 3}),
    Benchmark(
        "Read20Layers", bench_deep_layer_read, {"layer_count": 20}, 20000, {"layer_count": 3}
    ),
)


# -- pytest glue ---------------------------------------------------------------------


TestFunction = Callable[[Path], None]


class TestTable:
    """The test functions a suite generates for one driver, with its exclusions.

    An excluded test stays in the table and skips with its reason, so a
    report shows what does not apply to the driver and why; an exclusion that
    names no test is an error (a renamed test must not silently run again).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, driver_name: str, exclude: Mapping[str, str] | None) -> None:
        self.driver_name = driver_name
        self.excluded = dict(exclude or {})
        self.tests: dict[str, TestFunction] = {}

    def add(self, test_name: str, body: Callable[[Path], None], doc: str | None) -> None:
        """Add ``body`` as the pytest test ``test_name``."""
        reason = self.excluded.pop(test_name, None)
        driver_name = self.driver_name

        def test(tmp_path: Path) -> None:
            if reason is not None:
                raise skip(f"not for driver {driver_name}: {reason}")
            body(tmp_path)

        test.__name__ = test.__qualname__ = test_name
        test.__doc__ = doc
        self.tests[test_name] = test

    def finish(self) -> dict[str, TestFunction]:
        """The tests, for ``globals().update(...)``."""
        if self.excluded:
            raise ValueError(f"exclude names unknown tests: {sorted(self.excluded)}")
        return self.tests


def _deep_layer_read_n(count: int, driver: Driver) -> None:
    run_deep_layer_read(driver, count)


def _diff_apply_n(count: int, driver: Driver) -> None:
    run_diff_apply(driver, count)


def make_conformance_tests(
    name: str,
    *,
    options: Mapping[str, str] | None = None,
    maker: DriverMaker | None = None,
    deep_layers: Sequence[int] = (128,),
    diff_apply: Sequence[int] = (10,),
    changes: bool = True,
    changes_runs: int = 100,
    quota_required: bool = False,
    benchmark_smoke: bool = True,
    exclude: Mapping[str, str] | None = None,
) -> dict[str, TestFunction]:
    """pytest test functions running the whole suite against driver ``name``.

    Put them in a test module with ``globals().update(...)``.  ``maker``
    builds the driver under a root (default ``new_driver(name, root,
    options)``); ``deep_layers`` and ``diff_apply`` list the sizes for
    DeepLayerRead and DiffApply; ``changes_runs`` adds a test repeating
    Changes that many times with fresh drivers (0 to leave it out);
    ``quota_required`` makes SetQuota fail instead of skip when ``size`` is
    not supported.  ``exclude`` maps test names to the reason they do not
    apply to this driver; those tests stay in the report as skips.
    """
    table = TestTable(name, exclude)
    add = table.add

    def session(tmp_path: Path) -> contextlib.AbstractContextManager[Driver]:
        return driver_session(name, tmp_path / "root", options, maker)

    def with_driver(run: Callable[[Driver], Any]) -> Callable[[Path], None]:
        def body(tmp_path: Path) -> None:
            with session(tmp_path) as driver:
                run(driver)

        return body

    add("test_create_empty", with_driver(run_create_empty), run_create_empty.__doc__)
    add("test_create_base", with_driver(run_create_base), run_create_base.__doc__)
    add("test_create_snap", with_driver(run_create_snap), run_create_snap.__doc__)
    for count in deep_layers:
        add(
            f"test_deep_layer_read_{count}",
            with_driver(functools.partial(_deep_layer_read_n, count)),
            run_deep_layer_read.__doc__,
        )
    for count in diff_apply:
        add(
            f"test_diff_apply_{count}",
            with_driver(functools.partial(_diff_apply_n, count)),
            run_diff_apply.__doc__,
        )
    if changes:
        add("test_changes", with_driver(run_changes), run_changes.__doc__)
    if changes and changes_runs > 1:

        def repeated(tmp_path: Path) -> None:
            for i in range(changes_runs):
                with driver_session(name, tmp_path / f"run-{i}", options, maker) as driver:
                    try:
                        run_changes(driver)
                    except AssertionError as exc:
                        raise AssertionError(f"run {i + 1} of {changes_runs}: {exc}") from exc

        add(f"test_changes_{changes_runs}_runs", repeated, "Changes is exact every time.")
    add(
        "test_set_quota",
        with_driver(lambda d: run_set_quota(d, name, quota_required)),
        run_set_quota.__doc__,
    )
    if benchmark_smoke:

        def smoke(tmp_path: Path) -> None:
            for i, bench in enumerate(STANDARD_BENCHMARKS):
                base = tmp_path / f"bench-{i}"
                base.mkdir()
                result = bench.smoke(driver_source(name, base, options, maker))
                if len(result.seconds) != 1:
                    raise AssertionError(f"{bench.name}: {len(result.seconds)} timings for 1 run")

        add("test_benchmarks_smoke", smoke, "Every benchmark runs once at a tiny size.")
    return table.finish()
