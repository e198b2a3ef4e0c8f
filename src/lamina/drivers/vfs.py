"""The vfs driver: every layer is a complete directory.

Portable and unprivileged, like Docker's vfs: no mounts, no kernel
features, so it works wherever Python does and is the fallback when nothing
better is available.  A child layer starts as a full copy of its parent,
made by :func:`lamina._fs.copy_tree` (a reflink where the filesystem can,
else an in-kernel copy), keeping modes, owners, xattrs, hardlinks,
nanosecond times and device nodes.

On-disk layout under ``home`` (``<root>/vfs``, created 0o700):

* ``dir/<id>/`` — the root filesystem of layer ``id``;
* ``staging/<id>.<pid>.<random>/`` — a layer being built; it becomes
  visible only through one rename into ``dir/``, so a crash never leaves a
  half-copied layer under its name;
* ``removing/<id>.<pid>.<random>/`` — a layer renamed out of ``dir/`` and
  being deleted, so a crash never leaves a half-deleted layer visible;
* ``state/<id>.pristine`` — the layer still equals its parent (it was never
  handed out by ``get`` nor applied to); holds the parent id;
* ``state/<id>.applying`` — an ``apply_diff`` into the layer is under way
  (it names the applying process, ``<pid>:<start time>``);
* ``state/<id>.parent`` — the parent the layer was created on, for
  :meth:`~lamina.drivers.Driver.parent` (layers without parent have none);
* ``locks/<digest>.lock`` — one ``flock`` per layer (see below).

Atomic ``apply_diff``.  The usual sequence (create, then apply) hits a
pristine layer: the tar is applied in place, and if it fails the layer is
rebuilt from its parent, which is exactly what it held before — no extra
copy on success.  A layer that may hold other changes is copied to
``staging/`` (a reflink where possible), applied there and swapped in with
``renameat2(RENAME_EXCHANGE)`` through :class:`lamina._fs.StagingArea`.
Either way a failed apply leaves the layer as it was, and a ``kill -9``
mid-apply leaves an ``applying`` record (written with fsync) that the next
``apply_diff`` of the layer or ``cleanup`` rolls back (or, if the parent is
gone, the layer is removed); ``get`` refuses such a layer until then.

Concurrency.  ``apply_diff`` holds the layer's lock for its whole length:
a second apply of the same layer, in any process, waits for the first (up
to ``lock_timeout`` seconds, then :class:`~lamina.errors.LockTimeoutError`)
and then applies on top of it, as two ``docker`` pulls of one layer are
serialised by the daemon.  ``remove`` does not wait: a layer being applied
to, held by ``get`` (in any process), by ``lamina mount`` or by a ``diff``
stream raises :class:`~lamina.errors.InUseError`.  ``cleanup`` rolls back
only applies whose recorded process is gone, under the layer's lock.

``cleanup`` sweeps the leftover directories of processes that are gone
and rolls back interrupted applies.  Durability of layer data against power
loss is left to the store's commit point; see :mod:`lamina._fs._atomic`.

All diff operations are the naive ones (compare merged views).  There is no
quota mechanism, so a ``size`` option raises
:class:`~lamina.errors.QuotaNotSupportedError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lamina import archive
from lamina._fs import (
    DEFAULT_LOCK_TIMEOUT,
    Mount,
    StagingArea,
    layer_lock,
    owner_alive,
    owner_token,
    read_only,
    remove_tree,
    retire_dir,
    sweep_atomic_writes,
    unlink_lock,
    write_file_atomic,
)
from lamina._units import ram_in_bytes
from lamina.drivers._base import Driver, StorageOpts, validate_id
from lamina.errors import (
    AlreadyExistsError,
    InUseError,
    InvalidArgumentError,
    LockTimeoutError,
    NotFoundError,
    QuotaNotSupportedError,
    StateError,
)

if TYPE_CHECKING:
    from lamina._fs import CopyStats

__all__ = ["VfsDriver"]

_XATTRS_OPTION = "vfs.xattrs"
#: Seconds cleanup waits for the lock of an apply whose process died (its forked
#: file helpers hold the lock until PR_SET_PDEATHSIG has killed them too).
_ORPHAN_LOCK_WAIT = 10.0
_XATTRS_BEST_EFFORT = "i_want_broken_containers"


def _check_size(value: str) -> None:
    """Reject a malformed size (InvalidArgumentError) before reporting sizes unsupported."""
    ram_in_bytes(value)
    raise QuotaNotSupportedError(
        "vfs has no quota mechanism here: the filesystem does not support, "
        "or has not enabled, quotas"
    )


def copy_tree(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, best_effort_xattrs: bool = False
) -> CopyStats:
    """:func:`lamina._fs.copy_tree`, loaded on first use: a layer without parent is never copied."""
    from lamina._fs import copy_tree as copy

    return copy(src, dst, best_effort_xattrs=best_effort_xattrs)


def _backing_filesystem(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (the one mountinfo reader, in ``_fs``)."""
    from lamina._fs import fs_type  # the mount code loads only when ``status`` asks

    return fs_type(path)


class VfsDriver(Driver):
    """Layers as plain directories; children are copies of their parents."""

    name = "vfs"

    def __init__(self, home: Path, options: Mapping[str, str] | None = None) -> None:
        super().__init__(home, options)
        self.best_effort_xattrs = False
        for key, value in self.options.items():
            if key == _XATTRS_OPTION:
                if value != _XATTRS_BEST_EFFORT:
                    raise InvalidArgumentError(
                        f"do not set the {_XATTRS_OPTION} option unless you are willing "
                        f"to accept broken containers ({_XATTRS_OPTION}={_XATTRS_BEST_EFFORT})"
                    )
                self.best_effort_xattrs = True
            elif key == "size":
                _check_size(value)
            else:
                raise InvalidArgumentError(f"unknown option {key} for vfs")
        self._layers = self.home / "dir"
        self._staging = self.home / "staging"
        self._removing = self.home / "removing"
        self._state = self.home / "state"
        self._locks = self.home / "locks"
        self._area = StagingArea(self._staging)
        #: seconds an apply waits for another process's apply of the same layer
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._last_copy_method = ""
        os.makedirs(self.home, mode=0o700, exist_ok=True)

    def _dir(self, id: str) -> Path:
        return self._layers / validate_id(id)

    # -- storage -------------------------------------------------------------

    def create(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create an image layer; vfs takes no storage options on read-only layers."""
        validate_id(id)
        if storage_opt:
            raise InvalidArgumentError("storage options are not supported for vfs read-only layers")
        self._create(id, parent)

    def create_read_write(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create a container layer; ``size`` is refused because vfs cannot enforce it."""
        validate_id(id)
        for key in storage_opt or {}:
            if key != "size":
                raise InvalidArgumentError(f"storage option {key} is not supported by vfs")
        if storage_opt and "size" in storage_opt:
            _check_size(storage_opt["size"])
        self._create(id, parent)

    def _create(self, id: str, parent: str | None) -> None:
        target = self._dir(id)
        if os.path.lexists(target):
            raise AlreadyExistsError(f"layer {id} already exists")
        parent_dir: Path | None = None
        if parent:
            parent_dir = self._dir(parent)
            if not parent_dir.is_dir():
                raise NotFoundError(f"parent layer {parent} of {id} does not exist")
        os.makedirs(self._layers, mode=0o700, exist_ok=True)
        staging = self._area.new(id)
        try:
            if parent_dir is None:
                os.chmod(staging, 0o755)
            else:
                stats = copy_tree(parent_dir, staging, best_effort_xattrs=self.best_effort_xattrs)
                if stats.method != "none":
                    self._last_copy_method = stats.method
            if parent:
                self._mark(id, "pristine", parent)
                self._mark(id, "parent", parent)
            try:
                self._area.publish(staging, target)
            except FileExistsError:
                raise AlreadyExistsError(f"layer {id} already exists") from None
        except BaseException:
            self._area.discard(staging)
            if not os.path.isdir(target):
                self._unmark(id, "pristine")
                self._unmark(id, "parent")
            raise

    # -- state records ---------------------------------------------------------

    def _record(self, id: str, what: str) -> Path:
        # ids may be 255 bytes long: name records by a digest, keep the id inside
        return self._state / f"{hashlib.sha256(id.encode()).hexdigest()[:32]}.{what}"

    def _mark(self, id: str, what: str, parent: str) -> None:
        import json  # records are rare (a create with a parent, an apply): load on use

        os.makedirs(self._state, mode=0o700, exist_ok=True)
        # the owner lets cleanup tell a live apply from a dead one's leftover
        text = json.dumps({"id": id, "parent": parent, "owner": owner_token()})
        # durable: an ``applying`` record that a power loss forgot would leave a
        # half-applied layer looking whole
        write_file_atomic(self._record(id, what), text.encode(), 0o600)

    def _unmark(self, id: str, what: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record(id, what))

    def _marked(self, id: str, what: str) -> str | None:
        """The parent recorded with the record, or None when there is no record.

        A damaged record is a StateError: ``cleanup`` deals with it.
        """
        path = self._record(id, what)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{path}: unreadable {what} record (run cleanup)") from exc
        import json  # most layers have no record: load on use

        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("id") != id:
                raise ValueError("not this layer's record")
            return str(data["parent"])
        except (ValueError, KeyError):
            raise StateError(f"{path}: damaged {what} record of layer {id} (run cleanup)") from None

    def remove(self, id: str) -> None:
        """Rename the layer out of sight, then delete it; a missing layer is fine.

        A layer held by ``get``, ``lamina mount`` or a ``diff`` stream (in
        any process), or being applied to, raises InUseError and is left
        as it is.
        """
        target = self._dir(id)
        if not os.path.lexists(target):
            self._unmark(id, "pristine")
            return
        holder = self._held_by(id, target)
        if holder:
            raise InUseError(f"layer {id} is in use: {holder}")
        try:
            with layer_lock(self._locks, id, timeout=0):
                self._remove_locked(id)
                unlink_lock(self._locks, id)
        except LockTimeoutError:
            raise InUseError(f"layer {id} is being applied to (in another process)") from None

    def _remove_locked(self, id: str) -> None:
        """Retire and delete the layer and its records; the caller holds the layer's lock."""
        retired = retire_dir(self._dir(id), self._removing, id)
        self._unmark(id, "pristine")
        self._unmark(id, "applying")
        self._unmark(id, "parent")
        if retired is not None:
            remove_tree(retired)

    def parent(self, id: str) -> str | None:
        """The parent recorded at create (``state/<id>.parent``), None for a base layer.

        A layer made before that record existed still has its ``pristine``
        record until it is first used; after that it reports None.
        """
        if not os.path.isdir(self._dir(id)):
            raise NotFoundError(f"layer {id} does not exist")
        return self._marked(id, "parent") or self._marked(id, "pristine") or None

    def exists(self, id: str) -> bool:
        """Whether ``dir/<id>`` exists (an invalid id never exists)."""
        try:
            return os.path.isdir(self._dir(id))
        except InvalidArgumentError:
            return False

    def status(self) -> list[tuple[str, str]]:
        """Backing filesystem, layer count, how xattrs are copied and how data was copied."""
        try:
            with os.scandir(self._layers) as it:
                layers = sum(1 for _ in it)
        except FileNotFoundError:
            layers = 0
        pairs = [
            ("Backing Filesystem", _backing_filesystem(self.home)),
            ("Layers", str(layers)),
            ("Extended file attributes", "best-effort" if self.best_effort_xattrs else "required"),
        ]
        if self._last_copy_method:
            pairs.append(("Copy method", self._last_copy_method))
        return pairs

    def get_metadata(self, id: str) -> dict[str, str]:
        """``{"Dir": <layer directory>}``; a missing layer is NotFoundError."""
        path = self._dir(id)
        if not path.is_dir():
            raise NotFoundError(f"layer {id} does not exist")
        return {"Dir": str(path)}

    def cleanup(self) -> None:
        """Sweep crash leftovers (half-built and half-removed layers), then release views.

        Only leftovers of processes that are gone are swept, and only
        applies whose layer lock is free (their process is gone) are rolled
        back: another process's work in flight is left alone.
        """
        StagingArea(self._removing).sweep()
        self._area.sweep()
        sweep_atomic_writes(self._state)
        self._recover_applies()
        super().cleanup()

    def _recover_applies(self) -> None:
        """Roll back applies that a crash interrupted, and drop stale or damaged records."""
        try:
            names = os.listdir(self._state)
        except FileNotFoundError:
            return
        import json

        for name in names:
            digest, _, what = name.rpartition(".")
            if what not in ("pristine", "applying", "parent"):
                continue  # not one of our records
            try:
                id = str(json.loads((self._state / name).read_bytes())["id"])
                validate_id(id)
            except (OSError, ValueError, KeyError, TypeError, InvalidArgumentError):
                self._damaged_record(digest, what, self._state / name)
                continue
            if not os.path.isdir(self._layers / id):
                if what != "applying" and self._record_owner_alive(id, what):
                    continue  # written by a create still in flight (it marks, then publishes)
                self._unmark(id, what)  # the layer is gone: the record is stale
            elif what == "applying":
                with self._lock:
                    if id in self._in_flight:
                        continue
                if self._apply_owner_alive(id):
                    continue  # another process is applying right now: not a leftover
                try:
                    # its owner is dead; the lock may outlive it by an instant in the
                    # helpers it forked (they die with it): wait for them, briefly
                    with layer_lock(self._locks, id, timeout=_ORPHAN_LOCK_WAIT):
                        parent = self._marked(id, "applying")
                        if parent is not None:
                            self._restore(id, parent)
                except LockTimeoutError:
                    continue  # a new apply took the layer meanwhile

    def _apply_owner_alive(self, id: str) -> bool:
        """Whether the process that wrote the layer's ``applying`` record still runs."""
        return self._record_owner_alive(id, "applying")

    def _record_owner_alive(self, id: str, what: str) -> bool:
        """Whether the process that wrote one of the layer's records still runs."""
        import json

        try:
            owner = json.loads(self._record(id, what).read_bytes()).get("owner")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(owner, str) and owner_alive(owner)

    def _damaged_record(self, digest: str, what: str, path: Path) -> None:
        """A record that cannot be read: drop it, and a layer it may have left half-applied.

        The record names its layer by digest only, so the layer is found by
        hashing the ids in ``dir/`` (only damaged records pay for that).  A
        damaged ``pristine`` record just loses a shortcut; a damaged
        ``applying`` record means an interrupted apply whose parent is
        unknown: the layer cannot be rebuilt, and is better gone than
        half-applied.
        """
        if what == "applying":
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self._layers):
                    if self._record(entry.name, what).name.startswith(digest + "."):
                        try:
                            with layer_lock(self._locks, entry.name, timeout=0):
                                self._remove_locked(entry.name)
                        except LockTimeoutError:
                            return  # being applied to right now: its applier rewrites the record
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- views ------------------------------------------------------------------

    def _mount_spec(self, id: str, mount_label: str) -> Mount:
        path = self._dir(id)
        if not path.is_dir():
            raise StateError(f"{path}: not a directory")
        with self._lock:
            applying = id in self._in_flight
        if applying or self._marked(id, "applying") is not None:
            raise StateError(
                f"layer {id} is being applied to, or an apply was interrupted (run cleanup)"
            )
        # the caller may write into the view from now on (never on a read-only store,
        # whose queries get a view too: there the record stays, as does the tree)
        if not read_only(self.home):
            self._unmark(id, "pristine")
        return Mount(type="direct", source=str(path), target=path)

    # -- diffs --------------------------------------------------------------------

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Extract a layer tar into ``id``, all or nothing; returns the layer size.

        Holds the layer's lock: a concurrent apply of the same layer (any
        process) waits for this one, then applies on top of it.  An apply a
        ``kill -9`` interrupted is rolled back first, so a retry never lands
        on top of half a tar.
        """
        del parent  # the layer already starts as a copy of its parent
        target = self._dir(id)
        if not target.is_dir():
            raise NotFoundError(f"layer {id} does not exist")
        holder = self._held_by(id, target)
        if holder:
            raise InUseError(f"layer {id} is in use ({holder}); cannot apply to it")
        options = archive.ApplyOptions(best_effort_xattrs=self.best_effort_xattrs)
        with self._lock:
            if id in self._in_flight:
                raise InUseError(f"layer {id} is already being applied to")
            self._in_flight.add(id)
        try:
            with layer_lock(self._locks, id, timeout=self.lock_timeout):
                if not target.is_dir():
                    raise NotFoundError(f"layer {id} does not exist")
                interrupted = self._marked(id, "applying")
                if interrupted is not None:  # a killed apply: its lock died with it
                    self._restore(id, interrupted)
                    if not target.is_dir():
                        raise NotFoundError(f"layer {id} was removed: its parent is gone")
                self._area.sweep(id)
                pristine_parent = self._marked(id, "pristine")
                if pristine_parent is not None or not any(os.scandir(target)):
                    return self._apply_in_place(id, target, pristine_parent or "", diff, options)
                return self._apply_to_copy(id, target, diff, options)
        finally:
            with self._lock:
                self._in_flight.discard(id)

    def _apply_in_place(
        self, id: str, target: Path, parent: str, diff: BinaryIO, options: archive.ApplyOptions
    ) -> int:
        """Apply into a layer that equals its parent; on failure rebuild it from the parent."""
        self._mark(id, "applying", parent)
        try:
            size = archive.apply_layer(diff, target, options)
        except BaseException:
            self._restore(id, parent)
            raise
        self._unmark(id, "pristine")
        self._unmark(id, "applying")
        return size

    def _apply_to_copy(
        self, id: str, target: Path, diff: BinaryIO, options: archive.ApplyOptions
    ) -> int:
        """Apply into a copy of the layer and swap it in when complete."""
        with self._area.staged(id) as staging:
            copy_tree(target, staging, best_effort_xattrs=self.best_effort_xattrs)
            size = archive.apply_layer(diff, staging, options)
            self._area.exchange(staging, target)
        return size  # the stage held the old tree and is gone with the block

    def _restore(self, id: str, parent: str) -> None:
        """Put back what the layer held before an interrupted apply: its parent's tree."""
        target = self._dir(id)
        parent_dir = self._layers / parent if parent else None
        if parent_dir is not None and not parent_dir.is_dir():
            self._remove_locked(id)  # cannot rebuild it: better gone than half-applied
            return
        with self._area.staged(id) as staging:
            if parent_dir is None:
                os.chmod(staging, 0o755)
            else:
                copy_tree(parent_dir, staging, best_effort_xattrs=self.best_effort_xattrs)
            self._area.exchange(staging, target)
        if parent:
            self._mark(id, "pristine", parent)
        self._unmark(id, "applying")
