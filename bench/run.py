#!/usr/bin/env python3
"""Run lamina's benchmark against GNU tar, containers-storage, tarfile and umoci.

usage (as root; the workload built by scripts/ci-workload.sh):
  /tmp/v/bin/python bench/run.py [--quick] [--jobs apply,diff,...] [--runs N] [--warmup N]
                                 [--no-drop-caches] [--docs PATH | --no-docs] [--results PATH]
  /tmp/v/bin/python bench/run.py --report RESULTS.json [--docs PATH]   (re-render only)

The full run (default) times every job of issue 6 with 5 counted rounds
after 1 warm-up round, writes bench/results/<UTC time>-full.json and
rewrites docs/benchmarks.md from it.  --quick runs fewer rounds (2) of
smaller jobs and writes only its JSON unless --docs is given.  Jobs:
apply, apply-layer1, diff, changes, chain, create-rw, remove (selftest:
a tiny job needing no workload).

Environment: BENCH_DIR [/var/tmp/lamina-bench] (workload in $BENCH_DIR/work;
scratch image, mount point and command log next to it), LAMINA_SHARED
[<repo>/../shared] (the shared bench scripts: benchlib.py, cs-clean.sh,
py_extract.py, treecmp.py), LAMINA_PYTHON [this Python] (must import lamina).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import BENCH, REPO, Runner, Scratch, shared_dir
from _report import render
from jobs import DEFAULT, JOBS, Context


def _out(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (p.stdout or p.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


_PEERS = (("GNU tar", "tar"), ("containers-storage", "containers-storage"), ("umoci", "umoci"))


def _package_version(package: str) -> str:
    """The Debian package's version: asking the tools themselves has side effects
    (``containers-storage version`` opens a store)."""
    version = _out(["dpkg-query", "-W", "-f", "${Version}", package])
    return version if version not in ("", "?", "missing") and " " not in version else "?"


def machine(python: str) -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // (1 << 20)
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem,
        "kernel": platform.release(),
        "os": os_name,
        "python": _out([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "tools": {name: _package_version(pkg) for name, pkg in _PEERS},
    }


def lamina_state() -> dict[str, Any]:
    commit = _out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    p = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
    )
    return {"commit": commit, "dirty_files": len(p.stdout.splitlines())}


def write_docs(results: dict[str, Any], docs: Path, json_path: Path) -> None:
    try:
        rel = str(json_path.resolve().relative_to(REPO))
    except ValueError:
        rel = str(json_path)
    docs.parent.mkdir(parents=True, exist_ok=True)
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text(render(results, json_path=rel))
    os.replace(tmp, docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 counted runs, smaller jobs")
    ap.add_argument("--jobs", help="comma-separated subset of: " + ", ".join(JOBS))
    ap.add_argument("--runs", type=int, help="counted rounds per group [5; quick 2]")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds per group [1]")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument(
        "--scratch",
        choices=["loop-ext4", "dir"],
        default="loop-ext4",
        help="dir: a plain directory (harness tests only; timings meaningless)",
    )
    ap.add_argument("--scratch-gb", type=int, default=40)
    ap.add_argument("--results", type=Path, help="results JSON [bench/results/<time>-<mode>.json]")
    ap.add_argument("--docs", type=Path, help="Markdown table [docs/benchmarks.md in full mode]")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--report", type=Path, help="only re-render the docs from this results JSON")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)

    if a.report:
        loaded = json.loads(a.report.read_text())
        target = a.docs or REPO / "docs" / "benchmarks.md"
        write_docs(loaded, target, a.report)
        print(target)
        return 0

    if os.geteuid() != 0:
        sys.exit("run.py must run as root (loop mounts, drop_caches, containers-storage)")
    mode = "quick" if a.quick else "full"
    runs = a.runs or (2 if a.quick else 5)
    jobs = a.jobs.split(",") if a.jobs else DEFAULT
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        sys.exit(f"unknown jobs: {', '.join(unknown)} (known: {', '.join(JOBS)})")
    bench_dir = Path(os.environ.get("BENCH_DIR", "/var/tmp/lamina-bench"))
    workload = bench_dir / "work"
    shared = shared_dir()
    benchlib = shared / "bench" / "benchlib.py"
    if not benchlib.is_file():
        sys.exit(f"no {benchlib}: set LAMINA_SHARED to the shared folder")
    python = os.environ.get("LAMINA_PYTHON", sys.executable)
    if subprocess.run([python, "-c", "import lamina"], capture_output=True).returncode != 0:
        sys.exit(f"{python} cannot import lamina (set LAMINA_PYTHON)")
    if any(JOBS[j][1] for j in jobs) and not (workload / "layers" / "layer1.tar").is_file():
        sys.exit(f"no workload in {workload}: run scripts/ci-workload.sh")

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results_path = a.results or BENCH / "results" / f"{stamp}-{mode}.json"
    docs = None if a.no_docs else (a.docs or (None if a.quick else REPO / "docs" / "benchmarks.md"))
    logdir = bench_dir / "lamina-results"
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{stamp}-{mode}.log"
    mountpoint = bench_dir / "lamina-scratch"
    image = bench_dir / "lamina-scratch.img" if a.scratch == "loop-ext4" else None

    # Measure Python tools as installed packages run: with cached bytecode.  Kept out of
    # the repository (PYTHONPYCACHEPREFIX); an inherited PYTHONDONTWRITEBYTECODE would
    # otherwise make every lamina process recompile all its modules (~40-50 ms each).
    python_env = {"PYTHONPYCACHEPREFIX": str(bench_dir / "pycache")}
    inherited_no_bytecode = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.update(python_env)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.time()
    results: dict[str, Any] = {
        "schema": 1,
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "mode": mode,
        "runs": runs,
        "warmup": a.warmup,
        "drop_caches": not a.no_drop_caches,
        "jobs": jobs,
        "python_env": {
            **python_env,
            "PYTHONDONTWRITEBYTECODE": f"unset (was {inherited_no_bytecode!r})",
        },
        "machine": machine(python),
        "lamina": lamina_state(),
        "log": str(log),
        "groups": [],
    }
    complete = False
    with Scratch(mountpoint, image, a.scratch, a.scratch_gb) as scratch:
        results["filesystem"] = scratch.fs_desc
        ctx = Context(workload, scratch.mountpoint, shared, python, a.quick, log)
        runner = Runner(
            benchlib,
            python,
            runs,
            a.warmup,
            not a.no_drop_caches,
            scratch,
            log,
            verbose=not a.quiet,
        )
        runner.say(f"{mode} run of {', '.join(jobs)}; scratch: {scratch.fs_desc}; log: {log}")
        try:
            for job in jobs:
                for group in JOBS[job][0](ctx):
                    runner.run_group(group)
                    results["groups"] = runner.groups
                    _save(results, results_path, started, partial=True)
            complete = True
        except KeyboardInterrupt:
            runner.say("interrupted: partial results kept, docs not rewritten")
    _save(results, results_path, started, partial=not complete)
    print(results_path)
    if docs is not None and complete:
        write_docs(results, docs, results_path)
        print(docs)
    return 0 if complete else 130


def _save(results: dict[str, Any], path: Path, started: float, *, partial: bool) -> None:
    results["elapsed_min"] = round((time.time() - started) / 60, 1)
    results["partial"] = partial
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
