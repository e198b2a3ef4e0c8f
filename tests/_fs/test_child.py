"""Tools a driver starts die with it (PR_SET_PDEATHSIG, one helper in ``_fs``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lamina._fs import run_tool


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in (b"Z", b"X")


def test_a_tool_is_killed_when_the_process_that_ran_it_is(tmp_path: Path) -> None:
    """A ``kill -9`` of the driver must not leave its ``resize2fs`` running."""
    pidfile = tmp_path / "tool.pid"
    script = textwrap.dedent(
        f"""
        from lamina._fs import run_tool
        run_tool(["sh", "-c", "echo $$ > {pidfile}; exec sleep 60"])
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    driver = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the tool never started"
            time.sleep(0.02)
        tool = int(pidfile.read_text())
        assert _alive(tool)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while _alive(tool):
            assert time.monotonic() < deadline, "the tool outlived the driver"
            time.sleep(0.02)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_a_failing_tool_is_an_oserror_quoting_it() -> None:
    with pytest.raises(OSError, match="no such thing"):
        run_tool(["sh", "-c", "echo no such thing >&2; exit 3"])
    assert run_tool(["sh", "-c", "echo out; exit 1"], ok=(0, 1)) == "out\n"
