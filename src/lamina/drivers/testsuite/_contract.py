"""The contract suite: promises every driver keeps beyond Docker's graphtest.

Docker's suite checks that layers stack; users also meet a driver under
races, damage and concurrency: a failed apply, a second process holding a
layer, a remove while a diff stream is read, two applies at once, a store on
a read-only disk.  These checks say what must hold there, once, for every
driver (containerd's ``snapshots/testsuite`` plays the same part for
snapshotters).  Each check fails on the behaviour it names and passes on any
of the outcomes a user can rely on (an ``InUseError`` or a consistent
result, never a silent half).

A driver is described by a :class:`DriverProfile`: how to write a layer tar
in its format (Linux tars, or Windows tars under ``Files/``) and what it
refuses by design (windowsfilter applies a layer once).  ``PROFILES`` holds
lamina's own drivers; a third-party driver passes its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from lamina._frozen import Frozen
from lamina.drivers import Driver
from lamina.drivers.testsuite._crash import Snapshot, snapshot
from lamina.drivers.testsuite._graphtest import (
    DriverMaker,
    TestFunction,
    TestTable,
    driver_session,
    mounts_under,
    require_root,
    skip,
)
from lamina.errors import (
    AlreadyExistsError,
    ArchiveError,
    InUseError,
    InvalidArgumentError,
    LaminaError,
    NotFoundError,
)

__all__ = ["PROFILES", "DriverProfile", "linux_layer_tar", "make_contract_tests"]

Files = Mapping[str, bytes]
_MTIME = 1_600_000_000


def _tar(entries: Iterator[tuple[str, bytes | None]]) -> bytes:
    """Members and the two zero blocks that end a tar, without record padding.

    Exact ends let the checks below splice a bad header or an escape in right
    after good entries (a padded tar would end before the splice).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = _MTIME
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        end = tf.offset  # before close() adds the end blocks and the record padding
    return buf.getvalue()[:end] + b"\0" * 1024


def _with_parents(files: Files, prefix: str) -> Iterator[tuple[str, bytes | None]]:
    seen: set[str] = set()
    if prefix:
        seen.add(prefix.rstrip("/"))
        yield prefix.rstrip("/"), None
    for name in sorted(files):
        parts = name.split("/")
        for i in range(1, len(parts)):
            directory = prefix + "/".join(parts[:i])
            if directory not in seen:
                seen.add(directory)
                yield directory, None
        yield prefix + name, files[name]


def linux_layer_tar(files: Files) -> bytes:
    """A plain layer tar holding ``files`` (path -> content) and their parent directories."""
    return _tar(_with_parents(files, ""))


def windows_layer_tar(files: Files) -> bytes:
    """A Windows layer tar: the same files under ``Files/`` (default attributes and SDs)."""
    return _tar(_with_parents(files, "Files/"))


class DriverProfile(Frozen):
    """What the contract checks need to know about a driver."""

    __slots__ = ("apply_creates", "layer_tar", "reapply")
    _fields = ("layer_tar", "reapply", "apply_creates")

    layer_tar: Callable[[Files], bytes]
    reapply: bool
    apply_creates: bool

    def __init__(
        self,
        layer_tar: Callable[[Files], bytes],
        *,
        reapply: bool = True,
        apply_creates: bool = False,
    ) -> None:
        """``layer_tar`` writes a layer in the driver's format; ``reapply``: a second
        ``apply_diff`` to one layer is allowed (windowsfilter, like the seed, refuses it);
        ``apply_creates``: ``apply_diff`` of a layer never created makes it (the seed's
        windowsfilter does), instead of NotFoundError."""
        object.__setattr__(self, "layer_tar", layer_tar)
        object.__setattr__(self, "reapply", reapply)
        object.__setattr__(self, "apply_creates", apply_creates)


#: lamina's own drivers.
PROFILES: Mapping[str, DriverProfile] = {
    "vfs": DriverProfile(linux_layer_tar),
    "overlay": DriverProfile(linux_layer_tar),
    "windowsfilter": DriverProfile(windows_layer_tar, reapply=False, apply_creates=True),
}


def _files(tag: str, count: int = 20) -> dict[str, bytes]:
    return {f"{tag}/f{i:03d}": f"{tag} {i}\n".encode() * (i + 1) for i in range(count)}


def _apply(driver: Driver, layer: str, parent: str | None, tar: bytes) -> None:
    driver.apply_diff(layer, parent, io.BytesIO(tar))


def _view(driver: Driver, layer: str) -> Snapshot:
    with driver.mounted(layer) as path:
        return snapshot(path)


def _base(driver: Driver, profile: DriverProfile) -> None:
    driver.create("base")
    _apply(driver, "base", None, profile.layer_tar(_files("base")))


def _bad_tars(profile: DriverProfile) -> dict[str, bytes]:
    good = profile.layer_tar(_files("bad", 10))
    end = len(good) - 1024  # the two zero blocks that end a tar
    escape = profile.layer_tar({"ok/file": b"first\n"})[:-1024]
    info = tarfile.TarInfo("../escaped")
    info.size = 4
    escape += info.tobuf(tarfile.PAX_FORMAT) + b"evil".ljust(512, b"\0") + b"\0" * 1024
    garbage_header = good[:end] + b"\xff" * 512 + b"\0" * 1024
    return {
        "truncated": good[: end // 2 + 100],
        "bad header after good entries": garbage_header,
        "'..' entry after good entries": escape,
    }


# -- the checks ------------------------------------------------------------------------


def check_longest_id(driver: Driver, profile: DriverProfile) -> None:
    """A 255-byte id (NAME_MAX) works through create, apply, get, put and remove."""
    long_id = "l" * 255
    driver.create(long_id)
    _apply(driver, long_id, None, profile.layer_tar({"a": b"a\n"}))
    assert driver.exists(long_id)
    with driver.mounted(long_id) as path:
        assert (path / "a").read_bytes() == b"a\n"
    driver.remove(long_id)
    assert not driver.exists(long_id)


def check_invalid_ids(driver: Driver, profile: DriverProfile) -> None:
    """Ids that could name anything but one layer are InvalidArgumentError everywhere."""
    calls: list[Callable[[str], object]] = [
        driver.create,
        driver.create_read_write,
        driver.get,
        driver.remove,
    ]
    for bad in ("", ".", "..", "a/b", "a\0b", "x" * 256):
        for call in calls:
            try:
                call(bad)
            except InvalidArgumentError:
                continue
            raise AssertionError(f"{call.__name__}({bad!r}) was not refused")


def check_create_errors(driver: Driver, profile: DriverProfile) -> None:
    """Create twice is AlreadyExistsError; a missing parent or layer is NotFoundError."""
    driver.create("one")
    for create in (driver.create, driver.create_read_write):
        try:
            create("one")
        except AlreadyExistsError:
            pass
        else:
            raise AssertionError(f"{create.__name__} of an existing id succeeded")
    try:
        driver.create("orphan", "no-such-parent")
    except NotFoundError:
        pass
    else:
        raise AssertionError("create on a missing parent succeeded")
    assert not driver.exists("orphan"), "a refused create left a layer behind"
    missing: list[Callable[[str], object]] = [driver.get]
    if not profile.apply_creates:
        missing.append(lambda i: _apply(driver, i, None, profile.layer_tar({"a": b""})))
    for use in missing:
        try:
            use("missing")
        except NotFoundError:
            continue
        raise AssertionError("a missing layer was not NotFoundError")
    driver.remove("missing")  # removing what is not there is not an error


def check_failed_apply_leaves_the_layer_as_it_was(driver: Driver, profile: DriverProfile) -> None:
    """A truncated tar, a bad header or an escape after good entries changes nothing."""
    _base(driver, profile)
    before = _view(driver, "base")
    for i, (what, tar) in enumerate(_bad_tars(profile).items()):
        layer = f"fresh-{i}"
        driver.create(layer, "base")
        try:
            _apply(driver, layer, "base", tar)
        except ArchiveError:
            pass
        else:
            raise AssertionError(f"{what}: apply_diff succeeded")
        assert _view(driver, layer) == before, f"{what}: a fresh layer was half-applied"
    if not profile.reapply:
        return
    driver.create("full", "base")
    _apply(driver, "full", "base", profile.layer_tar(_files("first")))
    applied = _view(driver, "full")
    for what, tar in _bad_tars(profile).items():
        try:
            _apply(driver, "full", "base", tar)
        except ArchiveError:
            pass
        else:
            raise AssertionError(f"{what}: apply_diff succeeded")
        assert _view(driver, "full") == applied, f"{what}: a layer with content was half-applied"


def check_remove_of_a_parent(driver: Driver, profile: DriverProfile) -> None:
    """Removing a parent is refused (InUseError) or leaves its children whole."""
    _base(driver, profile)
    driver.create("child", "base")
    _apply(driver, "child", "base", profile.layer_tar(_files("child")))
    expected = _view(driver, "child")
    try:
        driver.remove("base")
    except InUseError:
        assert driver.exists("base"), "a refused remove took the layer away"
        return
    assert _view(driver, "child") == expected, "removing the parent broke its child"


def check_remove_of_a_held_layer(driver: Driver, profile: DriverProfile) -> None:
    """A layer held by ``get`` in this process is not removed from under it."""
    _base(driver, profile)
    driver.create("held", "base")
    path = driver.get("held")
    try:
        try:
            driver.remove("held")
        except InUseError:
            pass
        else:
            raise AssertionError("remove of a layer held by get() succeeded")
        assert driver.exists("held") and any(path.iterdir()), "the held view went away"
    finally:
        driver.put("held")
    driver.remove("held")
    assert not driver.exists("held")


def _options(driver: Driver) -> str:
    return json.dumps(driver.options)


def _in_other_process(driver: Driver, code: str) -> None:
    prelude = (
        "import json, sys\nfrom lamina import drivers\n"
        "name, root, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
        "d = drivers.new_driver(name, root, options)\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            prelude + code,
            driver.name,
            str(driver.home.parent),
            _options(driver),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def check_remove_of_a_layer_another_process_mounted(driver: Driver, profile: DriverProfile) -> None:
    """A ``lamina mount`` from another process holds the layer until ``unmount``."""
    _base(driver, profile)
    driver.create_read_write("ctr", "base")
    _in_other_process(driver, "d.mount('ctr')")
    try:
        driver.remove("ctr")
    except InUseError:
        pass
    else:
        raise AssertionError("remove of a layer another process mounted succeeded")
    assert driver.exists("ctr")
    _in_other_process(driver, "d.unmount('ctr')")
    driver.remove("ctr")
    assert not driver.exists("ctr")


def check_remove_during_a_diff_stream(driver: Driver, profile: DriverProfile) -> None:
    """A remove while ``diff`` is read is refused, or the stream still ends complete."""
    _base(driver, profile)
    driver.create("big", "base")
    files = _files("many", 501)
    _apply(driver, "big", "base", profile.layer_tar(files))
    with driver.diff("big", "base") as stream:
        head = stream.read(4096)
        try:
            driver.remove("big")
        except InUseError:
            removed = False
        else:
            removed = True
        data = head + stream.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    assert len(names) == len(files), (
        f"the stream ended after {len(names)} of {len(files)} files (remove={removed})"
    )


def check_queries_create_no_state(driver: Driver, profile: DriverProfile) -> None:
    """``exists``, ``status``, ``get_metadata`` and removing a missing layer write nothing."""
    _base(driver, profile)
    driver.cleanup()

    def tree() -> list[tuple[str, int]]:
        out = []
        for dirpath, dirnames, filenames in os.walk(driver.home):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                out.append((p, os.lstat(p).st_mtime_ns))
        return sorted(out)

    before = tree()
    assert driver.exists("base") and not driver.exists("nothing")
    driver.status()
    driver.get_metadata("base")
    driver.remove("nothing")
    assert tree() == before, "a query changed the store"


@contextlib.contextmanager
def _read_only_bind(source: Path, target: Path) -> Iterator[Path]:
    from lamina._fs import umount

    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        umount(target)


def check_read_only_store_answers_queries(
    name: str, root: Path, profile: DriverProfile, maker: Callable[[Path], Driver]
) -> None:
    """A store on a read-only filesystem opens and answers every query."""
    require_root("a read-only bind mount")
    writer = maker(root / "rw")
    _base(writer, profile)
    writer.create("top", "base")
    _apply(writer, "top", "base", profile.layer_tar(_files("top")))
    expected_changes = writer.changes("top", "base")
    expected_size = writer.diff_size("top", "base")
    writer.cleanup()
    with _read_only_bind(root / "rw", root / "ro") as ro:
        reader = maker(ro)
        try:
            assert reader.exists("top") and not reader.exists("nothing")
            reader.status()
            reader.get_metadata("top")
            assert reader.changes("top", "base") == expected_changes
            assert reader.diff_size("top", "base") == expected_size
            with reader.diff("top", "base") as stream:
                assert len(stream.read()) > 0
            try:
                reader.create("new")
            except LaminaError:
                pass
            else:
                raise AssertionError("create on a read-only store succeeded")
        finally:
            reader.cleanup()
    assert mounts_under(root) == []


_CONCURRENT_APPLY = """
import io, sys
from lamina.errors import LaminaError
tar = open(sys.argv[4], "rb").read()
print("ready", flush=True)
sys.stdin.readline()
try:
    d.apply_diff("shared", "base", io.BytesIO(tar))
except LaminaError as exc:
    print("refused", type(exc).__name__, flush=True)
else:
    print("applied", flush=True)
"""


def check_concurrent_apply(driver: Driver, profile: DriverProfile, tmp_path: Path) -> None:
    """Two processes applying to one layer: each applies whole or gets a typed error."""
    _base(driver, profile)
    tars = [profile.layer_tar(_files(tag, 200)) for tag in ("one", "two")]
    paths = []
    for i, tar in enumerate(tars):
        paths.append(tmp_path / f"apply-{i}.tar")
        paths[-1].write_bytes(tar)
    # every outcome a user may see: one applied, or both in either order
    outcomes: dict[tuple[int, ...], Snapshot] = {}
    orders: list[tuple[int, ...]] = [(0,), (1,)]
    if profile.reapply:
        orders += [(0, 1), (1, 0)]
    for order in orders:
        layer = "expect-" + "-".join(map(str, order))
        driver.create(layer, "base")
        for i in order:
            _apply(driver, layer, "base", tars[i])
        outcomes[order] = _view(driver, layer)
    driver.create("shared", "base")
    prelude = (
        "import json, sys\nfrom lamina import drivers\n"
        "d = drivers.new_driver(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))\n"
    )
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-c", prelude + _CONCURRENT_APPLY),
                *(driver.name, str(driver.home.parent), _options(driver), str(path)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for path in paths
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"an apply failed with an untyped error: {err.decode()[-2000:]}")
        results.append(out.decode().strip())
    applied = [i for i, r in enumerate(results) if r == "applied"]
    assert applied, f"neither apply succeeded: {results}"
    state = _view(driver, "shared")
    allowed = [s for order, s in outcomes.items() if sorted(order) == applied]
    assert state in allowed, f"the layer holds neither whole outcome of {results}"


# -- pytest glue -----------------------------------------------------------------------


def make_contract_tests(
    name: str,
    *,
    profile: DriverProfile | None = None,
    options: Mapping[str, str] | None = None,
    maker: DriverMaker | None = None,
    exclude: Mapping[str, str] | None = None,
) -> dict[str, TestFunction]:
    """pytest test functions running every contract check against driver ``name``.

    Used like :func:`make_conformance_tests`; ``profile`` defaults to
    ``PROFILES[name]``; ``exclude`` maps test names to the reason they do not
    apply (they stay in the report as skips).
    """
    prof = profile or PROFILES[name]
    table = TestTable(name, exclude)
    add = table.add

    def make(root: Path) -> Driver:
        if maker is not None:
            return maker(root)
        from lamina.drivers import new_driver

        return new_driver(name, root, options or {})

    def with_driver(check: Callable[[Driver, DriverProfile], None]) -> None:
        def body(tmp_path: Path) -> None:
            with driver_session(name, tmp_path / "root", options, maker) as driver:
                check(driver, prof)

        add("test_" + check.__name__.removeprefix("check_"), body, check.__doc__)

    for check in (
        check_longest_id,
        check_invalid_ids,
        check_create_errors,
        check_failed_apply_leaves_the_layer_as_it_was,
        check_remove_of_a_parent,
        check_remove_of_a_held_layer,
        check_remove_of_a_layer_another_process_mounted,
        check_remove_during_a_diff_stream,
        check_queries_create_no_state,
    ):
        with_driver(check)

    def concurrent(tmp_path: Path) -> None:
        with driver_session(name, tmp_path / "root", options, maker) as driver:
            check_concurrent_apply(driver, prof, tmp_path)

    add("test_concurrent_apply", concurrent, check_concurrent_apply.__doc__)

    def read_only(tmp_path: Path) -> None:
        try:
            make(tmp_path / "probe")
        except Exception as exc:
            raise skip(f"driver {name} not supported: {exc}") from exc
        check_read_only_store_answers_queries(name, tmp_path, prof, make)

    add(
        "test_read_only_store_answers_queries",
        read_only,
        check_read_only_store_answers_queries.__doc__,
    )
    return table.finish()
