"""Every subcommand on the vfs driver in a temporary root, checked against real files."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from click.testing import Result

from lamina import drivers
from lamina._demo import compare_trees

Run = Callable[..., Result]
Ok = Callable[[Result], str]

BASE = {
    "etc": None,
    "etc/a.conf": b"alpha\n",
    "etc/b.conf": b"beta\n",
    "usr": None,
    "usr/x": b"x" * 1000,
    "usr/link": "->x",
}
BASE_SIZE = 6 + 5 + 1000  # Docker's layer size: the sum of the entries' header sizes


@pytest.fixture
def base_tar(tmp_path: Path, make_tar: Callable[..., bytes]) -> Path:
    path = tmp_path / "base.tar"
    path.write_bytes(make_tar(BASE))
    return path


@pytest.fixture
def container(lamina: Run, ok: Ok, root: Path, base_tar: Path) -> str:
    """base (from base.tar) and ctr on top of it with one file changed, added and deleted.

    The changes are written through the library's get/put in this process, so
    that these tests do not depend on `lamina unmount` pairing across runs.
    """
    ok(lamina("create", "base"))
    ok(lamina("apply-diff", "base", str(base_tar)))
    ok(lamina("create-rw", "ctr", "--parent", "base"))
    driver = drivers.new_driver("vfs", root)
    with driver.mounted("ctr") as view:
        (view / "etc/a.conf").write_bytes(b"ALPHA changed\n")
        (view / "new.txt").write_bytes(b"hello\n")
        os.unlink(view / "usr/x")
    return "ctr"


def test_create_then_exists(lamina: Run, ok: Ok) -> None:
    result = lamina("exists", "l1")
    assert (result.exit_code, result.stdout) == (1, "false\n")
    ok(lamina("create", "l1"))
    assert ok(lamina("exists", "l1")) == "true\n"
    ok(lamina("create", "l2", "--parent", "l1"))
    ok(lamina("create-rw", "l3", "-p", "l2"))
    assert ok(lamina("exists", "l3")) == "true\n"


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("via", ["file", "stdin", "dash"])
def test_apply_diff_prints_size(
    lamina: Run,
    ok: Ok,
    root: Path,
    tmp_path: Path,
    make_tar: Callable[..., bytes],
    compression: str,
    via: str,
) -> None:
    data = make_tar(BASE)
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    ok(lamina("create", "base"))
    if via == "file":
        (tmp_path / "layer").write_bytes(data)
        out = ok(lamina("apply-diff", "base", str(tmp_path / "layer")))
    elif via == "stdin":
        out = ok(lamina("apply-diff", "base", input=data))
    else:
        out = ok(lamina("apply-diff", "base", "-", input=data))
    assert out == f"{BASE_SIZE}\n"
    with drivers.new_driver("vfs", root).mounted("base") as view:
        assert (view / "etc/a.conf").read_bytes() == b"alpha\n"
        assert (view / "usr/x").read_bytes() == b"x" * 1000
        assert os.readlink(view / "usr/link") == "x"


def test_mount_prints_the_view_with_the_parents_content(
    lamina: Run, ok: Ok, container: str
) -> None:
    path = Path(ok(lamina("mount", container)).rstrip("\n"))
    assert path.is_absolute()
    assert (path / "etc/b.conf").read_bytes() == b"beta\n"  # from the parent
    assert (path / "new.txt").read_bytes() == b"hello\n"  # the container's own
    assert not (path / "usr/x").exists()


@pytest.mark.parametrize("driver", ["vfs", pytest.param("overlay", marks=pytest.mark.root)])
def test_each_mount_pairs_with_one_unmount_across_invocations(
    root: Path, driver: str, request: pytest.FixtureRequest
) -> None:
    """Every `lamina mount` is one get, every `lamina unmount` one put, each its own process."""
    if driver != "vfs" and os.geteuid() != 0:
        pytest.skip(f"{driver} mounts need root")
    request.addfinalizer(lambda: drivers.new_driver(driver, root).cleanup())

    def lamina(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lamina", "--root", str(root), "--driver", driver, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    for args in (["create", "base"], ["create-rw", "l1", "--parent", "base"]):
        assert lamina(*args).returncode == 0
    first = lamina("mount", "l1")
    assert first.returncode == 0, first.stderr
    view = Path(first.stdout.strip())
    assert lamina("mount", "l1").stdout == first.stdout
    (view / "written-while-mounted").write_bytes(b"x")
    unmounted = lamina("unmount", "l1")
    assert unmounted.returncode == 0, unmounted.stderr
    assert (view / "written-while-mounted").exists()  # still held by the other mount
    assert lamina("unmount", "l1").returncode == 0
    assert not os.path.ismount(view)  # the last unmount took the view away
    past_zero = lamina("unmount", "l1")
    assert past_zero.returncode == 7
    assert past_zero.stderr.startswith("lamina: error: ")


def test_changes_in_docker_diff_format(lamina: Run, ok: Ok, container: str) -> None:
    out = ok(lamina("changes", container, "--parent", "base"))
    assert out.splitlines() == ["C /etc", "C /etc/a.conf", "A /new.txt", "C /usr", "D /usr/x"]


def test_changes_without_parent_lists_everything_as_added(
    lamina: Run, ok: Ok, base_tar: Path
) -> None:
    ok(lamina("create", "base"))
    ok(lamina("apply-diff", "base", str(base_tar)))
    out = ok(lamina("changes", "base"))
    assert out.splitlines() == [
        "A /etc",
        "A /etc/a.conf",
        "A /etc/b.conf",
        "A /usr",
        "A /usr/link",
        "A /usr/x",
    ]


def test_diff_to_file_and_stdout_round_trips(
    lamina: Run, ok: Ok, root: Path, tmp_path: Path, container: str
) -> None:
    out_file = tmp_path / "ctr.tar"
    assert ok(lamina("diff", container, "--parent", "base", "-o", str(out_file))) == ""
    with tarfile.open(out_file) as tar:
        names = {m.name for m in tar}
    assert names == {"etc", "etc/a.conf", "new.txt", "usr", "usr/.wh.x"}

    to_stdout = lamina("diff", container, "--parent", "base")
    assert to_stdout.exit_code == 0, to_stdout.stderr
    assert to_stdout.stdout_bytes == out_file.read_bytes()  # the export is deterministic

    ok(lamina("create", "copy", "--parent", "base"))
    ok(lamina("apply-diff", "copy", "--parent", "base", input=to_stdout.stdout_bytes))
    driver = drivers.new_driver("vfs", root)
    with driver.mounted(container) as left, driver.mounted("copy") as right:
        compared, differences = compare_trees(left, right)
    assert compared == 6
    assert differences == []


def test_diff_without_parent_is_the_whole_layer(lamina: Run, ok: Ok, base_tar: Path) -> None:
    ok(lamina("create", "base"))
    ok(lamina("apply-diff", "base", str(base_tar)))
    result = lamina("diff", "base")
    assert result.exit_code == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes)) as tar:
        members = {m.name: m for m in tar}
    assert set(members) == {"etc", "etc/a.conf", "etc/b.conf", "usr", "usr/x", "usr/link"}
    assert members["usr/link"].linkname == "x"


def test_diff_size(lamina: Run, ok: Ok, container: str) -> None:
    out = ok(lamina("diff-size", container, "--parent", "base"))
    changed, added = b"ALPHA changed\n", b"hello\n"
    assert out == f"{len(changed) + len(added)}\n"


def test_metadata_lines_and_json(lamina: Run, ok: Ok, container: str) -> None:
    as_json = json.loads(ok(lamina("metadata", container, "--json")))
    assert isinstance(as_json, dict) and as_json
    lines = ok(lamina("metadata", container)).splitlines()
    assert dict(line.split(": ", 1) for line in lines) == as_json


def test_status(lamina: Run, ok: Ok, root: Path) -> None:
    lines = ok(lamina("status")).splitlines()
    assert lines[0] == "Driver: vfs"
    assert lines[1] == f"Home: {root / 'vfs'}"
    assert all(": " in line for line in lines)


def test_automatic_driver_keeps_the_one_with_state(lamina: Run, ok: Ok) -> None:
    ok(lamina("create", "l1"))  # with --driver vfs
    assert ok(lamina("status", driver=None)).splitlines()[0] == "Driver: vfs"
    assert ok(lamina("exists", "l1", driver=None)) == "true\n"


def test_rm(lamina: Run, ok: Ok) -> None:
    ok(lamina("create", "l1"))
    ok(lamina("create", "l2"))
    ok(lamina("rm", "l1", "l2"))
    assert lamina("exists", "l1").exit_code == 1
    assert lamina("exists", "l2").exit_code == 1
    ok(lamina("rm", "l1"))  # removing a missing layer is not an error


def test_cleanup(lamina: Run, ok: Ok, container: str) -> None:
    assert ok(lamina("cleanup")) == ""
    assert ok(lamina("exists", container)) == "true\n"  # cleanup never deletes layers


def test_drivers(lamina: Run, ok: Ok) -> None:
    names = ok(lamina("drivers")).splitlines()
    assert names[:2] == ["overlay", "vfs"]
    assert "windowsfilter" in names
