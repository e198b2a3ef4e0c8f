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
  being deleted, so a crash never leaves a half-deleted layer visible.

``cleanup`` sweeps both leftover directories (staging entries only when the
process that made them is gone).  Durability against power loss is left to
the store's commit point; see :mod:`lamina._fs._atomic`.

All diff operations are the naive ones (compare merged views).  There is no
quota mechanism, so a ``size`` option raises
:class:`~lamina.errors.QuotaNotSupportedError`.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from lamina import archive
from lamina._fs import (
    Mount,
    copy_tree,
    made_by_other_live_process,
    make_staging_dir,
    remove_tree,
    rename_noreplace,
    retire_dir,
)
from lamina._units import ram_in_bytes
from lamina.drivers._base import Driver, StorageOpts, validate_id
from lamina.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    QuotaNotSupportedError,
    StateError,
)

__all__ = ["VfsDriver"]

_XATTRS_OPTION = "vfs.xattrs"
_XATTRS_BEST_EFFORT = "i_want_broken_containers"


def _check_size(value: str) -> None:
    """Reject a malformed size (InvalidArgumentError) before reporting sizes unsupported."""
    ram_in_bytes(value)
    raise QuotaNotSupportedError(
        "vfs has no quota mechanism here: the filesystem does not support, "
        "or has not enabled, quotas"
    )


def _backing_filesystem(path: Path) -> str:
    """Filesystem type of the mount holding ``path``, from /proc/self/mountinfo."""
    try:
        target = os.path.realpath(path)
        best, fstype = "", "unknown"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                mount_point = fields[4].encode().decode("unicode_escape")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, fields[sep + 1]
        return fstype
    except (OSError, ValueError, IndexError):
        return "unknown"


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
        staging = make_staging_dir(self._staging, id)
        with self._lock:
            self._in_flight.add(staging.name)
        try:
            if parent_dir is None:
                os.chmod(staging, 0o755)
            else:
                stats = copy_tree(parent_dir, staging, best_effort_xattrs=self.best_effort_xattrs)
                if stats.method != "none":
                    self._last_copy_method = stats.method
            try:
                rename_noreplace(staging, target)
            except FileExistsError:
                raise AlreadyExistsError(f"layer {id} already exists") from None
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise AlreadyExistsError(f"layer {id} already exists") from None
                raise
        except BaseException:
            remove_tree(staging)
            raise
        finally:
            with self._lock:
                self._in_flight.discard(staging.name)

    def remove(self, id: str) -> None:
        """Rename the layer out of sight, then delete it; a missing layer is fine."""
        retired = retire_dir(self._dir(id), self._removing, id)
        if retired is not None:
            remove_tree(retired)

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
        """Sweep crash leftovers (half-built and half-removed layers), then release views."""
        with self._lock:
            in_flight = set(self._in_flight)
        for area in (self._removing, self._staging):
            try:
                names = os.listdir(area)
            except FileNotFoundError:
                continue
            for name in names:
                if name in in_flight or made_by_other_live_process(name):
                    continue  # being built or deleted right now
                remove_tree(area / name)
        super().cleanup()

    # -- views ------------------------------------------------------------------

    def _mount_spec(self, id: str, mount_label: str) -> Mount:
        path = self._dir(id)
        if not path.is_dir():
            raise StateError(f"{path}: not a directory")
        return Mount(type="direct", source=str(path), target=path)

    # -- diffs --------------------------------------------------------------------

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Extract a layer tar into ``id`` with vfs's xattr policy; returns the layer size."""
        del parent  # the layer already starts as a copy of its parent
        options = archive.ApplyOptions(best_effort_xattrs=self.best_effort_xattrs)
        with self.mounted(id) as root:
            return archive.apply_layer(diff, root, options)
