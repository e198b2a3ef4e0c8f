"""The crash loop: ``kill -9`` at random moments during create, apply_diff and remove.

A child process loops over driver operations on one store and is killed
with SIGKILL after a random delay.  The parent then starts the driver anew,
runs ``cleanup`` and checks that the store is consistent: every layer that
exists is complete and correct (its content is exactly one of the states it
can legitimately be in: as created, or applied), nothing is left in the
driver's staging or removal areas, and no mount is left behind.

Any driver can run it: the caller gives the two layer tars (in the driver's
own layer format) and a check for the driver's leftover areas;
:data:`LEFTOVER_CHECKS` holds those of lamina's own drivers.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from lamina.drivers import Driver, new_driver
from lamina.drivers.testsuite._graphtest import mounts_under, skip
from lamina.errors import NotSupportedError

__all__ = ["LEFTOVER_CHECKS", "LeftoverCheck", "Snapshot", "crash_loop", "snapshot"]

#: path -> (st_mode, sha256 of a regular file's content or "")
Snapshot = dict[str, tuple[int, str]]
#: Raises AssertionError naming what ``cleanup`` left in the driver's private areas.
LeftoverCheck = Callable[[Driver], None]

_KEEP_LAYERS = 12  # child layers left in the store between kills


def snapshot(root: Path) -> Snapshot:
    """Every entry below ``root`` with its mode and content digest."""
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
    import io, os, random, sys
    from lamina import drivers
    root, name, seed, base_tar, diff_tar, layers_dir, as_file = sys.argv[1:8]
    exec(sys.argv[8])  # the caller's prelude (e.g. start apply helpers at once)
    d = drivers.new_driver(name, root)
    rnd = random.Random(int(seed))
    diff = open(diff_tar, "rb").read()
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        op = rnd.random()
        child = "c%d-%d" % (int(seed), n)
        if op < 0.6:
            d.create(child, "base")
            if as_file == "file":
                with open(diff_tar, "rb") as layer:
                    d.apply_diff(child, "base", layer)
            else:
                d.apply_diff(child, "base", io.BytesIO(diff))
        elif op < 0.8:
            d.create_read_write(child, "base")
        else:
            for victim in list(os.listdir(layers_dir))[:3]:
                if victim.startswith("c"):
                    d.remove(victim)
    """
)


def _layers_dir(d: Driver) -> Path:
    """Where the driver keeps one entry per layer (for the child's remove step)."""
    path = d.home / "dir"
    return path if path.is_dir() else d.home


def crash_loop(
    tmp_path: Path,
    name: str,
    base_tar: bytes,
    diff_tar: bytes,
    check_leftovers: LeftoverCheck,
    *,
    iterations: int | None = None,
    apply_from_file: bool = False,
    child_prelude: str = "",
) -> int:
    """Kill a writer ``iterations`` times (``$LAMINA_CRASH_ITERATIONS``, default 100).

    Returns the number of kills; at least half the iterations must kill the
    child mid-work, or the loop proved nothing and fails.
    """
    if iterations is None:
        iterations = int(os.environ.get("LAMINA_CRASH_ITERATIONS", "100"))
    root = tmp_path / "store"
    try:
        d = new_driver(name, root)
    except NotSupportedError as exc:
        raise skip(f"driver {name} not supported here: {exc}") from exc
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(base_tar))
    # the two legitimate states of a child: as created (parent's content), and applied
    d.create("probe-applied", "base")
    d.apply_diff("probe-applied", "base", io.BytesIO(diff_tar))
    with d.mounted("base") as p:
        before = snapshot(p)
    with d.mounted("probe-applied") as p:
        after = snapshot(p)
    d.remove("probe-applied")
    if before == after:
        raise AssertionError("the diff layer changes nothing: the loop could not tell states apart")
    (tmp_path / "base.tar").write_bytes(base_tar)
    (tmp_path / "diff.tar").write_bytes(diff_tar)
    layers_dir = _layers_dir(d)
    d.cleanup()

    rnd = random.Random(1234)
    kills = 0
    for i in range(iterations):
        args = [str(root), name, str(i), str(tmp_path / "base.tar"), str(tmp_path / "diff.tar")]
        args += [str(layers_dir), "file" if apply_from_file else "memory", child_prelude]
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline().strip() != b"ready":
            raise AssertionError(f"child did not start: {proc.stderr.read()!r}")
        time.sleep(rnd.uniform(0.0, 0.25))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"child failed: {proc.stderr.read()!r}")
        proc.stdout.close()
        proc.stderr.close()

        survivor = new_driver(name, root)
        survivor.cleanup()
        check_leftovers(survivor)
        if mounts_under(root):
            raise AssertionError(f"a mount leaked after kill #{i}: {mounts_under(root)}")
        for entry in sorted(os.listdir(layers_dir)):
            if not entry.startswith("c") or not survivor.exists(entry):
                continue
            with survivor.mounted(entry) as p:
                state = snapshot(p)
            if state not in (before, after):
                raise AssertionError(f"layer {entry} is half-applied after kill #{i}")
        # keep the store small: every layer is checked after every kill, and a fast
        # child would otherwise make the loop quadratic
        children = [e for e in os.listdir(layers_dir) if e.startswith("c") and survivor.exists(e)]
        for entry in sorted(children)[:-_KEEP_LAYERS]:
            survivor.remove(entry)
    if kills < iterations // 2:
        raise AssertionError(f"the child finished {iterations - kills} times: too few crashes")
    return kills


def _vfs_leftovers(d: Driver) -> None:
    import json

    for area in ("staging", "removing"):
        path = d.home / area
        if path.is_dir() and os.listdir(path):
            raise AssertionError(f"{area} holds leftovers after cleanup: {os.listdir(path)}")
    state = d.home / "state"
    for name in os.listdir(state) if state.is_dir() else []:
        # a layer's own records (pristine, parent) stay with it; any other is a leftover
        kind = name.rpartition(".")[2]
        layer = json.loads((state / name).read_bytes()).get("id") if kind != "tmp" else None
        if kind not in ("pristine", "parent") or not d.exists(str(layer)):
            raise AssertionError(f"state holds a leftover after cleanup: {name}")


def _overlay_leftovers(d: Driver) -> None:
    for name in os.listdir(d.home):
        if "-removing" in name or ".tmp" in name or name.startswith("staging"):
            raise AssertionError(f"leftover {name} in {d.home}")
    run = d.home / ".run"
    if run.is_dir():
        left = [n for n in os.listdir(run) if n.endswith(".tmp")]
        if left:
            raise AssertionError(f"leftover temporary files in {run}: {left}")


def _windowsfilter_leftovers(d: Driver) -> None:
    staging = d.home / ".lamina-staging"
    if staging.is_dir() and os.listdir(staging):
        raise AssertionError(f"staging holds leftovers: {os.listdir(staging)}")
    for name in os.listdir(d.home):
        if name.endswith("-removing"):
            raise AssertionError(f"leftover {name} in {d.home}")


#: What ``cleanup`` must have swept, for each of lamina's drivers.
LEFTOVER_CHECKS: Mapping[str, LeftoverCheck] = {
    "vfs": _vfs_leftovers,
    "overlay": _overlay_leftovers,
    "windowsfilter": _windowsfilter_leftovers,
}
