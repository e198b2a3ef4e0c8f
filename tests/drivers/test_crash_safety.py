"""kill -9 at random moments during create, apply_diff and remove; cleanup makes it whole.

A child process loops over driver operations on one store and is killed
with SIGKILL after a random delay.  The parent then starts the driver anew,
runs ``cleanup`` and checks that the store is consistent: every layer that
exists is complete and correct (its content is exactly one of the states it
can legitimately be in: before its apply, or after it), nothing is left in
staging or removal areas, and no mount is left behind.

``LAMINA_CRASH_ITERATIONS`` sets the number of kill points per driver
(default 100, CI-sized); run with thousands by hand.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina import drivers
from lamina.errors import NotSupportedError

ITERATIONS = int(os.environ.get("LAMINA_CRASH_ITERATIONS", "100"))

Snapshot = dict[str, tuple[int, str]]
_KEEP_LAYERS = 12  # child layers left in the store between kills


def _linux_tar(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
        for name in whiteouts:
            tf.addfile(tarfile.TarInfo(name))
    return buf.getvalue()


def _snapshot(root: Path) -> Snapshot:
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = ""
            if p.is_file() and not p.is_symlink():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st.st_mode, digest)
    return out


_CHILD = textwrap.dedent(
    """
    import random, sys
    from lamina import drivers
    root, name, seed, base_tar, diff_tar = sys.argv[1:6]
    helpers = sys.argv[7] == "helpers"
    d = drivers.new_driver(name, root)
    rnd = random.Random(int(seed))
    base, diff = open(base_tar, "rb").read(), open(diff_tar, "rb").read()
    import io
    if helpers:  # the layer as a file, its regular files made by helper processes
        from lamina.archive import _apply
        _apply.helper_after = 0
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        op = rnd.random()
        child = "c%d-%d" % (int(seed), n)
        if op < 0.6:
            d.create(child, "base")
            if helpers:
                with open(diff_tar, "rb") as layer:
                    d.apply_diff(child, "base", layer)
            else:
                d.apply_diff(child, "base", io.BytesIO(diff))
        elif op < 0.8:
            d.create_read_write(child, "base")
        else:
            for victim in list(__import__("os").listdir(sys.argv[6]))[:3]:
                if victim.startswith("c"):
                    d.remove(victim)
    """
)


def _driver_or_skip(name: str, root: Path) -> drivers.Driver:
    try:
        return drivers.new_driver(name, root)
    except NotSupportedError as exc:
        pytest.skip(f"driver {name} not supported here: {exc}")


def _layers_dir(d: drivers.Driver) -> Path:
    """Where the driver keeps one entry per layer (for the child's remove step)."""
    for candidate in ("dir", ""):
        path = d.home / candidate if candidate else d.home
        if path.is_dir():
            return path
    return d.home


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _crash_loop(
    tmp_path: Path,
    name: str,
    base_tar: bytes,
    diff_tar: bytes,
    check_leftovers: Callable[[drivers.Driver], None],
    *,
    helpers: bool = False,
) -> None:
    root = tmp_path / "store"
    d = _driver_or_skip(name, root)
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(base_tar))
    # the two legitimate states of a child: as created (parent's content), and applied
    d.create("probe-applied", "base")
    d.apply_diff("probe-applied", "base", io.BytesIO(diff_tar))
    with d.mounted("base") as p:
        before = _snapshot(p)
    with d.mounted("probe-applied") as p:
        after = _snapshot(p)
    d.remove("probe-applied")
    assert before != after
    (tmp_path / "base.tar").write_bytes(base_tar)
    (tmp_path / "diff.tar").write_bytes(diff_tar)
    layers_dir = _layers_dir(d)
    d.cleanup()

    rnd = random.Random(1234)
    kills = 0
    for i in range(ITERATIONS):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(root),
                name,
                str(i),
                str(tmp_path / "base.tar"),
                str(tmp_path / "diff.tar"),
                str(layers_dir),
                "helpers" if helpers else "alone",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(rnd.uniform(0.0, 0.25))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"child failed: {proc.stderr.read() if proc.stderr else ''!r}")

        survivor = drivers.new_driver(name, root)
        survivor.cleanup()
        check_leftovers(survivor)
        assert _mounts_under(root) == [], "a mount leaked"
        for entry in sorted(os.listdir(layers_dir)):
            if not entry.startswith("c") or not survivor.exists(entry):
                continue
            with survivor.mounted(entry) as p:
                state = _snapshot(p)
            assert state in (before, after), f"layer {entry} is half-applied after kill #{i}"
        # keep the store small: every layer is checked after every kill, and a fast
        # child would otherwise make the loop quadratic
        children = [e for e in os.listdir(layers_dir) if e.startswith("c") and survivor.exists(e)]
        for entry in sorted(children)[:-_KEEP_LAYERS]:
            survivor.remove(entry)
    assert kills >= ITERATIONS // 2, "the child finished too often: no crash was exercised"


def _vfs_leftovers(d: drivers.Driver) -> None:
    for area in ("staging", "removing", "state"):
        path = d.home / area
        if path.is_dir():
            left = [n for n in os.listdir(path) if not n.endswith(".pristine")]
            assert left == [], f"{area} holds leftovers after cleanup: {left}"


@pytest.mark.slow
@pytest.mark.parametrize("helpers", [False, True], ids=["alone", "helpers"])
def test_vfs_survives_kill_at_random_points(tmp_path: Path, helpers: bool) -> None:
    # vfs applies onto a copy of the parent: with helpers, files replace files
    base = _linux_tar({f"usr/lib/f{i:03d}": os.urandom(2048) for i in range(150)})
    diff = _linux_tar(
        {f"opt/app/g{i:03d}": os.urandom(4096) for i in range(150)},
        whiteouts=tuple(f"usr/lib/.wh.f{i:03d}" for i in range(0, 150, 3)),
    )
    _crash_loop(tmp_path, "vfs", base, diff, _vfs_leftovers, helpers=helpers)


def _overlay_leftovers(d: drivers.Driver) -> None:
    for name in os.listdir(d.home):
        assert "-removing" not in name and ".tmp" not in name and not name.startswith("staging"), (
            f"leftover {name} in {d.home}"
        )


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="overlay needs root")
@pytest.mark.parametrize("helpers", [False, True], ids=["alone", "helpers"])
def test_overlay_survives_kill_at_random_points(tmp_path: Path, helpers: bool) -> None:
    # overlay applies into an empty staging directory: with helpers, the kill also
    # lands while helper processes are creating files
    base = _linux_tar({f"usr/lib/f{i:03d}": os.urandom(2048) for i in range(150)})
    diff = _linux_tar(
        {f"opt/app/g{i:03d}": os.urandom(4096) for i in range(150)},
        whiteouts=tuple(f"usr/lib/.wh.f{i:03d}" for i in range(0, 150, 3)),
    )
    _crash_loop(tmp_path, "overlay", base, diff, _overlay_leftovers, helpers=helpers)


def _windowsfilter_leftovers(d: drivers.Driver) -> None:
    staging = d.home / ".lamina-staging"
    if staging.is_dir():
        assert os.listdir(staging) == [], f"staging holds leftovers: {os.listdir(staging)}"
    for name in os.listdir(d.home):
        assert not name.endswith("-removing"), f"leftover {name} in {d.home}"


@pytest.mark.slow
def test_windowsfilter_survives_kill_at_random_points(tmp_path: Path) -> None:
    from test_windowsfilter_fixtures import base_layer, diff_layer_1, go_layer

    _crash_loop(
        tmp_path,
        "windowsfilter",
        go_layer(base_layer()),
        go_layer(diff_layer_1()),
        _windowsfilter_leftovers,
    )
