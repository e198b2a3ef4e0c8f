"""Driver registration and selection (Docker's graphdriver.New rules)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from lamina import drivers
from lamina.drivers import Driver, new_driver, register
from lamina.drivers.vfs import VfsDriver
from lamina.errors import InvalidArgumentError, NotSupportedError, PrerequisitesError


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Test registrations vanish afterwards; the real ones stay as they are."""
    monkeypatch.setattr(drivers, "_factories", dict(drivers._factories))
    yield


def unsupported(home: Path, options: Mapping[str, str]) -> Driver:
    raise PrerequisitesError(f"{home}: not on this machine")


def test_builtin_drivers_are_registered() -> None:
    names = drivers.available()
    assert {"vfs", "overlay", "windowsfilter"} <= set(names)
    assert names.index("overlay") < names.index("vfs")


def test_register_twice_is_an_error(registry: None) -> None:
    register("test-twice", VfsDriver)
    with pytest.raises(InvalidArgumentError):
        register("test-twice", VfsDriver)
    with pytest.raises(InvalidArgumentError):
        register("vfs", VfsDriver)


def test_unknown_name_is_not_supported(tmp_path: Path) -> None:
    with pytest.raises(NotSupportedError):
        new_driver("no-such-driver", tmp_path)


def test_named_driver_home_is_root_slash_name(tmp_path: Path) -> None:
    driver = new_driver("vfs", tmp_path, {})
    assert isinstance(driver, VfsDriver)
    assert driver.home == tmp_path / "vfs"
    assert driver.name == "vfs"


def test_prior_state_wins_over_priority(tmp_path: Path) -> None:
    first = new_driver("vfs", tmp_path)
    first.create("layer")
    picked = new_driver(None, tmp_path)
    assert isinstance(picked, VfsDriver)
    assert picked.exists("layer")


def test_several_prior_states_are_an_error(tmp_path: Path) -> None:
    new_driver("vfs", tmp_path).create("layer")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "l").mkdir()
    with pytest.raises(InvalidArgumentError):
        new_driver(None, tmp_path)


def test_empty_driver_home_is_not_prior_state(
    tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    register("test-first", unsupported)
    register("test-second", VfsDriver)
    monkeypatch.setattr(drivers, "PRIORITY", ("test-first", "test-second"))
    (tmp_path / "test-first").mkdir()  # empty: no state
    picked = new_driver(None, tmp_path)
    assert picked.home == tmp_path / "test-second"


def test_priority_skips_unsupported_drivers(
    tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    register("test-first", unsupported)
    register("test-second", VfsDriver)
    monkeypatch.setattr(drivers, "PRIORITY", ("test-first", "test-second"))
    assert new_driver(None, tmp_path).home == tmp_path / "test-second"


def test_prior_state_errors_are_fatal(
    tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver with state that cannot start must not be silently replaced."""
    register("test-first", unsupported)
    register("test-second", VfsDriver)
    monkeypatch.setattr(drivers, "PRIORITY", ("test-first", "test-second"))
    (tmp_path / "test-first").mkdir()
    (tmp_path / "test-first" / "dir").mkdir()
    with pytest.raises(NotSupportedError):
        new_driver(None, tmp_path)


def test_nothing_supported(tmp_path: Path, registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    register("test-only", unsupported)
    monkeypatch.setattr(drivers, "PRIORITY", ("test-only",))
    with pytest.raises(NotSupportedError, match="no supported storage driver"):
        new_driver(None, tmp_path)


def test_default_choice_on_an_empty_root(tmp_path: Path) -> None:
    """With the real registry: overlay when it works here, else vfs."""
    picked = new_driver(None, tmp_path)
    assert picked.home in (tmp_path / "overlay", tmp_path / "vfs")
