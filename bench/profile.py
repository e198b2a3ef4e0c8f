#!/usr/bin/env python3
"""Where lamina's apply spends its time, next to GNU tar on the same layer.

usage (root): /tmp/v/bin/python bench/profile.py [--layers layer0.tar,small.tar]
              [--time layer0.tar,small.tar,big.tar,layer0.tar.gz] [--runs 3] [--no-pyspy]

On a fresh loop-mounted ext4 (like the benchmark), for each layer of --layers:
  * system calls per entry: ``strace -c -f`` of ``tar -x`` and of lamina's apply;
  * CPU split: ``perf record`` of lamina's apply, by object (kernel, libpython,
    libc, ISA-L …) and the top symbols;
  * Python hot spots: ``py-spy record`` (sampling, low overhead) by source line
    and by function, and ``cProfile`` call counts;
and for each layer of --time, wall / user / sys / peak RSS of ``tar -x`` and
lamina, caches dropped before each run, runs alternated (median of --runs).
Writes the raw outputs to $BENCH_DIR/lamina-results/profile-<time>/ and a
summary to bench/results/profile-<time>.md (also printed).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import BENCH, Scratch

ENTRY = BENCH / "jobs" / "entry.py"


def drop_caches(warm: Path) -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    with open(warm, "rb") as f:
        while f.read(1 << 20):
            pass


def timed(argv: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed")
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024}


def tar_argv(layer: Path, out: Path) -> list[str]:
    z = {".gz": ["-z"], ".zst": ["--zstd"]}.get(layer.suffix, [])
    return ["tar", "--numeric-owner", *z, "-xf", str(layer), "-C", str(out)]


def lamina_argv(python: str, layer: Path, out: Path) -> list[str]:
    return [python, str(ENTRY), "apply", str(layer), str(out)]


def fresh(out: Path) -> None:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir()


def entries_of(layer: Path, layers: Path) -> int:
    import json

    name = layer.name.split(".")[0]
    return int(json.loads((layers / f"{name}.json").read_text())["entries"])


def strace_counts(argv: list[str], out_file: Path) -> dict[str, int]:
    subprocess.run(
        ["strace", "-c", "-f", "-o", str(out_file), *argv], check=True, stdout=subprocess.DEVNULL
    )
    counts: dict[str, int] = {}
    for line in out_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts


def perf_split(python: str, layer: Path, out: Path, raw: Path) -> list[str]:
    data = raw / f"perf-{layer.name}.data"
    subprocess.run(
        [
            "perf",
            "record",
            "-F",
            "1999",
            "-g",
            "-o",
            str(data),
            "--",
            *lamina_argv(python, layer, out),
        ],
        check=True,
        capture_output=True,
    )
    lines = []
    for sort, n in (("dso", 8), ("sym", 25)):
        p = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(data),
                "--stdio",
                "--no-children",
                "--sort",
                sort,
                "-g",
                "none",
            ],
            capture_output=True,
            text=True,
        )
        rows = [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        (raw / f"perf-{layer.name}-{sort}.txt").write_text(p.stdout)
        lines.append(f"perf by {sort} (top {n}):")
        lines += ["    " + r.strip() for r in rows[:n]]
    return lines


def pyspy(python: str, layer: Path, out: Path, raw: Path) -> list[str]:
    data = raw / f"pyspy-{layer.name}.txt"
    exe = shutil.which("py-spy") or str(Path(python).parent / "py-spy")
    p = subprocess.run(
        [
            exe,
            "record",
            "--rate",
            "997",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(data),
            "--",
            *lamina_argv(python, layer, out),
        ],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0 or not data.exists():
        return [f"py-spy failed: {p.stderr.strip()[-200:]}"]
    by_line: collections.Counter[str] = collections.Counter()
    by_func: collections.Counter[str] = collections.Counter()
    total = 0
    for line in data.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        by_line[frames[-1]] += n
        seen = set()
        for fr in frames:
            func = re.sub(r":\d+\)$", ")", fr)
            if func not in seen:
                seen.add(func)
                by_func[func] += n
    lines = [f"py-spy: {total} samples; self time by source line (top 20):"]
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in by_line.most_common(20)]
    lines.append("py-spy: inclusive time by function (top 20):")
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in by_func.most_common(20)]
    return lines


def cprofile(python: str, layer: Path, out: Path, raw: Path) -> list[str]:
    data = raw / f"cprofile-{layer.name}.out"
    subprocess.run(
        [python, "-m", "cProfile", "-o", str(data), *lamina_argv(python, layer, out)[1:]],
        check=True,
        capture_output=True,
    )
    code = "import pstats,sys; s=pstats.Stats(sys.argv[1]); s.sort_stats('tottime').print_stats(22)"
    p = subprocess.run([python, "-c", code, str(data)], capture_output=True, text=True)
    rows = [ln for ln in p.stdout.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(rows) if "ncalls" in ln), 0)
    return ["cProfile (deterministic, inflates Python-call cost), top 22 by own time:"] + [
        "    " + r.strip()[:150] for r in rows[start:]
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", default="layer0.tar,small.tar")
    ap.add_argument("--time", default="layer0.tar,small.tar,big.tar,layer0.tar.gz")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-pyspy", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("profile.py must run as root")
    python = os.environ.get("LAMINA_PYTHON", sys.executable)
    bench_dir = Path(os.environ.get("BENCH_DIR", "/var/tmp/lamina-bench"))
    layers = bench_dir / "work" / "layers"
    # as run.py: bytecode cached (outside the repository), like an installed package
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(bench_dir / "pycache")
    subprocess.run([python, "-c", "import lamina.archive, lamina.cli"], check=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    raw = bench_dir / "lamina-results" / f"profile-{stamp}"
    raw.mkdir(parents=True)
    rev = subprocess.run(
        ["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(BENCH.parent), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
    ).stdout.count("\n")
    report = [
        f"# lamina apply profile, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
        "",
        f"lamina {rev} + {dirty} uncommitted files under src/; raw data in {raw}",
        "",
    ]
    scratch = Scratch(
        bench_dir / "lamina-prof-scratch", bench_dir / "lamina-prof-scratch.img", "loop-ext4", 30
    )
    with scratch:
        out = scratch.mountpoint / "out"
        report += [
            f"filesystem: {scratch.fs_desc}",
            "",
            f"## Wall time, cold caches (median of {a.runs}, alternated)",
            "",
            "| layer | tool | wall s | user s | sys s | peak RSS MiB | x tar |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name in filter(None, a.time.split(",")):
            layer = layers / name
            res: dict[str, list[dict[str, float]]] = {"tar": [], "lamina": []}
            for _ in range(a.runs):
                for tool in ("tar", "lamina"):
                    fresh(out)
                    drop_caches(layer)
                    argv = (
                        tar_argv(layer, out) if tool == "tar" else lamina_argv(python, layer, out)
                    )
                    res[tool].append(timed(argv))
                    scratch.trim()
            med = {
                t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in res.items()
            }
            for tool in ("tar", "lamina"):
                m = med[tool]
                report.append(
                    f"| {name} | {tool} | {m['wall']:.3f} | {m['user']:.3f} | {m['sys']:.3f} | "
                    f"{m['rss_mib']:.0f} | {m['wall'] / med['tar']['wall']:.2f} |"
                )
            print("\n".join(report[-2:]), file=sys.stderr, flush=True)
        for name in filter(None, a.layers.split(",")):
            layer = layers / name
            n = entries_of(layer, layers)
            report += ["", f"## {name} ({n} entries)", ""]
            fresh(out)
            tc = strace_counts(tar_argv(layer, out), raw / f"strace-tar-{name}.txt")
            fresh(out)
            lc = strace_counts(lamina_argv(python, layer, out), raw / f"strace-lamina-{name}.txt")
            report += [
                "System calls (strace -c -f; lamina includes Python start-up):",
                "",
                "| syscall | GNU tar | per entry | lamina | per entry |",
                "|---|---:|---:|---:|---:|",
            ]
            names = sorted(set(tc) | set(lc), key=lambda s: -(tc.get(s, 0) + lc.get(s, 0)))
            for s in names:
                if tc.get(s, 0) + lc.get(s, 0) >= n // 20:
                    report.append(
                        f"| {s} | {tc.get(s, 0)} | {tc.get(s, 0) / n:.2f} | "
                        f"{lc.get(s, 0)} | {lc.get(s, 0) / n:.2f} |"
                    )
            tt, lt = sum(tc.values()), sum(lc.values())
            report += [f"| **all** | {tt} | {tt / n:.2f} | {lt} | {lt / n:.2f} |", ""]
            print("\n".join(report[-4:]), file=sys.stderr, flush=True)
            fresh(out)
            report += ["```", *perf_split(python, layer, out, raw), "```", ""]
            if not a.no_pyspy:
                fresh(out)
                report += ["```", *pyspy(python, layer, out, raw), "```", ""]
            fresh(out)
            report += ["```", *cprofile(python, layer, out, raw), "```", ""]
            subprocess.run(["rm", "-rf", str(out)])
            scratch.trim()
    text = "\n".join(report) + "\n"
    dest = BENCH / "results" / f"profile-{stamp}.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    print(text)
    print(dest, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
