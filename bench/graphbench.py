#!/usr/bin/env python3
"""Docker's graph-driver benchmarks (graphbench) for one lamina driver.

usage: graphbench.py DRIVER [-o key=value ...] [--only NAME ...] [--scale F]
                     [--iterations N] [--dir PATH] [--gib N] [--json OUT]

Runs every benchmark of :data:`lamina.drivers.testsuite.STANDARD_BENCHMARKS`
(the nine Docker's overlay2 test file runs: Exists, GetEmpty, DiffBase,
DiffSmallUpper, Diff10KFileUpper, Diff10KFilesBottom, DiffApply100,
Diff20Layers, Read20Layers), each with a fresh driver in a fresh root, and
prints one table row per benchmark: iterations, median / min / max seconds
per timed operation, operations per second at the median.

Timings never come from the root filesystem: as root the roots live on a
fresh journaled ext4 on a loop device (``bench/_harness.Scratch``), made for
this run and deleted afterwards.  ``--dir`` runs in an existing directory
instead (unprivileged runs); its rows are marked as such.  Each timing is
of the region Docker's benchmark times (see lamina.drivers.testsuite); setup,
checks and teardown are not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from lamina.drivers.testsuite import (  # noqa: E402
    STANDARD_BENCHMARKS,
    BenchResult,
    driver_source,
)

try:
    import pytest

    SKIPS: tuple[type[BaseException], ...] = (unittest.SkipTest, pytest.skip.Exception)
except ImportError:
    SKIPS = (unittest.SkipTest,)


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.2f} µs"


def _row(result: BenchResult) -> dict[str, Any]:
    ordered = sorted(result.seconds)
    median = result.median
    return {
        "name": result.name,
        "iterations": len(ordered),
        "median_s": median,
        "min_s": ordered[0] if ordered else math.nan,
        "max_s": ordered[-1] if ordered else math.nan,
        "total_s": result.total,
        "ops_per_s": (1 / median) if median else math.inf,
    }


def _parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-o expects key=value, got {pair!r}")
        options[key] = value
    return options


def _run(args: argparse.Namespace, base: Path, fs_desc: str) -> list[dict[str, Any]]:
    options = _parse_options(args.option)
    selected = [b for b in STANDARD_BENCHMARKS if not args.only or b.name in args.only]
    if args.only and len(selected) != len(set(args.only)):
        known = ", ".join(b.name for b in STANDARD_BENCHMARKS)
        raise SystemExit(f"unknown benchmark in --only; known: {known}")
    rows = []
    print(f"driver {args.driver}, options {options or '{}'}, on {fs_desc}", flush=True)
    header = (
        f"{'benchmark':<20} {'iters':>7} {'median/op':>12} {'min/op':>12} "
        f"{'max/op':>12} {'ops/s':>12}"
    )
    print(header)
    print("-" * len(header), flush=True)
    for bench in selected:
        iterations = args.iterations or max(1, round(bench.iterations * args.scale))
        source = driver_source(args.driver, base, options)
        started = time.perf_counter()
        try:
            result = bench.run(source, iterations)
        except SKIPS as exc:
            print(f"{bench.name:<20} skipped: {exc}", flush=True)
            rows.append({"name": bench.name, "skipped": str(exc)})
            continue
        row = _row(result)
        row["wall_s"] = time.perf_counter() - started
        row["filesystem"] = fs_desc
        rows.append(row)
        print(
            f"{row['name']:<20} {row['iterations']:>7} {_fmt(row['median_s']):>12} "
            f"{_fmt(row['min_s']):>12} {_fmt(row['max_s']):>12} {row['ops_per_s']:>12.1f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("driver", help="registered driver name, e.g. vfs or overlay")
    parser.add_argument("-o", "--option", action="append", default=[], help="driver key=value")
    parser.add_argument("--only", action="append", default=[], help="run only this benchmark")
    parser.add_argument("--scale", type=float, default=1.0, help="scale default iterations")
    parser.add_argument("--iterations", type=int, default=0, help="fixed iteration count")
    parser.add_argument("--dir", type=Path, help="run in this directory (not a fresh fs)")
    parser.add_argument("--gib", type=int, default=8, help="size of the loop ext4 image")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="graphbench-", dir=args.dir) as base:
            rows = _run(args, Path(base), f"directory {args.dir} (NOT a fresh filesystem)")
    else:
        if os.geteuid() != 0:
            raise SystemExit("a fresh loop-mounted ext4 needs root; use --dir PATH otherwise")
        from _harness import Scratch

        work = Path(tempfile.mkdtemp(prefix="lamina-graphbench-", dir="/var/tmp"))
        try:
            with Scratch(work / "mnt", work / "ext4.img", "loop-ext4", gib=args.gib) as scratch:
                rows = _run(args, scratch.mountpoint, scratch.fs_desc)
        finally:
            for leftover in (work / "mnt", work):
                with contextlib.suppress(OSError):
                    os.rmdir(leftover)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
