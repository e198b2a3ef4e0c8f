"""Container commands: create, ps, mount, unmount, diff, commit, export, rm.

A lamina container is a read-write layer on an image's top layer with a
name; nothing ever runs in it.  So ``ps`` always lists every container
(Docker's ``-a`` is accepted and changes nothing), and the life cycle is
create → mount, change files, unmount → diff / commit / export → rm.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._common import (
    EXIT_USAGE,
    CommandError,
    State,
    echo_path,
    key_value_pairs,
    open_store,
    pass_state,
    quote_name,
    refuse_terminal,
    stdout_binary,
)
from lamina.cli._format import (
    created_text,
    iso_created,
    json_text,
    newest_first_key,
    short_id,
    split_name,
    table,
)
from lamina.cli._images import one_failed, report_each
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.store import Container, Image, Store

__all__ = [
    "commit",
    "container_json",
    "create",
    "diff",
    "export",
    "mount",
    "ps",
    "rm",
    "unmount",
]


def _image_label(img: Image | None, image_id: str) -> str:
    """What ``docker ps`` shows in IMAGE: the image's first name, else its short id."""
    if img is not None:
        for name in img.names:
            repo, tag_name, _digest = split_name(name)
            if tag_name != "<none>":
                return f"{repo}:{tag_name}"
    return short_id(image_id)


def container_json(store: Store, c: Container) -> dict[str, Any]:
    """One container as ``docker inspect`` shows it (the parts a storage-only container has)."""
    del store
    return {
        "Id": c.id,
        "Name": c.name,
        "Created": iso_created(c.created),
        "Image": c.image_id,
        "GraphDriver": {"Data": {"LayerId": c.layer_id}},
    }


@click.command()
@click.argument("image")
@click.option("--name", metavar="NAME", help="Name the container. [default: a generated name]")
@click.option(
    "--storage-opt",
    "storage_opt",
    metavar="KEY=VALUE",
    multiple=True,
    callback=key_value_pairs,
    help="Storage option for the read-write layer, repeatable: size=10G where the "
    "driver has a quota (exit status 4 where it has none).",
)
@pass_state
def create(state: State, image: str, name: str | None, storage_opt: dict[str, str]) -> None:
    """Create a container (a read-write layer) from IMAGE; print its id.

    IMAGE is a name, a full id or a unique id prefix. The container starts
    out showing the image's files; `lamina mount` gives the path to change
    them.

    \b
    Example:
      lamina create debian:12 --name web
      lamina create --storage-opt size=1G debian:12
    """
    with open_store(state) as store:
        c = store.create_container(image, name=name, storage_opt=storage_opt or None)
        click.echo(c.id)


@click.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Accepted for Docker's sake: always all.")
@click.option("-q", "--quiet", is_flag=True, help="Print only container ids.")
@click.option("--no-trunc", is_flag=True, help="Show full ids.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json (an array) for scripts.",
)
@pass_state
def ps(state: State, all_: bool, quiet: bool, no_trunc: bool, output_format: str) -> None:
    """List the containers, newest first, like `docker ps -a`.

    Containers here never run, so every container is listed (-a changes
    nothing). Columns: CONTAINER ID, IMAGE, CREATED, NAMES.

    \b
    Example:
      lamina ps
      lamina ps -q | xargs -r lamina rm
      lamina ps --format json
    """
    del all_
    with open_store(state) as store:
        found = sorted(
            store.containers(),
            key=lambda c: newest_first_key(c.created),
            reverse=True,
        )
        if output_format == "json":
            if quiet:
                raise CommandError("-q and --format json exclude each other", EXIT_USAGE)
            click.echo(json_text([container_json(store, c) for c in found]))
            return
        if quiet:
            if found:
                click.echo("\n".join(c.id if no_trunc else short_id(c.id) for c in found))
            return
        by_id = {img.id: img for img in store.images()} if found else {}
        rows = [
            [
                c.id if no_trunc else short_id(c.id),
                _image_label(by_id.get(c.image_id), c.image_id),
                created_text(c.created),
                c.name or "",
            ]
            for c in found
        ]
        click.echo(table(["CONTAINER ID", "IMAGE", "CREATED", "NAMES"], rows))


@click.command()
@click.argument("container")
@pass_state
def mount(state: State, container: str) -> None:
    """Mount CONTAINER's root filesystem and print its path.

    The mount stays after the command exits. Each `lamina mount` counts one
    user and needs one `lamina unmount`; the view goes when the last user
    unmounts. What is written there is the container's change.

    \b
    Example:
      dir=$(lamina mount web)
      echo hello > "$dir/hello"
      lamina unmount web
    """
    with open_store(state) as store:
        echo_path(store.mount(container))


@click.command()
@click.argument("container")
@pass_state
def unmount(state: State, container: str) -> None:
    """Release one `lamina mount` of CONTAINER.

    The view goes away at the last one; unmounting more often than mounting
    is exit status 7.

    \b
    Example:
      lamina unmount web
    """
    with open_store(state) as store:
        store.unmount(container)


@click.command()
@click.argument("container")
@pass_state
def diff(state: State, container: str) -> None:
    """List CONTAINER's changes in `docker diff` format.

    One line per path, sorted: A added, C changed, D deleted. A name that
    holds a control character, a character that does not print, a
    backslash, a double quote or bytes that are not UTF-8 is printed in
    double quotes with C escapes (as git quotes paths); every other name is
    printed as it is.

    \b
    Example:
      $ lamina diff web
      C /etc
      A /etc/app.conf
      D /etc/motd
    """
    with open_store(state) as store:
        lines = [
            f"{change.kind.letter} {quote_name(change.path)}"
            for change in sorted(store.changes(container))
        ]
    if lines:
        click.echo("\n".join(lines).encode("utf-8", "surrogateescape"))


@click.command()
@click.argument("container")
@click.argument("ref", required=False, metavar="[REF]")
@click.option("-m", "--message", metavar="MSG", help="Commit message (the history comment).")
@click.option("-a", "--author", metavar="AUTHOR", help='Author, e.g. "Ann <ann@example.org>".')
@click.option(
    "--compression",
    type=click.Choice(["gzip", "zstd", "none"]),
    default="gzip",
    show_default=True,
    help="How the new layer's blob is compressed.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress; still print the image id.")
@pass_state
def commit(
    state: State,
    container: str,
    ref: str | None,
    message: str | None,
    author: str | None,
    compression: str,
    quiet: bool,
) -> None:
    """Make a new image from CONTAINER's changes; print its id.

    The new image is the container's image plus one layer holding the
    changes, with a history entry (MSG, AUTHOR) and a new created time;
    REF names it. The container is kept.

    \b
    Example:
      lamina commit web myapp:1.0 -m "add config"
      lamina commit --compression zstd web
    """
    from lamina.cli._progress import Progress

    progress = Progress(quiet)
    with open_store(state) as store:
        target = store.container(container)
        with progress.step(f"Committing {target.name or short_id(target.id)}") as step:
            img = store.commit(
                target, ref=ref, compression=compression, message=message, author=author
            )
            step.note = short_id(img.id)
    click.echo(img.id)


@click.command()
@click.argument("container")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
    help="Write the tar to FILE. [default: standard output, which must not be a terminal]",
)
@pass_state
def export(state: State, container: str, output: str | None) -> None:
    """Write CONTAINER's whole tree as one tar, like `docker export`.

    The image's layers and the container's changes flattened into one tree
    (no whiteouts). Without -o the tar goes to standard output, which is
    refused when it is a terminal.

    \b
    Example:
      lamina export web -o web.tar
      lamina export web | tar -t
    """
    if output is None or output == "-":
        out = stdout_binary()
        refuse_terminal(out, "refusing to write a tar to a terminal; use -o or redirect")
        with open_store(state) as store:
            store.export(container, out)
        out.flush()
        return
    existed = os.path.lexists(output)
    with open_store(state) as store:
        try:
            store.export(container, output)
        except BaseException:
            if not existed and os.path.isfile(output):
                with contextlib.suppress(OSError):
                    os.unlink(output)  # never leave a truncated tar that looks whole
            raise


@click.command()
@click.argument("containers", metavar="CONTAINER...", nargs=-1, required=True)
@click.option(
    "-f", "--force", is_flag=True, help="Remove even while mounted (the mounts go first)."
)
@pass_state
def rm(state: State, containers: tuple[str, ...], force: bool) -> None:
    """Remove containers (and their read-write layers).

    Prints each argument removed, like `docker rm`. A mounted container is
    refused (exit status 7) unless -f, which releases its mounts first. Each
    argument is tried; the exit status is the first failure's.

    \b
    Example:
      lamina rm web
      lamina ps -q | xargs -r lamina rm -f
    """
    with open_store(state) as store, report_each() as statuses:
        for arg in containers:
            try:
                store.remove_container(arg, force=force)
                click.echo(arg)
            except (LaminaError, OSError) as exc:
                one_failed(statuses, exc)
