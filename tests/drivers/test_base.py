"""The Driver base class: get/put counting, its errors, and thread safety."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from lamina._fs import Mount, Mounter
from lamina.drivers import Driver, StorageOpts, validate_id
from lamina.errors import InUseError, InvalidArgumentError, NotFoundError


class DirDriver(Driver):
    """The smallest real driver: a layer is a directory; views may be 'mounted'."""

    name = "dirtest"

    def __init__(self, home: Path, options: Mapping[str, str] | None = None) -> None:
        self.mounts: list[str] = []
        self.unmounts: list[str] = []
        self.specs: list[str] = []
        self.lock = threading.Lock()
        super().__init__(home, options)
        self.home.mkdir(parents=True, exist_ok=True)

    def _make_mounter(self) -> Mounter:
        if self.options.get("mount") != "fake":
            return Mounter()

        def mount(m: Mount) -> None:
            with self.lock:
                self.mounts.append(m.source)

        def unmount(m: Mount) -> None:
            with self.lock:
                self.unmounts.append(m.source)

        return Mounter(mount, unmount)

    def create(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        (self.home / validate_id(id)).mkdir()

    create_read_write = create

    def remove(self, id: str) -> None:
        os.rmdir(self.home / validate_id(id))

    def exists(self, id: str) -> bool:
        return (self.home / validate_id(id)).is_dir()

    def status(self) -> list[tuple[str, str]]:
        return []

    def get_metadata(self, id: str) -> dict[str, str]:
        return {}

    def _mount_spec(self, id: str, mount_label: str) -> Mount:
        with self.lock:
            self.specs.append(id)
        kind = "fake" if self.options.get("mount") == "fake" else "direct"
        return Mount(kind, id, self.home / id)


@pytest.fixture(params=["direct", "fake"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> DirDriver:
    return DirDriver(tmp_path / "home", {"mount": request.param})


def test_two_gets_one_put_keep_the_view(driver: DirDriver) -> None:
    driver.create("a")
    first = driver.get("a")
    second = driver.get("a")
    assert first == second == driver.home / "a"
    driver.put("a")
    assert driver._mounter.count("a") == 1
    if driver.options["mount"] == "fake":
        assert driver.mounts == ["a"] and driver.unmounts == []
    driver.put("a")
    assert driver._mounter.count("a") == 0
    if driver.options["mount"] == "fake":
        assert driver.unmounts == ["a"]
    assert driver.specs == ["a"]


def test_put_past_zero_is_in_use_error(driver: DirDriver) -> None:
    driver.create("a")
    with pytest.raises(InUseError):
        driver.put("a")
    driver.get("a")
    driver.put("a")
    with pytest.raises(InUseError):
        driver.put("a")


def test_get_of_a_missing_layer(driver: DirDriver) -> None:
    with pytest.raises(NotFoundError):
        driver.get("missing")
    assert driver.specs == []
    for bad in ("", ".", "..", "a/b", "x\x00y", "x" * 256):
        with pytest.raises(InvalidArgumentError):
            driver.get(bad)


def test_mounted_releases_on_error(driver: DirDriver) -> None:
    driver.create("a")
    with pytest.raises(RuntimeError), driver.mounted("a") as root:
        assert root.is_dir()
        raise RuntimeError("boom")
    assert driver._mounter.count("a") == 0


def test_cleanup_releases_every_view(driver: DirDriver) -> None:
    driver.create("a")
    driver.create("b")
    driver.get("a")
    driver.get("a")
    driver.get("b")
    driver.cleanup()
    assert driver._mounter.held() == []
    if driver.options["mount"] == "fake":
        assert sorted(driver.unmounts) == ["a", "b"]


def test_concurrent_get_put(driver: DirDriver) -> None:
    layers = [f"layer{i}" for i in range(4)]
    for layer in layers:
        driver.create(layer)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(300):
                layer = layers[(n + i) % len(layers)]
                assert driver.get(layer) == driver.home / layer
                assert driver.get(layer) == driver.home / layer
                driver.put(layer)
                driver.put(layer)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(driver._mounter.count(layer) == 0 for layer in layers)
    assert driver._mounter.held() == []
    assert sorted(driver.mounts) == sorted(driver.unmounts)


def test_validate_id() -> None:
    assert validate_id("sha256-abc_DEF.1") == "sha256-abc_DEF.1"
    assert validate_id("x" * 255) == "x" * 255
    for bad in ("", ".", "..", "/", "a/..", "\x00"):
        with pytest.raises(InvalidArgumentError):
            validate_id(bad)


def test_parent_without_a_record_is_not_supported_never_a_guess(driver: DirDriver) -> None:
    """A driver that keeps no parent record must not answer "none" (its whole tree)."""
    from lamina.errors import NotSupportedError

    driver.create("base")
    driver.create("child", "base")
    with pytest.raises(NotSupportedError):
        driver.parent("child")
    with pytest.raises(NotFoundError):
        driver.parent("missing")
