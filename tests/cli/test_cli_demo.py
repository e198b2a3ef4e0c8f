"""The quick-start demo: it runs, it reports MATCH, and its comparison can fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from lamina import ChangeKind, drivers
from lamina._demo import compare_trees, run_demo
from lamina.cli import cli

NOBODY = 65534


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at a directory of our own, to see what the demo leaves behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_demo_on_vfs_matches_and_cleans_up(private_tmp: Path) -> None:
    lines: list[str] = []
    result = run_demo(driver="vfs", echo=lines.append)
    assert result.match, "\n".join(lines)
    assert result.driver == "vfs"
    assert lines[-1].startswith("MATCH")
    assert result.files >= 5
    assert result.base_size > 0
    kinds = {c.path: c.kind for c in result.changes}
    assert kinds["/etc/lamina-demo.conf"] is ChangeKind.ADD
    assert kinds["/opt/lamina-demo"] is ChangeKind.ADD
    assert kinds["/opt/lamina-demo/hello.txt"] is ChangeKind.ADD
    assert kinds["/opt/lamina-demo/latest"] is ChangeKind.ADD
    assert sum(k is ChangeKind.DELETE for k in kinds.values()) == 1
    assert any(k is ChangeKind.MODIFY and p.startswith("/etc/") for p, k in kinds.items())
    assert any("(whiteout: deletes /" in line for line in result.diff_entries)
    assert result.compared > result.files
    assert list(private_tmp.iterdir()) == []  # the temporary store is gone


def test_demo_image_part_round_trips_through_a_fresh_store(private_tmp: Path) -> None:
    lines: list[str] = []
    result = run_demo(driver="vfs", echo=lines.append)
    assert result.images_match, "\n".join(lines)
    assert result.image_id.startswith("sha256:") and result.committed_id != result.image_id
    assert result.reloaded_id == result.committed_id  # same config bytes in the fresh store
    assert result.image_compared > result.files
    kinds = {c.path: c.kind for c in result.image_changes}
    assert kinds["/etc/lamina-demo.conf"] is ChangeKind.ADD
    assert sum(k is ChangeKind.DELETE for k in kinds.values()) == 1
    assert result.saved_bytes > 0
    assert "lamina demo, images: store " in "\n".join(lines)
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("fallback", ["lamina sources", "own files"])
def test_demo_copes_with_a_host_that_lost_its_files(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch, fallback: str
) -> None:
    """A host whose /etc was deleted: every source is missing, the demo still matches."""
    from lamina import _demo

    monkeypatch.setattr(_demo, "_SOURCES", ("etc/no-such-file", "usr/share/no-such-dir"))
    if fallback == "own files":
        monkeypatch.setattr(_demo, "_MIN_FILES", 0)  # not even lamina's own sources
    lines: list[str] = []
    result = run_demo(driver="vfs", echo=lines.append)
    assert result.match, "\n".join(lines)
    text = "\n".join(lines)
    assert ("/etc/lamina-demo (the demo's own files)" in text) == (fallback == "own files")
    assert list(private_tmp.iterdir()) == []


def test_demo_with_a_root_removes_its_images_and_containers(
    tmp_path: Path, private_tmp: Path
) -> None:
    from lamina.store import Store

    store = tmp_path / "store"
    assert run_demo(store, "vfs", echo=lambda _: None).match
    with Store(store, driver="vfs") as s:
        assert s.images() == [] and s.containers() == []
    kept = run_demo(store, "vfs", keep=True, echo=lambda _: None)
    with Store(store, driver="vfs") as s:
        assert {img.id for img in s.images()} == {kept.image_id, kept.committed_id}
        assert len(s.containers()) == 1


def test_demo_with_a_root_keeps_or_removes_its_layers(tmp_path: Path, private_tmp: Path) -> None:
    store = tmp_path / "store"
    kept = run_demo(store, "vfs", keep=True, echo=lambda _: None)
    assert kept.match
    assert len(kept.layers) == 3
    driver = drivers.new_driver("vfs", store)
    assert all(driver.exists(layer) for layer in kept.layers)
    removed = run_demo(store, "vfs", echo=lambda _: None)
    assert removed.match
    assert not set(removed.layers) & set(kept.layers)  # unique ids in a shared store
    assert not any(driver.exists(layer) for layer in removed.layers)
    assert all(driver.exists(layer) for layer in kept.layers)
    assert removed.layer_digest == kept.layer_digest  # the same files make the same layer


@pytest.mark.parametrize("args", [["--driver", "vfs", "demo"], ["demo", "--driver", "vfs"]])
def test_lamina_demo_command(private_tmp: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, prog_name="lamina")
    assert result.exit_code == 0, result.output
    assert "[7/7] compare" in result.stdout
    assert "[7/7] load saved.tar into a fresh store and compare" in result.stdout
    assert "lamina demo: driver vfs," in result.stdout
    assert "\nMATCH: " in result.stdout
    assert list(private_tmp.iterdir()) == []


def test_python_m_lamina_demo_with_automatic_driver() -> None:
    """What the README quick start runs: no options at all."""
    env = {k: v for k, v in os.environ.items() if k not in ("LAMINA_ROOT", "LAMINA_DRIVER")}
    proc = subprocess.run(
        [sys.executable, "-m", "lamina", "demo"],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert out.splitlines()[-1].startswith("MATCH: ")


@pytest.mark.root
@pytest.mark.usefixtures("needs_root")  # to switch to an unprivileged user
def test_demo_as_a_normal_user(tmp_path: Path) -> None:
    """Drop to nobody in a forked child: automatic selection must fall back to what works."""
    # The child cannot import from a root-only interpreter prefix (/root/...),
    # so everything the demo touches is imported here, by a first run.
    assert run_demo(driver="vfs", echo=lambda _: None).match
    with contextlib.suppress(Exception):
        drivers.new_driver("overlay", tmp_path / "warm-up")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and its status
        code = 1
        os.close(read_end)
        with os.fdopen(write_end, "w") as out:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                result = run_demo(echo=lambda line: print(line, file=out))
                print(f"driver={result.driver}", file=out)
                code = 0 if result.match else 1
            except BaseException:
                traceback.print_exc(file=out)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert "\nMATCH: " in output


def test_compare_trees_reports_each_kind_of_difference(tmp_path: Path) -> None:
    left, right = tmp_path / "left", tmp_path / "right"
    for tree in (left, right):
        (tree / "d").mkdir(parents=True)
        (tree / "d/same").write_bytes(b"same")
        (tree / "content").write_bytes(b"aaaa")
        (tree / "mode").write_bytes(b"m")
        os.symlink("content", tree / "link")
    assert compare_trees(left, right) == (5, [])

    (right / "content").write_bytes(b"bbbb")  # same size, other bytes
    os.chmod(right / "mode", 0o600)
    os.unlink(right / "link")
    os.symlink("mode", right / "link")
    (right / "extra").write_bytes(b"")
    shutil.rmtree(right / "d")
    compared, differences = compare_trees(left, right)
    assert compared == 6
    assert [d.split(":")[0] for d in differences] == [
        "/content",
        "/d",
        "/d/same",
        "/extra",
        "/link",
        "/mode",
    ]
