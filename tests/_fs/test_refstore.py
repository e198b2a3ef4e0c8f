"""Cross-process mount counts: holders, crashes, reboots, and the kernel's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina._fs import Mount
from lamina._fs._mount import is_mountpoint, mount, umount
from lamina._fs._refstore import DETACHED, RefStore, SharedMounter, holder_alive, this_holder

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")


def _dead_holder() -> str:
    """The holder name of a process that has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "import lamina._fs._refstore as r; print(r.this_holder())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def test_holder_names_tell_live_from_dead() -> None:
    me = this_holder()
    assert me.startswith(f"{os.getpid()}:")
    assert holder_alive(me)
    assert not holder_alive(_dead_holder())
    pid, _, start = me.partition(":")
    assert not holder_alive(f"{pid}:{int(start) + 1}")  # same pid, another process
    assert not holder_alive("garbage")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "view"
    path.mkdir()
    yield path
    while is_mountpoint(path):
        umount(path)


def _mounter(path: Path) -> tuple[list[str], Callable[[], None], Callable[[], None]]:
    log: list[str] = []

    def do_mount() -> None:
        log.append("mount")
        mount("tmpfs", path, "tmpfs", 0, "size=1m")

    def do_unmount() -> None:
        log.append("unmount")
        umount(path)

    return log, do_mount, do_unmount


@root_only
def test_mount_once_unmount_at_last_release(tmp_path: Path, target: Path) -> None:
    store = RefStore(tmp_path / "run")
    log, do_mount, do_unmount = _mounter(target)
    assert store.acquire(str(target), do_mount, do_unmount) == 1
    assert store.acquire(str(target), do_mount, do_unmount) == 1
    assert log == ["mount"]
    assert store.holders(str(target)) == {this_holder(): 2}
    assert store.release(str(target), do_unmount) == 1
    assert is_mountpoint(target)
    assert store.release(str(target), do_unmount) == 0
    assert log == ["mount", "unmount"]
    assert not is_mountpoint(target)
    assert store.counts() == {}


@root_only
def test_dead_holders_are_dropped_and_their_mounts_unmounted(tmp_path: Path, target: Path) -> None:
    store = RefStore(tmp_path / "run")
    mount("tmpfs", target, "tmpfs", 0, "size=1m")  # a crashed process's view
    with store.locked() as table:
        table[str(target)] = {_dead_holder(): 3}
    assert store.counts() == {}
    assert store.reconcile() == [str(target)]
    assert not is_mountpoint(target)


@root_only
def test_unrecorded_candidates_are_leaks(tmp_path: Path, target: Path) -> None:
    store = RefStore(tmp_path / "run")
    mount("tmpfs", target, "tmpfs", 0, "size=1m")
    assert store.reconcile([str(target)]) == [str(target)]
    assert not is_mountpoint(target)


@root_only
def test_stale_mount_is_made_again_on_acquire(tmp_path: Path, target: Path) -> None:
    store = RefStore(tmp_path / "run")
    mount("tmpfs", target, "tmpfs", 0, "size=1m")
    (target / "stale").write_text("old view")
    log, do_mount, do_unmount = _mounter(target)
    store.acquire(str(target), do_mount, do_unmount)
    assert log == ["unmount", "mount"]
    assert not (target / "stale").exists()
    store.release(str(target), do_unmount)


@root_only
def test_vanished_mount_is_mounted_again(tmp_path: Path, target: Path) -> None:
    store = RefStore(tmp_path / "run")
    log, do_mount, do_unmount = _mounter(target)
    store.acquire(str(target), do_mount, do_unmount)
    umount(target)  # someone unmounted it behind our back
    store.acquire(str(target), do_mount, do_unmount)
    assert log == ["mount", "mount"]
    assert is_mountpoint(target)
    assert store.holders(str(target)) == {this_holder(): 2}
    store.release(str(target), do_unmount)
    store.release(str(target), do_unmount)
    assert not is_mountpoint(target)


def test_table_from_another_boot_is_discarded(tmp_path: Path) -> None:
    store = RefStore(tmp_path / "run")
    (tmp_path / "run" / "mounts.json").write_text(
        json.dumps({"boot_id": "not-this-boot", "mounts": {"/x": {this_holder(): 1}}})
    )
    assert store.counts() == {}


def test_corrupt_table_reads_as_empty(tmp_path: Path) -> None:
    store = RefStore(tmp_path / "run")
    (tmp_path / "run" / "mounts.json").write_text("{not json")
    assert store.counts() == {}


def test_locked_is_reentrant_and_writes_back(tmp_path: Path) -> None:
    store = RefStore(tmp_path / "run")
    with store.locked() as outer:
        with store.locked() as inner:
            assert inner is outer
            inner["/some/view"] = {this_holder(): 1}
        assert not (tmp_path / "run" / "mounts.json").exists()  # written at the outermost end
    data = json.loads((tmp_path / "run" / "mounts.json").read_text())
    assert data["mounts"] == {"/some/view": {this_holder(): 1}}


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lamina._fs import Mount
    from lamina._fs._mount import mount, umount
    from lamina._fs._refstore import RefStore, SharedMounter

    run, target = sys.argv[1], Path(sys.argv[2])
    spec = Mount("tmpfs", "tmpfs", target)
    mounter = SharedMounter(
        RefStore(run),
        lambda m: mount("tmpfs", m.target, "tmpfs", 0, "size=1m"),
        lambda m: umount(m.target),
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "get":
            mounter.acquire("k", lambda: spec)
        elif cmd == "put":
            mounter.release("k")
        print("ok", flush=True)
    """
)


@root_only
def test_two_processes_share_one_mount(tmp_path: Path, target: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path / "run"), str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]

    def send(proc: subprocess.Popen[str], cmd: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"

    try:
        a, b = procs
        send(a, "get")
        (target / "from-a").write_text("a")
        send(b, "get")
        assert (target / "from-a").exists()  # b did not mount over a's view
        send(a, "put")
        assert is_mountpoint(target) and (target / "from-a").exists()
        assert len(RefStore(tmp_path / "run").holders(str(target))) == 1
        send(b, "put")
        assert not is_mountpoint(target)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_shared_mounter_direct_mounts_never_touch_the_store(tmp_path: Path) -> None:
    calls: list[str] = []
    mounter = SharedMounter(
        RefStore(tmp_path / "run"), lambda m: calls.append("m"), lambda m: calls.append("u")
    )
    spec = Mount("direct", str(tmp_path), tmp_path)
    assert mounter.acquire("x", lambda: spec) == tmp_path
    mounter.release("x")
    assert calls == []
    assert not (tmp_path / "run" / "mounts.json").exists()


@root_only
def test_detached_holds_survive_reconcile_and_release_explicitly(
    tmp_path: Path, target: Path
) -> None:
    store = RefStore(tmp_path / "run")
    log, do_mount, do_unmount = _mounter(target)
    assert store.release(str(target), do_unmount, DETACHED) == -1  # nothing held
    store.acquire(str(target), do_mount, do_unmount, holder=DETACHED)
    assert store.reconcile([str(target)]) == []  # belongs to no process: never reaped
    assert store.holders(str(target)) == {DETACHED: 1}
    assert store.release(str(target), do_unmount, DETACHED) == 0
    assert log == ["mount", "unmount"]
    assert store.release(str(target), do_unmount, DETACHED) == -1
