"""The ``demo`` command: the README quick start's tour of the driver contract and the store."""

from __future__ import annotations

from pathlib import Path

import click

from lamina.cli._common import EXIT_ERROR, State, pass_state

__all__ = ["demo"]


@click.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run in this store instead of a temporary one (same as lamina's --root).",
)
@click.option(
    "--driver",
    "driver_name",
    metavar="NAME",
    help="Use this driver instead of automatic selection (same as lamina's --driver).",
)
@click.option(
    "--keep", is_flag=True, help="Keep the layers (and the temporary store) for a look afterwards."
)
@pass_state
def demo(state: State, root: Path | None, driver_name: str | None, keep: bool) -> None:
    """Tour layers and images on real files from this machine.

    \b
    Layers (the driver contract):
    1. makes a layer tar from files in /etc and /usr/share with lamina's exporter
    2. creates a base layer and applies the tar to it
    3. creates a read-write layer on top and modifies, adds and deletes files
    4. prints its changes in `docker diff` format
    5. exports those changes as a layer tar
    6. applies that tar to a new layer on the base
    7. compares both layers entry by entry and prints MATCH
    \b
    Images (the store):
    1. wraps the layer tar in a `docker save` archive with a config
    2. loads it into the store (the image id is the config's digest)
    3. creates a container from the image and changes files in it
    4. prints the container's changes in `docker diff` format
    5. commits them as a new image
    6. saves that image as a docker-archive
    7. loads it into a fresh store, compares the image id and a container's
       tree with the original container, and prints MATCH

    Source files this machine lacks are skipped.
    Uses a fresh temporary store (removed afterwards) unless --root is given
    (here or before the command; $LAMINA_ROOT is ignored), and the driver
    that --driver names or that automatic selection picks. Exits non-zero
    if the layers differ.

    \b
    Example:
      lamina demo
      lamina demo --driver vfs --root /tmp/store --keep
    """
    from lamina import _demo  # the tour needs tarfile, tempfile, hashing: only here

    if root is None and state.root_given:
        root = state.root
    result = _demo.run_demo(
        root=root,
        driver=driver_name or state.driver_name,
        options=state.options,
        keep=keep,
        echo=click.echo,
    )
    if not result.match:
        raise click.exceptions.Exit(EXIT_ERROR)
