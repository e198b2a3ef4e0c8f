"""Help texts, the entry points and the default root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lamina.cli import cli
from lamina.cli._common import default_root

COMMANDS = [
    "apply-diff",
    "changes",
    "cleanup",
    "create",
    "create-rw",
    "demo",
    "diff",
    "diff-size",
    "drivers",
    "exists",
    "metadata",
    "mount",
    "rm",
    "status",
    "unmount",
]


def _command_names() -> list[str]:
    """Every subcommand, including those whose module is loaded only on use."""
    return cli.list_commands(click.Context(cli))


def test_every_driver_level_command_is_registered() -> None:
    assert set(COMMANDS) <= set(_command_names())
    for name in _command_names():
        command = cli.get_command(click.Context(cli), name)
        assert isinstance(command, click.Command)
        assert command.name == name


def test_top_level_help_lists_commands_options_and_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="lamina")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith("Usage: lamina [OPTIONS] COMMAND [ARGS]...")
    for option in ("--root", "--driver", "-o, --option", "--version"):
        assert option in text
    for command in _command_names():
        assert f"\n  {command} " in text, command
    assert "..." not in text.split("Commands:")[1].split("Exit status")[0]  # no cut summaries
    for code in range(1, 8):
        assert f"\n    {code}  " in text
    assert "Example:" in text


@pytest.mark.parametrize("command", _command_names())
def test_each_command_help_has_a_description_and_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"], prog_name="lamina")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith(f"Usage: lamina {command} [OPTIONS]")
    description = text.split("\n\n")[1].strip()
    assert len(description) > 20
    assert "Example:" in text
    examples = text.split("Example:")[1].split("Options:")[0]
    assert re.search(rf"lamina( \S+)* {re.escape(command)}( |$)", examples, re.MULTILINE)


def test_python_dash_m_lamina() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lamina", "--help"], capture_output=True, timeout=60, check=True
    )
    assert proc.stdout.startswith(b"Usage: lamina ")
    proc = subprocess.run(
        [sys.executable, "-m", "lamina", "--version"], capture_output=True, timeout=60, check=True
    )
    assert proc.stdout.startswith(b"lamina ")


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAMINA_ROOT", str(tmp_path / "env-root"))
    assert default_root() == tmp_path / "env-root"
    monkeypatch.delenv("LAMINA_ROOT")
    if os.geteuid() == 0:
        assert default_root() == Path("/var/lib/lamina")
    else:
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert default_root() == tmp_path / "data" / "lamina"
        monkeypatch.delenv("XDG_DATA_HOME")
        assert default_root() == Path.home() / ".local/share/lamina"


def test_lamina_root_environment_variable(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"LAMINA_ROOT": str(tmp_path / "from-env")}
    result = runner.invoke(cli, ["--driver", "vfs", "create", "l1"], env=env)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "from-env" / "vfs").is_dir()
