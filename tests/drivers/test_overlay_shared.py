"""Two processes using one overlay store: shared views, and recovery after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina._fs._mount import is_mountpoint, mounts_below
from lamina.drivers import new_driver
from lamina.drivers.overlay import OverlayDriver

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")

_WORKER = textwrap.dedent(
    """
    import sys
    from lamina.drivers import new_driver

    d = new_driver("overlay", sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "get":
            print(d.get(arg), flush=True)
        elif cmd == "put":
            d.put(arg)
            print("ok", flush=True)
        elif cmd == "read":
            with open(arg) as f:
                print(f.read(), flush=True)
    """
)


class Worker:
    """Another process with its own driver on the same store, driven line by line."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.ask("") == "ready"

    def ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, OverlayDriver]]:
    root = tmp_path / "root"
    driver = new_driver("overlay", root)
    assert isinstance(driver, OverlayDriver)
    driver.create("base")
    with driver.mounted("base") as view:
        (view / "hello").write_text("from base")
    driver.create_read_write("c", "base")
    yield root, driver
    driver.cleanup()
    assert mounts_below(tmp_path) == []


def test_put_in_one_process_keeps_the_others_view(store: tuple[Path, OverlayDriver]) -> None:
    root, driver = store
    a, b = Worker(root), Worker(root)
    try:
        view = Path(a.ask("get c"))
        assert view == driver.home / "c" / "merged" and is_mountpoint(view)
        (view / "written-by-test").write_text("shared")
        assert Path(b.ask("get c")) == view
        assert driver.views() == {str(view): 2}
        assert a.ask("put c") == "ok"
        assert is_mountpoint(view)
        assert b.ask(f"read {view / 'written-by-test'}") == "shared"
        assert b.ask(f"read {view / 'hello'}") == "from base"
        assert driver.views() == {str(view): 1}
        assert driver.get("c") == view  # a third holder: this process
        assert b.ask("put c") == "ok"
        assert is_mountpoint(view)
        driver.put("c")
        assert not is_mountpoint(view)
        assert driver.views() == {}
    finally:
        a.kill()
        b.kill()


def test_killed_holder_is_forgotten_and_its_mount_does_not_leak(
    store: tuple[Path, OverlayDriver],
) -> None:
    root, driver = store
    a = Worker(root)
    view = Path(a.ask("get c"))
    assert a.ask("get c") == str(view)  # twice: counts 2 in a, one holder in the store
    assert driver.views() == {str(view): 1}
    a.kill()
    assert is_mountpoint(view)  # the kernel keeps a dead process's mount...
    assert driver.views() == {}  # ...but its hold is gone
    restarted = new_driver("overlay", root)  # start-up reconciles with mountinfo
    assert isinstance(restarted, OverlayDriver)
    assert not is_mountpoint(view)
    assert restarted.views() == {}
    assert mounts_below(driver.home) == []
    assert not view.exists()


def test_killed_holder_does_not_take_a_live_holders_view(
    store: tuple[Path, OverlayDriver],
) -> None:
    root, driver = store
    a, b = Worker(root), Worker(root)
    try:
        view = Path(a.ask("get c"))
        b.ask("get c")
        a.kill()
        driver.cleanup()  # sweeps what the dead holder left, not b's view
        assert is_mountpoint(view)
        assert driver.views() == {str(view): 1}
        assert b.ask(f"read {view / 'hello'}") == "from base"
        assert b.ask("put c") == "ok"
        assert not is_mountpoint(view)
    finally:
        a.kill()
        b.kill()


def test_leaked_view_is_remounted_fresh_on_get(store: tuple[Path, OverlayDriver]) -> None:
    root, driver = store
    a = Worker(root)
    view = Path(a.ask("get c"))
    a.kill()
    assert driver.get("c") == view  # the dead holder's mount is replaced, not adopted
    assert driver.views() == {str(view): 1}
    assert [m.mountpoint for m in mounts_below(view)] == [str(view)]
    driver.put("c")
    assert not is_mountpoint(view)


def test_detached_views_outlive_their_process(tmp_path: Path) -> None:
    """`lamina mount` / `lamina unmount` style: each call its own short-lived process."""
    root = tmp_path / "root"
    setup = new_driver("overlay", root)
    setup.create("base")
    setup.create_read_write("c", "base")
    code = textwrap.dedent(
        """
        import sys
        from lamina.drivers import new_driver
        from lamina.errors import InUseError
        d = new_driver("overlay", sys.argv[1], {"detached_views": "true"})
        try:
            print(d.get("c") if sys.argv[2] == "get" else d.put("c"))
        except InUseError as exc:
            print("InUseError", exc)
        """
    )

    def call(op: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(root), op], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    view = Path(call("get"))
    assert call("get") == str(view)
    (view / "kept").write_text("x")
    new_driver("overlay", root)  # start-up reconciles, but these holds belong to no process
    assert call("put") == "None"
    assert is_mountpoint(view) and (view / "kept").exists()
    assert call("put") == "None"
    assert not is_mountpoint(view)
    assert call("put").startswith("InUseError")
    assert call("get") == str(view)
    setup.cleanup()  # cleanup ends detached holds too
    assert not is_mountpoint(view)
    assert mounts_below(tmp_path) == []
