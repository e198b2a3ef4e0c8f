"""Whole-store commands: status, cleanup, drivers."""

from __future__ import annotations

import click

from lamina import drivers as drivers_mod
from lamina.cli._common import State, pass_state

__all__ = ["cleanup", "drivers", "status"]


@click.command()
@pass_state
def status(state: State) -> None:
    """Print the driver's status as `key: value` lines.

    Its name, its home directory and its diagnostics.

    The same facts `docker info` shows under "Storage Driver".

    \b
    Example:
      lamina --root /srv/layers layer status
    """
    driver = state.driver
    click.echo(f"Driver: {driver.name}")
    click.echo(f"Home: {driver.home}")
    for key, value in driver.status():
        click.echo(f"{key}: {value}")


@click.command()
@pass_state
def cleanup(state: State) -> None:
    """Release the driver's views and sweep what a crash left behind.

    Finishes interrupted removals and similar leftovers. Run it after a crash
    or before deleting the store.

    \b
    Example:
      lamina layer cleanup
    """
    state.driver.cleanup()


@click.command()
def drivers() -> None:
    """List the registered drivers, in automatic selection order.

    Without --driver, lamina uses the driver that already has layers under
    --root, else the first one in this list that works on this machine.

    \b
    Example:
      lamina drivers
    """
    for name in drivers_mod.available():
        click.echo(name)
