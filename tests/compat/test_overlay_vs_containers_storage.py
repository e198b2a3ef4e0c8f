"""Differential test: lamina's overlay driver against containers-storage's overlay driver.

On the debootstrap layers of scripts/ci-workload.sh (``layer0.tar``, a Debian
12 minbase root filesystem, and ``layer1.tar`` on top of it, with 128
whiteouts and an opaque directory), both tools apply the layers into their
own overlay stores (lamina natively, straight into ``diff/`` with overlay
whiteouts).  Then, entry by entry with tests/compat/_treecmp.py:

* lamina's merged view of each layer equals containers-storage's;
* lamina's native ``diff`` of layer1 against layer0, imported by
  containers-storage as a new layer on its layer0, gives the same tree as
  layer1 does in both stores; and lamina's ``changes`` for layer1 names
  exactly the paths that differ between the two views.

One known, deliberate difference is not counted: the mode of the view's
root.  containers-storage creates a parentless layer's ``diff/`` 0555 (its
``defaultPerms``), Docker's overlay2 and lamina 0755 (graphtest's
CreateEmpty checks it); both then give a child its parent's root mode.

Everything happens on the session's loop-mounted scratch ext4 (see conftest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _treecmp import Comparison, Tree, compare, scan

pytestmark = [pytest.mark.differential, pytest.mark.root, pytest.mark.workload]

LAYERS = ("layer0", "layer1")


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: overlay mounts, and real layers carry owners and devices")


def _require_cs() -> str:
    cs = shutil.which("containers-storage")
    if cs is None:
        pytest.skip("containers-storage not installed (apt-get install containers-storage)")
    return cs


def _run(cmd: list[str | os.PathLike[str]]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shown = " ".join(map(str, cmd))
        raise AssertionError(f"{shown} exited {proc.returncode}:\n{proc.stderr.strip()}")
    return proc.stdout


def _check(result: Comparison, log: list[str]) -> None:
    excused = f" ({len(result.excused)} excused: {result.excused_by})" if result.excused else ""
    log.append(result.summary() + excused)
    assert not result.differences, "\n" + result.report()


def _root_mode_excused(result: Comparison) -> Comparison:
    """Move the root's mode difference (0555 vs 0755, see the module doc) to ``excused``."""
    root_mode = [d for d in result.differences if d.path == "." and d.kind == "mode"]
    for d in root_mode:
        assert (d.expected, d.actual) == ("0555", "0755"), d
    result.differences = [d for d in result.differences if d not in root_mode]
    result.excused += root_mode
    result.excused_by = "containers-storage makes parentless layer roots 0555"
    return result


@dataclass(frozen=True)
class Workload:
    work: Path

    def tar(self, layer: str) -> Path:
        return self.work / "layers" / f"{layer}.tar"


@pytest.fixture(scope="module")
def workload() -> Workload:
    """The cached workload of scripts/ci-workload.sh, or a skip saying why it is absent."""
    _require_root()
    w = Workload(Path(os.environ.get("BENCH_DIR") or "/var/tmp/lamina-bench") / "work")
    missing = [str(w.tar(n)) for n in LAYERS if not w.tar(n).exists()]
    if missing:
        marker = w.work / "UNAVAILABLE"
        why = marker.read_text().strip() if marker.exists() else "not built"
        pytest.skip(
            f"real workload unavailable ({why}); missing {', '.join(missing)}; "
            "build it as root with scripts/ci-workload.sh"
        )
    return w


@dataclass
class Lamina:
    trees: dict[str, Tree] = field(default_factory=dict)
    diff1: Path | None = None
    changed: set[str] = field(default_factory=set)
    status: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def lamina_overlay(workload: Workload, scratch: Path) -> Iterator[Lamina]:
    from lamina.drivers import new_driver

    root = scratch / "lamina-overlay"
    try:
        d = new_driver("overlay", root)
    except Exception as exc:  # a NotSupportedError names why overlay cannot run here
        pytest.skip(f"lamina overlay driver unavailable: {exc}")
    out = Lamina(status=dict(d.status()))
    try:
        parent: str | None = None
        for layer in LAYERS:
            d.create(layer, parent)
            with open(workload.tar(layer), "rb") as f:
                d.apply_diff(layer, parent, f)
            parent = layer
        for layer in LAYERS:
            with d.mounted(layer) as view:
                out.trees[layer] = scan(view)
        out.diff1 = scratch / "lamina-layer1-diff.tar"
        with d.diff("layer1", "layer0") as stream, open(out.diff1, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        out.changed = {c.path.lstrip("/") for c in d.changes("layer1", "layer0")}
        yield out
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def cs_overlay(workload: Workload, scratch: Path, lamina_overlay: Lamina) -> dict[str, Tree]:
    """containers-storage's overlay views of layer0, layer1 and of lamina's diff on layer0."""
    cs = _require_cs()
    root = scratch / "cs-overlay"
    base: list[str | os.PathLike[str]] = [
        cs, "--storage-driver", "overlay", "--graph", root / "graph", "--run", root / "run",
    ]  # fmt: skip
    assert lamina_overlay.diff1 is not None
    imports = [
        ("layer0", workload.tar("layer0"), []),
        ("layer1", workload.tar("layer1"), ["layer0"]),
        ("lamina-diff1", lamina_overlay.diff1, ["layer0"]),
    ]
    trees: dict[str, Tree] = {}
    try:
        for layer, tar, parent in imports:
            _run([*base, "import-layer", "--id", layer, "--file", tar, *parent])
        for layer, _, _ in imports:
            view = _run([*base, "mount", layer]).strip()
            try:
                trees[layer] = scan(view)
            finally:
                _run([*base, "unmount", layer])
    finally:
        subprocess.run([*base, "shutdown", "--force"], capture_output=True, check=False)
    return trees


def test_lamina_takes_the_native_path(lamina_overlay: Lamina) -> None:
    assert lamina_overlay.status["Native Overlay Diff"] == "true", lamina_overlay.status


@pytest.mark.parametrize("layer", LAYERS)
def test_merged_views_equal_containers_storage(
    layer: str,
    lamina_overlay: Lamina,
    cs_overlay: dict[str, Tree],
    differential_log: list[str],
) -> None:
    result = compare(
        cs_overlay[layer],
        lamina_overlay.trees[layer],
        expected_label=f"containers-storage overlay {layer}",
        actual_label=f"lamina overlay {layer}",
    )
    _check(_root_mode_excused(result), differential_log)


def test_lamina_diff_applied_by_containers_storage(
    lamina_overlay: Lamina, cs_overlay: dict[str, Tree], differential_log: list[str]
) -> None:
    _check(
        compare(
            cs_overlay["layer1"],
            cs_overlay["lamina-diff1"],
            expected_label="containers-storage overlay layer1",
            actual_label="containers-storage overlay layer0 + lamina diff(layer1)",
        ),
        differential_log,
    )


def test_native_changes_name_what_differs(
    lamina_overlay: Lamina, differential_log: list[str]
) -> None:
    """Every path whose entry differs between the views is a change, and nothing else is."""
    old, new = lamina_overlay.trees["layer0"].entries, lamina_overlay.trees["layer1"].entries
    differs, touched = set(), set()
    for path in set(old) | set(new):
        if path == ".":
            continue
        a, b = old.get(path), new.get(path)
        if a is None or b is None:
            parent = path.rpartition("/")[0]
            if parent and (parent not in old or parent not in new):
                if b is not None:
                    touched.add(path)  # inside an added directory: listed, as Docker does
                continue  # inside a deleted directory: only the directory is listed
            differs.add(path)
        elif (a.fmt, a.perm, a.uid, a.gid, a.size, a.sha256, a.target, a.rdev) != (
            b.fmt, b.perm, b.uid, b.gid, b.size, b.sha256, b.target, b.rdev,
        ):  # fmt: skip
            differs.add(path)
        elif a.mtime_s != b.mtime_s or a.xattrs != b.xattrs:
            touched.add(path)  # rewritten with the same content, or a directory
    parents = {p.rpartition("/")[0] for p in differs | touched} - {""}
    changed = lamina_overlay.changed
    missing = sorted(differs - changed)
    unexplained = sorted(changed - differs - touched - parents)
    differential_log.append(
        f"lamina overlay changes(layer1, layer0): {len(changed)} paths; "
        f"{len(differs)} entries differ in type/mode/owner/content/target, "
        f"{len(missing)} of them missing; {len(unexplained)} changes unexplained"
    )
    assert not missing, missing[:20]
    assert not unexplained, unexplained[:20]
