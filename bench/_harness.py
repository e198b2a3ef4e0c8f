"""Scratch filesystem, groups of variants, and running them through the shared benchlib.

Timing itself is not done here: every group is handed to the shared
``bench/benchlib.py`` (interleaved A B A B rounds, caches dropped, warm-up,
medians, min-max, per-round ratios to the first variant), run as a
subprocess exactly as ``measure-peers.sh`` runs it.  This module adds what
the project needs around it: a fresh journaled ext4 on a loop device for
every run (never the root filesystem, whose missing journal makes creates
15x slower after deletions), an untimed probe of every lamina variant so a
stub or a missing driver becomes a clear skip note instead of a hole in the
table, untimed correctness checks of lamina's output, and per-row facts
(filesystem, caches dropped, data synced).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def shared_dir() -> Path:
    """The shared folder: ``$LAMINA_SHARED``, else ``<repo>/../shared`` (as in CI)."""
    env = os.environ.get("LAMINA_SHARED")
    return Path(env).resolve() if env else (REPO.parent / "shared").resolve()


def sh(
    cmd: str, *, log: Path | None = None, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    """Run a shell command untimed, capturing its output (and appending it to ``log``)."""
    proc = subprocess.run(
        ["/bin/sh", "-c", cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    if log is not None:
        with open(log, "a") as f:
            f.write(f"\n$ {cmd}\n{proc.stdout}{proc.stderr}")
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


@dataclass
class Variant:
    """One tool doing one job; ``cmd`` is timed, the rest is not."""

    label: str
    cmd: str
    setup: str = ""
    teardown: str = ""
    warm: str = ""
    prime: str = ""
    #: lamina variants are probed once (untimed) and skipped with a note when they fail
    lamina: bool = False
    #: untimed command run after the probe's cmd, before its teardown; "ok" or
    #: "FAILED" (its exit status) and its first output line become the variant's
    #: correctness note
    check: str = ""
    #: whether the timed command ends with the data synced to disk
    synced: bool = False
    note: str = ""

    def spec(self) -> dict[str, str]:
        return {
            "label": self.label,
            "cmd": self.cmd,
            "setup": self.setup,
            "teardown": self.teardown,
            "warm": self.warm,
            "prime": self.prime,
        }


@dataclass
class Group:
    """Variants timed in the same interleaved rounds; the first one is the reference."""

    name: str
    job: str
    title: str
    variants: list[Variant]
    bytes: int = 0
    files: int = 0
    prepare: Callable[[], None] | None = None
    finish: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)
    #: measurements made while preparing (``prepare`` may add to it and to ``notes``)
    extra: dict[str, Any] = field(default_factory=dict)
    drop_caches: bool = True
    runs: int | None = None
    #: labels of extra references: ratio of medians (same rounds) is reported too
    also_vs: tuple[str, ...] = ()


@dataclass
class Scratch:
    """A fresh journaled ext4 on a loop device, or (tests only) a plain directory."""

    mountpoint: Path
    image: Path | None
    kind: str
    gib: int = 40
    loopdev: str = ""
    fs_desc: str = ""

    def __enter__(self) -> Scratch:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if self.kind == "dir":
            self.fs_desc = f"directory on {_findmnt(self.mountpoint)} (NOT a fresh filesystem)"
            return self
        if _is_mountpoint(self.mountpoint):
            raise SystemExit(f"{self.mountpoint} is already mounted; unmount it first")
        assert self.image is not None
        self.image.unlink(missing_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.gib << 30)
        self.loopdev = _check(["losetup", "--direct-io=on", "-f", "--show", str(self.image)])
        try:
            _check(
                [
                    "mkfs.ext4",
                    "-q",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                    self.loopdev,
                ]
            )
            _check(["mount", self.loopdev, str(self.mountpoint)])
        except BaseException:
            self.__exit__()
            raise
        self.fs_desc = (
            f"fresh ext4 with journal on {self.loopdev} "
            f"(losetup --direct-io=on, {self.gib} GiB sparse file), "
            f"mount options {_findmnt(self.mountpoint, 'OPTIONS')}"
        )
        return self

    def trim(self) -> None:
        """Give freed blocks back to the sparse image between groups (untimed)."""
        if self.kind == "loop-ext4":
            sh(f"fstrim {shlex.quote(str(self.mountpoint))}")

    def __exit__(self, *exc: object) -> None:
        if self.kind == "dir":
            return
        clean_below(self.mountpoint, including_self=False)
        if (
            _is_mountpoint(self.mountpoint)
            and subprocess.run(["umount", str(self.mountpoint)]).returncode != 0
        ):
            subprocess.run(["umount", "-l", str(self.mountpoint)])
        if self.loopdev:
            subprocess.run(["losetup", "-d", self.loopdev])
            self.loopdev = ""
        if self.image is not None:
            self.image.unlink(missing_ok=True)


def _check(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _findmnt(path: Path, what: str = "FSTYPE") -> str:
    proc = subprocess.run(["findmnt", "-no", what, "-T", str(path)], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def _is_mountpoint(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def mounts_below(path: Path) -> list[str]:
    """Mount points strictly below ``path`` (and ``path`` itself), deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == base or mp.startswith(base + "/"):
                found.append(mp)
    return sorted(found, key=len, reverse=True)


def clean_below(path: Path, *, including_self: bool = True) -> None:
    """Unmount what tools left below ``path`` (overlay views, c-storage's private binds)."""
    base = os.path.realpath(path)
    for _ in range(3):
        mps = [m for m in mounts_below(path) if including_self or m != base]
        if not mps:
            return
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)


@dataclass
class Runner:
    """Runs groups through benchlib and collects one record per variant."""

    benchlib: Path
    python: str
    runs: int
    warmup: int
    drop_caches: bool
    scratch: Scratch
    log: Path
    verbose: bool = True
    groups: list[dict[str, Any]] = field(default_factory=list)

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def run_group(self, g: Group) -> dict[str, Any]:
        self.say(f"group {g.name}: {g.title}")
        drop = g.drop_caches and self.drop_caches
        out: dict[str, Any] = {
            "name": g.name,
            "job": g.job,
            "title": g.title,
            "bytes": g.bytes,
            "files": g.files,
            "notes": list(g.notes),
            "filesystem": self.scratch.fs_desc,
            "fs_short": "ext4-loop" if self.scratch.kind == "loop-ext4" else "dir",
            "drop_caches": drop,
            "skipped": [],
            "records": [],
            "also_vs": list(g.also_vs),
        }
        started = time.time()
        try:
            if g.prepare is not None:
                g.prepare()
                out["notes"], out["extra"] = list(g.notes), dict(g.extra)
        except Exception as exc:  # a broken preparation skips the group, with its reason
            out["error"] = f"preparation failed: {type(exc).__name__}: {last_line(str(exc))}"
            self.say(out["error"])
            with contextlib.suppress(Exception):
                self._finish(g)
            self.groups.append(out)
            return out
        variants: list[Variant] = []
        checks: dict[str, str] = {}
        for v in g.variants:
            if v.lamina:
                ok, note = self._probe(v)
                if not ok:
                    out["skipped"].append({"label": v.label, "reason": note})
                    self.say(f"  skip {v.label}: {note}")
                    continue
                if note:
                    checks[v.label] = note
            variants.append(v)
        if variants and variants[0] is not g.variants[0]:
            out["error"] = f"reference variant {g.variants[0].label!r} unavailable"
        if variants:
            try:
                out["records"] = self._time(g, variants, drop)
            except Exception as exc:  # one broken group must not lose the whole run
                out["error"] = f"timing failed: {type(exc).__name__}: {last_line(str(exc))}"
                self.say(out["error"])
            meta = {v.label: v for v in variants}
            for rec in out["records"]:
                v = meta[rec["label"]]
                rec["synced"] = v.synced
                rec["lamina"] = v.lamina
                if v.note:
                    rec["note"] = v.note
                if rec["label"] in checks:
                    rec["check"] = checks[rec["label"]]
                if "failed" in rec:
                    rec["failed_detail"] = self._failure_detail(v)
        try:
            self._finish(g)
        except Exception as exc:
            out.setdefault("error", f"cleanup failed: {type(exc).__name__}: {last_line(str(exc))}")
            self.say(out["error"])
        out["elapsed_s"] = round(time.time() - started, 1)
        self.groups.append(out)
        return out

    def _finish(self, g: Group) -> None:
        try:
            if g.finish is not None:
                g.finish()
        finally:
            self.scratch.trim()

    def _probe(self, v: Variant) -> tuple[bool, str]:
        """One untimed run of a lamina variant: (works?, check result or failure reason)."""
        try:
            if v.setup:
                p = sh(v.setup, log=self.log)
                if p.returncode != 0:
                    return False, f"setup failed: {last_line(p.stderr or p.stdout)}"
            p = sh(v.cmd, log=self.log)
            if p.returncode != 0:
                return False, f"exit {p.returncode}: {last_line(p.stderr or p.stdout)}"
            note = ""
            if v.check:
                c = sh(v.check, log=self.log)
                first = (c.stdout.strip().splitlines() or [""])[0][:300]
                note = ("ok: " if c.returncode == 0 else "FAILED: ") + first
            return True, note
        finally:
            if v.teardown:
                sh(v.teardown, log=self.log)

    def _failure_detail(self, v: Variant) -> str:
        """The last stderr line benchlib logged for a variant that failed while timed."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        at = text.rfind("\n$ " + v.cmd + "\n")
        if at < 0:
            return ""
        rest = text[at + len(v.cmd) + 4 :]
        nxt = rest.find("\n$ ")
        return last_line(rest if nxt < 0 else rest[:nxt])

    def _time(self, g: Group, variants: list[Variant], drop: bool) -> list[dict[str, Any]]:
        spec = self.scratch.mountpoint / "spec.jsonl"
        results = self.scratch.mountpoint / "results.jsonl"
        results.unlink(missing_ok=True)
        with open(spec, "w") as f:
            for v in variants:
                f.write(json.dumps(v.spec()) + "\n")
        argv = [
            self.python,
            str(self.benchlib),
            "run",
            "--spec",
            str(spec),
            "--group",
            g.name,
            "--results",
            str(results),
            "--runs",
            str(g.runs or self.runs),
            "--warmup",
            str(self.warmup),
            "--bytes",
            str(g.bytes),
            "--files",
            str(g.files),
            "--log",
            str(self.log),
        ]
        if drop:
            argv.append("--drop-caches")
        proc = subprocess.run(argv, capture_output=True, text=True)
        if self.verbose:
            sys.stderr.write(proc.stdout)
        if proc.returncode != 0:
            raise RuntimeError(f"benchlib failed on {g.name}: {last_line(proc.stderr)}")
        records = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]
        spec.unlink(missing_ok=True)
        results.unlink(missing_ok=True)
        return records
