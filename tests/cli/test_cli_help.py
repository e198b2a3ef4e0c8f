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

# DESIGN.md, "The command line": the graph-driver commands live under `lamina layer`.
LAYER_COMMANDS = [
    "apply-diff",
    "changes",
    "cleanup",
    "create",
    "create-rw",
    "diff",
    "diff-size",
    "exists",
    "metadata",
    "mount",
    "rm",
    "status",
    "unmount",
]
TOP_LEVEL = [
    "commit",
    "create",
    "demo",
    "diff",
    "drivers",
    "export",
    "images",
    "inspect",
    "layer",
    "load",
    "mount",
    "ps",
    "rm",
    "rmi",
    "save",
    "system",
    "tag",
    "unmount",
    "windows",
]
SYSTEM_COMMANDS = ["check", "df", "info", "prune"]
# The image and container commands took these names: they are not aliases of layer commands.
RESERVED = ["create", "diff", "mount", "rm", "unmount"]


def _command_names() -> list[str]:
    """Every top-level subcommand, including those whose module is loaded only on use."""
    return cli.list_commands(click.Context(cli))


def _layer_group() -> click.Group:
    group = cli.get_command(click.Context(cli), "layer")
    assert isinstance(group, click.Group)
    return group


def _all_command_paths() -> list[list[str]]:
    """["demo"], ..., ["layer"], ["layer", "apply-diff"], ...: every command to ask for help."""
    paths = [[name] for name in _command_names()]
    for group_name in ("layer", "system"):
        group = cli.get_command(click.Context(cli), group_name)
        assert isinstance(group, click.Group)
        paths += [[group_name, name] for name in group.list_commands(click.Context(group))]
    return paths


def test_commands_are_where_design_md_puts_them() -> None:
    assert _command_names() == TOP_LEVEL
    group = _layer_group()
    assert group.list_commands(click.Context(group)) == LAYER_COMMANDS
    for name in LAYER_COMMANDS:
        command = group.get_command(click.Context(group), name)
        assert isinstance(command, click.Command)
        assert command.name == name
    for name in _command_names():
        command = cli.get_command(click.Context(cli), name)
        assert isinstance(command, click.Command)
        assert command.name == name


def test_system_commands() -> None:
    group = cli.get_command(click.Context(cli), "system")
    assert isinstance(group, click.Group)
    assert group.list_commands(click.Context(group)) == SYSTEM_COMMANDS


@pytest.mark.parametrize("name", ["changes", "apply-diff", "status", "cleanup"])
def test_layer_commands_are_not_top_level(name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--root", str(tmp_path), "--driver", "vfs", name, "x"], prog_name="lamina"
    )
    assert result.exit_code == 2
    assert f"No such command '{name}'" in result.stderr
    assert not (tmp_path / "vfs").exists()  # nothing ran


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
    for code in range(1, 13):
        assert f"\n    {code}  " in text
    assert "Example:" in text
    assert "lamina layer create base" in text


def test_layer_help_lists_every_layer_command_uncut() -> None:
    result = CliRunner().invoke(cli, ["layer", "--help"], prog_name="lamina")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1]
    for command in LAYER_COMMANDS:
        assert f"\n  {command} " in commands, command
    assert "..." not in commands


@pytest.mark.parametrize("path", _all_command_paths(), ids=" ".join)
def test_each_command_help_has_a_description_and_an_example(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="lamina")
    assert result.exit_code == 0
    text = result.stdout
    command = " ".join(path)
    assert text.startswith(f"Usage: lamina {command} [OPTIONS]")
    description = text.split("\n\n")[1].strip()
    assert len(description) > 20
    assert "Example:" in text
    examples = text.split("Example:")[1].split("Options:")[0]
    assert re.search(rf"lamina( \S+)* {re.escape(command)}( |$)", examples, re.MULTILINE)


@pytest.mark.parametrize("command", ["changes", "diff", "diff-size"])
def test_comparing_commands_document_the_parent_default_and_no_parent(command: str) -> None:
    result = CliRunner().invoke(cli, ["layer", command, "--help"], prog_name="lamina")
    text = " ".join(result.stdout.split())
    assert "[default: the parent ID was created on]" in text
    assert "--no-parent Compare against nothing" in text


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
    result = runner.invoke(cli, ["--driver", "vfs", "layer", "create", "l1"], env=env)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "from-env" / "vfs").is_dir()
