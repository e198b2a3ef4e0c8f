"""Layer lifecycle commands: create, create-rw, rm, exists, metadata."""

from __future__ import annotations

import click

from lamina.cli._common import EXIT_ERROR, State, key_value_pairs, pass_state

__all__ = ["create", "create_rw", "exists", "metadata", "rm"]

_parent = click.option(
    "--parent", "-p", metavar="PARENT", help="Layer to start from (none: an empty layer)."
)
_label = click.option(
    "--label", "mount_label", default="", metavar="LABEL", help="SELinux mount label."
)
_storage_opt = click.option(
    "--storage-opt",
    "storage_opt",
    metavar="KEY=VALUE",
    multiple=True,
    callback=key_value_pairs,
    help="Per-layer storage option, repeatable (e.g. size=10G where the driver has a quota).",
)


@click.command()
@click.argument("id")
@_parent
@_label
@_storage_opt
@pass_state
def create(
    state: State, id: str, parent: str | None, mount_label: str, storage_opt: dict[str, str]
) -> None:
    """Create an empty read-only (image) layer ID on top of PARENT.

    Fill it with `lamina layer apply-diff ID`. The new layer shows PARENT's content.

    \b
    Example:
      lamina layer create base
      lamina layer create app --parent base
    """
    state.driver.create(id, parent, mount_label=mount_label, storage_opt=storage_opt or None)


@click.command("create-rw")
@click.argument("id")
@_parent
@_label
@_storage_opt
@pass_state
def create_rw(
    state: State, id: str, parent: str | None, mount_label: str, storage_opt: dict[str, str]
) -> None:
    """Create a read-write (container) layer ID on top of PARENT.

    This is where a container's changes go; `lamina layer changes` and `lamina layer diff`
    report them. `size` is accepted here only, and only where the driver has a
    quota mechanism (otherwise the command fails with exit status 4).

    \b
    Example:
      lamina layer create-rw ctr --parent app --storage-opt size=1G
    """
    state.driver.create_read_write(
        id, parent, mount_label=mount_label, storage_opt=storage_opt or None
    )


@click.command()
@click.argument("ids", metavar="ID...", nargs=-1, required=True)
@pass_state
def rm(state: State, ids: tuple[str, ...]) -> None:
    """Remove layers. Removing a layer that does not exist is not an error.

    \b
    Example:
      lamina layer rm ctr app base
    """
    for layer in ids:
        state.driver.remove(layer)


@click.command()
@click.argument("id")
@pass_state
def exists(state: State, id: str) -> None:
    """Exit 0 if layer ID exists, 1 if not; print true or false.

    \b
    Example:
      lamina layer exists base && echo "base is there"
    """
    found = state.driver.exists(id)
    click.echo("true" if found else "false")
    if not found:
        raise click.exceptions.Exit(EXIT_ERROR)


@click.command()
@click.argument("id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead.")
@pass_state
def metadata(state: State, id: str, as_json: bool) -> None:
    """Print the driver's facts about layer ID.

    Its directories, for instance, as `docker inspect` shows them under
    GraphDriver.Data: one `key: value` line each, or one JSON object with
    --json.

    \b
    Example:
      lamina layer metadata base
      lamina layer metadata base --json | jq -r .Dir
    """
    data = state.driver.get_metadata(id)
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for key, value in data.items():
        click.echo(f"{key}: {value}")
