"""windowsfilter: import, layout, byte-exact export, diff_getter, views, changes, removal."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import (
    SD_ADMIN,
    E,
    base_layer,
    diff_layer_1,
    diff_layer_2,
    go_layer,
    layer_size,
    tarfile_layer,
)

from lamina import Change, ChangeKind, drivers
from lamina.archive.windows import PAX_CREATIONTIME, PAX_MOUNTPOINT, PAX_RAWSD
from lamina.drivers.windowsfilter import WindowsFilterDriver
from lamina.errors import AlreadyExistsError, ArchiveError, NotFoundError

LAYERS = (("L0", base_layer, None), ("L1", diff_layer_1, "L0"), ("L2", diff_layer_2, "L1"))
BCD = "UtilityVM/Files/EFI/Microsoft/Boot/BCD"


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
    yield d
    d.cleanup()


def import_all(d: WindowsFilterDriver, writer=go_layer) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    tars = {}
    for name, make, parent in LAYERS:
        data = writer(make())
        d.create(name, parent)
        assert d.apply_diff(name, parent, io.BytesIO(data)) == layer_size(make())
        tars[name] = data
    return tars


def read_diff(d: WindowsFilterDriver, id: str, parent: str | None = None) -> bytes:
    with d.diff(id, parent) as f:
        return f.read()


@pytest.mark.parametrize("writer", [go_layer, tarfile_layer])
def test_import_then_diff_is_byte_identical(driver: WindowsFilterDriver, writer) -> None:  # type: ignore[no-untyped-def]
    tars = import_all(driver, writer)
    for name, data in tars.items():
        assert read_diff(driver, name) == data
        assert read_diff(driver, name, dict((n, p) for n, _, p in LAYERS)[name]) == data


def test_compressed_input_is_accepted(driver: WindowsFilterDriver) -> None:
    data = go_layer(base_layer())
    driver.create("gz")
    assert driver.apply_diff("gz", None, io.BytesIO(gzip.compress(data))) == layer_size(
        base_layer()
    )
    assert read_diff(driver, "gz") == data


def test_layer_folder_layout(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    home = driver.home
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert (home / "L0" / "layerchain.json").read_bytes() == b"null"
    assert (home / "L1" / "layerchain.json").read_bytes() == json.dumps(
        [str(home / "L0")], separators=(",", ":")
    ).encode()
    assert json.loads((home / "L2" / "layerchain.json").read_text()) == [
        str(home / "L1"),
        str(home / "L0"),
    ]
    assert stat.S_IMODE(os.stat(home / "L1" / "layerchain.json").st_mode) == 0o600
    l0 = home / "L0"
    assert (l0 / "Files/Program Files/app.exe").read_bytes().startswith(b"MZ")
    assert (l0 / "Files/Windows/System32/app-hardlink.exe").stat().st_ino == (
        l0 / "Files/Program Files/app.exe"
    ).stat().st_ino
    assert os.readlink(l0 / "Files/Documents and Settings") == "/Users"
    assert (l0 / "UtilityVM/Files/EFI/Microsoft/Boot/BCD").is_file()
    for tar_name, backup in (
        ("BCD", "bcd.bak"),
        ("BCD.LOG", "bcd.log.bak"),
        ("BCD.LOG1", "bcd.log1.bak"),
        ("BCD.LOG2", "bcd.log2.bak"),
    ):
        live = (l0 / "UtilityVM/Files/EFI/Microsoft/Boot" / tar_name).read_bytes()
        assert (l0 / backup).read_bytes() == live
    # the cross-layer hard link shares the parent's file
    assert (home / "L1/Files/Users/Public/app-link.exe").stat().st_ino == (
        l0 / "Files/Program Files/app.exe"
    ).stat().st_ino
    assert (home / "L1/Hives/System_Delta").read_bytes() == b"regf-system"


def test_every_windows_record_survives(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    meta = json.loads((driver.home / "L0/.lamina/meta.json").read_text())
    by_name = {e["name"]: e for e in meta["entries"]}
    app = by_name["Files/Program Files/app.exe"]
    pax = dict(app["pax"])
    assert pax[PAX_RAWSD] == SD_ADMIN
    assert pax["MSWINDOWS.xattr.$KERNEL.PURGE.ESBCACHE"] == "AQID"
    assert app["attributes"] == 0x20 and app["creation"] == app["mtime"] - 10**9 - 0
    assert dict(by_name["Files/Documents and Settings"]["pax"])[PAX_MOUNTPOINT] == "1"
    assert by_name["Files/Documents and Settings"]["linkname"] == "C:\\Users"
    stream = by_name["Files/Users/Public/readme.txt:Zone.Identifier"]
    assert stream["kind"] == "stream" and stream["owner"] == "Files/Users/Public/readme.txt"
    assert PAX_CREATIONTIME in dict(by_name["Files/empty.txt"]["pax"])
    meta1 = json.loads((driver.home / "L1/.lamina/meta.json").read_text())
    deletions = [e["target"] for e in meta1["entries"] if e["kind"] == "whiteout"]
    assert deletions == ["Files/EMPTY.TXT", "Files/Users/Public/readme.txt"]


def test_diff_getter_serves_backups_streams_and_files(driver: WindowsFilterDriver) -> None:
    tars = import_all(driver)
    l0 = driver.home / "L0"
    original = (l0 / BCD).read_bytes()
    (l0 / BCD).write_bytes(b"mutated by ProcessUtilityVMImage")  # what Windows does after import
    getter = driver.diff_getter("L0")
    try:
        with getter.get(BCD) as f:
            assert f.read() == original
        with getter.get("Files/Users/Public/readme.txt:Zone.Identifier") as f:
            assert f.read() == b"[ZoneTransfer]\r\nZoneId=3\r\n"
        with getter.get("Files/Windows/System32/drivers/etc/hosts") as f:
            assert f.read() == b"127.0.0.1 localhost\r\n"
        for bad in ("../L1/Files/x", ".lamina/meta.json", "bcd.bak", "Files/missing"):
            with pytest.raises(NotFoundError):
                getter.get(bad)
    finally:
        getter.close()
    assert driver._mounter.held() == []  # no mount was needed
    assert read_diff(driver, "L0") == tars["L0"]  # the backup keeps the export exact


def test_merged_view_newest_wins_and_deletions_hide(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    root = driver.get("L2")
    try:
        assert not (root / "Program Files").exists()
        assert not (root / "empty.txt").exists()  # deleted as EMPTY.TXT: case-insensitive
        assert not (root / "Users/Public/readme.txt").exists()
        assert (root / "Users/Public/new.txt").read_bytes() == b"new file\r\n"
        assert (root / "Users/Public/app-link.exe").read_bytes().startswith(b"MZ")
        assert (
            root / "Windows/System32/drivers/etc/hosts"
        ).read_bytes() == b"10.0.0.1 modified\r\n"
        assert (root / "Windows/System32/config/SAM").read_bytes() == b"SAMSAMSAM"
        assert os.readlink(root / "Users/Public/docs") == "/Users/Public/Documents"
        assert os.readlink(root / "Users/Public/rel-link") == "../Public/new.txt"
        assert not any(":" in n for _, _, names in os.walk(root) for n in names)
        assert driver.get("L2") == root
        driver.put("L2")
    finally:
        driver.put("L2")
    assert not root.exists()
    lower = driver.get("L0")
    try:
        assert (lower / "empty.txt").exists() and (lower / "Program Files/app.exe").exists()
    finally:
        driver.put("L0")


def test_changes_tell_add_modify_delete(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    found = {str(c) for c in driver.changes("L1")}
    assert "A /Users/Public/new.txt" in found
    assert "A /Users/Public/app-link.exe" in found
    assert "C /Windows/System32/drivers/etc/hosts" in found
    assert "D /Users/Public/readme.txt" in found
    assert "D /empty.txt" in found
    assert Change("/Program Files", ChangeKind.DELETE) in driver.changes("L2")
    assert driver.diff_size("L1") == len(b"new file\r\n") + len(b"10.0.0.1 modified\r\n") + len(
        b"MZ" + bytes(range(256)) * 8
    )


def test_diff_against_another_parent_is_generated(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    data = read_diff(driver, "L2", "L0")
    driver.create("again", "L0")
    driver.apply_diff("again", "L0", io.BytesIO(data))
    a, b = driver.get("again"), driver.get("L2")
    try:

        def listing(root: Path) -> dict[str, bytes | str]:
            out: dict[str, bytes | str] = {}
            for dirpath, dirnames, filenames in os.walk(root):
                for n in filenames + dirnames:
                    p = Path(dirpath) / n
                    rel = str(p.relative_to(root))
                    out[rel] = (
                        os.readlink(p)
                        if p.is_symlink()
                        else (p.read_bytes() if p.is_file() else "dir")
                    )
            return out

        assert listing(a) == listing(b)
    finally:
        driver.put("again")
        driver.put("L2")


def test_layer_id_indirection_is_case_insensitive(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    driver.create("alias")
    (driver.home / "alias" / "layerId").write_text("L1")
    assert driver.exists("alias")
    assert read_diff(driver, "alias") == read_diff(driver, "L1")
    assert driver.get_metadata("alias") == {"dir": str(driver.home / "L1")}


def test_remove_renames_then_deletes_and_cleanup_sweeps(driver: WindowsFilterDriver) -> None:
    import_all(driver)
    driver.remove("L2")
    assert not driver.exists("L2") and not (driver.home / "L2-removing").exists()
    driver.remove("L2")  # missing is fine
    # a crash after the rename leaves <id>-removing behind, with the record that
    # remove writes first; cleanup finishes it
    (driver.home / "L1/.lamina/removing").write_text("L1-removing")
    os.rename(driver.home / "L1", driver.home / "L1-removing")
    stale = driver.home / ".lamina-staging" / "x.999999999.abc"
    stale.mkdir(parents=True)
    driver.cleanup()
    assert not (driver.home / "L1-removing").exists() and not stale.exists()
    assert driver.exists("L0")


def test_apply_twice_and_create_twice_refuse(driver: WindowsFilterDriver) -> None:
    data = go_layer(base_layer())
    driver.create("b")
    driver.apply_diff("b", None, io.BytesIO(data))
    with pytest.raises(AlreadyExistsError):
        driver.apply_diff("b", None, io.BytesIO(data))
    with pytest.raises(AlreadyExistsError):
        driver.create("b")
    assert read_diff(driver, "b") == data


def test_apply_without_create_and_empty_layer(driver: WindowsFilterDriver) -> None:
    data = go_layer([E("dir", "Files", top=True)])
    assert driver.apply_diff("fresh", None, io.BytesIO(data)) == 0
    assert read_diff(driver, "fresh") == data
    driver.create("empty")
    root = driver.get("empty")
    try:
        assert os.listdir(root) == []
    finally:
        driver.put("empty")


def test_status_and_metadata(driver: WindowsFilterDriver) -> None:
    assert driver.status()[0] == ("Windows", "")
    driver.create("x")
    assert driver.get_metadata("x") == {"dir": str(driver.home / "x")}
    with pytest.raises(NotFoundError):
        driver.get_metadata("nope")
    with pytest.raises(NotFoundError):
        driver.create("y", "nope")


@pytest.mark.parametrize("mode", ["reexec", "inline"])
def test_a_full_disk_is_a_typed_archive_error_carrying_errno(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Was a bare ``OSError: [Errno 28] [Errno 28] No space left on device``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a small tmpfs")
    if mode == "inline":
        monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    else:
        monkeypatch.delenv("LAMINA_WINDOWSFILTER_NOREEXEC", raising=False)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        d = drivers.new_driver("windowsfilter", small)
        d.create("big")
        layer = [
            E("dir", "Files", top=True),
            E("file", "Files/big.bin", os.urandom(4 << 20)),
        ]
        with pytest.raises(ArchiveError) as info:
            d.apply_diff("big", None, io.BytesIO(go_layer(layer)))
        assert type(info.value) is ArchiveError
        assert info.value.errno == errno.ENOSPC
        assert str(info.value).count("Errno") <= 1
        assert "no space left" in str(info.value)
        assert d.exists("big") and list((d.home / "big" / "Files").iterdir()) == []
        d.cleanup()
        assert list((d.home / ".lamina-staging").iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
