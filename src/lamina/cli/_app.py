"""The ``lamina`` command group: global options and the one place errors become exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

import lamina
from lamina import errors
from lamina.cli._common import (
    EXIT_CODES_HELP,
    CommandError,
    State,
    default_root,
    exit_with_error,
    fail,
    key_value_pairs,
)

__all__ = ["cli"]


class _Group(click.Group):
    """Runs a subcommand and turns library and OS errors into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CommandError as exc:
            exit_with_error(str(exc), exc.exit_code)
        except BrokenPipeError:
            raise  # the reader went away (`lamina diff x | head`): click exits quietly
        except (errors.LaminaError, OSError) as exc:
            fail(exc)


_HELP = """\
Store container image layers with a graph driver (vfs, overlay, windowsfilter).

Works at driver level, like Docker's graph drivers and the containers-storage
tool: layers are named by the ID you give them, and each one starts out
showing its parent's content.

\b
Example:
  lamina create base
  lamina apply-diff base rootfs.tar.gz
  lamina create-rw ctr --parent base
  dir=$(lamina mount ctr); touch "$dir/hello"; lamina unmount ctr
  lamina changes ctr --parent base          # A /hello
  lamina diff ctr --parent base -o ctr.tar

\b
Environment:
  LAMINA_ROOT    default for --root
  LAMINA_DRIVER  default for --driver
  LAMINA_DEBUG=1 show Python tracebacks instead of one-line errors
"""


@click.group(cls=_Group, help=_HELP, epilog=EXIT_CODES_HELP)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=str),
    envvar="LAMINA_ROOT",
    help="Store directory; each driver keeps its layers in ROOT/<driver>. "
    "[default: $LAMINA_ROOT, else /var/lib/lamina as root, else ~/.local/share/lamina]",
)
@click.option(
    "--driver",
    "driver_name",
    metavar="NAME",
    envvar="LAMINA_DRIVER",
    help="Driver to use (see `lamina drivers`). [default: the one that already has "
    "layers under ROOT, else the best one that works here: overlay, then vfs]",
)
@click.option(
    "-o",
    "--option",
    "options",
    metavar="KEY=VALUE",
    multiple=True,
    callback=key_value_pairs,
    help="Driver option, repeatable; keys are driver-specific and unknown keys are refused.",
)
@click.version_option(lamina.__version__, prog_name="lamina", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context, root: str | None, driver_name: str | None, options: dict[str, str]
) -> None:
    source = ctx.get_parameter_source("root")
    ctx.obj = State(
        root=Path(root).expanduser() if root else default_root(),
        driver_name=driver_name or None,
        options=options,
        root_given=source is ParameterSource.COMMANDLINE,
    )
