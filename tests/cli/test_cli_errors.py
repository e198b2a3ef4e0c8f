"""Error paths: one line on stderr, a status per error category, never a traceback."""

from __future__ import annotations

import errno
import gzip
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from click.testing import Result

from lamina import drivers, errors
from lamina.cli._common import _EXIT_CODES, EXIT_CODES_HELP, describe_error, exit_code_for

Run = Callable[..., Result]
Ok = Callable[[Result], str]
OneLineError = Callable[[Result, int], str]


@pytest.mark.parametrize(
    "args",
    [
        ["mount", "nope"],
        ["metadata", "nope"],
        ["changes", "nope"],
        ["changes", "nope", "--no-parent"],
        ["diff", "nope", "-o", "{tmp}/out.tar"],
        ["diff-size", "nope"],
        ["apply-diff", "nope", "{tmp}/empty.tar"],
        ["create", "child", "--parent", "nope"],
    ],
    ids=lambda args: "-".join(a for a in args if "{" not in a)[:40],
)
def test_missing_layer_is_exit_3(
    lamina: Run, one_line_error: OneLineError, tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "empty.tar").write_bytes(b"")
    line = one_line_error(lamina("layer", *(a.format(tmp=tmp_path) for a in args)), 3)
    assert "nope" in line
    assert not (tmp_path / "out.tar").exists()


def test_exists_of_missing_layer(lamina: Run) -> None:
    result = lamina("layer", "exists", "nope")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "false\n", "")


def test_unmount_without_mount_is_a_put_past_zero(
    lamina: Run, ok: Ok, one_line_error: OneLineError
) -> None:
    ok(lamina("layer", "create", "l1"))
    one_line_error(lamina("layer", "unmount", "l1"), 7)


def test_create_twice_is_exit_6(lamina: Run, ok: Ok, one_line_error: OneLineError) -> None:
    ok(lamina("layer", "create", "l1"))
    assert "l1" in one_line_error(lamina("layer", "create", "l1"), 6)


def test_invalid_layer_id_is_a_usage_error(lamina: Run, one_line_error: OneLineError) -> None:
    one_line_error(lamina("layer", "mount", "a/b"), 2)


def test_malformed_driver_option_is_a_usage_error(lamina: Run) -> None:
    result = lamina("-o", "novalue", "layer", "status")
    assert result.exit_code == 2
    assert "'novalue' is not of the form key=value" in result.stderr


def test_unknown_driver_option_is_refused(lamina: Run, one_line_error: OneLineError) -> None:
    assert "no.such.option" in one_line_error(
        lamina("-o", "no.such.option=1", "layer", "status"), 2
    )


def test_unknown_driver_is_not_supported(lamina: Run, one_line_error: OneLineError) -> None:
    one_line_error(lamina("layer", "status", driver="no-such-driver"), 4)


def test_malformed_storage_opt_is_a_usage_error(lamina: Run) -> None:
    result = lamina("layer", "create-rw", "l1", "--storage-opt", "size")
    assert result.exit_code == 2
    assert "key=value" in result.stderr


def test_unknown_storage_opt_is_refused(lamina: Run, one_line_error: OneLineError) -> None:
    one_line_error(lamina("layer", "create-rw", "l1", "--storage-opt", "colour=blue"), 2)
    assert lamina("layer", "exists", "l1").exit_code == 1


def test_size_without_quota_is_not_supported(lamina: Run, one_line_error: OneLineError) -> None:
    """vfs has no quota mechanism, so a size limit cannot be honoured."""
    one_line_error(lamina("layer", "create-rw", "l1", "--storage-opt", "size=1G"), 4)


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a tar file at all\n" * 40,
        b"\x1f\x8b\x08\x00" + b"\xff" * 600,  # a gzip header, then junk
        b"\x28\xb5\x2f\xfd" + b"\x00" * 600,  # a zstd magic, then junk
    ],
    ids=["text", "gzip", "zstd"],
)
def test_apply_diff_of_garbage_is_an_archive_error(
    lamina: Run, ok: Ok, one_line_error: OneLineError, garbage: bytes
) -> None:
    ok(lamina("layer", "create", "l1"))
    one_line_error(lamina("layer", "apply-diff", "l1", input=garbage), 5)


@pytest.mark.parametrize(
    ("compression", "cut"),
    [("none", "tar"), ("gzip", "tar"), ("zstd", "tar"), ("gzip", "stream"), ("zstd", "stream")],
)
def test_apply_diff_of_truncated_input(
    lamina: Run,
    ok: Ok,
    one_line_error: OneLineError,
    make_tar: Callable[..., bytes],
    compression: str,
    cut: str,
) -> None:
    """A tar cut short, or a compressed stream cut short, is an error, not a smaller layer."""
    data = make_tar({"big": os.urandom(200_000)})
    if cut == "tar":
        data = data[: len(data) // 2]
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    if cut == "stream":
        data = data[: len(data) // 2]
    ok(lamina("layer", "create", "l1"))
    one_line_error(lamina("layer", "apply-diff", "l1", input=data), 5)


def test_apply_diff_refuses_to_climb_out(
    lamina: Run,
    ok: Ok,
    one_line_error: OneLineError,
    make_tar: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    ok(lamina("layer", "create", "l1"))
    hostile = make_tar({"../../../escaped": b"owned\n"})
    one_line_error(lamina("layer", "apply-diff", "l1", input=hostile), 5)
    assert not list(tmp_path.rglob("escaped"))


def test_apply_diff_of_missing_file(
    lamina: Run, ok: Ok, one_line_error: OneLineError, tmp_path: Path
) -> None:
    ok(lamina("layer", "create", "l1"))
    line = one_line_error(lamina("layer", "apply-diff", "l1", str(tmp_path / "missing.tar")), 3)
    assert line == f"lamina: error: No such file or directory: {tmp_path / 'missing.tar'}"


def test_exit_codes_follow_the_error_classes() -> None:
    assert exit_code_for(errors.InvalidArgumentError("x")) == 2
    assert exit_code_for(errors.NotFoundError("x")) == 3
    assert exit_code_for(errors.PrerequisitesError("x")) == 4
    assert exit_code_for(errors.QuotaNotSupportedError("x")) == 4
    assert exit_code_for(errors.MaxDepthError("x")) == 4
    assert exit_code_for(errors.ArchiveTooLargeError("x")) == 5
    assert exit_code_for(errors.UnsafeArchiveError("x")) == 5
    assert exit_code_for(errors.AlreadyExistsError("x")) == 6
    assert exit_code_for(errors.InUseError("x")) == 7
    assert exit_code_for(errors.QuotaExceededError("x")) == 8
    assert exit_code_for(errors.StateError("x")) == 9
    assert exit_code_for(errors.LaminaError("x")) == 1
    assert exit_code_for(PermissionError(errno.EACCES, "Permission denied")) == 1
    assert exit_code_for(FileNotFoundError(errno.ENOENT, "No such file or directory")) == 3


def test_every_error_class_has_its_own_row_in_the_exit_code_table() -> None:
    """A class added to lamina.errors must get its status chosen, not inherit one unseen."""
    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.LaminaError)
    }
    assert {name for name in errors.__all__} == {cls.__name__ for cls in classes}
    rows = [cls for cls, _ in _EXIT_CODES]
    assert classes <= set(rows), classes - set(rows)
    for index, cls in enumerate(rows):  # most specific first, or a row is never reached
        assert not any(issubclass(cls, earlier) for earlier in rows[:index]), cls
    codes = {code for _, code in _EXIT_CODES}
    help_lines = EXIT_CODES_HELP.splitlines()
    for code in codes:
        assert any(line.startswith(f"  {code}  ") for line in help_lines), code


@pytest.mark.parametrize(
    "exc",
    [
        BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),  # fork at RLIMIT_NPROC
        OSError(errno.EMFILE, "Too many open files"),
        OSError(errno.ENFILE, "Too many open files in system"),
        OSError(errno.ENOMEM, "Cannot allocate memory"),
        OSError(errno.ENOSPC, "No space left on device"),
        errors.ArchiveError("apply: a file helper could not start", errno=errno.EAGAIN),
        errors.StateError("record not written", errno=errno.ENOSPC),
    ],
    ids=lambda exc: f"{type(exc).__name__}-{errno.errorcode[exc.errno]}",
)
def test_running_out_of_a_resource_is_exit_8_whatever_the_class(exc: BaseException) -> None:
    assert exit_code_for(exc) == 8


def test_open_file_limit_during_a_command_is_exit_8(root: Path, tmp_path: Path) -> None:
    """A real EMFILE: apply a layer with RLIMIT_NOFILE just above what start-up needs."""
    tree = tmp_path / "tree"
    deep = tree.joinpath(*[f"d{i}" for i in range(64)])
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tmp_path / "deep.tar"), "."], check=True)
    base = ["--root", str(root), "--driver", "vfs", "layer"]
    assert _python_m_lamina(*base, "create", "l1").returncode == 0
    code = (
        "import resource, runpy, sys;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv.pop(1)),) * 2);"
        "sys.argv[0] = 'lamina';"
        "runpy.run_module('lamina', run_name='__main__', alter_sys=True)"
    )
    args = [*base, "apply-diff", "l1", str(tmp_path / "deep.tar")]
    proc = subprocess.run(
        [sys.executable, "-c", code, "16", *args], capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.decode().splitlines()[0].startswith("lamina: error: ")
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "driver",
    [
        "vfs",
        "windowsfilter",
    ],
)
def test_malformed_size_is_a_usage_error(
    lamina: Run, one_line_error: OneLineError, driver: str
) -> None:
    options = ["-o", "windowsfilter.sandbox=dir"] if driver == "windowsfilter" else []
    result = lamina(
        *options,
        "layer",
        "create-rw",
        "l1",
        "--storage-opt",
        "size=1.2.3G",
        driver=driver,
    )
    assert "1.2.3G" in one_line_error(result, 2)


def test_error_descriptions_are_one_line() -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/var/lib/lamina")
    assert describe_error(exc) == "Permission denied: /var/lib/lamina"
    assert describe_error(errors.StateError("two\nlines")) == "two lines"


def _python_m_lamina(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lamina", *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_real_process_error_has_no_traceback(root: Path) -> None:
    proc = _python_m_lamina("--root", str(root), "--driver", "vfs", "layer", "mount", "nope")
    assert proc.returncode == 3
    assert proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [proc.stderr.decode().strip()]
    assert proc.stderr.startswith(b"lamina: error: ")


def test_lamina_debug_shows_the_traceback(root: Path) -> None:
    proc = _python_m_lamina(
        "--root", str(root), "--driver", "vfs", "layer", "mount", "nope", env={"LAMINA_DEBUG": "1"}
    )
    assert proc.returncode != 0
    assert b"Traceback" in proc.stderr
    assert b"NotFoundError" in proc.stderr


def _run_with_terminal(args: list[str], stream: str) -> tuple[int, bytes]:
    """Run ``python -m lamina`` with stdout or stdin on a pseudo-terminal."""
    leader, follower = pty.openpty()
    try:
        redirect = {stream: follower}
        proc = subprocess.run(
            [sys.executable, "-m", "lamina", *args],
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
            **redirect,  # type: ignore[call-overload]
        )
    finally:
        os.close(follower)
        os.close(leader)
    return proc.returncode, proc.stderr


def test_diff_refuses_to_write_a_tar_to_a_terminal(lamina: Run, ok: Ok, root: Path) -> None:
    ok(lamina("layer", "create", "l1"))
    code, stderr = _run_with_terminal(
        ["--root", str(root), "--driver", "vfs", "layer", "diff", "l1"], "stdout"
    )
    assert code == 2
    assert stderr == b"lamina: error: refusing to write a tar to a terminal; use -o or redirect\n"


def test_apply_diff_refuses_to_read_a_tar_from_a_terminal(lamina: Run, ok: Ok, root: Path) -> None:
    ok(lamina("layer", "create", "l1"))
    code, stderr = _run_with_terminal(
        ["--root", str(root), "--driver", "vfs", "layer", "apply-diff", "l1"], "stdin"
    )
    assert code == 2
    assert stderr.startswith(b"lamina: error: refusing to read a tar from a terminal")


def test_broken_pipe_on_diff_is_quiet(lamina: Run, ok: Ok, root: Path) -> None:
    """`lamina diff x | head -c 10` must not print a traceback when head exits."""
    ok(lamina("layer", "create", "l1"))
    with drivers.new_driver("vfs", root).mounted("l1") as view:
        (view / "big").write_bytes(os.urandom(4 << 20))
    cmd = (
        f"{sys.executable} -m lamina --root {root} --driver vfs layer diff l1 2>{root}/err"
        " | head -c 10 >/dev/null"
    )
    subprocess.run(["sh", "-c", cmd], check=True, timeout=120)
    assert b"Traceback" not in (root / "err").read_bytes()
