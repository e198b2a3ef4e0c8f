"""Renames that publish or retire a directory in one step, and atomic file writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lamina._fs import (
    made_by_other_live_process,
    make_staging_dir,
    remove_tree,
    rename_noreplace,
    retire_dir,
    staging_name,
    write_file_atomic,
)


def test_rename_noreplace_refuses_even_an_empty_directory(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"new")
    dst.mkdir()  # a plain rename(2) would silently replace this
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert (src / "f").exists() and os.listdir(dst) == []
    os.rmdir(dst)
    rename_noreplace(src, dst)
    assert (dst / "f").read_bytes() == b"new" and not src.exists()
    with pytest.raises(FileNotFoundError):
        rename_noreplace(tmp_path / "missing", tmp_path / "other")


def test_staging_names_are_unique_and_record_the_pid(tmp_path: Path) -> None:
    names = {staging_name("layer") for _ in range(100)}
    assert len(names) == 100
    assert all(n.split(".")[1] == str(os.getpid()) for n in names)
    assert len(staging_name("x" * 255)) <= 255
    made = make_staging_dir(tmp_path / "staging", "layer")
    assert made.is_dir() and stat.S_IMODE(os.stat(made).st_mode) == 0o700


def test_made_by_other_live_process() -> None:
    assert not made_by_other_live_process(f"id.{os.getpid()}.abc")  # our own
    assert made_by_other_live_process(f"id.{os.getppid()}.abc")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not made_by_other_live_process(f"id.{child.pid}.abc")
    assert not made_by_other_live_process("not-a-staging-name")


def test_retire_dir(tmp_path: Path) -> None:
    layer = tmp_path / "dir" / "a"
    layer.mkdir(parents=True)
    (layer / "f").write_bytes(b"1")
    retired = retire_dir(layer, tmp_path / "removing", "a")
    assert retired is not None and (retired / "f").exists() and not layer.exists()
    assert retire_dir(layer, tmp_path / "removing", "a") is None


def test_remove_tree_handles_read_only_directories(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "ro" / "deeper").mkdir(parents=True)
    (tree / "ro" / "deeper" / "f").write_bytes(b"1")
    os.chmod(tree / "ro" / "deeper", 0o500)
    os.chmod(tree / "ro", 0o000)
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(tree)  # missing is fine
    (tmp_path / "file").write_bytes(b"x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_write_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "layerchain.json"
    write_file_atomic(target, b'["a"]', 0o640)
    assert target.read_bytes() == b'["a"]'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    inode = os.stat(target).st_ino
    write_file_atomic(target, b'["a","b"]', durable=False)
    assert target.read_bytes() == b'["a","b"]'
    assert os.stat(target).st_ino != inode  # replaced, not rewritten in place
    assert os.listdir(tmp_path) == ["layerchain.json"]  # no temporary left
    with pytest.raises(FileNotFoundError):
        write_file_atomic(tmp_path / "missing-dir" / "f", b"")
