"""The benchmark harness runs a job end to end (correctness only: no timing is asserted).

* as root: ``bench/run.py --jobs selftest`` on its own fresh loop-mounted ext4
  times GNU tar and lamina applying a tiny layer, checks lamina's output
  against GNU tar's, writes the results JSON and the Markdown table, and
  leaves no mount or image behind;
* unprivileged: a lamina variant that fails is skipped with its own error
  message while the peers are still timed, and the table says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

from _harness import Group, Runner, Scratch, Variant, shared_dir  # noqa: E402
from _report import render  # noqa: E402

BENCHLIB = shared_dir() / "bench" / "benchlib.py"


def _need_benchlib() -> None:
    if not BENCHLIB.is_file():
        pytest.skip(f"no shared benchlib at {BENCHLIB} (set LAMINA_SHARED)")


def test_selftest_job_end_to_end(tmp_path: Path) -> None:
    _need_benchlib()
    if os.geteuid() != 0:
        pytest.skip("needs root: loop-mounted ext4, drop_caches")
    for tool in ("tar", "losetup", "mkfs.ext4", "fstrim"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    results, docs = tmp_path / "results.json", tmp_path / "benchmarks.md"
    env = {**os.environ, "BENCH_DIR": str(tmp_path / "bench"), "LAMINA_PYTHON": sys.executable}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--jobs", "selftest", "--runs", "1",
         "--warmup", "0", "--scratch-gb", "1", "--results", str(results), "--docs", str(docs)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    res = json.loads(results.read_text())
    assert res["partial"] is False
    assert res["filesystem"].startswith("fresh ext4 with journal on /dev/loop")
    [group] = res["groups"]
    assert group["name"] == "selftest-apply-tiny.tar"
    assert group["drop_caches"] is True
    assert group["skipped"] == []
    by_label = {r["label"]: r for r in group["records"]}
    assert list(by_label) == ["gnu-tar", "lamina apply_layer"]
    for rec in by_label.values():
        assert rec["runs"] == 1 and "failed" not in rec
        assert rec["min"] <= rec["median"] <= rec["max"]
        assert rec["synced"] is False
    assert by_label["gnu-tar"]["ratio_to_ref"] == 1.0
    # lamina's tree was compared with the one GNU tar extracted, entry by entry
    assert by_label["lamina apply_layer"]["check"].startswith("ok: ")
    assert '"differences": 0' in by_label["lamina apply_layer"]["check"]

    table = docs.read_text()
    assert "apply a 204-entry layer (harness self-test)" in table
    assert "| gnu-tar (ref) |" in table and "**lamina apply_layer**" in table
    assert "| ext4-loop | dropped | no |" in table

    # nothing left behind: no mount below BENCH_DIR, no scratch image
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()
    assert not (tmp_path / "bench" / "lamina-scratch.img").exists()


def test_failing_lamina_variant_is_skipped_with_its_reason(tmp_path: Path) -> None:
    _need_benchlib()
    scratch = Scratch(tmp_path / "scratch", None, "dir")
    py = sys.executable
    group = Group(
        name="harness-skip",
        job="selftest",
        title="a stub next to a peer",
        variants=[
            Variant("peer", f"{py} -c 'pass'"),
            Variant(
                "lamina stub",
                f"{py} -c 'raise NotImplementedError(\"export_tree is a stub\")'",
                lamina=True,
            ),
            Variant(
                "lamina checked",
                f"{py} -c 'pass'",
                lamina=True,
                check="echo 42 entries; false",
            ),
        ],
    )
    with scratch:
        runner = Runner(BENCHLIB, py, 1, 0, False, scratch, tmp_path / "log", verbose=False)
        out = runner.run_group(group)

    assert [s["label"] for s in out["skipped"]] == ["lamina stub"]
    assert "NotImplementedError: export_tree is a stub" in out["skipped"][0]["reason"]
    labels = [r["label"] for r in out["records"]]
    assert labels == ["peer", "lamina checked"]
    assert out["records"][1]["check"] == "FAILED: 42 entries"
    assert out["drop_caches"] is False

    res = {
        "date": "2026-01-01 00:00", "elapsed_min": 0.1, "mode": "quick", "runs": 1,
        "warmup": 0, "filesystem": scratch.fs_desc, "groups": [out],
        "machine": {"cpu": "cpu", "cores": 2, "mem_gib": 1, "kernel": "k", "os": "os",
                    "python": "3", "tools": {"GNU tar": "1"}},
        "lamina": {"commit": "abc", "dirty_files": 0},
    }  # fmt: skip
    table = render(res)
    assert "skipped" in table and "export_tree is a stub" in table
    assert "| peer (ref) |" in table
    assert "| dir | warm | no |" in table  # never passed off as the loop-mounted ext4


def test_measurements_made_while_preparing_reach_the_results_and_the_targets(
    tmp_path: Path,
) -> None:
    """What ``prepare`` measures (the in-process call alone) lands beside the target's ratio."""
    _need_benchlib()
    from _report import targets_table

    scratch = Scratch(tmp_path / "scratch", None, "dir")
    py = sys.executable
    notes: list[str] = []
    extra: dict[str, object] = {}

    def prepare() -> None:
        extra["call_alone_ms"] = {"changes": 12.5, "diff_size": 3.25}
        notes.append("measured while preparing")

    group = Group(
        name="changes-100-on-small",
        job="changes",
        title="walk vs changes",
        variants=[
            Variant("full walk", f"{py} -c 'pass'"),
            Variant("lamina overlay changes (CLI, native)", f"{py} -c 'pass'", lamina=True),
        ],
        prepare=prepare,
        notes=notes,
        extra=extra,
    )
    with scratch:
        runner = Runner(BENCHLIB, py, 1, 0, False, scratch, tmp_path / "log", verbose=False)
        out = runner.run_group(group)
    assert out["notes"] == ["measured while preparing"]
    assert out["extra"] == {"call_alone_ms": {"changes": 12.5, "diff_size": 3.25}}
    ref = out["records"][0]["median"]
    rows = [r for r in targets_table({"groups": [out]}) if r.startswith("| overlay changes")]
    assert len(rows) == 1
    assert f"changes() call alone, in-process: 12.5 ms = x{12.5 / 1000 / ref:.3f}" in rows[0]
