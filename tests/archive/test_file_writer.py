"""Helper processes that create regular files: the same tree as applying alone, always.

``apply_layer`` hands a layer's regular files to helper processes once it
has seen ``helper_after`` of them.  These tests force the helpers on from
the first file and compare, entry by entry, with the tree the applier makes
alone from the same bytes, on layers built to hit every ordering hazard (a
path made twice, a file replaced by a directory and back, whiteouts and
opaque markers over files still being made, hardlinks to them, entries
below a file), applied into an empty directory or onto what another layer
left there (files, links and directories where the new layer has files).
They also check the helpers' lifetime: reaped by the time ``apply_layer``
returns or raises, killed with the applier, never started beside other
threads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.archive import ApplyOptions, _apply, apply_layer
from lamina.errors import LaminaError

Snapshot = dict[str, tuple[object, ...]]
_NOT_FROM_THE_LAYER = 1_700_000_000 * 10**9  # layers here carry times of 2020


def _snapshot(root: Path) -> Snapshot:
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st_ = p.lstat()
            extra: object = None
            if stat.S_ISREG(st_.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st_.st_mode):
                extra = os.readlink(p)
            key = str(p.relative_to(root))
            size = mtime = 0
            if not stat.S_ISDIR(st_.st_mode):
                size, mtime = st_.st_size, st_.st_mtime_ns
            elif st_.st_mtime_ns < _NOT_FROM_THE_LAYER:
                mtime = st_.st_mtime_ns  # a time from the layer (an implied one is "now")
            out[key] = (st_.st_mode, st_.st_uid, st_.st_gid, size, mtime, extra)
    return out


@pytest.fixture
def helper_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the helpers each apply starts (the default threshold kept)."""
    pids: list[int] = []
    real_start = _apply._Applier._start_writer

    def start(applier: _apply._Applier) -> None:
        real_start(applier)
        pids.extend(w.pid for w in applier.writers)

    monkeypatch.setattr(_apply._Applier, "_start_writer", start)
    return pids


@pytest.fixture
def started(helper_pids: list[int], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Helpers from the first regular file; yields the helper pids of each start."""
    monkeypatch.setattr(_apply, "helper_after", 0)
    yield helper_pids


def _apply_file(raw: bytes, dest: Path) -> int | LaminaError:
    with tempfile.TemporaryFile() as tmp:
        tmp.write(raw)
        tmp.flush()
        tmp.seek(0)
        with open(f"/proc/self/fd/{tmp.fileno()}", "rb") as src:
            try:
                return apply_layer(src, dest, ApplyOptions())
            except LaminaError as exc:
                return exc


def _apply_stream(raw: bytes, dest: Path) -> int | LaminaError:
    try:
        return apply_layer(io.BytesIO(raw), dest, ApplyOptions())
    except LaminaError as exc:
        return exc


def _apply_alone(raw: bytes, dest: Path) -> int | LaminaError:
    saved, _apply.helper_after = _apply.helper_after, None
    try:
        return _apply_stream(raw, dest)
    finally:
        _apply.helper_after = saved


def _children() -> set[str]:
    found: set[str] = set()
    for tid in os.listdir("/proc/self/task"):
        found.update(Path(f"/proc/self/task/{tid}/children").read_text().split())
    return found


# -- layers that hit the ordering hazards ---------------------------------------

NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
ops = st.one_of(
    st.tuples(st.just("file"), paths, st.binary(max_size=200), st.sampled_from((0o644, 0o4755))),
    st.tuples(st.just("file"), paths, st.binary(max_size=200), st.just(0o600)),
    st.tuples(st.just("dir"), paths, st.sampled_from((0o755, 0o2775))),
    st.tuples(st.just("symlink"), paths, st.sampled_from(("a", "../x", "b/c"))),
    st.tuples(st.just("hardlink"), paths, paths),
    st.tuples(st.just("whiteout"), paths),
    st.tuples(st.just("opaque"), paths),
)


def _layer(entries: list[tuple[object, ...]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i, op in enumerate(entries):
            kind, path = op[0], str(op[1])
            info = tarfile.TarInfo(path)
            info.mtime = 1_600_000_000 + i
            info.uid = info.gid = i % 3  # owners other than root's: fchown in the helper too
            if kind == "file":
                data = bytes(op[2])  # type: ignore[arg-type]
                info.size = len(data)
                info.mode = int(op[3])  # type: ignore[call-overload]
                tf.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = int(op[2])  # type: ignore[call-overload]
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = str(op[2])
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = str(op[2])
            elif kind == "whiteout":
                head, _, base = path.rpartition("/")
                info.name = f"{head}/.wh.{base}" if head else f".wh.{base}"
            else:  # opaque
                info.name = f"{path}/.wh..wh..opq"
            tf.addfile(info)
    return buf.getvalue()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    entries=st.lists(ops, min_size=1, max_size=25),
    lower=st.lists(ops, max_size=15),
    via_file=st.booleans(),
)
def test_helpers_make_the_same_tree_as_the_applier_alone(
    started: list[int],
    entries: list[tuple[object, ...]],
    lower: list[tuple[object, ...]],
    via_file: bool,
) -> None:
    # via a file, helpers copy bodies by offset; from a stream, bodies travel to them;
    # ``lower`` is applied first (alone, into both): what the layer lands on
    raw = _layer(entries)
    with tempfile.TemporaryDirectory() as base:
        alone, helped = Path(base, "alone"), Path(base, "helped")
        alone.mkdir()
        helped.mkdir()
        if lower:
            _apply_alone(_layer(lower), alone)
            _apply_alone(_layer(lower), helped)
            assert _snapshot(helped) == _snapshot(alone)
        before = len(started)
        expected = _apply_alone(raw, alone)
        got = (_apply_file if via_file else _apply_stream)(raw, helped)
        if any(op[0] == "file" for op in entries) and not isinstance(expected, LaminaError):
            assert len(started) > before, "no helper was started"
        if isinstance(expected, LaminaError):
            assert type(got) is type(expected), (expected, got)
        else:
            assert got == expected
            assert _snapshot(helped) == _snapshot(alone)
        assert not (set(started) & _children()), "a helper outlived the apply"


def _many_files(n_dirs: int, per_dir: int) -> tuple[bytes, dict[str, bytes]]:
    files = {
        f"d{d:02}/f{i:04}": hashlib.sha256(f"{d}/{i}".encode()).digest() * (1 + i % 40)
        for d in range(n_dirs)
        for i in range(per_dir)
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            info.mode = 0o640
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue(), files


def test_a_big_layer_starts_helpers_by_itself(tmp_path: Path, helper_pids: list[int]) -> None:
    pids = helper_pids
    raw, files = _many_files(12, 100)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert _apply_file(raw, dest) == sum(map(len, files.values()))  # Docker's size
    assert len(pids) == _apply.helpers  # started after helper_after files, by default
    for name, data in files.items():
        p = dest / name
        assert p.read_bytes() == data
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        assert p.stat().st_mtime_ns == 1_600_000_000 * 10**9
    assert not (set(pids) & _children())


def test_a_big_gzip_layer_file_starts_helpers_before_decoding(
    tmp_path: Path, helper_pids: list[int]
) -> None:
    pids = helper_pids
    files = {f"d{d}/f{i:03}": os.urandom(3000 + i) for d in range(5) for i in range(300)}
    files["big"] = os.urandom(_apply._SHIPPED_BODY_MAX + 1)  # written by the applier itself
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(gzip.compress(buf.getvalue(), 1))
    assert layer.stat().st_size >= _apply._EARLY_HELPERS
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(layer, "rb") as src:
        apply_layer(src, dest)
    assert len(pids) == _apply.helpers
    assert all((dest / n).read_bytes() == d for n, d in files.items())
    assert not (set(pids) & _children())


def test_no_helpers_beside_other_threads(tmp_path: Path, started: list[int]) -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        raw, files = _many_files(3, 50)
        assert not isinstance(_apply_file(raw, tmp_path), LaminaError)
    finally:
        stop.set()
        other.join()
    assert started == []
    assert all((tmp_path / n).read_bytes() == d for n, d in files.items())


def test_helpers_replace_what_was_there(tmp_path: Path, started: list[int]) -> None:
    # a file, a symlink and a directory tree from before, where the layer has files
    (tmp_path / "d00").mkdir()
    (tmp_path / "d00" / "f0000").write_bytes(b"old")
    (tmp_path / "d00" / "f0001").symlink_to("/etc/passwd")
    (tmp_path / "d00" / "f0002" / "deep").mkdir(parents=True)
    (tmp_path / "d00" / "f0002" / "deep" / "x").write_bytes(b"old")
    raw, files = _many_files(2, 30)
    assert _apply_file(raw, tmp_path) == sum(map(len, files.values()))
    assert started
    for name, data in files.items():
        path = tmp_path / name
        assert not path.is_symlink()
        assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path / "d00")) == sorted(n[4:] for n in files if n[:3] == "d00")


def test_helper_failure_is_typed_and_nothing_outlives_it(
    tmp_path: Path, started: list[int]
) -> None:
    # the helper meets a file where it expects a directory only if someone else put it
    # there; here a layer names a file below a file: refused both ways, helpers reaped
    raw = _layer([("file", "a", b"x", 0o644), ("file", "a/b", b"y", 0o644)])
    alone = tmp_path / "alone"
    helped = tmp_path / "helped"
    alone.mkdir()
    helped.mkdir()
    expected = _apply_alone(raw, alone)
    got = _apply_file(raw, helped)
    assert isinstance(expected, LaminaError)
    assert type(got) is type(expected)
    assert started
    assert not (set(started) & _children())


_KILLED_APPLIER = textwrap.dedent(
    """
    import os, sys
    from lamina.archive import _apply, apply_layer
    real = _apply._Applier._start_writer
    def start(applier):
        real(applier)
        with open(sys.argv[3], "w") as out:
            out.write(" ".join(str(w.pid) for w in applier.writers))
    _apply._Applier._start_writer = start
    with open(sys.argv[1], "rb") as layer:
        apply_layer(layer, sys.argv[2])
    """
)


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")  # a zombie has stopped writing


def test_helpers_die_with_a_killed_applier(tmp_path: Path) -> None:
    raw, _ = _many_files(40, 500)  # long enough to be killed half-way
    layer = tmp_path / "layer.tar"
    layer.write_bytes(raw)
    dest = tmp_path / "dest"
    dest.mkdir()
    pid_file = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_APPLIER, str(layer), str(dest), str(pid_file)]
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert proc.poll() is None, "the applier ended before its helpers started"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    helper_pids = [int(p) for p in pid_file.read_text().split()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in helper_pids):
        assert time.monotonic() < deadline, "a helper outlived its killed applier"
        time.sleep(0.01)
    # and nothing more is written: the tree stays as the kill left it
    count = sum(len(f) for _, _, f in os.walk(dest))
    time.sleep(0.2)
    assert sum(len(f) for _, _, f in os.walk(dest)) == count


@pytest.mark.parametrize("layer", ["fine", "refused"])
def test_helpers_when_the_caller_reaps_children_itself(
    tmp_path: Path, started: list[int], layer: str
) -> None:
    # SIGCHLD ignored: the kernel reaps the helpers, waitpid finds no child
    if layer == "fine":
        raw, files = _many_files(4, 40)
    else:
        raw, files = _layer([("file", "a", b"x", 0o644), ("file", "a/b", b"y", 0o644)]), {}
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        result = _apply_file(raw, tmp_path)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert started
    if layer == "fine":
        assert result == sum(map(len, files.values()))
        assert all((tmp_path / n).read_bytes() == d for n, d in files.items())
    else:
        assert isinstance(result, LaminaError)
    assert not (set(started) & _children())


_F = ("file", "a/b", b"new", 0o644)
HAZARDS: dict[str, tuple[list[tuple[object, ...]], list[tuple[object, ...]]]] = {
    # name: (lower layer, layer) -- each a sequence the helpers must not reorder
    "file-then-whiteout": ([], [_F, ("whiteout", "a/b")]),
    "file-then-whiteout-of-its-dir": ([], [_F, ("whiteout", "a")]),
    "file-then-opaque-dir": ([("file", "a/c", b"old", 0o644)], [_F, ("opaque", "a")]),
    "file-then-file": ([], [_F, ("file", "a/b", b"second", 0o600)]),
    "file-then-dir": ([], [_F, ("dir", "a/b", 0o755)]),
    "file-then-symlink": ([], [_F, ("symlink", "a/b", "x")]),
    "file-then-hardlink-to-it": ([], [_F, ("hardlink", "a/c", "a/b")]),
    "file-then-entry-below-it": ([], [_F, ("file", "a/b/c", b"x", 0o644)]),
    "dir-then-file": ([], [("dir", "a/b", 0o755), ("file", "a/b/c", b"x", 0o644), _F]),
    "over-a-file": ([("file", "a/b", b"old", 0o600)], [_F]),
    "over-a-symlink": ([("symlink", "a/b", "../x")], [_F]),
    "over-a-directory": ([("file", "a/b/c/d", b"old", 0o644)], [_F]),
    "over-a-directory-then-below": ([("dir", "a/b", 0o755)], [_F, ("file", "a/b/c", b"", 0o644)]),
    "whiteout-of-a-lower-file": ([("file", "a/c", b"old", 0o644)], [_F, ("whiteout", "a/c")]),
    "over-a-directory-open-below": (
        [("file", "a/b/c/old", b"old", 0o644)],
        [("file", "a/b/c/y", b"y", 0o644), _F, ("file", "a/b/c/x", b"x", 0o644)],
    ),
    "file-in-a-lower-dir-then-opaque": (
        [("file", "a/b/old", b"old", 0o644)],
        [("file", "a/b/new", b"new", 0o644), ("opaque", "a")],
    ),
}


@pytest.mark.parametrize("via_file", [True, False], ids=["file", "stream"])
@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_ordering_hazards(tmp_path: Path, started: list[int], hazard: str, via_file: bool) -> None:
    lower, entries = HAZARDS[hazard]
    raw = _layer(entries)
    alone, helped = tmp_path / "alone", tmp_path / "helped"
    alone.mkdir()
    helped.mkdir()
    for dest in (alone, helped):
        if lower:
            assert not isinstance(_apply_alone(_layer(lower), dest), LaminaError)
    expected = _apply_alone(raw, alone)
    got = (_apply_file if via_file else _apply_stream)(raw, helped)
    assert started, "no helper was started"
    if isinstance(expected, LaminaError):
        assert type(got) is type(expected), (expected, got)
    else:
        assert got == expected
        assert _snapshot(helped) == _snapshot(alone)


def test_a_helper_that_dies_is_a_typed_error(
    tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.archive import _file_writer
    from lamina.errors import ArchiveError

    real_add = _file_writer.FileWriter.add
    killed: set[int] = set()

    def add_then_die(self: _file_writer.FileWriter, record: _file_writer.FileRecord) -> None:
        real_add(self, record)
        if self.pid not in killed:
            killed.add(self.pid)
            os.kill(self.pid, signal.SIGKILL)  # as the OOM killer would

    monkeypatch.setattr(_file_writer.FileWriter, "add", add_then_die)
    raw, _ = _many_files(1, 1200)  # past a full message: the applier meets a broken pipe
    result = _apply_file(raw, tmp_path)
    assert isinstance(result, ArchiveError), result
    assert started
