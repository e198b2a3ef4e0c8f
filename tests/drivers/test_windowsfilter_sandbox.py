"""windowsfilter sandbox (read-write) layers: merged copy, changes, generated diff, size."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import base_layer, diff_layer_1, go_layer

from lamina import drivers
from lamina._fs import loop_supported
from lamina._units import ram_in_bytes
from lamina.drivers.windowsfilter import DEFAULT_SANDBOX_SIZE, WindowsFilterDriver
from lamina.errors import InvalidArgumentError, QuotaNotSupportedError


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WindowsFilterDriver]:
    monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    d = drivers.new_driver("windowsfilter", tmp_path)
    assert isinstance(d, WindowsFilterDriver)
    d.create("L0")
    d.apply_diff("L0", None, io.BytesIO(go_layer(base_layer())))
    d.create("L1", "L0")
    d.apply_diff("L1", "L0", io.BytesIO(go_layer(diff_layer_1())))
    yield d
    d.cleanup()


@pytest.mark.parametrize("size", ["1.2.3G", "lots", "-1k", "1x"])
def test_a_bad_size_is_a_typed_error_not_a_traceback(
    driver: WindowsFilterDriver, size: str
) -> None:
    """One size parser (lamina._units): ``1.2.3G`` leaked a bare ValueError."""
    with pytest.raises(InvalidArgumentError):
        driver.create_read_write("bad", "L1", storage_opt={"size": size})
    assert not driver.exists("bad")


def test_sizes_read_as_docker_units(driver: WindowsFilterDriver) -> None:
    """``.5k`` and ``1e3`` are go-units sizes; the driver's own parser refused them."""
    assert ram_in_bytes("127GB") == DEFAULT_SANDBOX_SIZE
    driver.create_read_write("box", "L1")
    with pytest.raises(InvalidArgumentError):
        driver.expand_sandbox_size("box", "1.2.3G")


def test_sandbox_starts_as_the_merged_parent_and_diffs_windows_style(
    driver: WindowsFilterDriver,
) -> None:
    driver.create_read_write("box", "L1")
    root = driver.get("box")
    try:
        assert (root / "Users/Public/new.txt").read_bytes() == b"new file\r\n"
        assert not (root / "empty.txt").exists()
        (root / "Users/Public/new.txt").write_bytes(b"changed in the container")
        (root / "added.txt").write_bytes(b"added")
        os.mkdir(root / "newdir")
        os.unlink(root / "Windows/System32/drivers/etc/hosts")
    finally:
        driver.put("box")
    found = {str(c) for c in driver.changes("box")}
    assert {
        "C /Users/Public/new.txt",
        "A /added.txt",
        "A /newdir",
        "D /Windows/System32/drivers/etc/hosts",
    } <= found
    with driver.diff("box") as f:
        data = f.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == "Files" and names[-1] == "Hives"
    assert "Files/Windows/System32/drivers/etc/.wh.hosts" in names
    new = next(m for m in members if m.name == "Files/Users/Public/new.txt")
    # the modified file keeps its Windows metadata and its alternate data streams
    assert new.pax_headers["MSWINDOWS.rawsd"]
    assert new.pax_headers["MSWINDOWS.fileattr"] == "32" and new.mode == 0o100000
    i = names.index("Files/Users/Public/new.txt")
    assert names[i + 1 : i + 3] == [
        "Files/Users/Public/new.txt:meta",
        "Files/Users/Public/new.txt:second",
    ]
    wh = next(m for m in members if m.name.endswith(".wh.hosts"))
    assert wh.mtime == 0 and wh.pax_headers == {}
    # committing the container: the generated tar imports as a new image layer
    driver.create("commit", "L1")
    driver.apply_diff("commit", "L1", io.BytesIO(data))
    view = driver.get("commit")
    try:
        assert (view / "Users/Public/new.txt").read_bytes() == b"changed in the container"
        assert (view / "added.txt").read_bytes() == b"added"
        assert not (view / "Windows/System32/drivers/etc/hosts").exists()
    finally:
        driver.put("commit")
    with driver.diff("commit") as f:
        assert f.read() == data


def test_sandbox_is_left_out_of_a_childs_chain(driver: WindowsFilterDriver) -> None:
    driver.create_read_write("box", "L1")
    driver.create("child", "box")
    assert (driver.home / "child/layerchain.json").read_text() == (
        f'["{driver.home / "L1"}","{driver.home / "L0"}"]'
    )


def test_size_without_loop_support_is_refused(tmp_path: Path) -> None:
    d = WindowsFilterDriver(tmp_path / "wf", {"windowsfilter.sandbox": "dir"})
    with pytest.raises(QuotaNotSupportedError):
        d.create_read_write("box", None, storage_opt={"size": "50M"})
    with pytest.raises(InvalidArgumentError):
        d.create_read_write("box", None, storage_opt={"color": "blue"})


needs_loop = pytest.mark.skipif(
    not loop_supported(), reason="needs root, /dev/loop-control and mkfs.ext4"
)


@needs_loop
@pytest.mark.root
def test_size_is_enforced_with_enospc_and_can_grow(driver: WindowsFilterDriver) -> None:
    driver.create_read_write("quota", "L1", storage_opt={"size": "50M"})
    image = driver.home / "quota" / "sandbox.img"
    assert image.stat().st_size == 50 * 1024 * 1024
    assert image.stat().st_blocks * 512 < 20 * 1024 * 1024  # sparse
    root = driver.get("quota")
    try:
        (root / "smallfile").write_bytes(os.urandom(25 * 1024 * 1024))
        with pytest.raises(OSError) as info:
            (root / "bigfile").write_bytes(os.urandom(50 * 1024 * 1024))
        assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
        os.unlink(root / "bigfile")
    finally:
        driver.put("quota")
    driver.expand_sandbox_size("quota", "120M")
    root = driver.get("quota")
    try:
        assert (root / "smallfile").stat().st_size == 25 * 1024 * 1024
        (root / "bigfile").write_bytes(os.urandom(50 * 1024 * 1024))
    finally:
        driver.put("quota")
    assert not os.path.ismount(driver.home / "quota" / "sandbox")
    assert "A /bigfile" in {str(c) for c in driver.changes("quota")}
    driver.remove("quota")
    assert not (driver.home / "quota").exists()


def test_a_sandbox_keeps_its_parents_hard_link_groups(driver: WindowsFilterDriver) -> None:
    """A hard link in the parent (``bin/ash`` = ``bin/sh``) stays one file in the copy."""
    driver.create_read_write("box", "L0")
    root = driver.get("box")
    try:
        app = root / "Program Files/app.exe"
        link = root / "Windows/System32/app-hardlink.exe"
        assert app.stat().st_ino == link.stat().st_ino and app.stat().st_nlink == 2
        parent = driver.home / "L0" / "Files" / "Program Files/app.exe"
        assert app.stat().st_ino != parent.stat().st_ino  # a copy, not the parent's file
        app.write_bytes(b"changed through one name")
        assert link.read_bytes() == b"changed through one name"
        assert parent.read_bytes() != b"changed through one name"
    finally:
        driver.put("box")
