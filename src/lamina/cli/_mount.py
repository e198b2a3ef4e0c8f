"""mount and unmount: ``get`` and ``put`` of the driver, one per command.

A command is a process of its own, so these use the driver's ``mount`` and
``unmount``: holds that are counted in the driver's runtime directory and
outlive the process, so a later ``lamina layer unmount`` can release what an
earlier ``lamina layer mount`` took.  Hence the rule in the help texts: every
``lamina layer mount`` needs exactly one ``lamina layer unmount``.
"""

from __future__ import annotations

import click

from lamina.cli._common import State, echo_path, pass_state

__all__ = ["mount", "unmount"]


@click.command()
@click.argument("id")
@click.option("--label", "mount_label", default="", metavar="LABEL", help="SELinux mount label.")
@pass_state
def mount(state: State, id: str, mount_label: str) -> None:
    """Make layer ID's merged view available and print its path.

    The view stays after the command exits. Each `lamina layer mount` counts one
    user and must be paired with one `lamina layer unmount`; the view goes away
    when the last user unmounts. Writes to a read-write layer's view are
    the container's changes.

    \b
    Example:
      dir=$(lamina layer mount ctr)
      echo hi > "$dir/hello"
      lamina layer unmount ctr
    """
    echo_path(state.driver.mount(id, mount_label))


@click.command()
@click.argument("id")
@pass_state
def unmount(state: State, id: str) -> None:
    """Release one `lamina layer mount` of layer ID.

    The view goes away at the last one.

    Unmounting more often than mounting is an error (exit status 7).

    \b
    Example:
      lamina layer unmount ctr
    """
    state.driver.unmount(id)
