"""Several processes, and kill -9: each layer stored once, every image complete or absent."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _images import layer_tar, oci_layout

from lamina import Store

SRC = str(Path(__file__).resolve().parents[2] / "src")

LOAD = """
import sys
from lamina import Store
with Store(sys.argv[1], driver=sys.argv[2]) as s:
    images = s.load(sys.argv[3])
    print(" ".join(i.id for i in images))
"""


def big_layers(count: int, size: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [
        layer_tar({f"l{i}": None, f"l{i}/blob": rng.randbytes(size), f"l{i}/small": b"x"})
        for i in range(count)
    ]


def start_load(root: Path, layout: Path, driver: str = "vfs") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, "-c", LOAD, str(root), driver, str(layout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def driver_layer_dirs(root: Path) -> list[str]:
    home = root / "vfs" / "dir"
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_two_processes_load_one_image_each_layer_once(tmp_path: Path) -> None:
    built = oci_layout(tmp_path / "layout", [("both:1", big_layers(4, 2 << 20))], compress=False)
    root = tmp_path / "store"
    with Store(root, driver="vfs"):
        pass  # create the database before the race (as the first command on a host does)
    procs = [start_load(root, tmp_path / "layout") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.split() == built.ids
    with Store(root) as s:
        assert [i.id for i in s.images()] == built.ids
        assert len(s.layers()) == 4
        assert len(driver_layer_dirs(root)) == 4
        report = s.check()
        assert report.ok, report.problems


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_kill_9_during_load_then_reopen(tmp_path: Path, delay: float) -> None:
    oci_layout(tmp_path / "layout", [("crash:1", big_layers(6, 3 << 20))], compress=True)
    root = tmp_path / "store"
    with Store(root, driver="vfs"):
        pass
    proc = start_load(root, tmp_path / "layout")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # wait for the load's intent
        try:
            with sqlite3.connect(root / "store.db", timeout=5) as conn:
                if conn.execute("SELECT count(*) FROM intents").fetchone()[0]:
                    break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed = proc.returncode == -signal.SIGKILL
    with Store(root) as s:  # never raises on leftovers
        images = s.images()
        if not killed:
            assert len(images) == 1
        for image in images:  # complete or absent
            have = {layer.chain_id for layer in s.layers()}
            assert set(image.layers) <= have
            assert len(image.layers) == 6
        report = s.check()
        assert report.ok, report.problems
        for image in images:
            s.remove_image(image)
        s.gc()
        assert s.images() == [] and s.layers() == []
        assert driver_layer_dirs(root) == []
        blobs = root / "blobs" / "sha256"
        assert not blobs.exists() or list(blobs.iterdir()) == []
        tmp = root / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
        splits = root / "tar-split"
        assert not splits.exists() or list(splits.iterdir()) == []
        assert s._db.intents() == []


def test_recovery_leaves_a_chain_alone_while_a_live_process_stores_it(tmp_path: Path) -> None:
    """A dead writer's intent for a chain that a live process is storing again is kept."""
    from lamina._fs import file_lock

    oci_layout(tmp_path / "layout", [("x:1", [layer_tar({"a": b"1"})])])
    root = tmp_path / "store"
    with Store(root, driver="vfs") as s:
        (image,) = s.load(tmp_path / "layout")
        chain = image.layers[0]
        s.driver.create("e" * 64)
        with s._db.tx() as c:  # what a writer killed by kill -9 leaves
            c.execute(
                "INSERT INTO intents (operation, subject, pid, started, detail)"
                " VALUES ('store-layer', ?, 999999999, 0, ?)",
                ("sha256:" + "e" * 64, "vfs/" + "e" * 64),
            )
        del chain
    # "a live process stores it": it holds the chain's lock
    with file_lock(root / "locks" / ("e" * 64 + ".lock")), Store(root) as s:
        assert s.driver.exists("e" * 64)
        assert len(s._db.intents()) == 1
    with Store(root) as s:  # the lock is free: the leftover goes
        assert not s.driver.exists("e" * 64)
        assert s._db.intents() == []
        assert s.check().ok


COMMIT = """
import sys
from lamina import Store
with Store(sys.argv[1]) as s:
    c = s.container("box")
    s.commit(c, "committed:1")
    print("done")
"""


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3])
def test_kill_9_during_commit_then_reopen(tmp_path: Path, delay: float) -> None:
    oci_layout(tmp_path / "layout", [("base:1", [layer_tar({"a": b"1"})])])
    root = tmp_path / "store"
    with Store(root, driver="vfs") as s:
        (image,) = s.load(tmp_path / "layout")
        c = s.create_container(image, name="box")
        top = s.mount(c)
        rng = random.Random(2)
        for n in range(8):
            (top / f"f{n}").write_bytes(rng.randbytes(1 << 20))
        s.unmount(c)
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMIT, str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3 + delay)  # the interpreter's start-up, then into the commit
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    with Store(root) as s:
        names = {n for i in s.images() for n in i.names}
        if "docker.io/library/committed:1" in names:
            assert len(s.image("committed:1").layers) == 2
        report = s.check()
        assert report.ok, report.problems
        s.gc()
        assert len(s.images()) in (1, 2)
        assert len(s.layers()) == len(s.images())  # base, and the commit's layer if it finished
        assert s._db.intents() == []
        assert len(driver_layer_dirs(root)) == len(s.layers()) + 1  # + the container's layer


def test_gc_and_recovery_in_another_process_spare_a_load_in_flight(tmp_path: Path) -> None:
    """Layers a live load stored but no image names yet are leased: gc leaves them."""
    built = oci_layout(tmp_path / "layout", [("busy:1", big_layers(6, 3 << 20, seed=5))])
    root = tmp_path / "store"
    with Store(root, driver="vfs"):
        pass
    proc = start_load(root, tmp_path / "layout")
    rounds = 0
    while proc.poll() is None:
        with Store(root) as s:  # each open also runs recovery
            s.gc()
        rounds += 1
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert out.split() == built.ids
    assert rounds > 0
    with Store(root) as s:
        (image,) = s.images()
        assert len(image.layers) == 6
        report = s.check()
        assert report.ok, report.problems


def test_a_removal_cut_short_after_its_commit_is_finished_on_open(tmp_path: Path) -> None:
    """remove_image commits the rows first; a kill before the driver removals is finished later."""
    oci_layout(tmp_path / "layout", [("gone:1", [layer_tar({"a": b"1"}), layer_tar({"b": b"2"})])])
    root = tmp_path / "store"
    with Store(root, driver="vfs") as s:
        (image,) = s.load(tmp_path / "layout")
        with s._db.tx() as c:
            c.execute("DELETE FROM images WHERE id = ?", (image.id,))
        intent = s._db.drop_layers_intent(list(reversed(image.layers)))
        assert intent is not None
        with s._db.tx() as c:  # as if the process died right after that commit
            c.execute("UPDATE intents SET pid = 999999999 WHERE id = ?", (intent,))
        assert len(driver_layer_dirs(root)) == 2
    with Store(root) as s:
        assert driver_layer_dirs(root) == []
        assert s._db.intents() == []
        assert s.check().ok
        blobs = root / "blobs" / "sha256"
        assert list(blobs.iterdir()) == []
