"""Store tests: real SQLite, real drivers (vfs everywhere, overlay as root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(params=["vfs", "overlay"])
def driver_name(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = str(request.param)
    if name == "overlay":
        if os.geteuid() != 0:
            pytest.skip("overlay needs root")
        from lamina import drivers
        from lamina.errors import NotSupportedError

        try:
            drivers.new_driver("overlay", tmp_path / "probe")
        except NotSupportedError as exc:
            pytest.skip(f"overlay not supported here: {exc}")
    return name
