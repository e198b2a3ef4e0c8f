"""kill -9 at random moments during create, apply_diff and remove, for every driver.

The loop itself is :func:`lamina.drivers.testsuite.crash_loop`;
``LAMINA_CRASH_ITERATIONS`` sets the number of kill points per driver
(default 100, CI-sized); run with thousands by hand.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lamina.drivers.testsuite import LEFTOVER_CHECKS, crash_loop

# start the apply's helper processes at the first file, so kills land among them too
_HELPERS_AT_ONCE = "from lamina.archive import _apply\n_apply.helper_after = 0\n"


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


def _linux_layers() -> tuple[bytes, bytes]:
    base = _linux_tar({f"usr/lib/f{i:03d}": os.urandom(2048) for i in range(150)})
    diff = _linux_tar(
        {f"opt/app/g{i:03d}": os.urandom(4096) for i in range(150)},
        whiteouts=tuple(f"usr/lib/.wh.f{i:03d}" for i in range(0, 150, 3)),
    )
    return base, diff


@pytest.mark.slow
@pytest.mark.parametrize("helpers", [False, True], ids=["alone", "helpers"])
def test_vfs_survives_kill_at_random_points(tmp_path: Path, helpers: bool) -> None:
    # vfs applies onto a copy of the parent: with helpers, files replace files
    base, diff = _linux_layers()
    crash_loop(
        tmp_path,
        "vfs",
        base,
        diff,
        LEFTOVER_CHECKS["vfs"],
        apply_from_file=helpers,
        child_prelude=_HELPERS_AT_ONCE if helpers else "",
    )


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="overlay needs root")
@pytest.mark.parametrize("helpers", [False, True], ids=["alone", "helpers"])
def test_overlay_survives_kill_at_random_points(tmp_path: Path, helpers: bool) -> None:
    # with helpers, the kill also lands while helper processes are creating files
    base, diff = _linux_layers()
    crash_loop(
        tmp_path,
        "overlay",
        base,
        diff,
        LEFTOVER_CHECKS["overlay"],
        apply_from_file=helpers,
        child_prelude=_HELPERS_AT_ONCE if helpers else "",
    )


@pytest.mark.slow
def test_windowsfilter_survives_kill_at_random_points(tmp_path: Path) -> None:
    from test_windowsfilter_fixtures import base_layer, diff_layer_1, go_layer

    crash_loop(
        tmp_path,
        "windowsfilter",
        go_layer(base_layer()),
        go_layer(diff_layer_1()),
        LEFTOVER_CHECKS["windowsfilter"],
    )
