"""Fixtures for differential tests against peer tools on real layers.

The real workload (a debootstrap Debian root filesystem as ``layer0.tar`` and
a second layer with deletions and an opaque directory as ``layer1.tar``) is
built and cached by ``scripts/ci-workload.sh`` under ``$BENCH_DIR/work``
(default ``/var/tmp/lamina-bench``).  Tests that need it skip with the reason
the build script recorded when it could not build it.

Extraction targets live on a fresh loop-mounted ext4: the root filesystem of
these machines is ext4 without a journal, where deleting the big trees these
tests make would slow every later test (and other engineers) for minutes;
throwing away a loop filesystem is one unmount and one unlink.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_RESULTS = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "workload: needs the real debootstrap workload (build it with scripts/ci-workload.sh)",
    )
    config.addinivalue_line("markers", "differential: compares lamina with peer tools")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every comparison's one-line result, pass or fail, for the CI log."""
    lines = terminalreporter.config.stash.get(_RESULTS, [])
    if lines:
        terminalreporter.section("lamina differential results")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def differential_log(pytestconfig: pytest.Config) -> list[str]:
    """Lines for the end-of-run summary: one per comparison made."""
    return pytestconfig.stash.setdefault(_RESULTS, [])


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: real layers carry owners, setuid bits and device nodes")


# -- a scratch filesystem --------------------------------------------------


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == base or mp.startswith(base + "/"):
                found.append(mp)
    return sorted(found, key=len, reverse=True)


def unmount_below(path: Path, *, including_self: bool = True) -> None:
    """Unmount what peers left mounted (containers-storage binds its driver home)."""
    for _ in range(3):
        mps = [m for m in mounts_below(path) if including_self or m != os.path.realpath(path)]
        if not mps:
            return
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)


@pytest.fixture(scope="session")
def scratch(
    tmp_path_factory: pytest.TempPathFactory, differential_log: list[str]
) -> Iterator[Path]:
    """A fresh ext4 on a loop device (4 GiB sparse), unmounted and deleted at the end.

    Falls back to a plain temporary directory (with a warning in the results)
    when a loop filesystem cannot be made; correctness does not depend on it.
    """
    require_root()
    base = tmp_path_factory.mktemp("compat")
    image, mnt = base / "scratch.ext4", base / "mnt"
    mnt.mkdir()
    mkfs = shutil.which("mkfs.ext4")
    made = False
    if mkfs is not None:
        with open(image, "wb") as f:
            f.truncate(4 << 30)
        ok = subprocess.run(
            [mkfs, "-q", "-F", "-E", "nodiscard", "-I", "256", str(image)], capture_output=True
        )
        if ok.returncode == 0:
            mounted = subprocess.run(
                ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True
            )
            made = mounted.returncode == 0
            if not made:
                differential_log.append(
                    f"note: no loop ext4 ({mounted.stderr.strip()}); using {base}"
                )
    try:
        yield mnt
    finally:
        if made:
            unmount_below(mnt)
        else:
            unmount_below(mnt, including_self=False)
        image.unlink(missing_ok=True)
