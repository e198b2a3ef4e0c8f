"""windowsfilter's import helper: it dies with the driver and is confined to its staging folder.

Observed from outside, through /proc: the helper's root directory, user
namespace and capabilities while it runs, and whether it still exists
after its parent was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import base_layer, go_layer

from lamina import drivers
from lamina._fs import remove_tree
from lamina.drivers.windowsfilter import WindowsFilterDriver
from lamina.drivers.windowsfilter._confine import PARENT_PID_ENV

HELPER = "lamina.drivers.windowsfilter._import"
NOBODY = 65534
AS_USER = """
import os, sys
from lamina.drivers.windowsfilter._import import main
uid = int(sys.argv.pop(1))
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
sys.exit(main(sys.argv[1:]))
"""
#: A parent that starts the helper as ``nobody`` and then just waits (holding its stdin).
PARENT_SCRIPT = """
import subprocess, sys, time
subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE)
time.sleep(3600)
"""
DRIVER_SCRIPT = """
import sys
from pathlib import Path
from lamina import drivers
from lamina._fs import remove_tree
d = drivers.new_driver("windowsfilter", Path(sys.argv[1]))
d.apply_diff("victim", None, sys.stdin.buffer.raw)
"""


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def state(pid: int) -> str | None:
    """The process state letter, None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rpartition(b")")[2].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == pid and HELPER.encode() in cmdline:
            found.append(int(name))
    return found


def reap(pids: list[int]) -> None:
    """Kill helpers a failed test left behind (they would stay stopped forever)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            ours = HELPER.encode() in cmdline
        except OSError:
            continue
        if ours and state(pid) not in (None, "Z", "X"):
            os.kill(pid, signal.SIGKILL)


def root_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return ""


def effective_caps(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapEff line")


def helper_env(parent: int | None) -> dict[str, str]:
    """The helper's environment; ``parent`` is the pid it must find as its parent."""
    drop = ("LAMINA_WINDOWSFILTER_NOREEXEC", PARENT_PID_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if parent is not None:
        env[PARENT_PID_ENV] = str(parent)
    return env


def helper_argv(staging: Path, user: int | None) -> list[str]:
    """The helper, run as ``user``: the interpreter may live where that user cannot
    read (a home directory), so it starts as us and drops to ``user`` after its imports."""
    return [sys.executable, "-c", AS_USER, str(-1 if user is None else user), str(staging), ""]


def test_a_killed_driver_takes_its_helper_along(tmp_path: Path) -> None:
    home = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_WINDOWSFILTER_NOREEXEC"}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER_SCRIPT, str(home)], stdin=subprocess.PIPE, env=env
    )
    assert driver.stdin is not None
    helpers: list[int] = []
    try:
        driver.stdin.write(go_layer(base_layer())[:4096])  # the rest never comes
        driver.stdin.flush()
        found = wait_for("the import helper", lambda: children(driver.pid))
        assert isinstance(found, list)
        helpers.extend(found)
        helper = found[0]
        staging = home / "windowsfilter" / ".lamina-staging"
        # confined means it got past its start-up, where it asked to die with its parent
        wait_for("the helper to confine itself", lambda: root_of(helper).startswith(str(staging)))
        # Stopped, the helper cannot notice its parent is gone on its own (its
        # stdin would reach EOF): only the kernel's SIGKILL can end it now.
        os.kill(helper, signal.SIGSTOP)
        wait_for("the helper to stop", lambda: state(helper) in ("T", "t"))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        wait_for("the helper to die", lambda: state(helper) in (None, "Z", "X"), timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        reap(helpers)
    assert os.listdir(staging)  # the half-imported layer is still there ...
    d = drivers.new_driver("windowsfilter", home)
    assert isinstance(d, WindowsFilterDriver)
    d.cleanup()  # ... until cleanup sweeps it, with no writer left behind
    assert os.listdir(staging) == [] and not d.exists("victim")


def run_helper(
    staging: Path, data: bytes, user: int | None
) -> tuple[dict[str, object], dict[str, object]]:
    """Run the helper on ``data``; returns its answer and what /proc showed while it ran."""
    proc = subprocess.Popen(
        helper_argv(staging, user),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=helper_env(os.getpid()),
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen: dict[str, object] = {}
    try:
        proc.stdin.write(data[:1024])
        proc.stdin.flush()
        try:
            wait_for("the helper to change root", lambda: root_of(proc.pid) == str(staging), 60)
        except AssertionError:
            seen["root"] = root_of(proc.pid)
        else:
            seen["root"] = str(staging)
            seen["caps"] = effective_caps(proc.pid)
            seen["userns"] = os.readlink(f"/proc/{proc.pid}/ns/user")
        proc.stdin.write(data[1024:])
        proc.stdin.close()
        answer = json.loads(proc.stdout.read().decode().splitlines()[-1])
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0, answer
    return answer, seen


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="lamina-helper-"))
    os.chmod(path, 0o755)
    yield path
    remove_tree(path)


def test_an_unprivileged_helper_dies_with_its_parent(open_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting the helper as another user needs root")
    staging = open_dir / "staging"
    staging.mkdir()
    os.chown(staging, NOBODY, NOBODY)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, *helper_argv(staging, NOBODY)],
        env=helper_env(None),
    )
    helpers: list[int] = []
    try:
        found = wait_for("the import helper", lambda: children(parent.pid))
        assert isinstance(found, list)
        helpers.extend(found)
        helper = found[0]
        try:
            wait_for("the helper to confine itself", lambda: root_of(helper) == str(staging), 60)
        except AssertionError:
            pytest.skip("this kernel refuses unprivileged confinement")
        os.kill(helper, signal.SIGSTOP)
        wait_for("the helper to stop", lambda: state(helper) in ("T", "t"))
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for("the helper to die", lambda: state(helper) in (None, "Z", "X"), timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        reap(helpers)


def test_the_helper_as_root_is_chrooted_without_capabilities(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the root confinement needs root")
    staging = tmp_path / "staging"
    staging.mkdir()
    answer, seen = run_helper(staging, go_layer(base_layer()), None)
    assert seen["root"] == str(staging)
    assert seen["caps"] == 0
    assert answer["confinement"] == "chroot, no capabilities"
    assert (staging / "Files/Program Files/app.exe").read_bytes().startswith(b"MZ")


def test_the_helper_unprivileged_is_confined_in_a_user_namespace(open_dir: Path) -> None:
    user = NOBODY if os.geteuid() == 0 else None
    staging = open_dir / "staging"
    staging.mkdir()
    if user is not None:
        os.chown(staging, user, user)
    answer, seen = run_helper(staging, go_layer(base_layer()), user)
    if str(answer["confinement"]).startswith("none"):
        pytest.skip(f"this kernel refuses unprivileged confinement: {answer['confinement']}")
    assert answer["confinement"] == "user namespace, chroot, no capabilities"
    assert seen["root"] == str(staging)
    assert seen["userns"] != os.readlink("/proc/self/ns/user")
    assert seen["caps"] == 0
    owner = os.stat(staging / "Files/Program Files/app.exe").st_uid
    assert owner == (user if user is not None else os.geteuid())
    assert int(answer["size"]) > 0  # type: ignore[call-overload]


def test_a_helper_orphaned_before_it_could_ask_writes_nothing(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    # the pid it is told to expect as its parent is not its parent: as if that
    # process had died while the helper was starting up
    result = subprocess.run(
        [sys.executable, "-m", HELPER, str(staging), ""],
        input=go_layer(base_layer()),
        capture_output=True,
        env=helper_env(os.getppid()),
        timeout=120,
    )
    assert result.returncode == 3 and result.stdout == b""
    assert os.listdir(staging) == []
