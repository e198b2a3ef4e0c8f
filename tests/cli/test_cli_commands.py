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
    ok(lamina("layer", "create", "base"))
    ok(lamina("layer", "apply-diff", "base", str(base_tar)))
    ok(lamina("layer", "create-rw", "ctr", "--parent", "base"))
    driver = drivers.new_driver("vfs", root)
    with driver.mounted("ctr") as view:
        (view / "etc/a.conf").write_bytes(b"ALPHA changed\n")
        (view / "new.txt").write_bytes(b"hello\n")
        os.unlink(view / "usr/x")
    return "ctr"


def test_create_then_exists(lamina: Run, ok: Ok) -> None:
    result = lamina("layer", "exists", "l1")
    assert (result.exit_code, result.stdout) == (1, "false\n")
    ok(lamina("layer", "create", "l1"))
    assert ok(lamina("layer", "exists", "l1")) == "true\n"
    ok(lamina("layer", "create", "l2", "--parent", "l1"))
    ok(lamina("layer", "create-rw", "l3", "-p", "l2"))
    assert ok(lamina("layer", "exists", "l3")) == "true\n"


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
    ok(lamina("layer", "create", "base"))
    if via == "file":
        (tmp_path / "layer").write_bytes(data)
        out = ok(lamina("layer", "apply-diff", "base", str(tmp_path / "layer")))
    elif via == "stdin":
        out = ok(lamina("layer", "apply-diff", "base", input=data))
    else:
        out = ok(lamina("layer", "apply-diff", "base", "-", input=data))
    assert out == f"{BASE_SIZE}\n"
    with drivers.new_driver("vfs", root).mounted("base") as view:
        assert (view / "etc/a.conf").read_bytes() == b"alpha\n"
        assert (view / "usr/x").read_bytes() == b"x" * 1000
        assert os.readlink(view / "usr/link") == "x"


def test_mount_prints_the_view_with_the_parents_content(
    lamina: Run, ok: Ok, container: str
) -> None:
    path = Path(ok(lamina("layer", "mount", container)).rstrip("\n"))
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

    for args in (["layer", "create", "base"], ["layer", "create-rw", "l1", "--parent", "base"]):
        assert lamina(*args).returncode == 0
    first = lamina("layer", "mount", "l1")
    assert first.returncode == 0, first.stderr
    view = Path(first.stdout.strip())
    assert lamina("layer", "mount", "l1").stdout == first.stdout
    (view / "written-while-mounted").write_bytes(b"x")
    unmounted = lamina("layer", "unmount", "l1")
    assert unmounted.returncode == 0, unmounted.stderr
    assert (view / "written-while-mounted").exists()  # still held by the other mount
    assert lamina("layer", "unmount", "l1").returncode == 0
    assert not os.path.ismount(view)  # the last unmount took the view away
    past_zero = lamina("layer", "unmount", "l1")
    assert past_zero.returncode == 7
    assert past_zero.stderr.startswith("lamina: error: ")


def test_changes_in_docker_diff_format(lamina: Run, ok: Ok, container: str) -> None:
    expected = ["C /etc", "C /etc/a.conf", "A /new.txt", "C /usr", "D /usr/x"]
    assert ok(lamina("layer", "changes", container, "--parent", "base")).splitlines() == expected
    # without --parent: against the parent the layer was created on, the same answer
    assert ok(lamina("layer", "changes", container)).splitlines() == expected


def test_no_parent_compares_with_nothing(lamina: Run, ok: Ok, container: str) -> None:
    out = ok(lamina("layer", "changes", container, "--no-parent")).splitlines()
    assert out == [
        "A /etc",
        "A /etc/a.conf",
        "A /etc/b.conf",
        "A /new.txt",
        "A /usr",
        "A /usr/link",
    ]
    # a.conf changed, b.conf, new.txt and the symlink usr/link (its target "x": 1 byte)
    assert ok(lamina("layer", "diff-size", container, "--no-parent")) == f"{14 + 5 + 6 + 1}\n"


@pytest.mark.parametrize("command", ["changes", "diff-size", "diff"])
def test_parent_options_are_checked(
    lamina: Run, one_line_error: Callable[[Result, int], str], container: str, command: str
) -> None:
    both = lamina("layer", command, container, "--parent", "base", "--no-parent")
    assert "exclude each other" in one_line_error(both, 2)
    empty = lamina("layer", command, container, "--parent", "")
    assert "--no-parent" in one_line_error(empty, 2)


@pytest.mark.parametrize("driver", ["vfs", pytest.param("overlay", marks=pytest.mark.root)])
def test_parent_defaults_to_the_recorded_one_on_every_linux_driver(
    root: Path, tmp_path: Path, make_tar: Callable[..., bytes], driver: str
) -> None:
    """`lamina layer changes|diff|diff-size ID` compare with ID's own parent (was: nothing)."""
    if driver == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay needs root")
    d = drivers.new_driver(driver, root)
    try:
        d.create("base")
        d.apply_diff("base", None, io.BytesIO(make_tar(BASE)))
        d.create("app", "base")
        d.apply_diff("app", "base", io.BytesIO(make_tar({"etc": None, "etc/app": b"app\n"})))
        d.create_read_write("ctr", "app")
        with d.mounted("ctr") as view:
            (view / "hello").write_bytes(b"hi\n")

        def run(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [sys.executable, "-m", "lamina", "--root", str(root), "--driver", driver, *args],
                capture_output=True,
                timeout=120,
                check=False,
            )

        changes = run("layer", "changes", "ctr")
        assert changes.returncode == 0, changes.stderr
        assert changes.stdout == b"A /hello\n"
        assert run("layer", "changes", "app").stdout == b"C /etc\nA /etc/app\n"
        assert run("layer", "diff-size", "ctr").stdout == b"3\n"
        with tarfile.open(fileobj=io.BytesIO(run("layer", "diff", "ctr").stdout)) as tar:
            assert tar.getnames() == ["hello"]
        # an explicit parent further down still works, and so does none
        assert run("layer", "changes", "ctr", "--parent", "base").stdout == (
            b"C /etc\nA /etc/app\nA /hello\n"
        )
        assert b"A /etc/a.conf\n" in run("layer", "changes", "ctr", "--no-parent").stdout
    finally:
        d.cleanup()


def test_apply_diff_defaults_to_the_recorded_parent(
    lamina: Run, ok: Ok, root: Path, container: str, make_tar: Callable[..., bytes]
) -> None:
    ok(lamina("layer", "create", "app", "--parent", "base"))
    tar = make_tar({"etc": None, "etc/.wh.b.conf": b""})
    ok(lamina("layer", "apply-diff", "app", input=tar))
    assert ok(lamina("layer", "changes", "app")).splitlines() == ["C /etc", "D /etc/b.conf"]


def _hostile_names(view: Path) -> None:
    """Names a container can make: a forged line, an escape sequence, bytes that are not UTF-8."""
    forged = view / "nl\nD "
    (forged / "etc").mkdir(parents=True)
    (forged / "etc" / "shadow").write_bytes(b"")
    (view / "esc\x1b[2J\x1b]0;owned\x07").write_bytes(b"")
    os.close(os.open(os.fsencode(view) + b"/bad\xff\xfe", os.O_CREAT | os.O_WRONLY, 0o644))
    (view / 'back\\slash"quote').write_bytes(b"")
    (view / "bidi\u202etxt.exe").write_bytes(b"")
    (view / "c1\u009b31m").write_bytes(b"")
    (view / "tab\tcr\r").write_bytes(b"")
    (view / "plain ünïcödé name").write_bytes(b"")


def test_changes_quotes_names_that_could_forge_lines_or_reach_the_terminal(
    lamina: Run, ok: Ok, root: Path
) -> None:
    ok(lamina("layer", "create", "base"))
    ok(lamina("layer", "create-rw", "ctr", "--parent", "base"))
    with drivers.new_driver("vfs", root).mounted("ctr") as view:
        _hostile_names(view)
    result = lamina("layer", "changes", "ctr")
    assert result.exit_code == 0, result.stderr
    out = result.stdout_bytes
    assert all(0x20 <= b < 0x7F or b >= 0xA0 or b == 0x0A for b in out.replace("ü".encode(), b""))
    lines = out.decode("utf-8").splitlines()
    assert lines == [
        'A "/back\\\\slash\\"quote"',
        'A "/bad\\377\\376"',
        'A "/bidi\\342\\200\\256txt.exe"',
        'A "/c1\\302\\23331m"',
        'A "/esc\\033[2J\\033]0;owned\\a"',
        'A "/nl\\nD "',
        'A "/nl\\nD /etc"',
        'A "/nl\\nD /etc/shadow"',
        "A /plain ünïcödé name",  # printable names are printed as they are
        'A "/tab\\tcr\\r"',
    ]
    assert not any(line.startswith("D ") for line in lines)


def test_quoted_names_unquote_to_the_exact_bytes(lamina: Run, ok: Ok, root: Path) -> None:
    """The scheme is git's: C escapes and octal bytes in double quotes, reversible."""
    ok(lamina("layer", "create", "base"))
    ok(lamina("layer", "create-rw", "ctr", "--parent", "base"))
    with drivers.new_driver("vfs", root).mounted("ctr") as view:
        _hostile_names(view)
        expected = {b"/" + os.fsencode(name) for name in os.listdir(view)}
    got = set()
    for line in ok(lamina("layer", "changes", "ctr")).splitlines():
        _kind, _, name = line.partition(" ")
        if name.startswith('"'):
            raw = name[1:-1].encode("utf-8").decode("unicode_escape").encode("latin-1")
            # unicode_escape reads \ooo as one byte each: the UTF-8 encoding is restored
            got.add(raw)
        else:
            got.add(name.encode("utf-8"))
    assert expected <= got


def test_changes_without_parent_lists_everything_as_added(
    lamina: Run, ok: Ok, base_tar: Path
) -> None:
    ok(lamina("layer", "create", "base"))
    ok(lamina("layer", "apply-diff", "base", str(base_tar)))
    out = ok(lamina("layer", "changes", "base"))
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
    assert ok(lamina("layer", "diff", container, "--parent", "base", "-o", str(out_file))) == ""
    with tarfile.open(out_file) as tar:
        names = {m.name for m in tar}
    assert names == {"etc", "etc/a.conf", "new.txt", "usr", "usr/.wh.x"}

    to_stdout = lamina("layer", "diff", container, "--parent", "base")
    assert to_stdout.exit_code == 0, to_stdout.stderr
    assert to_stdout.stdout_bytes == out_file.read_bytes()  # the export is deterministic

    ok(lamina("layer", "create", "copy", "--parent", "base"))
    ok(lamina("layer", "apply-diff", "copy", "--parent", "base", input=to_stdout.stdout_bytes))
    driver = drivers.new_driver("vfs", root)
    with driver.mounted(container) as left, driver.mounted("copy") as right:
        compared, differences = compare_trees(left, right)
    assert compared == 6
    assert differences == []


def test_diff_without_parent_is_the_whole_layer(lamina: Run, ok: Ok, base_tar: Path) -> None:
    ok(lamina("layer", "create", "base"))
    ok(lamina("layer", "apply-diff", "base", str(base_tar)))
    result = lamina("layer", "diff", "base")
    assert result.exit_code == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes)) as tar:
        members = {m.name: m for m in tar}
    assert set(members) == {"etc", "etc/a.conf", "etc/b.conf", "usr", "usr/x", "usr/link"}
    assert members["usr/link"].linkname == "x"


def test_diff_size(lamina: Run, ok: Ok, container: str) -> None:
    out = ok(lamina("layer", "diff-size", container, "--parent", "base"))
    changed, added = b"ALPHA changed\n", b"hello\n"
    assert out == f"{len(changed) + len(added)}\n"


def test_metadata_lines_and_json(lamina: Run, ok: Ok, container: str) -> None:
    as_json = json.loads(ok(lamina("layer", "metadata", container, "--json")))
    assert isinstance(as_json, dict) and as_json
    lines = ok(lamina("layer", "metadata", container)).splitlines()
    assert dict(line.split(": ", 1) for line in lines) == as_json


def test_status(lamina: Run, ok: Ok, root: Path) -> None:
    lines = ok(lamina("layer", "status")).splitlines()
    assert lines[0] == "Driver: vfs"
    assert lines[1] == f"Home: {root / 'vfs'}"
    assert all(": " in line for line in lines)


def test_automatic_driver_keeps_the_one_with_state(lamina: Run, ok: Ok) -> None:
    ok(lamina("layer", "create", "l1"))  # with --driver vfs
    assert ok(lamina("layer", "status", driver=None)).splitlines()[0] == "Driver: vfs"
    assert ok(lamina("layer", "exists", "l1", driver=None)) == "true\n"


def test_rm(lamina: Run, ok: Ok) -> None:
    ok(lamina("layer", "create", "l1"))
    ok(lamina("layer", "create", "l2"))
    ok(lamina("layer", "rm", "l1", "l2"))
    assert lamina("layer", "exists", "l1").exit_code == 1
    assert lamina("layer", "exists", "l2").exit_code == 1
    ok(lamina("layer", "rm", "l1"))  # removing a missing layer is not an error


def test_cleanup(lamina: Run, ok: Ok, container: str) -> None:
    assert ok(lamina("layer", "cleanup")) == ""
    assert ok(lamina("layer", "exists", container)) == "true\n"  # cleanup never deletes layers


def test_drivers(lamina: Run, ok: Ok) -> None:
    names = ok(lamina("drivers")).splitlines()
    assert names[:2] == ["overlay", "vfs"]
    assert "windowsfilter" in names


def test_windowsfilter_defaults_to_the_recorded_parent_and_refuses_none(
    lamina: Run, ok: Ok, one_line_error: Callable[[Result, int], str]
) -> None:
    """windowsfilter reads a parent of None as the layer's own: --no-parent cannot be honoured."""

    def wf(*args: str) -> Result:
        return lamina("-o", "windowsfilter.sandbox=dir", "layer", *args, driver="windowsfilter")

    ok(wf("create", "base"))
    ok(wf("create-rw", "sbx", "--parent", "base"))
    assert ok(wf("changes", "sbx")) == ""  # nothing changed against base
    assert ok(wf("changes", "base", "--no-parent")) == ""  # a base layer: none is its parent
    line = one_line_error(wf("changes", "sbx", "--no-parent"), 4)
    assert "--parent" in line
