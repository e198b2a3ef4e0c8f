"""The results JSON of one run -> docs/benchmarks.md (Markdown; nothing but that run's numbers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rec = dict[str, Any]

_FS_SHORT = "ext4-loop"  # the only filesystem a real run times on


def _s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def find(results: dict[str, Any], group: str) -> dict[str, Any] | None:
    for g in results["groups"]:
        if g["name"] == group:
            return dict(g)
    return None


def record(g: dict[str, Any] | None, label: str) -> Rec | None:
    if g is None:
        return None
    for r in g["records"]:
        if r["label"] == label:
            return dict(r)
    return None


def skip_reason(g: dict[str, Any] | None, label: str) -> str:
    if g is None:
        return "job not run"
    if g.get("error") and not g["records"]:
        return str(g["error"])
    for s in g["skipped"]:
        if s["label"] == label:
            return f"skipped: {s['reason']}"
    r = record(g, label)
    if r is not None and "median" not in r:
        return f"failed: {r.get('failed_detail') or r.get('failed', '')}"
    return "not measured"


def ratio_of_medians(g: dict[str, Any] | None, a: str, b: str) -> float | None:
    ra, rb = record(g, a), record(g, b)
    if ra and rb and "median" in ra and "median" in rb and rb["median"] > 0:
        return float(ra["median"] / rb["median"])
    return None


# -- targets (issue 6, item 3) ---------------------------------------------------

Target = tuple[str, str, Callable[[dict[str, Any]], tuple[str, bool | None]]]


def _ratio_target(
    group: str, label: str, limit: float
) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    def measure(res: dict[str, Any]) -> tuple[str, bool | None]:
        g = find(res, group)
        r = record(g, label)
        if r is None or "median" not in r:
            return skip_reason(g, label), None
        if r.get("ratio_to_ref") is None:
            return f"{_s(r['median'])} s, no ratio: {_ref_failure(g)}", None
        x = float(r["ratio_to_ref"])
        return f"x{x:.2f} ({_s(r['median'])} s vs {_s(_ref_median(g))} s)", x <= limit

    return measure


def _with_call_alone(
    group: str, label: str, call: str, limit: float
) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    """:func:`_ratio_target`, plus the library call's own time measured while preparing.

    The verdict stays the whole process's: the call alone is context, not the target.
    """
    whole = _ratio_target(group, label, limit)

    def measure(res: dict[str, Any]) -> tuple[str, bool | None]:
        text, ok = whole(res)
        g = find(res, group)
        ms = ((g or {}).get("extra") or {}).get("call_alone_ms", {}).get(call)
        ref = _ref_median(g)
        if ms is not None and ref == ref:  # not NaN
            text += f"; the {call}() call alone, in-process: {ms:.1f} ms = x{ms / 1000 / ref:.3f}"
        return text, ok

    return measure


def _with_other_row(
    group: str, label: str, other: str, what: str, limit: float
) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    """:func:`_ratio_target` of ``label`` (the verdict), with ``other``'s ratio beside it."""
    whole = _ratio_target(group, label, limit)

    def measure(res: dict[str, Any]) -> tuple[str, bool | None]:
        text, ok = whole(res)
        r = record(find(res, group), other)
        if r is not None and r.get("ratio_to_ref") is not None:
            text += f"; {what}: x{r['ratio_to_ref']:.2f} ({_s(r['median'])} s)"
        return text, ok

    return measure


def _ref_failure(g: dict[str, Any] | None) -> str:
    ref = g["records"][0] if g and g["records"] else {}
    why = ref.get("failed_detail") or ref.get("failed") or "not measured"
    return f"the reference ({ref.get('label', '?')}) failed: {why}"


def _ref_median(g: dict[str, Any] | None) -> float:
    if g and g["records"] and "median" in g["records"][0]:
        return float(g["records"][0]["median"])
    return float("nan")


def _vs_cs(
    group: str, label: str, limit: float
) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    def measure(res: dict[str, Any]) -> tuple[str, bool | None]:
        g = find(res, group)
        parts, ok = [], True
        for drv in ("vfs", "overlay"):
            x = ratio_of_medians(g, label, f"c-storage {drv} import-layer")
            if x is None:
                return skip_reason(g, label), None
            parts.append(f"x{x:.2f} of {drv}")
            ok = ok and x <= limit
        return ", ".join(parts), ok

    return measure


def _memory(res: dict[str, Any]) -> tuple[str, bool | None]:
    parts, ok, seen = [], True, False
    for fmt in ("tar", "tar.gz", "tar.zst"):
        g = find(res, f"apply-big.{fmt}")
        r = record(g, "lamina apply_layer")
        if r is None or "maxrss_kb" not in r:
            continue
        seen = True
        mib = r["maxrss_kb"] / 1024
        parts.append(f"{fmt}: {mib:.0f} MiB")
        ok = ok and mib <= 64
    if not seen:
        return skip_reason(find(res, "apply-big.tar"), "lamina apply_layer"), None
    return ", ".join(parts), ok


def _works(group: str, label: str) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    def measure(res: dict[str, Any]) -> tuple[str, bool | None]:
        g = find(res, group)
        r = record(g, label)
        if r is None or "median" not in r:
            return skip_reason(g, label), None
        if r.get("ratio_to_ref") is None:
            return f"works: {_s(r['median'])} s ({_ref_failure(g)})", True
        return f"works: {_s(r['median'])} s (x{r['ratio_to_ref']:.2f} of c-storage)", True

    return measure


TARGETS: list[Target] = [
    (
        "apply Debian base layer (tar)",
        "<= 1.0x GNU tar",
        _ratio_target("apply-layer0.tar", "lamina apply_layer", 1.0),
    ),
    (
        "apply Debian base layer (tar)",
        "<= 0.9x containers-storage",
        _vs_cs("apply-layer0.tar", "lamina apply_layer", 0.9),
    ),
    (
        "apply 50,000 small files (tar)",
        "<= 1.0x GNU tar",
        _ratio_target("apply-small.tar", "lamina apply_layer", 1.0),
    ),
    (
        "apply Debian base layer (gzip)",
        "<= 1.0x tar -xzf",
        _ratio_target("apply-layer0.tar.gz", "lamina apply_layer", 1.0),
    ),
    (
        "apply 50,000 small files (gzip)",
        "<= 1.0x tar -xzf",
        _ratio_target("apply-small.tar.gz", "lamina apply_layer", 1.0),
    ),
    (
        "apply 1 GiB layer (gzip)",
        "<= 1.0x tar -xzf",
        _ratio_target("apply-big.tar.gz", "lamina apply_layer", 1.0),
    ),
    (
        "diff export of layer1 (export engine, same files)",
        "<= 1.0x tar -c",
        _ratio_target(
            "diff-layer1", "lamina export_tree of the same upper dir (overlay whiteouts)", 1.0
        ),
    ),
    (
        "diff export of layer1 (overlay driver)",
        "<= 1.0x tar -c",
        _ratio_target("diff-layer1", "lamina overlay diff l1 -p l0 (CLI, native)", 1.0),
    ),
    (
        "overlay changes, 100 changes on 50k files",
        "<= 0.02x full walk of both trees",
        _with_call_alone(
            "changes-100-on-small", "lamina overlay changes (CLI, native)", "changes", 0.02
        ),
    ),
    (
        "overlay diff-size, 100 changes on 50k files",
        "<= 0.02x full walk of both trees",
        _with_call_alone(
            "changes-100-on-small", "lamina overlay diff-size (CLI, native)", "diff_size", 0.02
        ),
    ),
    (
        "get on a 128-layer chain",
        "<= containers-storage mount",
        _with_other_row(
            "chain-get-128",
            "lamina overlay mount (CLI get)",
            "lamina overlay driver.mount (library call, one process)",
            "the same call without the CLI",
            1.0,
        ),
    ),
    (
        "get on a 500-layer chain",
        "works",
        _works("chain-get-500", "lamina overlay mount (CLI get)"),
    ),
    ("peak RSS applying the 1 GiB layer", "<= 64 MiB", _memory),
]


def targets_table(res: dict[str, Any]) -> list[str]:
    out = ["| target | goal | measured (this run) | met |", "|---|---|---|---|"]
    for what, goal, measure in TARGETS:
        text, ok = measure(res)
        verdict = "yes" if ok else ("no" if ok is False else "not measured")
        out.append(f"| {what} | {goal} | {_esc(text)} | {verdict} |")
    return out


# -- per-group tables ------------------------------------------------------------


def group_table(g: dict[str, Any]) -> list[str]:
    caches = "dropped" if g["drop_caches"] else "warm"
    fs = g.get("fs_short", _FS_SHORT)
    out = [f"### {g['title']}", "", f"`{g['name']}`"]
    if g.get("bytes") or g.get("files"):
        facts = []
        if g.get("bytes"):
            facts.append(f"{g['bytes'] / 1e6:.0f} MB")
        if g.get("files"):
            facts.append(f"{g['files']} entries")
        out[-1] += " — " + ", ".join(facts)
    out.append("")
    for note in g.get("notes", []):
        out.append(f"> {note}")
    if g.get("notes"):
        out.append("")
    if g.get("error") and not g["records"]:
        out += [f"**Not measured:** {_esc(g['error'])}", ""]
        return out
    if g.get("error"):
        out += [f"**Note:** {_esc(g['error'])}", ""]
    also = [a for a in g.get("also_vs", []) if "median" in (record(g, a) or {})]
    head = "| tool / variant | median s | min..max s | x ref (per round) |"
    rule = "|---|---:|---:|---:|"
    for a in also:
        head += f" x {_esc(a)} |"
        rule += "---:|"
    head += " MB/s | files/s | CPU s | peak RSS MiB | fs | caches | synced | notes |"
    rule += "---:|---:|---:|---:|---|---|---|---|"
    out += [head, rule]
    ref = g["records"][0]["label"] if g["records"] else ""
    for r in g["records"]:
        label = _esc(r["label"]) + (" (ref)" if r["label"] == ref else "")
        if r.get("lamina"):
            label = f"**{label}**"
        notes = [n for n in (r.get("note"), r.get("check") and "check " + r["check"]) if n]
        if "median" not in r:
            notes.insert(0, f"FAILED: {r.get('failed_detail') or r.get('failed', '')}")
            row = f"| {label} | — | — | — |" + " — |" * len(also)
            row += f" | | | | {fs} | {caches} | {'yes' if r.get('synced') else 'no'} | "
            out.append(row + _esc("; ".join(notes)) + " |")
            continue
        if r.get("failed"):
            notes.insert(0, f"failed in a later round: {r.get('failed_detail') or r['failed']}")
        row = f"| {label} | {_s(r['median'])} | {_s(r['min'])}..{_s(r['max'])} | " + (
            f"{r['ratio_to_ref']:.2f} |" if r.get("ratio_to_ref") is not None else "— |"
        )
        for a in also:
            x = ratio_of_medians(g, r["label"], a)
            row += f" {x:.2f} |" if x is not None else " |"
        row += (f" {r['mb_s']:.0f} |" if r.get("mb_s") else " |") + (
            f" {r['files_s']:.0f} |" if r.get("files_s") else " |"
        )
        row += (
            f" {_s(r['cpu_median'])} | {r['maxrss_kb'] / 1024:.0f} | {fs} | {caches} | "
            f"{'yes' if r.get('synced') else 'no'} | {_esc('; '.join(notes))} |"
        )
        out.append(row)
    for s in g["skipped"]:
        out.append(
            f"| **{_esc(s['label'])}** | skipped | | |"
            + " |" * len(also)
            + f" | | | | | | | {_esc(s['reason'])} |"
        )
    out.append("")
    return out


def render(res: dict[str, Any], *, json_path: str = "") -> str:
    m = res["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` from one real run; do not edit by hand. To reproduce "
        "(root, the workload built by `scripts/ci-workload.sh`):",
        "",
        "```sh",
        "sudo /tmp/v/bin/python bench/run.py            # full: all jobs, 5 counted runs",
        "sudo /tmp/v/bin/python bench/run.py --quick    # iteration: fewer runs, smaller jobs",
        "```",
        "",
        "## This run",
        "",
        f"- date: {res['date']} (UTC), {res['elapsed_min']:.0f} min, mode **{res['mode']}**: "
        f"{res['runs']} counted runs after {res['warmup']} warm-up round(s), "
        "variants interleaved (A B A B …, order rotated each round)",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, kernel "
        f"{m['kernel']}, {m['os']}; shared with other work (hence ratios within the same rounds)",
        f"- lamina: {res['lamina']['commit']} plus uncommitted changes in "
        f"{res['lamina']['dirty_files']} files; Python {m['python']}"
        + (
            ", bytecode cached as in an installed package "
            f"(`PYTHONPYCACHEPREFIX={res['python_env']['PYTHONPYCACHEPREFIX']}`)"
            if res.get("python_env")
            else ""
        ),
        f"- peers: {', '.join(f'{k} {v}' for k, v in m['tools'].items())}",
        f"- filesystem (the `fs` column, "
        f"`{', '.join(sorted({g.get('fs_short', _FS_SHORT) for g in res['groups']}))}`): "
        f"{res['filesystem']}",
        "- caches: per row; `dropped` = `sync; echo 3 > /proc/sys/vm/drop_caches` before "
        "every timed command, then the inputs re-read (inputs warm, no dirty pages, no dentries "
        "of the previous run)",
        "- synced: per row; `no` = the timed command ends without `sync` (data may still be "
        "in the page cache, as for every tool here)",
        "- timed: the whole process (`fork` .. `wait4`), start-up included; CPU and peak RSS "
        "from `wait4`. `x ref` is the median of the per-round ratios to the group's first row; "
        "`x <peer>` columns are ratios of medians from the same rounds",
    ]
    if json_path:
        lines.append(f"- raw results: `{json_path}`")
    lines += ["", "## Targets (issue 6)", ""]
    lines += targets_table(res)
    lines += [
        "",
        "`not measured` means the lamina part is missing or failed in this run (reason given);",
        "the harness skips such variants and measures the rest.",
        "",
        "## Jobs",
        "",
    ]
    for g in res["groups"]:
        lines += group_table(g)
    return "\n".join(lines).rstrip() + "\n"
