"""The graph-driver contract (Docker's ``graphdriver.Driver``) as a base class.

Lifecycle vocabulary:

* a **layer** is created empty with ``create(id, parent)`` (read-only image
  layers) or ``create_read_write(id, parent)`` (container layers) and starts
  out showing exactly its parent's content;
* ``apply_diff(id, parent, tar)`` fills an image layer from a layer tar;
* ``get(id)`` returns the root of the layer's merged view and counts a user;
  ``put(id)`` releases one; the view goes away when the count reaches zero;
* ``diff``/``changes``/``diff_size`` describe what a layer changed relative
  to its parent.

Drivers implement the storage methods and :meth:`Driver._mount_spec`; the
counting lives once, in :class:`lamina._fs.Mounter`.  Holds are visible
across processes: a direct view's first ``get`` in a process is recorded in
the hold store (``home/.run``, :class:`lamina._fs.RefStore`), as are
``mount`` holds and open ``diff`` streams (which ``get`` the layer), so that
``remove`` in any process refuses a held layer with
:class:`~lamina.errors.InUseError` rather than pulling it out from under its
user (a ``diff`` stream is never silently truncated).  Drivers without a
faster native path inherit ``diff``, ``changes``, ``apply_diff`` and
``diff_size`` from :mod:`lamina.drivers._naive`, which compares merged views
with the archive engine.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from lamina._fs import HoldingMounter, Mounter
from lamina.errors import InUseError, InvalidArgumentError, NotFoundError, NotSupportedError

if TYPE_CHECKING:
    from lamina._change import Change
    from lamina._fs import Mount, RefStore

__all__ = ["Driver", "FileGetter", "StorageOpts", "stream_hold_key", "validate_id"]

StorageOpts = Mapping[str, str]


class FileGetter(Protocol):
    """Serves the bytes of a layer's files by tar entry name (tar-split's FileGetter)."""

    def get(self, name: str) -> BinaryIO:
        """Open the file that the tar entry ``name`` holds."""
        ...

    def close(self) -> None:
        """Release whatever the getter holds (a ``get`` of the layer, for instance)."""
        ...


def stream_hold_key(layer_dir: str | os.PathLike[str]) -> str:
    """The hold-store key under which open ``diff`` streams of a layer are counted.

    One key for every driver whose streams read a layer without a view
    (overlay's native diff, windowsfilter's replay), so ``remove`` in any
    process refuses the layer while a stream is open.  Not a path, so
    reconciling never mistakes it for a mount.
    """
    return f"diff-stream:{os.fspath(layer_dir)}"


def validate_id(layer_id: str) -> str:
    """Refuse ids that could name something other than one layer directory."""
    if (
        not layer_id
        or layer_id in (".", "..")
        or "/" in layer_id
        or "\x00" in layer_id
        or len(layer_id) > 255
    ):
        raise InvalidArgumentError(f"invalid layer id {layer_id!r}")
    return layer_id


class Driver(abc.ABC):
    """Base class of every lamina driver; ``home`` is ``<root>/<name>``."""

    name: str = ""

    def __init__(self, home: Path, options: Mapping[str, str] | None = None) -> None:
        self.home = Path(home)
        self.options: dict[str, str] = dict(options or {})
        self._mounter = self._make_mounter()

    def _make_mounter(self) -> Mounter:
        """The mounter for this driver; drivers that mount override this.

        Direct views are counted across processes in the hold store, so
        that ``remove`` in another process refuses a layer this one holds.
        """
        return HoldingMounter(self._hold_store)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} home={str(self.home)!r}>"

    # -- storage ---------------------------------------------------------

    @abc.abstractmethod
    def create(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create an empty read-only (image) layer on top of ``parent``."""

    @abc.abstractmethod
    def create_read_write(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create a writable (container) layer; the only place ``size`` is accepted."""

    @abc.abstractmethod
    def remove(self, id: str) -> None:
        """Delete the layer; removing a missing layer is not an error."""

    @abc.abstractmethod
    def exists(self, id: str) -> bool:
        """Whether the layer exists."""

    @abc.abstractmethod
    def status(self) -> list[tuple[str, str]]:
        """Key/value diagnostics, as ``docker info`` shows them."""

    @abc.abstractmethod
    def get_metadata(self, id: str) -> dict[str, str]:
        """Driver-specific facts about a layer, as ``docker inspect`` shows them."""

    def parent(self, id: str) -> str | None:
        """The parent ``id`` was created on, or None for a layer without one.

        ``diff``, ``changes`` and ``diff_size`` take the layer to compare with
        as an argument, and callers that mean "the layer's own parent" (the
        command line's default) ask here instead of remembering it.  The
        answer is the driver's own record, read without side effects; a
        missing layer is :class:`~lamina.errors.NotFoundError`.  Drivers that
        keep no record raise :class:`~lamina.errors.NotSupportedError` rather
        than guess, since guessing "none" turns a layer's changes into its
        whole tree.
        """
        if not self.exists(id):
            raise NotFoundError(f"layer {id} does not exist")
        raise NotSupportedError(f"the {self.name or type(self).__name__} driver records no parents")

    def cleanup(self) -> None:
        """Release every view this process holds; drivers add crash-leftover sweeps."""
        self._mounter.release_all()

    # -- views -------------------------------------------------------------

    @abc.abstractmethod
    def _mount_spec(self, id: str, mount_label: str) -> Mount:
        """Describe the merged view of ``id``; called on the first ``get`` only."""

    def get(self, id: str, mount_label: str = "") -> Path:
        """Root of the layer's merged view; every ``get`` needs a ``put``."""
        validate_id(id)
        if not self.exists(id):
            raise NotFoundError(f"layer {id} does not exist")
        return self._mounter.acquire(id, lambda: self._mount_spec(id, mount_label))

    def put(self, id: str) -> None:
        """Release one ``get``; the view goes away at zero.  Too many puts raise InUseError."""
        self._mounter.release(id)

    # -- views that outlive the process (``lamina mount`` / ``lamina unmount``) ---

    def _hold_store(self) -> RefStore:
        """Cross-process hold counts; drivers that already keep one return theirs."""
        store: RefStore | None = getattr(self, "_detached_holds", None)
        if store is None:
            from lamina._fs import RefStore  # only mount/unmount count holds across processes

            store = self._detached_holds = RefStore(self.home / ".run")
        return store

    def _held_by(self, id: str, *targets: str | os.PathLike[str]) -> str | None:
        """Who holds a view of ``id`` (this process, or another through the hold store), or None.

        ``targets`` are the view roots whose holds count.  Without a hold
        table (``.run/mounts.json``) nothing is held anywhere and the store
        is not even loaded: ``remove`` of an unheld vfs layer stays cheap.
        """
        if self._mounter.count(id):
            return "this process holds its view (get without put)"
        if getattr(self, "_detached_holds", None) is None and not os.path.exists(
            self.home / ".run" / "mounts.json"
        ):
            return None
        store = self._hold_store()
        for target in targets:
            holders = store.holders(os.fspath(target))
            if holders:
                return f"held by {', '.join(sorted(holders))} (get, mount or a diff stream)"
        return None

    def _do_mount(self, mount: Mount) -> None:
        """Make a non-direct view appear; drivers that mount override this."""
        if not mount.is_direct:
            raise NotSupportedError(f"{self.name} cannot mount {mount.type} views")

    def _do_unmount(self, mount: Mount) -> None:
        """Undo :meth:`_do_mount`; drivers that mount override this."""
        return None  # a direct view has nothing to undo

    def mount(self, id: str, mount_label: str = "") -> Path:
        """Like ``get``, but the hold outlives this process; release it with ``unmount``.

        The hold is counted in the driver's runtime directory, so a later
        process (a second ``lamina`` command) can release it.
        """
        validate_id(id)
        if not self.exists(id):
            raise NotFoundError(f"layer {id} does not exist")
        spec = self._mount_spec(id, mount_label)

        def make() -> None:
            # called when the target is not a kernel mount: a direct view needs nothing,
            # and a view materialised as a directory by an earlier mount is still there
            if spec.is_direct or (os.path.isdir(spec.target) and any(os.scandir(spec.target))):
                return
            self._do_mount(spec)

        from lamina._fs import DETACHED

        self._hold_store().acquire(
            str(spec.target), make, lambda: self._do_unmount(spec), holder=DETACHED
        )
        return spec.target

    def unmount(self, id: str) -> None:
        """Release one ``mount`` (from any process); the view goes away at the last one."""
        validate_id(id)
        if not self.exists(id):
            raise NotFoundError(f"layer {id} does not exist")
        spec = self._mount_spec(id, "")
        from lamina._fs import DETACHED

        left = self._hold_store().release(
            str(spec.target), lambda: self._do_unmount(spec), DETACHED
        )
        if left < 0:
            raise InUseError(f"unmount of {id!r} without a matching mount")

    @contextlib.contextmanager
    def mounted(self, id: str, mount_label: str = "") -> Iterator[Path]:
        """``get`` for the length of a ``with`` block."""
        path = self.get(id, mount_label)
        try:
            yield path
        finally:
            self.put(id)

    # -- diffs (naive by default) -------------------------------------------

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        """Uncompressed tar of ``id``'s changes relative to ``parent`` (all of it if None)."""
        from lamina.drivers import _naive

        return _naive.diff(self, id, parent)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        """Paths added, modified or deleted in ``id`` relative to ``parent``."""
        from lamina.drivers import _naive

        return _naive.changes(self, id, parent)

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Extract a layer tar (plain, gzip or zstd) into ``id``; returns the layer size."""
        from lamina.drivers import _naive

        return _naive.apply_diff(self, id, parent, diff)

    def diff_size(self, id: str, parent: str | None = None) -> int:
        """Bytes of ``id``'s changes relative to ``parent``."""
        from lamina.drivers import _naive

        return _naive.diff_size(self, id, parent)

    def diff_getter(self, id: str) -> FileGetter:
        """Serves file bytes by tar entry name, for reassembling the layer's tar."""
        from lamina.drivers import _naive

        return _naive.PathFileGetter(self, id)
