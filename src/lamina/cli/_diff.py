"""Layer content in and out: apply-diff, diff, changes, diff-size.

Which parent.  Each of these compares a layer with a parent, and a layer
records the parent it was created on, so that is the default on every
driver (:meth:`lamina.drivers.Driver.parent`).  ``--parent OTHER`` compares
with another layer; ``--no-parent`` with nothing, so the layer's whole tree
counts as added.  An empty ``--parent ''`` is refused rather than read as
either, because the two meanings give very different answers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from lamina.cli._common import (
    EXIT_NOT_SUPPORTED,
    EXIT_USAGE,
    CommandError,
    State,
    pass_state,
    quote_name,
    refuse_terminal,
    stdin_binary,
    stdout_binary,
)
from lamina.errors import NotSupportedError

__all__ = ["apply_diff", "changes", "diff", "diff_size"]

_COPY_CHUNK = 1 << 20

_F = TypeVar("_F", bound=Callable[..., Any])


def _parent_options(func: _F) -> _F:
    """``--parent PARENT`` and ``--no-parent`` for the comparing commands."""
    func = click.option(
        "--no-parent",
        is_flag=True,
        help="Compare against nothing: all of ID's content counts as added.",
    )(func)
    return click.option(
        "--parent",
        "-p",
        metavar="PARENT",
        help="Compare against this layer. [default: the parent ID was created on]",
    )(func)


def compared_parent(state: State, id: str, parent: str | None, no_parent: bool) -> str | None:
    """The layer to compare ``id`` with: ``--parent``, none, or ``id``'s recorded parent."""
    if no_parent:
        if parent is not None:
            raise CommandError("--parent and --no-parent exclude each other", EXIT_USAGE)
        driver = state.driver
        # windowsfilter reads a parent of None as "the layer's own parent" (as
        # Docker's Windows driver does), so it cannot compare with nothing.
        if driver.name == "windowsfilter" and driver.parent(id) is not None:
            raise CommandError(
                "the windowsfilter driver cannot compare a layer that has a parent "
                "with nothing; give --parent",
                EXIT_NOT_SUPPORTED,
            )
        return None
    if parent is not None:
        if not parent:
            raise CommandError(
                "--parent needs a layer id (--no-parent compares with nothing)", EXIT_USAGE
            )
        return parent
    return state.driver.parent(id)


@click.command("apply-diff")
@click.argument("id")
@click.argument(
    "file",
    metavar="[FILE|-]",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
)
@click.option(
    "--parent",
    "-p",
    metavar="PARENT",
    help="ID's parent. [default: the parent ID was created on]",
)
@pass_state
def apply_diff(state: State, id: str, file: str, parent: str | None) -> None:
    """Extract a layer tar into layer ID; print the layer's size.

    Reads FILE, or standard input when FILE is - or missing. The tar may be
    plain, gzip or zstd compressed (detected from its first bytes). Whiteouts
    (.wh.NAME, .wh..wh..opq) delete what the parent layers had. An invalid
    or unsafe tar fails with exit status 5 and leaves no half-applied layer.

    \b
    Example:
      lamina layer create base
      lamina layer apply-diff base debian-rootfs.tar.gz
      lamina layer create app --parent base
      zstd -dc app.tar.zst | lamina layer apply-diff app
    """
    if parent is None:
        try:
            parent = state.driver.parent(id)
        except NotSupportedError:
            parent = None  # a driver without parent records: as before, it gets none
    elif not parent:
        raise CommandError("--parent needs a layer id", EXIT_USAGE)
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
@_parent_options
@click.option(
    "--output",
    "-o",
    "output",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
    help="Write the tar to FILE instead of standard output.",
)
@pass_state
def diff(state: State, id: str, parent: str | None, no_parent: bool, output: str | None) -> None:
    """Write ID's changes against its parent as an uncompressed tar.

    Deletions become whiteouts (.wh.NAME), so applying the tar on top of
    the parent with `lamina layer apply-diff` reproduces ID. With
    --no-parent the tar holds all of ID's content. Like `docker export`, it
    refuses to write tar bytes to a terminal.

    \b
    Example:
      lamina layer diff ctr -o ctr.tar
      lamina layer diff ctr --parent base | zstd > ctr.tar.zst
    """
    import shutil  # with bz2 and lzma behind it: only the command that copies a tar

    against = compared_parent(state, id, parent, no_parent)
    if output is None or output == "-":
        out = stdout_binary()
        refuse_terminal(out, "refusing to write a tar to a terminal; use -o or redirect")
        with state.driver.diff(id, against) as stream:
            shutil.copyfileobj(stream, out, _COPY_CHUNK)
        out.flush()
        return
    with state.driver.diff(id, against) as stream:
        try:
            with open(output, "wb") as out:
                shutil.copyfileobj(stream, out, _COPY_CHUNK)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(output)  # never leave a truncated tar that looks complete
            raise


@click.command()
@click.argument("id")
@_parent_options
@pass_state
def changes(state: State, id: str, parent: str | None, no_parent: bool) -> None:
    """List ID's changes against its parent in `docker diff` format.

    One line per path, sorted: A added, C changed, D deleted. A changed
    file's parent directories are listed as changed too.

    A name that holds a control character (a newline, an escape sequence),
    a character that does not print, a backslash, a double quote or bytes
    that are not UTF-8 is printed in double quotes with C escapes (\\n, \\t,
    \\\\, \\", and \\ooo octal for each other byte), as git quotes paths; every
    other name is printed as it is, exactly as `docker diff` prints it.

    \b
    Example:
      $ lamina layer changes ctr
      C /etc
      A /etc/app.conf
      D /etc/motd
      A "/tmp/two\\nlines"
    """
    against = compared_parent(state, id, parent, no_parent)
    lines = [
        f"{change.kind.letter} {quote_name(change.path)}"
        for change in sorted(state.driver.changes(id, against))
    ]
    if lines:
        click.echo("\n".join(lines).encode())


@click.command("diff-size")
@click.argument("id")
@_parent_options
@pass_state
def diff_size(state: State, id: str, parent: str | None, no_parent: bool) -> None:
    """Print the size of ID's changes against its parent, in bytes.

    The sum of the sizes of the files ID added or changed.

    \b
    Example:
      lamina layer diff-size ctr
    """
    click.echo(state.driver.diff_size(id, compared_parent(state, id, parent, no_parent)))
