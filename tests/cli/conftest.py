"""Fixtures for the command-line tests: a vfs store in a temporary root and a runner."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lamina.cli import cli

Run = Callable[..., Result]


def _make_tar(entries: Mapping[str, bytes | str | None]) -> bytes:
    """An uncompressed layer tar built with Python's tarfile, independent of lamina.

    A value of None is a directory, bytes are a regular file, and a str
    starting with ``->`` is a symlink to the rest of the string.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content.removeprefix("->")
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def lamina(root: Path) -> Run:
    """Run ``lamina --root <tmp> --driver vfs ARGS`` in-process; stdout and stderr apart."""
    runner = CliRunner()

    def run(*args: str, input: bytes | None = None, driver: str | None = "vfs") -> Result:
        prefix = ["--root", str(root)] + (["--driver", driver] if driver else [])
        return runner.invoke(cli, [*prefix, *args], input=input, prog_name="lamina")

    return run


def _ok(result: Result) -> str:
    """The command's stdout, after checking that it succeeded."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def _one_line_error(result: Result, exit_code: int) -> str:
    """Check the failure shape: the exit status, one stderr line, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lamina: error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def make_tar() -> Callable[[Mapping[str, bytes | str | None]], bytes]:
    return _make_tar


@pytest.fixture
def ok() -> Callable[[Result], str]:
    return _ok


@pytest.fixture
def one_line_error() -> Callable[[Result, int], str]:
    return _one_line_error


def _docker_archive(
    layers: list[Mapping[str, bytes | str | None]],
    tags: list[str],
    *,
    lie_about_layer: int | None = None,
) -> tuple[bytes, str]:
    """A ``docker save`` tar (manifest.json form) built with tarfile and json, and its image id.

    Independent of lamina, so the tests read what another tool wrote.
    ``lie_about_layer`` puts a different tar in the archive at that position
    than the one whose diff ID the config records: a digest mismatch.
    """
    layer_tars = [_make_tar(entries) for entries in layers]
    diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layer_tars]
    if lie_about_layer is not None:
        changed = dict(layers[lie_about_layer])
        changed["lie"] = b"not the layer the config describes\n"
        layer_tars[lie_about_layer] = _make_tar(changed)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05.123456789Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-02T03:04:05Z", "created_by": f"layer {i}"}
            for i in range(len(layers))
        ],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    members: list[tuple[str, bytes]] = [(f"{config_hex}.json", config_bytes)]
    paths = []
    for diff_id, data in zip(diff_ids, layer_tars, strict=True):
        path = f"{diff_id.removeprefix('sha256:')}/layer.tar"
        paths.append(path)
        members.append((path, data))
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": tags, "Layers": paths}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for name, data in members:
            directory = name.rpartition("/")[0]
            if directory and directory not in made:
                made.add(directory)
                info = tarfile.TarInfo(directory)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), "sha256:" + config_hex


@pytest.fixture
def docker_archive() -> Callable[..., tuple[bytes, str]]:
    return _docker_archive
