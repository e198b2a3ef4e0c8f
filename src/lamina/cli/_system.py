"""``lamina system df|prune|check|info``: the store as a whole.

``prune`` only removes what nothing needs: images with no name that no
container uses (Docker's "dangling" images) and whatever the store's
``gc()`` finds unreferenced (layers, blobs, leftovers of interrupted work).
Containers are never pruned: here they hold work, not processes.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lamina.cli._common import (
    EXIT_ERROR,
    EXIT_USAGE,
    CommandError,
    State,
    open_store,
    pass_state,
)
from lamina.cli._format import human_size, json_text, table
from lamina.errors import LaminaError

__all__ = ["system"]

_SYSTEM_HELP = """\
The store as a whole: disk usage, pruning, checking, facts.

\b
Example:
  lamina system df
  lamina system prune -f
  lamina system check --repair
"""

_format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="text for people, json for scripts.",
)


@click.group(help=_SYSTEM_HELP)
def system() -> None:
    pass


def _fields(value: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(value, name, None) for name in names}


@system.command()
@_format_option
@pass_state
def df(state: State, output_format: str) -> None:
    """Show the store's disk usage, like `docker system df`.

    Counts and sizes of images, containers and layers. ACTIVE images are
    those a container uses; RECLAIMABLE is what `lamina system prune` would
    free (containers are never pruned).

    \b
    Example:
      lamina system df
      lamina system df --format json
    """
    with open_store(state) as store:
        usage = store.disk_usage()
        all_images = store.images()
        containers = store.containers()
        layers = store.layers()
    used = {c.image_id for c in containers}
    active_images = sum(1 for img in all_images if img.id in used)
    sizes = _fields(usage, ("images", "containers", "layers", "reclaimable"))
    if output_format == "json":
        click.echo(
            json_text(
                {
                    "Images": {"Total": len(all_images), "Active": active_images},
                    "Containers": {"Total": len(containers)},
                    "Layers": {"Total": len(layers)},
                    "Size": sizes,
                }
            )
        )
        return
    reclaimable = sizes["reclaimable"] or 0
    total = sizes["images"] or 0
    share = f" ({100 * reclaimable // total}%)" if total else ""
    rows = [
        [
            "Images",
            str(len(all_images)),
            str(active_images),
            human_size(sizes["images"]),
            human_size(reclaimable) + share,
        ],
        [
            "Containers",
            str(len(containers)),
            "-",  # Docker counts running containers; nothing runs here
            human_size(sizes["containers"]),
            "0B",
        ],
        ["Layers", str(len(layers)), "-", human_size(sizes["layers"]), "-"],
    ]
    click.echo(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows))


_PRUNE_WARNING = """\
WARNING! This will remove:
  - all images without a name that no container uses
  - layers, blobs and leftovers that nothing refers to, including layers
    made with `lamina layer` in this root that no image or container uses
Containers are kept."""


@system.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def prune(state: State, force: bool) -> None:
    """Remove unnamed unused images and everything nothing refers to.

    Removes images that have no name and no container (Docker's dangling
    images), then runs the store's garbage collection, and prints what went
    and the total reclaimed space. The store counts layers made with `lamina
    layer` in the same --root as unreferenced: keep those in another root.
    Asks first on a terminal; without a terminal it needs -f.

    \b
    Example:
      lamina system prune
      lamina system prune -f
    """
    from lamina.errors import InUseError, NotFoundError

    if not force:
        if not sys.stdin.isatty():
            raise CommandError(
                "not asking for confirmation without a terminal: give -f", EXIT_USAGE
            )
        click.echo(_PRUNE_WARNING, err=True)
        if not click.confirm("Are you sure you want to continue?", err=True):
            return
    with open_store(state) as store:
        used = {c.image_id for c in store.containers()}
        deleted: list[str] = []
        for img in store.images():
            if img.names or img.id in used:
                continue
            try:
                store.remove_image(img)
            except (InUseError, NotFoundError):
                continue  # another process took it, or removed it first
            deleted.append(img.id)
        report = store.gc()
    if deleted:
        click.echo("Deleted Images:")
        for ident in deleted:
            click.echo(f"deleted: {ident}")
        click.echo("")
    removed = [str(item) for item in report.removed]
    if removed:
        click.echo("Deleted:")
        for item in removed:
            click.echo(item)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(report.reclaimed_bytes)}")


@system.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Remove what is damaged (and what needs it), then check again.",
)
@_format_option
@pass_state
def check(state: State, repair: bool, output_format: str) -> None:
    """Check every layer, blob and image of the store; print each problem.

    Re-reads every layer (its diff ID from its contents) and every blob, and
    looks for records without data and data without records. Each problem
    is one line: KIND SUBJECT: DETAIL. With --repair the damaged parts are
    removed and the store is checked again. The exit status is 1 when
    problems remain, 0 when the store is sound.

    \b
    Example:
      lamina system check
      lamina system check --repair
    """
    with open_store(state) as store:
        report = store.check(repair=repair)
        found = list(report.problems)
        remaining = list(store.check().problems) if repair and found else found
    if output_format == "json":
        click.echo(
            json_text(
                {
                    "Problems": [_fields(p, ("kind", "subject", "detail")) for p in found],
                    "Repaired": repair,
                    "Remaining": [_fields(p, ("kind", "subject", "detail")) for p in remaining],
                }
            )
        )
    else:
        for problem in found:
            click.echo(f"{problem.kind} {problem.subject}: {' '.join(str(problem.detail).split())}")
        if repair and found:
            click.echo(
                f"repaired: {len(found) - len(remaining)} of {len(found)} problems",
                err=True,
            )
        if not remaining:
            click.echo("ok: no problems" if not found else "ok: the store is sound now", err=True)
    if remaining:
        raise click.exceptions.Exit(EXIT_ERROR)


@system.command()
@_format_option
@pass_state
def info(state: State, output_format: str) -> None:
    """Print facts about the store: root, driver, counts, disk usage, version.

    \b
    Example:
      lamina system info
      lamina --root /srv/store system info --format json
    """
    import lamina

    with open_store(state) as store:
        all_images = store.images()
        containers = store.containers()
        layers = store.layers()
        usage = store.disk_usage()
        # not in DESIGN.md's API: shown when the store says which driver it runs on
        driver = getattr(store, "driver", None)
        driver_name = getattr(driver, "name", None) or state.driver_name or "auto"
        try:
            status = [(str(k), str(v)) for k, v in driver.status()] if driver else []
        except (LaminaError, OSError):
            status = []
    drivers = sorted({str(layer.driver) for layer in layers if getattr(layer, "driver", None)})
    facts: dict[str, Any] = {
        "Root": str(state.root),
        "Driver": driver_name,
        "DriverStatus": status,
        "LayerDrivers": drivers,
        "Images": len(all_images),
        "Containers": len(containers),
        "Layers": len(layers),
        "DiskUsage": _fields(usage, ("images", "containers", "layers", "reclaimable")),
        "Version": lamina.__version__,
    }
    if output_format == "json":
        click.echo(json_text(facts))
        return
    sizes = facts["DiskUsage"]
    lines = [
        f"Root: {facts['Root']}",
        f"Driver: {facts['Driver']}",
        *(f"  {key}: {value}" for key, value in status),
        f"Layer drivers: {', '.join(drivers) or '-'}",
        f"Images: {facts['Images']}",
        f"Containers: {facts['Containers']}",
        f"Layers: {facts['Layers']}",
        "Disk usage: " + ", ".join(f"{key} {human_size(value)}" for key, value in sizes.items()),
        f"lamina version: {facts['Version']}",
    ]
    click.echo("\n".join(lines))
