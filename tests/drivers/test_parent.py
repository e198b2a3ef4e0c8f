"""``Driver.parent(id)``: the parent a layer was created on, from each driver's own record."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina import drivers
from lamina.drivers import Driver
from lamina.errors import NotFoundError

_OPTIONS = {"windowsfilter": {"windowsfilter.sandbox": "dir"}}


@pytest.fixture(params=["vfs", pytest.param("overlay", marks=pytest.mark.root), "windowsfilter"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    if request.param == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay needs root")
    d = drivers.new_driver(request.param, tmp_path / "root", _OPTIONS.get(request.param, {}))
    yield d
    d.cleanup()


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


def test_parent_is_the_one_given_at_create(driver: Driver) -> None:
    driver.create("base")
    driver.create("app", "base")
    driver.create_read_write("ctr", "app")
    driver.create_read_write("lone")
    assert driver.parent("base") is None
    assert driver.parent("app") == "base"
    assert driver.parent("ctr") == "app"
    assert driver.parent("lone") is None
    with pytest.raises(NotFoundError):
        driver.parent("missing")


def test_parent_survives_use_and_goes_with_the_layer(driver: Driver) -> None:
    """Still known after the layer was applied to and mounted; forgotten once it is removed."""
    driver.create("base")
    driver.create("app", "base")
    if driver.name != "windowsfilter":  # its tars are Windows layers (tested elsewhere)
        driver.apply_diff("app", "base", io.BytesIO(_tar()))
    with driver.mounted("app"):
        pass
    assert driver.parent("app") == "base"
    driver.remove("app")
    with pytest.raises(NotFoundError):
        driver.parent("app")
    driver.create("app")  # the same id again, now without a parent
    assert driver.parent("app") is None
