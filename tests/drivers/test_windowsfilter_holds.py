"""windowsfilter holds across processes, removal by our own records, crashed holders.

Each test here failed on 20ac2f3: views were counted per process (another
process's ``put`` unmounted or deleted the view this one read, and its
``remove`` went through), ``remove``/``cleanup`` keyed on an ``-removing``
suffix (destroying a real layer of that name), a crashed holder's
size-limited sandbox stayed loop-mounted (every later ``get`` failed with a
bare OSError) and ``mount`` answered another path than ``get``.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import base_layer, diff_layer_1, go_layer

from lamina import drivers
from lamina._fs import is_mountpoint, loop_supported, mounts_below
from lamina.drivers.windowsfilter import WindowsFilterDriver


def _open(root: Path, view: str = "auto") -> WindowsFilterDriver:
    d = drivers.new_driver("windowsfilter", root, {"windowsfilter.view": view})
    assert isinstance(d, WindowsFilterDriver)
    return d


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    d = _open(tmp_path)
    d.create("L0")
    d.apply_diff("L0", None, io.BytesIO(go_layer(base_layer())))
    d.create("L1", "L0")
    d.apply_diff("L1", "L0", io.BytesIO(go_layer(diff_layer_1())))
    yield tmp_path
    _open(tmp_path).cleanup()
    assert mounts_below(tmp_path) == []


def _other_process(
    root: Path, body: str, *, view: str = "auto"
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a second process with ``d``, a driver on the same store."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from lamina import drivers
        options = {{"windowsfilter.view": {view!r}}}
        d = drivers.new_driver("windowsfilter", Path({str(root)!r}), options)
        """
    ) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), LAMINA_WINDOWSFILTER_NOREEXEC="1")
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def _views() -> list[str]:
    views = ["materialise"]
    if os.geteuid() == 0:
        views.append("overlay")
    return views


@pytest.mark.parametrize("view", _views())
def test_another_process_put_leaves_this_processs_view(root: Path, view: str) -> None:
    d = _open(root, view)
    files = d.get("L1")
    try:
        before = sorted(str(p.relative_to(files)) for p in files.rglob("*"))
        assert "Users/Public/new.txt" in before
        done = _other_process(
            root,
            """
            assert d.get("L1") is not None
            d.put("L1")
            try:
                d.remove("L1")
            except Exception as exc:
                print(type(exc).__name__)
            """,
            view=view,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "InUseError"  # this process holds it
        assert (files / "Users/Public/new.txt").read_bytes() == b"new file\r\n"
        assert sorted(str(p.relative_to(files)) for p in files.rglob("*")) == before
        assert is_mountpoint(files) == (view == "overlay")
    finally:
        d.put("L1")
    assert not files.exists()  # the last put of all processes takes the view away
    d.remove("L1")


def test_remove_refuses_a_sandbox_another_process_holds(root: Path) -> None:
    d = _open(root)
    d.create_read_write("box", "L1")
    held = d.get("box")
    try:
        done = _other_process(
            root,
            """
            from lamina.errors import InUseError
            try:
                d.remove("box")
            except InUseError:
                print("refused")
            """,
        )
        assert done.stdout.strip() == "refused", done.stderr
        assert (held / "Users/Public/new.txt").is_file()
    finally:
        d.put("box")
    d.remove("box")
    assert not d.exists("box")


def test_a_layer_whose_id_ends_in_removing_survives_remove_and_cleanup(root: Path) -> None:
    d = _open(root)
    d.create("x-removing", "L1")
    d.apply_diff("x-removing", "L1", io.BytesIO(go_layer(diff_layer_1())))
    d.create("x", "L1")
    d.remove("x")
    assert d.exists("x-removing") and not d.exists("x")
    d.cleanup()
    assert d.exists("x-removing")
    d.create("x", "L1")
    d.remove("x")  # again, with a real x-removing in the way: still only x goes
    d.cleanup()
    assert d.exists("x-removing") and not d.exists("x")
    assert [p.name for p in (d.home / ".lamina-staging").iterdir()] == []
    d.remove("x-removing")
    assert not d.exists("x-removing")


def test_a_removal_killed_before_deleting_is_finished_by_cleanup(root: Path) -> None:
    done = _other_process(
        root,
        """
        from lamina.drivers.windowsfilter import WindowsFilterDriver
        WindowsFilterDriver._destroy = lambda self, folder: os._exit(9)  # killed right here
        d.remove("L1")
        """,
    )
    assert done.returncode == 9, done.stderr
    d = _open(root)
    assert not d.exists("L1") and (d.home / "L1-removing").is_dir()
    d.cleanup()
    assert not (d.home / "L1-removing").exists() and d.exists("L0")


def test_mount_answers_what_get_answers(root: Path) -> None:
    d = _open(root)
    d.create_read_write("box", "L1")
    got = d.get("box")
    d.put("box")
    mounted = d.mount("box")
    try:
        assert mounted == got == d.home / "box/sandbox/Files"
        assert (mounted / "Users/Public/new.txt").is_file()
    finally:
        d.unmount("box")


@pytest.mark.root
@pytest.mark.skipif(not loop_supported(), reason="needs root, /dev/loop-control and mkfs.ext4")
def test_a_dead_holders_sized_sandbox_is_unmounted_by_cleanup(root: Path) -> None:
    d = _open(root)
    d.create_read_write("quota", "L1", storage_opt={"size": "64M"})
    done = _other_process(
        root,
        """
        files = d.get("quota")
        (files / "mine.txt").write_bytes(b"written before the crash")
        os.kill(os.getpid(), 9)
        """,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    box = d.home / "quota" / "sandbox"
    assert os.path.ismount(box)  # leaked by the dead holder
    d.cleanup()
    assert not os.path.ismount(box)
    files = d.get("quota")
    try:
        assert (files / "mine.txt").read_bytes() == b"written before the crash"
    finally:
        d.put("quota")
    assert not os.path.ismount(box)
    d.remove("quota")


@pytest.mark.root
@pytest.mark.skipif(not loop_supported(), reason="needs root, /dev/loop-control and mkfs.ext4")
def test_get_after_a_dead_holder_without_cleanup(root: Path) -> None:
    d = _open(root)
    d.create_read_write("quota", "L1", storage_opt={"size": "64M"})
    done = _other_process(root, 'd.get("quota")\nos.kill(os.getpid(), 9)\n')
    assert done.returncode == -signal.SIGKILL, done.stderr
    files = d.get("quota")  # was: a bare OSError from mount(8) for ever
    try:
        assert (files / "Users/Public/new.txt").is_file()
    finally:
        d.put("quota")


@pytest.mark.root
@pytest.mark.skipif(not loop_supported(), reason="needs root, /dev/loop-control and mkfs.ext4")
def test_expand_after_a_dead_holder_grows_the_unmounted_image(root: Path) -> None:
    """The dead holder's mount is undone first: resize2fs never works on a mounted image."""
    d = _open(root)
    d.create_read_write("quota", "L1", storage_opt={"size": "64M"})
    done = _other_process(root, 'd.get("quota")\nos.kill(os.getpid(), 9)\n')
    assert done.returncode == -signal.SIGKILL, done.stderr
    d.expand_sandbox_size("quota", "96M")
    assert (d.home / "quota" / "sandbox.img").stat().st_size == 96 * 1024 * 1024
    files = d.get("quota")
    try:
        st = os.statvfs(files)
        assert st.f_blocks * st.f_frsize > 80 * 1024 * 1024
    finally:
        d.put("quota")
