"""Warming for overlay changes: it looks up what the walk will look up, and never fails."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lamina.archive import _prefetch


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record the lower lookups (from any thread); threads even for warm caches."""
    seen: list[tuple[str, ...]] = []
    real = _prefetch._first_existing

    def record(paths: tuple[str, ...]) -> None:
        seen.append(paths)  # list.append: safe from any thread
        real(paths)

    monkeypatch.setattr(_prefetch, "_first_existing", record)
    monkeypatch.setattr(_prefetch, "_COLD_SECONDS", 0.0)
    monkeypatch.setattr(_prefetch, "_PROBE_TASKS", 1)
    return seen


def test_every_upper_name_is_looked_up_in_the_lowers(
    tmp_path: Path, lookups: list[tuple[str, ...]]
) -> None:
    upper, low1, low2 = tmp_path / "upper", tmp_path / "l1", tmp_path / "l2"
    names = [f"d{i}/e{j}/f{k}" for i in range(3) for j in range(3) for k in range(4)]
    _tree(upper, names)
    _tree(low1, names[:5])
    low2.mkdir()
    _prefetch.warm_for_changes(str(upper), [str(low1), str(low2)], threads=4)
    expected = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), upper)
            expected.add((f"{low1}/{rel}", f"{low2}/{rel}"))
    assert set(lookups) == expected
    assert len(lookups) == len(expected)  # each once


def test_warming_stops_after_its_budget(
    tmp_path: Path, lookups: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_prefetch, "_MAX_ENTRIES", 10)
    upper = tmp_path / "upper"
    _tree(upper, [f"d{i}/f{k}" for i in range(20) for k in range(10)])
    _prefetch.warm_for_changes(str(upper), [str(tmp_path / "lower")], threads=4)
    assert 10 <= len(lookups) < 200  # the root's 20 entries, then a few directories at most


def test_a_vanishing_tree_is_not_an_error(
    tmp_path: Path, lookups: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    upper = tmp_path / "upper"
    _tree(upper, [f"d{i}/f" for i in range(8)])
    real_list = _prefetch._Warmer._list

    def list_then_remove(self: _prefetch._Warmer, rel: str) -> list[_prefetch._Task]:
        found = real_list(self, rel)
        if rel == "":
            for i in range(8):  # everything it just found disappears
                (upper / f"d{i}" / "f").unlink()
                (upper / f"d{i}").rmdir()
        return found

    raised: list[BaseException | None] = []  # an exception in a thread never reaches us
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    monkeypatch.setattr(_prefetch._Warmer, "_list", list_then_remove)
    _prefetch.warm_for_changes(str(upper), [str(tmp_path / "missing-lower")], threads=3)
    assert raised == []
    assert len(lookups) == 8  # the names found before they went
