"""Diff operations derived from ``get``/``put`` plus the archive engine.

This is Docker's ``NaiveDiffDriver``: for drivers with no native way to
list a layer's own changes, compare the layer's merged view with its
parent's.  Our change detection is correct within one timestamp tick, so
unlike Docker, ``diff`` does not sleep to the next second on close.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO, cast

from lamina import archive
from lamina._change import Change
from lamina.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from lamina.drivers._base import Driver

__all__ = ["PathFileGetter", "apply_diff", "changes", "diff", "diff_size"]


class _ReleasingStream(io.RawIOBase):
    """A readable stream that ``put``s a layer when closed."""

    def __init__(self, inner: BinaryIO, driver: Driver, id: str) -> None:
        super().__init__()
        self._inner = inner
        self._driver = driver
        self._id = id
        self._released = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                if not self._released:
                    self._released = True
                    self._driver.put(self._id)
        super().close()


def diff(driver: Driver, id: str, parent: str | None) -> BinaryIO:
    layer_fs = driver.get(id)
    try:
        if not parent:
            stream = archive.export_tree(layer_fs)
        else:
            with driver.mounted(parent) as parent_fs:
                found = archive.changes(layer_fs, parent_fs)
            stream = archive.export_changes(layer_fs, found)
    except BaseException:
        driver.put(id)
        raise
    return cast(BinaryIO, io.BufferedReader(_ReleasingStream(stream, driver, id), 1 << 20))


def changes(driver: Driver, id: str, parent: str | None) -> list[Change]:
    with driver.mounted(id) as layer_fs:
        if not parent:
            return archive.changes(layer_fs, None)
        with driver.mounted(parent) as parent_fs:
            return archive.changes(layer_fs, parent_fs)


def apply_diff(driver: Driver, id: str, parent: str | None, diff: BinaryIO) -> int:
    del parent  # the layer already starts from its parent's content
    with driver.mounted(id) as layer_fs:
        return archive.apply_layer(diff, layer_fs)


def diff_size(driver: Driver, id: str, parent: str | None) -> int:
    found = changes(driver, id, parent)
    with driver.mounted(id) as layer_fs:
        return archive.changes_size(layer_fs, found)


class PathFileGetter:
    """Opens files of a layer's merged view by tar entry name; ``close`` puts the layer."""

    def __init__(self, driver: Driver, id: str) -> None:
        self._driver = driver
        self._id = id
        self._root = driver.get(id)
        self._closed = False

    def get(self, name: str) -> BinaryIO:
        """The regular file at ``name``, reached beneath the view without following symlinks.

        A name the container has turned into a symlink, a device, a FIFO or
        a directory (or that has one on the way) is not served.
        """
        rel = archive.clean_entry_name(name)
        if rel is None:
            raise InvalidArgumentError(f"invalid entry name {name!r}")
        try:
            return archive.open_beneath(self._root, rel)
        except NotFoundError as exc:
            raise NotFoundError(
                f"{name}: not a regular file in layer {self._id}", errno=exc.errno
            ) from exc
        except OSError as exc:
            raise NotFoundError(
                f"{name}: cannot open in layer {self._id}", errno=exc.errno
            ) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._driver.put(self._id)
