"""Native diff on real kernel-made upper dirs equals the naive path, change for change.

Random changes are made through mounted views (so the upper directories
hold what the kernel writes: copy-ups, whiteouts, opaque directories), two
layers deep.  Then, for the top layer against its parent:

* native ``changes`` equals :func:`lamina.archive.changes` on the merged views;
* the native ``diff`` applied to a copy of the parent's view gives the
  layer's view, and applied natively into a new layer gives the same view;
* the native paths were taken (the naive helpers are made to fail).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina import archive
from lamina._fs import copy_tree
from lamina.drivers import _naive, new_driver
from lamina.drivers.overlay import OverlayDriver
from lamina.drivers.testsuite import run_changes, run_diff_apply

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")

_NAMES = ("a", "b", "c", "d")


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[OverlayDriver]:
    d = new_driver("overlay", tmp_path / "root")
    assert isinstance(d, OverlayDriver)
    if dict(d.status())["Native Overlay Diff"] != "true":
        pytest.skip(f"native diff is off here: {dict(d.status())}")
    yield d
    d.cleanup()


@pytest.fixture
def naive_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the naive path was taken")

    for name in ("changes", "diff", "apply_diff"):
        monkeypatch.setattr(_naive, name, fail)


def _entries(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(Path(dirpath) / name)
    return found


def _mutate(rng: random.Random, root: Path, tag: int) -> None:
    """A few random changes through the mounted view (the kernel writes the upper dir)."""
    for _ in range(rng.randint(3, 9)):
        existing = _entries(root)
        target = rng.choice(existing) if existing and rng.random() < 0.7 else None
        op = rng.choice(("write", "append", "chmod", "chown", "delete", "opaque", "mkdir", "link"))
        try:
            if target is None or op == "mkdir":
                dirs = [p for p in existing if p.is_dir() and not p.is_symlink()]
                parent = rng.choice([root, *dirs])
                name = rng.choice(_NAMES) + str(tag)
                if rng.random() < 0.5:
                    (parent / name).mkdir(exist_ok=True)
                    (parent / name / "f").write_bytes(os.urandom(rng.randint(0, 40)))
                else:
                    (parent / name).write_bytes(os.urandom(rng.randint(0, 40)))
            elif op == "write" and target.is_file() and not target.is_symlink():
                target.write_bytes(os.urandom(rng.randint(0, 40)))
            elif op == "append" and target.is_file() and not target.is_symlink():
                with open(target, "ab") as f:
                    f.write(b"+")
            elif op == "chmod" and not target.is_symlink():
                os.chmod(target, rng.choice((0o700, 0o755, 0o640, 0o4755)))
            elif op == "chown":
                os.lchown(target, rng.choice((0, 1, 1000)), rng.choice((0, 2, 1000)))
            elif op == "delete":
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            elif op == "opaque" and target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # remove and make again: an opaque dir
                target.mkdir()
                (target / "again").write_bytes(b"x")
            elif op == "link" and not target.exists():
                os.symlink(rng.choice(("x", "../y")), target)
        except OSError:
            continue  # e.g. a name reused across types; the next op goes on


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What a layer view is, entry by entry (mtimes in whole seconds, as tars carry them)."""
    result: dict[str, tuple[object, ...]] = {}
    for path in _entries(root):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            extra: object = path.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        else:
            extra = None
        mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns // 1_000_000_000
        result[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra, mtime)
    return result


@pytest.mark.parametrize("seed", range(20))
def test_random_kernel_changes(
    driver: OverlayDriver, tmp_path: Path, seed: int, naive_forbidden: None
) -> None:
    rng = random.Random(seed)
    driver.create("base")
    with driver.mounted("base") as root:
        for name in _NAMES:
            (root / name).mkdir()
            for sub in _NAMES[:3]:
                (root / name / sub).write_bytes(os.urandom(rng.randint(0, 30)))
            (root / name / "deeper").mkdir()
            (root / name / "deeper" / "leaf").write_bytes(b"leaf")
    driver.create("mid", "base")
    with driver.mounted("mid") as root:
        _mutate(rng, root, 1)
    driver.create("top", "mid")
    with driver.mounted("top") as root:
        _mutate(rng, root, 2)

    with driver.mounted("top") as top, driver.mounted("mid") as mid:
        expected_changes = archive.changes(top, mid)
        expected_view = _snapshot(top)
        copy_tree(mid, tmp_path / "replay")
    assert driver.changes("top", "mid") == expected_changes

    with driver.diff("top", "mid") as stream:
        layer = stream.read()
    archive.apply_layer(io.BytesIO(layer), tmp_path / "replay")
    assert _snapshot(tmp_path / "replay") == expected_view

    driver.create("again", "mid")
    driver.apply_diff("again", "mid", io.BytesIO(layer))
    with driver.mounted("again") as again:
        assert _snapshot(again) == expected_view
    assert driver.changes("again", "mid") == expected_changes


def test_conformance_changes_takes_the_native_path(
    driver: OverlayDriver, naive_forbidden: None
) -> None:
    run_changes(driver)


def test_conformance_diff_apply_takes_the_native_path(
    driver: OverlayDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the naive path was taken")

    # DiffSize(upper, "") stays naive: "" is not the layer's parent (as in Docker)
    monkeypatch.setattr(_naive, "diff", fail)
    monkeypatch.setattr(_naive, "apply_diff", fail)
    run_diff_apply(driver, 10)
