"""What every command shares: the global state, option parsing and the error-to-exit-code map.

Exit codes are a CLI concern (the library raises typed exceptions and never
exits), so the one table that turns an exception class into a process status
lives here, and only here.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NoReturn

import click

from lamina import drivers, errors

__all__ = [
    "EXIT_ALREADY_EXISTS",
    "EXIT_AUTH",
    "EXIT_BAD_ARCHIVE",
    "EXIT_BAD_STATE",
    "EXIT_CODES_HELP",
    "EXIT_ERROR",
    "EXIT_INTEGRITY",
    "EXIT_IN_USE",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_SUPPORTED",
    "EXIT_NO_RESOURCES",
    "EXIT_REGISTRY",
    "EXIT_USAGE",
    "CommandError",
    "State",
    "debug_enabled",
    "default_root",
    "describe_error",
    "echo_path",
    "exit_code_for",
    "exit_with_error",
    "fail",
    "key_value_pairs",
    "open_store",
    "pass_state",
    "quote_name",
    "refuse_terminal",
    "stdin_binary",
    "stdout_binary",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_SUPPORTED = 4
EXIT_BAD_ARCHIVE = 5
EXIT_ALREADY_EXISTS = 6
EXIT_IN_USE = 7
EXIT_NO_RESOURCES = 8
EXIT_BAD_STATE = 9
EXIT_INTEGRITY = 10
EXIT_REGISTRY = 11
EXIT_AUTH = 12

# Out of a resource that freeing or raising a limit fixes: disk space, a
# quota, processes (fork's EAGAIN), open files, memory.  Checked before the
# class, because the library wraps such failures in the class of the
# operation that hit them (a helper that cannot fork during an apply is an
# ArchiveError carrying EAGAIN), and "bad archive" would send the user
# looking in the wrong place.
_RESOURCE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)

# Most specific first: the first class that matches decides the status.
# Every class of lamina.errors is named (a test checks), so a new class
# gets its status chosen here rather than falling through to 1 unseen.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.InvalidArgumentError, EXIT_USAGE),
    (errors.NotFoundError, EXIT_NOT_FOUND),
    (errors.QuotaNotSupportedError, EXIT_NOT_SUPPORTED),
    (errors.IncompatibleFilesystemError, EXIT_NOT_SUPPORTED),
    (errors.PrerequisitesError, EXIT_NOT_SUPPORTED),
    (errors.NotSupportedError, EXIT_NOT_SUPPORTED),
    (errors.MaxDepthError, EXIT_NOT_SUPPORTED),
    (errors.ArchiveTooLargeError, EXIT_BAD_ARCHIVE),
    (errors.InvalidArchiveError, EXIT_BAD_ARCHIVE),
    (errors.UnsafeArchiveError, EXIT_BAD_ARCHIVE),
    (errors.LayerChangedError, EXIT_IN_USE),  # a writer swapped files mid-export: retry
    (errors.ArchiveError, EXIT_BAD_ARCHIVE),
    (errors.AlreadyExistsError, EXIT_ALREADY_EXISTS),
    (errors.LockTimeoutError, EXIT_IN_USE),  # another process is working on the layer
    (errors.InUseError, EXIT_IN_USE),
    (errors.QuotaExceededError, EXIT_NO_RESOURCES),
    (errors.ReadOnlyStoreError, EXIT_BAD_STATE),  # cannot be changed as it is mounted
    (errors.StateError, EXIT_BAD_STATE),
    (errors.IntegrityError, EXIT_INTEGRITY),
    (errors.AuthenticationError, EXIT_AUTH),
    (errors.RegistryError, EXIT_REGISTRY),
    (errors.LaminaError, EXIT_ERROR),
    (FileNotFoundError, EXIT_NOT_FOUND),
)

# Shown in ``lamina --help``; "\b" stops click from re-flowing the table.
EXIT_CODES_HELP = f"""\b
Exit status:
  0  success (for `layer exists`: the layer exists)
  {EXIT_ERROR}  other error (for `layer exists`: the layer does not exist; for
     `system check`: problems remain)
  {EXIT_USAGE}  usage error: bad option, argument, id, reference or ambiguous id prefix
  {EXIT_NOT_FOUND}  not found: no such layer, image, container or file
  {EXIT_NOT_SUPPORTED}  not supported here: driver, kernel feature, storage option, chain depth
  {EXIT_BAD_ARCHIVE}  invalid or unsafe layer or image archive
  {EXIT_ALREADY_EXISTS}  the layer, container name or image already exists
  {EXIT_IN_USE}  in use: a mounted or parent layer, an image a container uses, or a
     layer changed by a writer while it was exported
  {EXIT_NO_RESOURCES}  out of resources: disk full, size limit, process or open-file limit
  {EXIT_BAD_STATE}  the store's state is inconsistent: run `lamina layer cleanup`
  {EXIT_INTEGRITY}  bytes do not match their digest (a blob, manifest or stored layer)
  {EXIT_REGISTRY}  the registry failed or refused the request
  {EXIT_AUTH}  the registry refused the credentials (none, wrong or not enough)
"""


def exit_code_for(exc: BaseException) -> int:
    """The process status for an exception raised by the library or the OS."""
    if isinstance(exc, (OSError, errors.LaminaError)) and exc.errno in _RESOURCE_ERRNOS:
        return EXIT_NO_RESOURCES
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def describe_error(exc: BaseException) -> str:
    """One line for stderr: the message, without Python's ``[Errno N]`` decoration."""
    if isinstance(exc, OSError) and not isinstance(exc, errors.LaminaError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None:
            text += f": {os.fsdecode(exc.filename)}"
        if exc.filename2 is not None:
            text += f" -> {os.fsdecode(exc.filename2)}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def debug_enabled() -> bool:
    """``LAMINA_DEBUG=1`` lets exceptions through with their traceback."""
    return os.environ.get("LAMINA_DEBUG", "") not in ("", "0")


class CommandError(Exception):
    """A failure found by the command line itself, with the exit status it deserves."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_with_error(message: str, exit_code: int) -> NoReturn:
    """Print ``lamina: error: <message>`` on stderr and end the command with ``exit_code``."""
    click.echo(f"lamina: error: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


def default_root() -> Path:
    """``$LAMINA_ROOT``, else the system store as root, else the user's data directory."""
    env = os.environ.get("LAMINA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/lamina")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "lamina"


class State:
    """The global options; the driver is started on first use only.

    Starting lazily keeps ``--help`` and ``drivers`` free of side effects
    (starting a driver creates its home directory).  A plain class rather
    than a dataclass: ``dataclasses`` would add its import to every command.
    """

    __slots__ = ("_driver", "driver_name", "options", "root", "root_given")

    def __init__(
        self,
        root: Path,
        driver_name: str | None,
        options: dict[str, str] | None = None,
        root_given: bool = False,
        _driver: drivers.Driver | None = None,
    ) -> None:
        self.root = root
        self.driver_name = driver_name
        self.options: dict[str, str] = {} if options is None else options
        self.root_given = root_given
        self._driver = _driver

    def __repr__(self) -> str:
        return (
            f"State(root={self.root!r}, driver_name={self.driver_name!r}, "
            f"options={self.options!r}, root_given={self.root_given!r})"
        )

    @property
    def driver(self) -> drivers.Driver:
        if self._driver is None:
            self._driver = drivers.new_driver(self.driver_name, self.root, self.options)
        return self._driver


pass_state = click.make_pass_decorator(State)

if TYPE_CHECKING:
    from lamina.store import Store


def open_store(state: State) -> Store:
    """The image store at ``--root`` with ``--driver`` and ``-o``; use it as a context manager.

    Imported here, on first use, so that the layer commands never load the
    store (nor SQLite behind it).
    """
    from lamina.store import Store

    return Store(state.root, driver=state.driver_name, options=dict(state.options))


def key_value_pairs(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, str]:
    """Click callback turning repeated ``key=value`` options into a dict."""
    del ctx
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not of the form key=value", param=param)
        if key in result:
            raise click.BadParameter(f"{key!r} given more than once", param=param)
        result[key] = value
    return result


def echo_path(path: str | os.PathLike[str]) -> None:
    """Print a path byte for byte, so names that are not UTF-8 survive (surrogateescape)."""
    click.echo(os.fsencode(path))


_C_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


def quote_name(name: str) -> str:
    """A file name that is safe on a terminal and one line long (git's quoting of paths).

    Names come from the layer, that is from whoever wrote the container's
    files, and a raw one can forge output lines (``x\\nD /etc/shadow``) or
    send escape sequences to the terminal.  A name made only of printable
    characters, without ``\\`` or ``"``, is returned unchanged, so ordinary
    output stays exactly ``docker diff``'s.  Any other name is put in double
    quotes with C escapes: ``\\n \\t \\r \\a \\b \\v \\f \\" \\\\`` and, for
    every other character that does not print (C0 and C1 controls, DEL,
    format characters such as bidirectional overrides, separators other
    than the space, unassigned code points) and for bytes that are not
    UTF-8 (surrogate-escaped by :func:`os.fsdecode`), each byte of its UTF-8
    encoding as ``\\ooo`` in octal.  Unquoting therefore gives back the
    exact bytes of the name, as with ``git``'s ``core.quotePath=false``.
    """
    if name.isprintable() and "\\" not in name and '"' not in name:
        return name
    out = ['"']
    for char in name:
        escaped = _C_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char.isprintable():
            out.append(char)
        else:
            try:
                raw = char.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate that was never a byte
                raw = char.encode("utf-8", "surrogatepass")
            out.extend(f"\\{byte:03o}" for byte in raw)
    out.append('"')
    return "".join(out)


def refuse_terminal(stream: IO[Any], message: str) -> None:
    """Refuse to exchange tar bytes with a terminal, like ``docker export``."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        raise CommandError(message, EXIT_USAGE)


def fail(exc: BaseException) -> NoReturn:
    """Report a library or OS exception as one line (or re-raise it under LAMINA_DEBUG)."""
    if debug_enabled():
        raise exc
    exit_with_error(describe_error(exc), exit_code_for(exc))


def stdout_binary() -> BinaryIO:
    """The binary standard output (also under click's test runner)."""
    return sys.stdout.buffer


def stdin_binary() -> BinaryIO:
    """The binary standard input (also under click's test runner)."""
    return sys.stdin.buffer
