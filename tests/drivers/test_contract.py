"""Promises every driver keeps under failure, crashes, concurrency and damage (issue 11).

Each test runs against vfs and overlay (overlay needs root).  windowsfilter
is not in the list yet: its create/apply/remove do not use the shared
staging area and holds, which another change owns.

The multi-process tests use real processes (``python -c``) on one store and
real ``kill -9``.  A process applying a tar reads it from a pipe that the
test feeds: once the pipe is drained (``FIONREAD`` is 0) the apply is under
way and stays so until the test writes the rest.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina import drivers
from lamina.errors import InUseError, LaminaError, StateError

_NAMES = [
    "vfs",
    pytest.param(
        "overlay",
        marks=pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts"),
    ),
]
_SRC = str(Path(drivers.__file__).resolve().parents[2])


def _tar(files: dict[str, bytes], *, evil: bool = False, truncate: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
        if evil:
            info = tarfile.TarInfo("../escaped")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    data = buf.getvalue()
    if truncate:  # inside the body of the last entry
        assert len(data) > 8192
        return data[: len(data) - 1024 - 4096]
    return data


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


def _view(d: drivers.Driver, id: str) -> dict[str, bytes | None]:
    with d.mounted(id) as view:
        return _tree(view)


@pytest.fixture(params=_NAMES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name: str = request.param
    root = tmp_path / "root"
    yield name, root
    d = drivers.new_driver(name, root)
    d.cleanup()


def _driver(store: tuple[str, Path]) -> drivers.Driver:
    return drivers.new_driver(store[0], store[1])


def _base_with_content(d: drivers.Driver) -> dict[str, bytes | None]:
    """A base layer ``b`` and a child ``c`` that already has content of its own."""
    d.create("b")
    d.apply_diff("b", None, io.BytesIO(_tar({"etc/base": b"base"})))
    d.create("c", "b")
    d.apply_diff("c", "b", io.BytesIO(_tar({"etc/first": b"first"})))
    return _view(d, "c")


_APPLIER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from lamina import drivers
    from lamina.errors import LaminaError
    d = drivers.new_driver(sys.argv[2], sys.argv[3])
    try:
        # raw: each read returns what the pipe holds, so the apply works as it is fed
        size = d.apply_diff(sys.argv[4], sys.argv[5] or None, sys.stdin.buffer.raw)
    except LaminaError as exc:
        print(type(exc).__name__, exc, flush=True)
        sys.exit(3)
    print("applied", size, flush=True)
    """
)


class Applier:
    """Another process applying a tar it reads from a pipe this test feeds."""

    def __init__(self, store: tuple[str, Path], id: str, parent: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _APPLIER, _SRC, store[0], str(store[1]), id, parent],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def feed(self, data: bytes, *, wait: bool = True) -> None:
        """Write ``data``; with ``wait`` return once the apply has read all of it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        if wait:
            deadline = time.monotonic() + 30
            while _unread(self.proc.stdin.fileno()) and time.monotonic() < deadline:
                assert self.proc.poll() is None, self.proc.communicate()
                time.sleep(0.01)
            time.sleep(0.3)  # let it write what it read

    def finish(self, rest: bytes = b"") -> tuple[int, str]:
        out, err = self.proc.communicate(rest)
        return self.proc.returncode, out.decode() + err.decode()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdin is not None
        self.proc.stdin.close()


def _unread(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def _split_tar(files: dict[str, bytes], big: str) -> tuple[bytes, bytes]:
    """A tar of ``files`` (padded past 2 MiB) then a 4 MiB ``big``, cut inside ``big``'s body.

    The archive engine reads its input in 1 MiB chunks: the padding makes
    sure that the entries before the cut are read, and written, before the
    apply blocks waiting for the rest.
    """
    files = {**files, **{f"pad/{i}": bytes([i]) * (64 << 10) for i in range(40)}}
    data = _tar({**files, big: b"z" * (4 << 20)})
    cut = len(_tar(files)) + (1 << 20)
    return data[:cut], data[cut:]


# -- a failed apply leaves the layer exactly as it was ------------------------------------


@pytest.mark.parametrize("damage", ["evil", "truncate"])
def test_failed_apply_into_a_layer_with_content_leaves_it_as_it_was(
    store: tuple[str, Path], damage: str
) -> None:
    d = _driver(store)
    before = _base_with_content(d)
    bad = _tar(
        {"etc/second": b"second", "etc/first": b"changed", "etc/big": b"b" * 16384},
        evil=damage == "evil",
        truncate=damage == "truncate",
    )
    with pytest.raises(LaminaError):
        d.apply_diff("c", "b", io.BytesIO(bad))
    assert _view(d, "c") == before
    d.cleanup()
    assert _view(d, "c") == before


def test_kill_during_apply_into_a_layer_with_content_then_cleanup(
    store: tuple[str, Path],
) -> None:
    d = _driver(store)
    before = _base_with_content(d)
    head, _ = _split_tar({f"etc/new{i}": b"new" for i in range(20)}, "etc/big")
    applier = Applier(store, "c", "b")
    applier.feed(head)
    applier.kill()
    d = _driver(store)
    d.cleanup()
    assert _view(d, "c") == before


def test_retry_after_kill_does_not_land_on_the_killed_attempt(store: tuple[str, Path]) -> None:
    d = _driver(store)
    d.create("b")
    d.apply_diff("b", None, io.BytesIO(_tar({"etc/base": b"base"})))
    d.create("c", "b")  # pristine: the apply goes in place
    head, _ = _split_tar({"etc/killed": b"killed"}, "etc/big")
    applier = Applier(store, "c", "b")
    applier.feed(head)
    applier.kill()
    d = _driver(store)  # no cleanup: the retry itself must cope
    d.apply_diff("c", "b", io.BytesIO(_tar({"etc/retry": b"retry"})))
    after = _view(d, "c")
    assert "etc/killed" not in after and "etc/big" not in after and "pad" not in after
    assert after["etc/retry"] == b"retry" and after["etc/base"] == b"base"
    leftovers = [
        p
        for p in d.home.rglob("*")
        if ".apply." in p.name or (p.parent.name == "staging" and p.parent.parent == d.home)
    ]
    assert leftovers == []


# -- apply without a parent argument --------------------------------------------------------


def test_apply_without_parent_argument_uses_the_recorded_parent(
    store: tuple[str, Path],
) -> None:
    d = _driver(store)
    d.create("b")
    tree = {"etc/base": b"base", "etc/gone": b"x", "opt/tree/a/b/c/file": b"deep"}
    d.apply_diff("b", None, io.BytesIO(_tar(tree)))
    d.create("c", "b")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tf:
        # deleting a nested tree through an overlay view renames directories: EXDEV
        for name in ("etc/new", "etc/.wh.gone", "opt/.wh.tree"):
            tf.addfile(tarfile.TarInfo(name))
        info = tarfile.TarInfo("etc/dir")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    layer.seek(0)
    d.apply_diff("c", None, layer)
    view = _view(d, "c")
    assert view["etc/base"] == b"base" and view["etc/new"] == b""
    assert "etc/gone" not in view and "opt/tree" not in view


# -- two processes applying to one layer ---------------------------------------------------


@pytest.mark.parametrize("start", ["fresh", "with-content"])
def test_concurrent_applies_serialise_and_both_land(store: tuple[str, Path], start: str) -> None:
    d = _driver(store)
    if start == "fresh":
        d.create("b")
        d.create("c", "b")
    else:
        _base_with_content(d)
    head, tail = _split_tar({"etc/from-a": b"a"}, "etc/big-a")
    first = Applier(store, "c", "b")
    first.feed(head)  # first holds the layer now
    second = Applier(store, "c", "b")
    second.feed(_tar({"etc/from-b": b"b"}), wait=False)
    time.sleep(0.5)
    code_a, out_a = first.finish(tail)
    code_b, out_b = second.finish()
    assert (code_a, code_b) == (0, 0), (out_a, out_b)
    view = _view(d, "c")
    assert view["etc/from-a"] == b"a" and view["etc/from-b"] == b"b"
    assert len(view["etc/big-a"] or b"") == 4 << 20


def test_second_apply_times_out_with_a_typed_error(store: tuple[str, Path]) -> None:
    d = _driver(store)
    d.create("b")
    d.create("c", "b")
    head, tail = _split_tar({"etc/from-a": b"a"}, "etc/big-a")
    first = Applier(store, "c", "b")
    first.feed(head)
    mine = _driver(store)
    mine.lock_timeout = 0.2  # type: ignore[attr-defined]
    with pytest.raises(InUseError):
        mine.apply_diff("c", "b", io.BytesIO(_tar({"etc/mine": b"m"})))
    assert first.finish(tail)[0] == 0
    assert "etc/mine" not in _view(d, "c")


def test_cleanup_leaves_another_process_apply_alone(store: tuple[str, Path]) -> None:
    d = _driver(store)
    d.create("b")
    d.apply_diff("b", None, io.BytesIO(_tar({"etc/base": b"base"})))
    d.create("c", "b")
    head, tail = _split_tar({"etc/live": b"live"}, "etc/big")
    applier = Applier(store, "c", "b")
    applier.feed(head)
    _driver(store).cleanup()  # must not take the live apply for a crash leftover
    code, out = applier.finish(tail)
    assert code == 0, out
    view = _view(d, "c")
    assert view["etc/live"] == b"live" and len(view["etc/big"] or b"") == 4 << 20


# -- remove of a layer in use -----------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from lamina import drivers
    d = drivers.new_driver(sys.argv[2], sys.argv[3])
    how, id = sys.argv[4], sys.argv[5]
    if how == "get":
        d.get(id)
    elif how == "mount":
        d.mount(id)
    else:
        stream = d.diff(id, None)
        stream.read(1)
    print("holding", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.parametrize("how", ["get", "mount", "diff"])
@pytest.mark.parametrize("layer", ["b", "c"])
def test_remove_of_a_layer_another_process_holds_is_refused(
    store: tuple[str, Path], how: str, layer: str
) -> None:
    d = _driver(store)
    d.create("b")
    d.apply_diff("b", None, io.BytesIO(_tar({f"f{i}": b"x" * 100 for i in range(50)})))
    d.create_read_write("c", "b")
    if layer == "b":
        d.remove("c")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, _SRC, store[0], str(store[1]), how, layer],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(InUseError):
            d.remove(layer)
        assert d.exists(layer)
    finally:
        holder.communicate("")
    if how == "mount":
        with pytest.raises(InUseError):
            d.remove(layer)  # a mount outlives its process until unmount
        d.unmount(layer)
    d.remove(layer)
    assert not d.exists(layer)


def test_remove_during_a_diff_stream_is_refused_not_truncating(
    store: tuple[str, Path],
) -> None:
    d = _driver(store)
    d.create("b")
    files = {f"f{i:03}": b"x" * 1000 for i in range(500)}
    d.apply_diff("b", None, io.BytesIO(_tar(files)))
    stream = d.diff("b", None)
    head = stream.read(2048)
    with pytest.raises(InUseError):
        d.remove("b")
    data = head + stream.read()
    stream.close()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tf:
        assert sorted(m.name for m in tf.getmembers() if m.isfile()) == sorted(files)
    d.remove("b")  # the stream is closed: nothing holds the layer any more
    assert not d.exists("b")


_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")


@_ROOT
def test_overlay_remove_of_a_layer_with_children_is_refused(tmp_path: Path) -> None:
    d = drivers.new_driver("overlay", tmp_path / "root")
    d.create("b")
    d.create("c", "b")
    d.create("g", "c")
    for layer in ("b", "c"):
        with pytest.raises(InUseError):
            d.remove(layer)
    assert _view(d, "g") == {}
    d.remove("g")
    d.remove("c")
    d.remove("b")
    d.cleanup()


# -- damaged state ---------------------------------------------------------------------------


def test_torn_apply_record_is_a_state_error_and_cleanup_recovers(tmp_path: Path) -> None:
    d = drivers.new_driver("vfs", tmp_path / "root")
    d.create("b")
    d.apply_diff("b", None, io.BytesIO(_tar({"etc/base": b"base"})))
    d.create("c", "b")
    # a create on a parent writes a ``parent`` record and a ``pristine`` one
    records = [r for r in (d.home / "state").iterdir() if r.name.endswith(".pristine")]
    assert len(records) == 1
    applying = records[0].with_name(records[0].name.replace(".pristine", ".applying"))
    applying.write_bytes(b'{"id": "c", "par')  # torn by hand
    for call in (lambda: d.get("c"), lambda: d.diff("c"), lambda: d.changes("c")):
        with pytest.raises(StateError):
            call()
    with pytest.raises(StateError):
        d.apply_diff("c", "b", io.BytesIO(_tar({"x": b"x"})))
    d.cleanup()  # no traceback; the half-applied layer cannot be rebuilt: it is gone
    assert not applying.exists()
    assert not d.exists("c")
    assert _view(d, "b") == {"etc": None, "etc/base": b"base"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")
def test_overlay_cleanup_sweeps_mount_table_temporaries(tmp_path: Path) -> None:
    d = drivers.new_driver("overlay", tmp_path / "root")
    d.create("b")
    d.create("c", "b")
    run = d.home / ".run"
    dead = 2**22 + 12345  # above pid_max on default systems
    legacy = run / f"mounts.json.{dead}.tmp"
    current = run / f".mounts.json.{dead}.0123456789ab.tmp"
    live = run / f".mounts.json.{os.getppid()}.0123456789ab.tmp"
    for path in (legacy, current, live):
        path.write_text("{")
    with d.mounted("c"):
        pass
    d.cleanup()
    assert not legacy.exists() and not current.exists()
    assert live.exists()
    json.loads((run / "mounts.json").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")
def test_overlay_mount_table_write_leaves_no_temporary_after_kill(tmp_path: Path) -> None:
    root = tmp_path / "root"
    d = drivers.new_driver("overlay", root)
    d.create("b")
    d.create("c", "b")
    code = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from lamina import drivers
        from lamina._fs import _atomic
        d = drivers.new_driver("overlay", sys.argv[2])
        real = os.rename
        def rename(src, dst, *a, **k):  # die between the temporary and its rename
            if "mounts.json" in str(dst):
                os.kill(os.getpid(), 9)
            return real(src, dst, *a, **k)
        _atomic.os.rename = rename
        os.replace = rename
        d.get("c")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, _SRC, str(root)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in (d.home / ".run").iterdir() if p.name.endswith(".tmp")]
    d.cleanup()
    assert [p.name for p in (d.home / ".run").iterdir() if p.name.endswith(".tmp")] == []


# -- cleanup and the views of running processes --------------------------------------------

_VIEWER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from lamina import drivers
    d = drivers.new_driver("overlay", sys.argv[2])
    view = d.get("r")
    (view / "kept").write_text("mine")
    print(view, flush=True)
    sys.stdin.read()
    print((view / "kept").read_text(), flush=True)
    """
)


@_ROOT
def test_cleanup_keeps_a_size_limited_base_view_another_process_uses(tmp_path: Path) -> None:
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices")
    root = tmp_path / "root"
    d = drivers.new_driver("overlay", root)
    try:
        d.create_read_write("r", None, storage_opt={"size": "16M"})
    except LaminaError as exc:
        pytest.skip(f"no size-limited layers here: {exc}")
    viewer = subprocess.Popen(
        [sys.executable, "-c", _VIEWER, _SRC, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert viewer.stdout is not None
    view = Path(viewer.stdout.readline().strip())
    drivers.new_driver("overlay", root).cleanup()  # another process's cleanup
    assert (view / "kept").read_text() == "mine"  # its image is still mounted under it
    out, _ = viewer.communicate("")
    assert out.strip() == "mine"
    d.remove("r")  # the viewer is gone: nothing holds it now
    d.cleanup()


def test_queries_create_no_state(store: tuple[str, Path]) -> None:
    d = _driver(store)
    d.create("b")
    d.create("c", "b")
    d.status()  # the first status may measure and cache probes: not asked about here
    before = sorted(str(p) for p in store[1].rglob("*"))
    for _ in range(2):
        assert d.exists("c") and not d.exists("missing")
        d.status()
        assert dict(d.status())["Layers"] == "2"
        d.remove("missing")
    assert sorted(str(p) for p in store[1].rglob("*")) == before


@_ROOT
@pytest.mark.parametrize("name", ["vfs", "overlay"])
def test_full_disk_during_apply_into_a_layer_with_content_leaves_it_as_it_was(
    tmp_path: Path, name: str
) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        d = drivers.new_driver(name, mnt / "root")
        before = _base_with_content(d)
        big = _tar({"etc/second": b"second", "etc/first": b"changed", "etc/huge": b"h" * (8 << 20)})
        with pytest.raises(LaminaError) as info:
            d.apply_diff("c", "b", io.BytesIO(big))
        assert info.value.errno == errno.ENOSPC
        assert _view(d, "c") == before
        d.cleanup()
        assert _view(d, "c") == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("damage", [b'{"boot_id": "x", "mou', b"\xff\xfe not json", b"[1, 2]"])
def test_damaged_mount_table_is_recovered_without_tracebacks(
    store: tuple[str, Path], damage: bytes
) -> None:
    d = _driver(store)
    d.create("b")
    d.apply_diff("b", None, io.BytesIO(_tar({"etc/base": b"base"})))
    d.create("c", "b")
    with d.mounted("c"):
        pass
    table = d.home / ".run" / "mounts.json"
    assert table.exists()
    table.write_bytes(damage)
    assert _view(d, "c")["etc/base"] == b"base"
    assert [c.path for c in d.changes("b")] == ["/etc", "/etc/base"]
    with d.diff("c", "b") as stream:
        stream.read()
    d.mount("c")
    d.unmount("c")
    d.cleanup()
    d.remove("c")


def test_windowsfilter_remove_of_a_layer_another_process_holds_is_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    d = drivers.new_driver("windowsfilter", root)
    d.create("b")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, _SRC, "windowsfilter", str(root), "get", "b"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(InUseError):
            d.remove("b")
    finally:
        holder.communicate("")
        d.cleanup()
