"""The image commands as real processes: pipes between two stores, exit statuses, terminals."""

from __future__ import annotations

import os
import pty
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Archive = Callable[..., tuple[bytes, str]]

BASE = {"etc": None, "etc/hostname": b"busy\n", "bin": None, "bin/sh": b"#!/bin/true\n"}


def _lamina(
    root: Path, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("LAMINA_ROOT", "LAMINA_DRIVER")}
    return subprocess.run(
        [sys.executable, "-m", "lamina", "--root", str(root), "--driver", "vfs", *args],
        input=input,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def store_with_busy(tmp_path: Path, docker_archive: Archive) -> tuple[Path, str]:
    data, image_id = docker_archive([BASE], ["busy:latest"])
    root = tmp_path / "one"
    proc = _lamina(root, "load", input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Loaded image: busy:latest\n"
    assert proc.stderr.startswith(b"Loading from standard input: 1 image (")  # a pipe: one line
    return root, image_id


def test_save_piped_into_load_of_another_store(
    tmp_path: Path, store_with_busy: tuple[Path, str]
) -> None:
    root, image_id = store_with_busy
    other = tmp_path / "other"
    lamina = f"{shlex.quote(sys.executable)} -m lamina --driver vfs"
    cmd = (
        f"set -e; {lamina} --root {shlex.quote(str(root))} save busy 2>{tmp_path}/save.err"
        f" | {lamina} --root {shlex.quote(str(other))} load"
    )
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.stderr, (tmp_path / "save.err").read_bytes())
    assert proc.stdout == b"Loaded image: busy:latest\n"
    assert (tmp_path / "save.err").read_bytes().startswith(b"Saving busy (docker-archive)")
    listed = _lamina(other, "images", "-q", "--no-trunc")
    assert listed.stdout.decode() == image_id + "\n"


def test_real_process_exit_statuses(tmp_path: Path, store_with_busy: tuple[Path, str]) -> None:
    root, _ = store_with_busy
    for args, stdin, status in [
        (("rmi", "nosuch:1"), None, 3),
        (("inspect", "--type", "container", "busy"), None, 3),
        (("load",), b"\x89PNG\r\n\x1a\n not an archive" * 40, 5),
        (("tag", "busy", "no spaces/in names"), None, 2),
    ]:
        proc = _lamina(root, *args, input=stdin)
        assert proc.returncode == status, (args, proc.returncode, proc.stderr)
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lamina: error: "), proc.stderr
        assert b"Traceback" not in proc.stderr


def _with_terminal(root: Path, args: list[str], stream: str) -> tuple[int, bytes]:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lamina", "--root", str(root), "--driver", "vfs", *args],
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
            **{stream: follower},  # type: ignore[call-overload]
        )
    finally:
        os.close(follower)
        os.close(leader)
    return proc.returncode, proc.stderr


def test_save_and_export_refuse_a_terminal(store_with_busy: tuple[Path, str]) -> None:
    root, _ = store_with_busy
    code, stderr = _with_terminal(root, ["save", "busy"], "stdout")
    assert code == 2
    assert stderr == (
        b"lamina: error: refusing to write an archive to a terminal; use -o or redirect\n"
    )
    assert _lamina(root, "create", "busy", "--name", "web").returncode == 0
    code, stderr = _with_terminal(root, ["export", "web"], "stdout")
    assert code == 2
    assert stderr == b"lamina: error: refusing to write a tar to a terminal; use -o or redirect\n"


def test_load_refuses_a_terminal(tmp_path: Path) -> None:
    code, stderr = _with_terminal(tmp_path / "store", ["load"], "stdin")
    assert code == 2
    assert stderr.startswith(b"lamina: error: refusing to read an archive from a terminal")
    assert not (tmp_path / "store").exists()  # refused before the store was opened


def test_progress_bars_on_a_terminal_stay_off_stdout(
    tmp_path: Path, store_with_busy: tuple[Path, str]
) -> None:
    """stderr a terminal: rich draws there; stdout (a pipe) holds only the result."""
    root, _ = store_with_busy
    out = tmp_path / "busy.tar"
    assert _lamina(root, "save", "-q", "-o", str(out), "busy").returncode == 0
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lamina",
                "--root",
                str(tmp_path / "two"),
                "--driver",
                "vfs",
                "load",
                "-i",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            check=False,
        )
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert proc.stdout == b"Loaded image: busy:latest\n"
    text = drawn.decode(errors="replace")
    assert "Loading " in text and "kB" in text, text  # a bar with the bytes read


@pytest.mark.parametrize("driver", ["vfs", "overlay"])
def test_mount_outlives_the_command_and_unmount_releases_it(
    tmp_path: Path, docker_archive: Archive, driver: str
) -> None:
    """`dir=$(lamina mount web)` then writing there: the view must survive the process."""
    if driver == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay needs root")
    data, _ = docker_archive([BASE], ["busy:latest"])
    root = tmp_path / "store"
    lamina = f"{shlex.quote(sys.executable)} -m lamina --root {shlex.quote(str(root))}"
    lamina += f" --driver {driver}"
    script = f"""set -e
{lamina} load -q
{lamina} create busy --name web >/dev/null
dir=$({lamina} mount web)
echo hello > "$dir/hello"
rm "$dir/etc/hostname"
{lamina} unmount web
{lamina} diff web
"""
    proc = subprocess.run(
        ["sh", "-c", script], input=data, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-3:] == ["C /etc", "D /etc/hostname", "A /hello"]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(root) not in mounts  # the last unmount took the view down


@pytest.mark.parametrize(("answer", "pruned"), [(b"n\n", False), (b"y\n", True)])
def test_prune_asks_on_a_terminal(
    tmp_path: Path, docker_archive: Archive, answer: bytes, pruned: bool
) -> None:
    data, image_id = docker_archive([BASE], [])  # unnamed, unused: prune takes it
    root = tmp_path / "store"
    assert _lamina(root, "load", "-q", input=data).returncode == 0
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lamina",
                "--root",
                str(root),
                "--driver",
                "vfs",
                "system",
                "prune",
            ],
            stdin=follower,
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    assert b"WARNING! This will remove:" in proc.stderr
    assert b"Are you sure you want to continue? [y/N]" in proc.stderr
    assert (f"deleted: {image_id}".encode() in proc.stdout) == pruned
    left = _lamina(root, "images", "-q", "--no-trunc").stdout.decode()
    assert left == ("" if pruned else image_id + "\n")
