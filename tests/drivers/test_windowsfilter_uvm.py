"""windowsfilter: a layer with parents that changes the utility VM starts from a clone of it.

hcsshim's importer (``legacy.go`` ``initUtilityVM``/``cloneTree``): the first
``UtilityVM`` entry or deletion clones the nearest parent's
``UtilityVM/Files`` — directories, reparse points and the BCD files copied,
other files hard-linked — and the layer's entries then replace or extend
the clone, its deletions remove from it (the path must exist) and its hard
links to ``UtilityVM/Files/`` find their targets in it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import E, base_layer, diff_layer_1, go_layer

from lamina import drivers
from lamina.drivers.windowsfilter import WindowsFilterDriver
from lamina.errors import InvalidArchiveError

BOOT = "UtilityVM/Files/EFI/Microsoft/Boot"
T1 = 1_700_000_000_000_000_000


def uvm_base() -> list[E]:
    """The fixture base layer plus an ordinary utility VM file and a symlink."""
    return [
        *base_layer(),
        E("dir", "UtilityVM/Files/System32", top=True),
        E("file", "UtilityVM/Files/System32/kernel.dll", b"kernel" * 100, top=True),
        E("symlink", "UtilityVM/Files/kernel-link", target="System32\\kernel.dll", top=True),
    ]


def servicing() -> list[E]:
    """A layer that services the utility VM: replaces, adds, deletes and links."""
    return [
        E("dir", "Files", top=True, t=T1),
        E("dir", "UtilityVM", top=True, t=T1),
        E("dir", "UtilityVM/Files", top=True, t=T1),
        E("file", f"{BOOT}/BCD", b"regf-serviced" + bytes(100), top=True, t=T1),
        E("whiteout", f"{BOOT}/.wh.BCD.LOG2"),
        E("file", "UtilityVM/Files/System32/new.dll", b"new", top=True, t=T1),
        E("link", "UtilityVM/Files/log1-link", target=f"{BOOT}/BCD.LOG1"),
    ]


@pytest.fixture(params=["reexec", "inline"])
def driver(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WindowsFilterDriver]:
    if request.param == "inline":
        monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    else:
        monkeypatch.delenv("LAMINA_WINDOWSFILTER_NOREEXEC", raising=False)
    d = drivers.new_driver("windowsfilter", tmp_path)
    assert isinstance(d, WindowsFilterDriver)
    d.create("L0")
    d.apply_diff("L0", None, io.BytesIO(go_layer(uvm_base())))
    yield d
    d.cleanup()


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            body: bytes | str | None = None
            if p.is_symlink():
                body = os.readlink(p)
            elif p.is_file():
                body = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns, body)
    return out


def test_a_servicing_layer_starts_from_a_clone_of_the_parent_uvm(
    driver: WindowsFilterDriver,
) -> None:
    l0 = driver.home / "L0"
    before = snapshot(l0 / "UtilityVM")
    data = go_layer(servicing())
    driver.create("S", "L0")
    assert driver.apply_diff("S", "L0", io.BytesIO(data)) == len(b"regf-serviced") + 100 + 3
    s = driver.home / "S"
    uvm = s / "UtilityVM/Files"
    # ordinary files are hard links into the parent, the BCD files copies
    kernel = uvm / "System32/kernel.dll"
    assert kernel.stat().st_ino == (l0 / "UtilityVM/Files/System32/kernel.dll").stat().st_ino
    for name in ("BCD.LOG", "BCD.LOG1"):
        mine, theirs = (s / BOOT / name), (l0 / BOOT / name)
        assert mine.read_bytes() == theirs.read_bytes()
        assert mine.stat().st_ino != theirs.stat().st_ino
    assert os.readlink(uvm / "kernel-link") == "System32/kernel.dll"
    # cloned directories keep the parent's times
    assert (uvm / "EFI/Microsoft").stat().st_mtime_ns == (
        l0 / "UtilityVM/Files/EFI/Microsoft"
    ).stat().st_mtime_ns
    # the layer's own entries: replaced, added, deleted, linked into the clone
    assert (s / BOOT / "BCD").read_bytes() == b"regf-serviced" + bytes(100)
    assert (s / "bcd.bak").read_bytes() == b"regf-serviced" + bytes(100)
    assert not (s / BOOT / "BCD.LOG2").exists()
    assert (uvm / "System32/new.dll").read_bytes() == b"new"
    assert (uvm / "log1-link").stat().st_ino == (s / BOOT / "BCD.LOG1").stat().st_ino
    # the parent is untouched (nothing was written through a hard link)
    assert snapshot(l0 / "UtilityVM") == before
    assert (l0 / BOOT / "BCD").read_bytes() == b"regf" + bytes(4092)
    meta = json.loads((s / ".lamina/meta.json").read_text())
    assert meta["utility_vm_clone"] == str(l0)
    # the layer still exports byte for byte, the BCD body from its backup
    (s / BOOT / "BCD").write_bytes(b"rewritten by ProcessUtilityVMImage")
    with driver.diff("S") as f:
        assert f.read() == data


def test_the_nearest_parent_must_have_a_utility_vm(driver: WindowsFilterDriver) -> None:
    driver.create("L1", "L0")
    driver.apply_diff("L1", "L0", io.BytesIO(go_layer(diff_layer_1())))
    driver.create("S", "L1")
    with pytest.raises(InvalidArchiveError, match="none to clone"):
        driver.apply_diff("S", "L1", io.BytesIO(go_layer(servicing())))
    assert not (driver.home / "S" / "UtilityVM").exists()
    assert os.listdir(driver.home / ".lamina-staging") == []


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([E("dir", "Files", top=True), E("whiteout", f"{BOOT}/.wh.missing")], "does not have"),
        (
            [E("dir", "Files", top=True), E("file", "UtilityVM/Files/x", b"x", top=True)],
            "must come first",
        ),
        (
            [
                E("dir", "UtilityVM", top=True),
                E("file", "UtilityVM/Files/EFI", b"not a directory", top=True),
            ],
            "non-empty utility VM directory",
        ),
        (
            [
                E("dir", "UtilityVM", top=True),
                E("link", "UtilityVM/Files/l", target="UtilityVM/Files/nothing"),
            ],
            "not found",
        ),
    ],
    ids=["delete-missing", "before-UtilityVM", "file-over-directory", "link-to-nothing"],
)
def test_bad_utility_vm_changes_are_refused(
    driver: WindowsFilterDriver, entries: list[E], message: str
) -> None:
    driver.create("S", "L0")
    with pytest.raises(InvalidArchiveError, match=message):
        driver.apply_diff("S", "L0", io.BytesIO(go_layer(entries)))
    assert not (driver.home / "S" / "UtilityVM").exists()
    assert os.listdir(driver.home / ".lamina-staging") == []
