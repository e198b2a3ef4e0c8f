"""The ``lamina`` command line, at graph-driver level (like the ``containers-storage`` tool).

Each command module only parses arguments and prints; the work is the
library's.  Errors become one line on stderr and an exit status chosen by
exception class (see ``lamina --help``).  Command modules load when their
command runs (see :mod:`lamina.cli._app`), so a command's process imports
only what that command uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from lamina.cli._app import cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lamina`` script and ``python -m lamina``; exits the process."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="lamina")
