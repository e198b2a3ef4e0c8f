"""Progress for load, save and commit: bars on a terminal, one line per step otherwise.

Everything goes to stderr, so stdout stays the command's result (an archive
on a pipe, an image id).  Three renderers share one interface, chosen once
per command:

* a terminal (stderr is a tty): ``rich`` bars with bytes, speed and time,
  imported only then, so a piped or quiet command never pays for it;
* anything else (a CI log, a file): one plain line per step when it ends,
  with what it moved and how long it took (no carriage-return spam);
* ``-q``: nothing.

The store reports no progress of its own for load, save and commit, so the
steps are the calls the command makes, and the byte counts come from the
streams the command hands the store (:class:`CountingReader` and
:class:`CountingWriter`), which see every byte that passes.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO

import click

__all__ = ["CountingReader", "CountingWriter", "Progress", "Step"]


class Step:
    """One step in progress: the renderer is told the position as bytes pass."""

    __slots__ = ("_update", "done", "note")

    def __init__(self, update: Callable[[int], None]) -> None:
        self._update = update
        self.done = 0
        self.note = ""  # what the step's closing line says after the title

    def advance_to(self, position: int) -> None:
        if position > self.done:
            self.done = position
            self._update(position)


class Progress:
    """The renderer for one command (``mode`` ``bar``, ``lines`` or ``quiet``)."""

    def __init__(self, quiet: bool, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        if quiet:
            self.mode = "quiet"
        else:
            try:
                tty = self._stream.isatty()
            except (AttributeError, ValueError):
                tty = False
            self.mode = "bar" if tty else "lines"

    @contextlib.contextmanager
    def step(self, title: str, total: int | None = None) -> Iterator[Step]:
        """Show ``title`` while the block runs; a failed step prints no closing line."""
        if self.mode == "bar":
            with self._bar(title, total) as step:
                yield step
            return
        step = Step(lambda _position: None)
        start = time.perf_counter()
        yield step
        if self.mode == "lines":
            moved = f", {_size(step.done)}" if step.done else ""
            note = f": {step.note}" if step.note else ""
            seconds = time.perf_counter() - start
            click.echo(f"{title}{note} ({seconds:.2f} s{moved})", file=self._stream)

    @contextlib.contextmanager
    def _bar(self, title: str, total: int | None) -> Iterator[Step]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.table import Column

        console = Console(file=self._stream, stderr=True)
        # narrow enough for an 80-column terminal: a long title is cut, not wrapped
        columns = (
            TextColumn(
                "{task.description}",
                table_column=Column(max_width=32, no_wrap=True, overflow="ellipsis"),
            ),
            BarColumn(bar_width=16),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
        )
        with RichProgress(*columns, console=console, transient=False) as bars:
            task = bars.add_task(title, total=total)
            step = Step(lambda position: bars.update(task, completed=position))
            yield step
            final = step.done if total is None else max(total, step.done)
            description = f"{title}: {step.note}" if step.note else title
            bars.update(task, completed=final, total=final or 1, description=description)


def _size(count: int) -> str:
    from lamina.cli._format import human_size

    return human_size(count)


class CountingReader(io.RawIOBase):
    """A binary reader that tells a step how far into its source it is.

    It forwards ``seek`` and ``tell`` when the source can seek, so a store
    that reads an archive out of order sees the file it would see, and the
    position, not the bytes read, drives the bar.
    """

    def __init__(self, raw: BinaryIO, step: Step) -> None:
        super().__init__()
        self._raw = raw
        self._step = step
        self._position = 0
        try:
            self._seekable = raw.seekable()
        except (AttributeError, ValueError, OSError):
            self._seekable = False
        if self._seekable:
            self._position = raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        count = len(data)
        view[:count] = data
        self._position += count
        self._step.advance_to(self._position)
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        self._position = self._raw.seek(offset, whence)
        return self._position

    def tell(self) -> int:
        return self._position

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")  # reads must pass through readinto


class CountingWriter(io.RawIOBase):
    """A binary writer (a pipe, a file) that tells a step how many bytes it took."""

    def __init__(self, raw: BinaryIO, step: Step) -> None:
        super().__init__()
        self._raw = raw
        self._step = step
        self._count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self._count += len(view)
        self._step.advance_to(self._count)
        return len(view)

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")  # writes must pass through write

    def tell(self) -> int:
        return self._count
