"""The ``lamina`` command line, at graph-driver level (like the ``containers-storage`` tool).

Each command module only parses arguments and prints; the work is the
library's.  Errors become one line on stderr and an exit status chosen by
exception class (see ``lamina --help``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lamina.cli._app import cli
from lamina.cli._demo_cmd import demo
from lamina.cli._diff import apply_diff, changes, diff, diff_size
from lamina.cli._layers import create, create_rw, exists, metadata, rm
from lamina.cli._mount import mount, unmount
from lamina.cli._store import cleanup, drivers, status
from lamina.cli._windows import windows

__all__ = ["cli", "main"]

for _command in (
    create,
    create_rw,
    rm,
    mount,
    unmount,
    exists,
    status,
    metadata,
    cleanup,
    apply_diff,
    diff,
    changes,
    diff_size,
    drivers,
    demo,
    windows,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lamina`` script and ``python -m lamina``; exits the process."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="lamina")
