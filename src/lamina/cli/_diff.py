"""Layer content in and out: apply-diff, diff, changes, diff-size."""

from __future__ import annotations

import contextlib
import os

import click

from lamina.cli._common import (
    State,
    echo_path,
    pass_state,
    refuse_terminal,
    stdin_binary,
    stdout_binary,
)

__all__ = ["apply_diff", "changes", "diff", "diff_size"]

_COPY_CHUNK = 1 << 20

_parent = click.option(
    "--parent",
    "-p",
    metavar="PARENT",
    help="Compare against this layer (normally ID's parent); none: all of ID's content.",
)


@click.command("apply-diff")
@click.argument("id")
@click.argument(
    "file",
    metavar="[FILE|-]",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
)
@click.option("--parent", "-p", metavar="PARENT", help="ID's parent (as given to `lamina create`).")
@pass_state
def apply_diff(state: State, id: str, file: str, parent: str | None) -> None:
    """Extract a layer tar into layer ID; print the layer's size.

    Reads FILE, or standard input when FILE is - or missing. The tar may be
    plain, gzip or zstd compressed (detected from its first bytes). Whiteouts
    (.wh.NAME, .wh..wh..opq) delete what the parent layers had. An invalid
    or unsafe tar fails with exit status 5 and leaves no half-applied layer.

    \b
    Example:
      lamina create base
      lamina apply-diff base debian-rootfs.tar.gz
      zstd -dc app.tar.zst | lamina apply-diff app --parent base
    """
    if file == "-":
        stream = stdin_binary()
        refuse_terminal(stream, "refusing to read a tar from a terminal; give a FILE or redirect")
        size = state.driver.apply_diff(id, parent, stream)
    else:
        with open(file, "rb") as stream:
            size = state.driver.apply_diff(id, parent, stream)
    click.echo(size)


@click.command()
@click.argument("id")
@_parent
@click.option(
    "--output",
    "-o",
    "output",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
    help="Write the tar to FILE instead of standard output.",
)
@pass_state
def diff(state: State, id: str, parent: str | None, output: str | None) -> None:
    """Write ID's changes against PARENT as an uncompressed layer tar.

    Deletions become whiteouts (.wh.NAME), so applying the tar on top of
    PARENT with `lamina apply-diff` reproduces ID. Without --parent the tar
    holds all of ID's content. Like `docker export`, it refuses to write tar
    bytes to a terminal.

    \b
    Example:
      lamina diff ctr --parent base -o ctr.tar
      lamina diff ctr --parent base | zstd > ctr.tar.zst
    """
    import shutil  # with bz2 and lzma behind it: only the command that copies a tar

    if output is None or output == "-":
        out = stdout_binary()
        refuse_terminal(out, "refusing to write a tar to a terminal; use -o or redirect")
        with state.driver.diff(id, parent) as stream:
            shutil.copyfileobj(stream, out, _COPY_CHUNK)
        out.flush()
        return
    with state.driver.diff(id, parent) as stream:
        try:
            with open(output, "wb") as out:
                shutil.copyfileobj(stream, out, _COPY_CHUNK)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(output)  # never leave a truncated tar that looks complete
            raise


@click.command()
@click.argument("id")
@_parent
@pass_state
def changes(state: State, id: str, parent: str | None) -> None:
    """List ID's changes against PARENT in `docker diff` format.

    One line per path, sorted: A added, C changed, D deleted. A changed
    file's parent directories are listed as changed too.

    \b
    Example:
      $ lamina changes ctr --parent base
      C /etc
      A /etc/app.conf
      D /etc/motd
    """
    for change in sorted(state.driver.changes(id, parent)):
        echo_path(str(change))


@click.command("diff-size")
@click.argument("id")
@_parent
@pass_state
def diff_size(state: State, id: str, parent: str | None) -> None:
    """Print the size of ID's changes against PARENT, in bytes.

    The sum of the sizes of the files ID added or changed.

    \b
    Example:
      lamina diff-size ctr --parent base
    """
    click.echo(state.driver.diff_size(id, parent))
