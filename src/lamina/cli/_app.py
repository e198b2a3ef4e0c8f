"""The ``lamina`` command group: global options and the one place errors become exit codes."""

from __future__ import annotations

import sys
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


# Command name -> (module, attribute).  Each command module is imported only
# when its command runs (or help lists it): a ``lamina layer create`` process
# never loads the Windows layer tools, the demo or the diff commands.
_COMMANDS: dict[str, tuple[str, str]] = {
    "commit": ("lamina.cli._containers", "commit"),
    "create": ("lamina.cli._containers", "create"),
    "demo": ("lamina.cli._demo_cmd", "demo"),
    "diff": ("lamina.cli._containers", "diff"),
    "drivers": ("lamina.cli._store", "drivers"),
    "export": ("lamina.cli._containers", "export"),
    "images": ("lamina.cli._images", "images"),
    "inspect": ("lamina.cli._images", "inspect"),
    "load": ("lamina.cli._images", "load"),
    "mount": ("lamina.cli._containers", "mount"),
    "ps": ("lamina.cli._containers", "ps"),
    "rm": ("lamina.cli._containers", "rm"),
    "rmi": ("lamina.cli._images", "rmi"),
    "save": ("lamina.cli._images", "save"),
    "system": ("lamina.cli._system", "system"),
    "tag": ("lamina.cli._images", "tag"),
    "unmount": ("lamina.cli._containers", "unmount"),
    "windows": ("lamina.cli._windows", "windows"),
}

# The graph-driver commands, under ``lamina layer``.  The top-level names
# ``create``, ``rm``, ``mount``, ``unmount`` and ``diff`` belong to the image
# and container commands (DESIGN.md), so none of these is an alias up there.
_LAYER_COMMANDS: dict[str, tuple[str, str]] = {
    "apply-diff": ("lamina.cli._diff", "apply_diff"),
    "changes": ("lamina.cli._diff", "changes"),
    "cleanup": ("lamina.cli._store", "cleanup"),
    "create": ("lamina.cli._layers", "create"),
    "create-rw": ("lamina.cli._layers", "create_rw"),
    "diff": ("lamina.cli._diff", "diff"),
    "diff-size": ("lamina.cli._diff", "diff_size"),
    "exists": ("lamina.cli._layers", "exists"),
    "metadata": ("lamina.cli._layers", "metadata"),
    "mount": ("lamina.cli._mount", "mount"),
    "rm": ("lamina.cli._layers", "rm"),
    "status": ("lamina.cli._store", "status"),
    "unmount": ("lamina.cli._mount", "unmount"),
}


class _LazyGroup(click.Group):
    """A command group whose subcommands load on demand from a name -> module table."""

    def __init__(
        self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name]
            __import__(module_name)
            command = getattr(sys.modules[module_name], attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{module_name}.{attr} is not a click command")
            self.add_command(command, cmd_name)
        return command


class _Group(_LazyGroup):
    """The top-level group: turns library and OS errors into one line on stderr.

    Subgroups (``lamina layer``) run inside this ``invoke``, so their
    commands' errors end here too.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CommandError as exc:
            exit_with_error(str(exc), exc.exit_code)
        except BrokenPipeError:
            raise  # the reader went away (`lamina layer diff x | head`): click exits quietly
        except (errors.LaminaError, OSError) as exc:
            fail(exc)


_HELP = """\
Store container images and their layers (drivers vfs, overlay, windowsfilter).

Image and container commands work like Docker's and Podman's: load and
save archives, create a container (a read-write layer) from an image,
mount it, change files, diff and commit. The graph-driver commands, one
layer at a time by the ID you give it, live under `lamina layer`.

\b
Example:
  lamina load -i debian.tar
  lamina create debian:12 --name web
  dir=$(lamina mount web); touch "$dir/hello"; lamina unmount web
  lamina diff web                           # A /hello
  lamina commit web myapp:1 && lamina save myapp:1 -o myapp.tar

\b
The same at layer level:
  lamina layer create base
  lamina layer apply-diff base rootfs.tar.gz
  lamina layer create-rw ctr --parent base
  dir=$(lamina layer mount ctr); touch "$dir/hello"; lamina layer unmount ctr
  lamina layer changes ctr                  # A /hello (against ctr's parent)
  lamina layer diff ctr -o ctr.tar

\b
Environment:
  LAMINA_ROOT    default for --root
  LAMINA_DRIVER  default for --driver
  LAMINA_DEBUG=1 show Python tracebacks instead of one-line errors
"""


@click.group(cls=_Group, lazy_commands=_COMMANDS, help=_HELP, epilog=EXIT_CODES_HELP)
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


_LAYER_HELP = """\
Graph-driver commands: one layer at a time, by its ID.

Each layer starts out showing its parent's content. `changes`, `diff`,
`diff-size` and `apply-diff` work against the layer's own parent unless
--parent names another layer (or --no-parent asks for none).

\b
Example:
  lamina layer create base
  lamina layer apply-diff base rootfs.tar.gz
  lamina layer create-rw ctr --parent base
  lamina layer changes ctr
"""


@cli.group(cls=_LazyGroup, lazy_commands=_LAYER_COMMANDS, help=_LAYER_HELP)
def layer() -> None:
    pass
