"""The windowsfilter driver: Docker's Windows graph driver, on Linux.

Behaviour follows the seed (``reference/seed/windows.go``):

* ``create``/``create_read_write`` write ``layerchain.json`` — the parent's
  folder then the parent's own chain, nearest first, ``null`` for none —
  and leave out a parent without a ``Files`` folder (a sandbox, like
  Docker's ``-init`` layer);
* ``apply_diff`` imports a Windows layer tar in a helper process
  (``LAMINA_WINDOWSFILTER_NOREEXEC=1``: inline) into a staging folder that
  is swapped into place only when complete; the chain comes from the
  ``parent`` argument, as in the seed; the size is the sum of the sizes of
  the regular (main-stream) entries;
* ``remove`` renames ``<id>`` to ``<id>-removing`` before deleting it, and
  ``cleanup`` sweeps such leftovers (and half-built imports);
* ids go through ``resolveID``: a ``layerID`` file (any case) in the layer
  folder names the real layer;
* ``diff_getter`` serves ``bcd*.bak`` for the four UtilityVM BCD names and
  the layer folder's file for any other tar entry name, streams included;
* ``get`` returns the merged ``Files`` tree of the chain: for an image
  layer a read-only overlay mount of the chain's ``Files`` folders when
  running as root with kernel overlayfs and the overlay can show the
  merge exactly (see :mod:`._overlay`), else a materialised directory of
  hard links into the layers (read-only by contract); for a sandbox its
  own writable tree.  The driver option ``windowsfilter.view`` picks
  ``auto`` (the default), ``overlay`` (refuse a host without it) or
  ``materialise``;
* a ``parent`` of None for ``diff``/``changes``/``diff_size`` means the
  layer's own parent, as in the seed, which ignores the argument.

Where Windows needs what Linux lacks, the choices are:

* sandboxes are full copies of their parent's merged tree (vfs-style),
  kept in a loop-mounted sparse ext4 image of the layer's size when a
  ``size`` is given or the driver option ``windowsfilter.sandbox=loop`` is
  set (needs root), else in a plain directory with the size recorded but
  not enforced (``windowsfilter.sandbox=dir``);
* backing filesystems that fold case, lack hard links or are read-only
  are refused with IncompatibleFilesystemError, as the seed refuses ReFS.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import lamina
from lamina import archive
from lamina._change import Change, ChangeKind
from lamina._fs import (
    DEFAULT_LOCK_TIMEOUT,
    DETACHED,
    Mount,
    Mounter,
    RefStore,
    SharedMounter,
    create_image,
    exchange_dirs,
    fs_type,
    grow_image,
    layer_lock,
    loop_supported,
    made_by_other_live_process,
    make_staging_dir,
    mount_image,
    mount_spec,
    mounts_below,
    read_only,
    remove_tree,
    rename_noreplace,
    retire_dir,
    unmount_below,
    unmount_image,
    write_file_atomic,
)
from lamina._units import ram_in_bytes
from lamina.archive._tarsplit import assemble, read_records
from lamina.archive.windows import MUTATED_FILES
from lamina.drivers._base import Driver, FileGetter, StorageOpts, stream_hold_key, validate_id
from lamina.drivers.windowsfilter import _layout
from lamina.drivers.windowsfilter._confine import PARENT_PID_ENV
from lamina.drivers.windowsfilter._export import PipeReader, generate_diff
from lamina.drivers.windowsfilter._layout import LayerMeta
from lamina.drivers.windowsfilter._merge import (
    Node,
    ViewItem,
    changes_between,
    materialise,
    merge_chain,
    stream_source,
    view_of_index,
    view_of_tree,
)
from lamina.drivers.windowsfilter._overlay import (
    ensure_plans,
    overlay_mount,
    sweep_plan_leftovers,
)
from lamina.errors import (
    AlreadyExistsError,
    ArchiveError,
    ArchiveTooLargeError,
    IncompatibleFilesystemError,
    InUseError,
    InvalidArchiveError,
    InvalidArgumentError,
    LaminaError,
    NotFoundError,
    PrerequisitesError,
    QuotaExceededError,
    QuotaNotSupportedError,
    StateError,
    UnsafeArchiveError,
)

__all__ = ["DEFAULT_SANDBOX_SIZE", "WindowsFilterDriver"]

#: The seed's default sandbox size, 127 GB in Docker's (binary) units.
DEFAULT_SANDBOX_SIZE = 127 * 1024**3
NOREEXEC_ENV = "LAMINA_WINDOWSFILTER_NOREEXEC"
_SANDBOX_OPTION = "windowsfilter.sandbox"
_VIEW_OPTION = "windowsfilter.view"
_VIEW_MODES = ("auto", "overlay", "materialise")
_STAGING = ".lamina-staging"
_MATERIALISED = "windowsfilter-view"
_REMOVING = "-removing"
#: In ``.lamina/`` of a folder being removed: the name it is renamed to.
_REMOVAL_RECORD = "removing"
_RUN = ".run"
_LOCKS = "locks"  # per-layer apply locks, inside the runtime directory
#: A sandbox kept in a plain directory: nothing to mount, but its holds are counted.
_SANDBOX_DIR_VIEW = "windowsfilter-sandbox-dir"
#: Filesystems that cannot hold layer folders: they fold case (two Windows
#: names differing in case are one file, but Linux tools see both), cannot
#: hard-link (cross-layer links, views) or are read-only.
UNSUPPORTED_FILESYSTEMS = frozenset(
    {
        "vfat",
        "msdos",
        "exfat",
        "ntfs",
        "ntfs3",
        "fuseblk",
        "cifs",
        "smb3",
        "smbfs",
        "iso9660",
        "squashfs",
        "udf",
        "erofs",
        "hfsplus",
    }
)
_ERRORS: dict[str, type[LaminaError]] = {
    cls.__name__: cls
    for cls in (
        InvalidArchiveError,
        UnsafeArchiveError,
        ArchiveError,
        StateError,
        InvalidArgumentError,
        NotFoundError,
        LaminaError,
        ArchiveTooLargeError,
    )
}


class _Getter:
    """Serves a layer's bodies by tar entry name (the seed's fileGetCloser)."""

    def __init__(
        self,
        layer_dir: Path,
        meta: LayerMeta,
        files_root: Path | None,
        release: tuple[Driver, str] | None,
    ) -> None:
        self._dir = layer_dir
        self._streams = {
            str(e["name"]): stream_source(layer_dir, e)
            for e in meta.entries
            if e["kind"] == "stream"
        }
        self._files_root = files_root
        self._release = release

    def get(self, name: str) -> BinaryIO:
        if name in MUTATED_FILES:
            return open(self._dir / MUTATED_FILES[name], "rb")
        stream = self._streams.get(name)
        if stream is not None:
            return open(stream, "rb")
        rel = archive.clean_entry_name(name)
        if not rel or rel.split("/")[0] not in ("Files", "Hives", "UtilityVM"):
            raise NotFoundError(f"{name}: not a Windows layer entry name")
        root = self._dir
        if self._files_root is not None and rel.startswith("Files/"):
            root, rel = self._files_root, rel[len("Files/") :]
        try:
            return archive.open_beneath(root, rel)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"{name}: not in layer {self._dir.name}") from exc

    def close(self) -> None:
        if self._release is not None:
            driver, id = self._release
            self._release = None
            driver.put(id)


class WindowsFilterDriver(Driver):
    """Windows image layers in the seed's folder layout, served on Linux."""

    name = "windowsfilter"

    def __init__(self, home: Path, options: Mapping[str, str] | None = None) -> None:
        home = Path(home)
        opts = dict(options or {})
        self.sandbox_mode = opts.pop(_SANDBOX_OPTION, "auto")
        if self.sandbox_mode not in ("auto", "dir", "loop"):
            raise InvalidArgumentError(f"{_SANDBOX_OPTION} must be auto, dir or loop")
        self.view_mode = opts.pop(_VIEW_OPTION, "auto")
        if self.view_mode not in _VIEW_MODES:
            raise InvalidArgumentError(f"{_VIEW_OPTION} must be one of {', '.join(_VIEW_MODES)}")
        if opts:
            raise InvalidArgumentError(f"unknown option {sorted(opts)[0]} for windowsfilter")
        probe = home
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        self.backing_fs = fs_type(probe)
        if self.backing_fs in UNSUPPORTED_FILESYSTEMS:
            raise IncompatibleFilesystemError(
                f"{home} is on a {self.backing_fs} filesystem - "
                f"{self.backing_fs} volumes are not supported"
            )
        #: Why image layer views are not overlays ("" while they may be).
        self._overlay_off = f"{_VIEW_OPTION}=materialise"
        if self.view_mode != "materialise":
            self._overlay_off = _overlay_unavailable()
            if self._overlay_off and self.view_mode == "overlay":
                raise PrerequisitesError(f"{_VIEW_OPTION}=overlay: {self._overlay_off}")
        if not read_only(probe):  # a read-only store is opened as it is, for queries
            os.makedirs(home, mode=0o700, exist_ok=True)
            os.chmod(home, 0o700)
        super().__init__(home, options)
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        #: seconds an apply waits for another process's apply of the same layer
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT

    def _make_mounter(self) -> Mounter:
        # Holds are counted across processes in one RefStore (as the overlay
        # driver counts them): a view another process reads is never
        # unmounted or rebuilt by this one, and ``lamina mount`` holds
        # (``_hold_store``) are counted in the same table.
        self._store = RefStore(self.home / _RUN)
        return _ViewMounter(self._store, self._do_mount, self._do_unmount)

    def _hold_store(self) -> RefStore:
        return self._store

    def _view_target(self, rid: str) -> Path:
        """Where the layer's view appears (what the hold store counts)."""
        layer = self._dir(rid)
        if _layout.read_meta(layer).kind == _layout.KIND_SANDBOX:
            return layer / _layout.SANDBOX_DIR
        return layer / _layout.LAMINA_DIR / _layout.VIEW

    def _held_elsewhere(self, rid: str) -> bool:
        """Whether any live process (this one included) holds a view of the layer.

        Asks the hold store only: callers check this process's mounter first,
        outside the store lock (the mounter's lock is always taken first).
        """
        stream = stream_hold_key(self._dir(rid))
        try:
            target = self._view_target(rid)
        except LaminaError:  # no metadata: no view, but a stream may still read it
            return bool(self._store.holders(stream))
        return self._store.first_held([str(target), stream]) is not None

    def _child_of(self, rid: str) -> str | None:
        """A layer whose chain (``layerchain.json``) stands on ``rid``, or None.

        Called under the store lock by ``remove``; a damaged chain is
        skipped (it cannot be followed to ``rid`` by any view either).
        """
        layer = os.fspath(self._dir(rid))
        try:
            entries = list(os.scandir(self.home))
        except FileNotFoundError:
            return None
        for entry in entries:
            if entry.name == rid or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                chain = _layout.read_layer_chain(Path(entry.path))
            except (LaminaError, OSError):
                continue
            if layer in chain:
                return entry.name
        return None

    # -- paths and ids ---------------------------------------------------------

    def _dir(self, id: str) -> Path:
        return self.home / os.path.basename(id)

    def _resolve(self, id: str) -> str:
        validate_id(id)
        found = _layout.find_layer_id_file(self._dir(id))
        if found is None:
            return id
        return validate_id(found.read_text(encoding="utf-8", errors="surrogateescape"))

    def _meta(self, rid: str) -> LayerMeta:
        path = self._dir(rid)
        if not path.is_dir():
            raise NotFoundError(f"layer {rid} does not exist")
        return _layout.read_meta(path)

    def _chain_for_parent(self, parent: str | None, *, need_files: bool) -> list[str]:
        if not parent:
            return []
        rpid = self._resolve(parent)
        parent_dir = self._dir(rpid)
        if not parent_dir.is_dir():
            raise NotFoundError(f"Cannot create layer with missing parent {parent}")
        chain = _layout.read_layer_chain(parent_dir)
        if need_files and not (parent_dir / "Files").is_dir():
            return chain
        return [str(parent_dir), *chain]

    # -- storage ---------------------------------------------------------------

    def create(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create an empty image layer (filled later by ``apply_diff``)."""
        validate_id(id)
        if storage_opt:
            raise InvalidArgumentError("storage options are only accepted for read-write layers")
        chain = self._chain_for_parent(parent, need_files=True)
        self._publish(id, LayerMeta(parent=self._parent_id(parent)), chain)

    def parent(self, id: str) -> str | None:
        """The (resolved) parent id recorded in the layer's metadata at create."""
        return self._meta(self._resolve(id)).parent

    def _parent_id(self, parent: str | None) -> str | None:
        return self._resolve(parent) if parent else None

    def _publish(self, id: str, meta: LayerMeta, chain: list[str], sandbox_size: int = 0) -> None:
        target = self._dir(id)
        if os.path.lexists(target):
            raise AlreadyExistsError(f"layer {id} already exists")
        staging = make_staging_dir(self.home / _STAGING, id)
        with self._lock:
            self._in_flight.add(staging.name)
        try:
            os.chmod(staging, 0o755)
            if meta.kind == _layout.KIND_IMAGE:
                os.mkdir(staging / "Files", 0o755)
            else:
                self._build_sandbox(staging, meta, chain)
            _layout.write_meta(staging, meta)
            _layout.write_layer_chain(staging, chain)
            try:
                rename_noreplace(staging, target)
            except (FileExistsError, OSError) as exc:
                if isinstance(exc, FileExistsError) or exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise AlreadyExistsError(f"layer {id} already exists") from None
                raise
        except BaseException:
            if os.path.ismount(staging / _layout.SANDBOX_DIR):
                unmount_image(staging / _layout.SANDBOX_DIR)
            remove_tree(staging)
            raise
        finally:
            with self._lock:
                self._in_flight.discard(staging.name)

    def create_read_write(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create a sandbox layer; ``size`` (Docker units, default 127 GB) bounds it."""
        validate_id(id)
        size = DEFAULT_SANDBOX_SIZE
        explicit = False
        for key, value in (storage_opt or {}).items():
            if key.lower() != "size":
                raise InvalidArgumentError(
                    f"storage option {key} is not supported by windowsfilter"
                )
            size = ram_in_bytes(value)
            explicit = True
        backing = "dir"
        if self.sandbox_mode == "loop" or (explicit and self.sandbox_mode == "auto"):
            if not loop_supported():
                raise QuotaNotSupportedError(
                    "windowsfilter enforces a sandbox size with a loop-mounted image, which needs "
                    "root, /dev/loop-control and mkfs.ext4"
                )
            backing = "loop"
        elif explicit:
            raise QuotaNotSupportedError("windowsfilter.sandbox=dir cannot enforce a size")
        chain = self._chain_for_parent(parent, need_files=True)
        meta = LayerMeta(
            kind=_layout.KIND_SANDBOX,
            parent=self._parent_id(parent),
            sandbox_size=size,
            sandbox_backing=backing,
        )
        self._publish(id, meta, chain)

    def _chain_layers(self, chain: list[str]) -> list[tuple[Path, LayerMeta]]:
        """(folder, metadata) of the chain's layers, oldest first."""
        layers = []
        for path in reversed(chain):
            folder = Path(path)
            meta = _layout.read_meta(folder)
            if meta.kind == _layout.KIND_IMAGE:
                layers.append((folder, meta))
        return layers

    def _build_sandbox(self, staging: Path, meta: LayerMeta, chain: list[str]) -> None:
        box = staging / _layout.SANDBOX_DIR
        os.mkdir(box, 0o755)
        index = merge_chain(self._chain_layers(chain))
        if meta.sandbox_backing == "loop":
            image = staging / _layout.SANDBOX_IMAGE
            create_image(image, meta.sandbox_size)
            mount_image(image, box)
        try:
            os.mkdir(box / "Files", 0o755)
            try:
                materialise(index, box / "Files", copy=True)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise QuotaExceededError(
                        f"the parent's files do not fit in a sandbox of {meta.sandbox_size} bytes",
                        errno=exc.errno,
                    ) from exc
                raise
        finally:
            if meta.sandbox_backing == "loop":
                unmount_image(box)

    def expand_sandbox_size(self, id: str, size: str | int) -> None:
        """Grow a sandbox to ``size`` (the seed's ``ExpandSandboxSize``); never shrinks."""
        rid = self._resolve(id)
        meta = self._meta(rid)
        if meta.kind != _layout.KIND_SANDBOX:
            raise InvalidArgumentError(f"layer {id} is not a read-write layer")
        new = ram_in_bytes(size) if isinstance(size, str) else int(size)
        if new <= meta.sandbox_size:
            return
        if meta.sandbox_backing == "loop":
            if self._mounter.count(rid):
                raise InUseError(f"layer {id} is in use; put it before growing it")
            box = self._dir(rid) / _layout.SANDBOX_DIR
            with self._store.locked():  # no get may mount it while the tools work
                if self._held_elsewhere(rid):
                    raise InUseError(f"layer {id} is in use; put it before growing it")
                try:
                    # a dead holder's leaked mount: e2fsck and resize2fs need it unmounted
                    unmount_image(box, lazy=False)
                    grow_image(self._dir(rid) / _layout.SANDBOX_IMAGE, new)
                except OSError as exc:
                    raise StateError(
                        f"cannot grow the sandbox of layer {id}: {exc.strerror or exc}",
                        errno=exc.errno,
                    ) from exc
        meta.sandbox_size = new
        _layout.write_meta(self._dir(rid), meta)

    def remove(self, id: str) -> None:
        """Mark, rename aside, then delete; a missing layer is fine.

        The folder is renamed to the seed's ``<id>-removing`` after a record
        naming that target is written into its ``.lamina/`` (see
        :func:`_is_removal`): ``cleanup`` finishes only removals it has a
        record of, so a real layer whose id happens to end in ``-removing``
        is never mistaken for one.  When that name is taken by such a layer
        (or is longer than a file name may be), the folder goes into the
        staging area instead, under a name recording this process.
        """
        rid = self._resolve(id)
        if self._mounter.count(rid):
            raise InUseError(f"layer {id} is in use")
        layer = self._dir(rid)
        with self._store.locked():  # no other process's get can start in between
            if self._held_elsewhere(rid):
                raise InUseError(f"layer {id} is in use by another process")
            if not os.path.isdir(layer) or os.path.islink(layer):
                return
            child = self._child_of(rid)
            if child is not None:
                raise InUseError(f"layer {id} has children ({child} stands on it)")
            aside = self._removal_target(rid)
            if aside is None:
                gone = retire_dir(layer, self.home / _STAGING, rid)
            else:
                os.makedirs(layer / _layout.LAMINA_DIR, mode=0o700, exist_ok=True)
                record = layer / _layout.LAMINA_DIR / _REMOVAL_RECORD
                write_file_atomic(record, os.fsencode(aside.name), 0o600)
                try:
                    os.rename(layer, aside)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(record)
                    raise
                gone = aside
        if gone is not None:
            self._destroy(gone)

    def _removal_target(self, rid: str) -> Path | None:
        """``<id>-removing`` if that name is free for a removal, else None."""
        name = f"{rid}{_REMOVING}"
        if len(os.fsencode(name)) > 255:  # NAME_MAX
            return None
        aside = self.home / name
        if os.path.lexists(aside):
            if not _is_removal(aside):
                return None  # a layer of that name: leave it alone
            self._destroy(aside)  # an earlier removal's leftover
        return aside

    def _destroy(self, folder: Path) -> None:
        """Delete a retired folder, its removal record last.

        A ``kill -9`` part-way through leaves a folder that still carries the
        record naming it, so the next ``cleanup`` recognises and finishes it
        (deleting the record with the rest could leave an unmarked
        ``<id>-removing`` that nothing would ever sweep).
        """
        box = folder / _layout.SANDBOX_DIR
        if os.path.ismount(box):
            unmount_image(box)
        meta = folder / _layout.LAMINA_DIR
        _clear_view(meta / _layout.VIEW)
        record = meta / _REMOVAL_RECORD
        if not os.path.isfile(record) or os.path.islink(meta):
            remove_tree(folder)
            return
        for name in os.listdir(folder):
            if name != _layout.LAMINA_DIR:
                remove_tree(folder / name)
        for name in os.listdir(meta):
            if name != _REMOVAL_RECORD:
                remove_tree(meta / name)
        remove_tree(folder)  # now only the record and its directory

    def exists(self, id: str) -> bool:
        """Whether the layer folder exists (the seed's ``LayerExists``)."""
        try:
            rid = self._resolve(id)
        except LaminaError:
            return False
        return (self._dir(rid) / _layout.LAMINA_DIR / _layout.META).is_file()

    def status(self) -> list[tuple[str, str]]:
        """The seed's ``[["Windows", ""]]`` plus what this host uses."""
        return [
            ("Windows", ""),
            ("Backing Filesystem", self.backing_fs),
            ("Sandbox", self.sandbox_mode),
            (
                "Views",
                "overlay" if not self._overlay_off else f"materialised ({self._overlay_off})",
            ),
        ]

    def get_metadata(self, id: str) -> dict[str, str]:
        """``{"dir": <layer folder>}`` as in the seed."""
        rid = self._resolve(id)
        if not self._dir(rid).is_dir():
            raise NotFoundError(f"layer {id} does not exist")
        return {"dir": str(self._dir(rid))}

    def cleanup(self) -> None:
        """Release this process's views and every detached one; sweep what crashes left.

        Views are unmounted (or, materialised, deleted) only when no live
        process holds them; a crashed holder's loop-mounted sandbox is
        unmounted.  Removals are finished only where our own record says
        so, and staging folders only where their maker is dead.
        """
        super().cleanup()
        with self._lock:
            in_flight = set(self._in_flight)
        try:
            names = os.listdir(self.home)
        except FileNotFoundError:
            return
        with self._store.locked() as table:
            for holders in table.values():
                holders.pop(DETACHED, None)
            self._store.reconcile(self._view_mounts(), unmount=_unmount_view)
            for name in names:
                path = self.home / name
                if name in (_STAGING, _RUN) or not path.is_dir() or path.is_symlink():
                    continue
                if _is_removal(path):
                    self._destroy(path)
                    continue
                view = path / _layout.LAMINA_DIR / _layout.VIEW
                if os.path.lexists(view) and not self._store.holders(str(view)):
                    _clear_view(view)
                sweep_plan_leftovers(path)
        staging = self.home / _STAGING
        try:
            leftovers = os.listdir(staging)
        except FileNotFoundError:
            leftovers = []
        for name in leftovers:
            if name in in_flight or made_by_other_live_process(name):
                continue
            self._destroy(staging / name)

    def _view_mounts(self) -> list[str]:
        """Kernel mounts of views and sandboxes under the home (held or not)."""
        found = []
        for m in mounts_below(self.home):
            point = Path(m.mountpoint)
            if (point.parent.parent == self.home and point.name == _layout.SANDBOX_DIR) or (
                point.parent.parent.parent == self.home
                and point.parent.name == _layout.LAMINA_DIR
                and point.name == _layout.VIEW
            ):
                found.append(m.mountpoint)
        return found

    # -- views -----------------------------------------------------------------

    def _mount_spec(self, id: str, mount_label: str) -> Mount:
        layer = self._dir(id)
        meta = _layout.read_meta(layer)
        if meta.kind == _layout.KIND_SANDBOX:
            box = layer / _layout.SANDBOX_DIR
            if meta.sandbox_backing == "loop":
                return Mount("ext4", str(layer / _layout.SANDBOX_IMAGE), box, ("loop",))
            # not "direct": a plain sandbox's holds are counted across processes too
            return Mount(_SANDBOX_DIR_VIEW, str(box), box)
        target = layer / _layout.LAMINA_DIR / _layout.VIEW
        materialised = Mount(_MATERIALISED, id, target)
        if self._overlay_off:
            return materialised
        layers = self._chain_layers(_layout.read_layer_chain(layer))
        layers.append((layer, meta))
        try:
            exact, _, whiteouts = ensure_plans(layers)
        except OSError as exc:
            # e.g. no CAP_MKNOD for the whiteouts: this host cannot have overlay views
            self._overlay_off = f"cannot write overlay whiteouts: {exc}"
            return materialised
        if not exact:
            return materialised
        spec = overlay_mount(self.home, [folder for folder, _ in layers], whiteouts, target)
        return spec if spec is not None else materialised

    def _do_mount(self, mount: Mount) -> None:
        if mount.type == _SANDBOX_DIR_VIEW:
            return
        if mount.type == "ext4":
            mount_image(mount.source, mount.target)
            return
        if (
            mount.type == _MATERIALISED
            and os.path.isdir(mount.target)
            and self._store.holders(str(mount.target))
        ):
            return  # materialised by a live holder (another process): share it
        _clear_view(mount.target)
        if mount.type == "overlay":
            os.mkdir(mount.target, 0o700)
            try:
                mount_spec(mount, readonly=True)
                return
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.rmdir(mount.target)
                if self.view_mode == "overlay":
                    raise StateError(
                        f"cannot mount the overlay view {mount.target}: {exc}", errno=exc.errno
                    ) from exc
                self._overlay_off = f"the kernel refused the overlay view: {exc}"
        self._materialise(mount.target.parent.parent.name, mount.target)

    def _materialise(self, rid: str, target: Path) -> None:
        tmp = Path(f"{target}.tmp")
        remove_tree(tmp)
        os.mkdir(tmp, 0o755)
        try:
            materialise(self._index_of(rid), tmp, copy=False)
            os.rename(tmp, target)
        except BaseException:
            remove_tree(tmp)
            raise

    def _do_unmount(self, mount: Mount) -> None:
        if mount.type == _SANDBOX_DIR_VIEW:
            return
        if mount.type == "ext4":
            if os.path.ismount(mount.target):
                unmount_image(mount.target)
            return
        _clear_view(mount.target)

    def get(self, id: str, mount_label: str = "") -> Path:
        """The merged ``Files`` tree; every ``get`` needs a ``put``."""
        rid = self._resolve(id)
        path = super().get(rid, mount_label)
        if path.name == _layout.SANDBOX_DIR:
            return path / "Files"
        return path

    def put(self, id: str) -> None:
        """Release one ``get``."""
        super().put(self._resolve(id))

    def mount(self, id: str, mount_label: str = "") -> Path:
        """``get``'s path (a sandbox's ``Files`` tree), held until ``unmount``."""
        path = super().mount(self._resolve(id), mount_label)
        if path.name == _layout.SANDBOX_DIR:
            return path / "Files"
        return path

    def unmount(self, id: str) -> None:
        """Release one ``mount``, from any process."""
        super().unmount(self._resolve(id))

    def _index_of(self, rid: str) -> dict[str, Node]:
        layer = self._dir(rid)
        meta = _layout.read_meta(layer)
        chain = self._chain_layers(_layout.read_layer_chain(layer))
        if meta.kind == _layout.KIND_IMAGE:
            chain.append((layer, meta))
        return merge_chain(chain)

    def _parent_view(self, rid: str, meta: LayerMeta, parent: str | None) -> dict[str, ViewItem]:
        if parent and self._resolve(parent) != meta.parent:
            return view_of_index(self._index_of(self._resolve(parent)))
        chain = self._chain_layers(_layout.read_layer_chain(self._dir(rid)))
        return view_of_index(merge_chain(chain))

    # -- diffs -----------------------------------------------------------------

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Import a Windows layer tar (plain, gzip or zstd); returns the seed's size.

        A system call that fails (a full disk, a quota) is an ArchiveError
        carrying its errno, as from the other drivers; the layer is left as
        it was.
        """
        try:
            return self._apply_diff(id, parent, diff)
        except LaminaError:
            raise
        except OSError as exc:
            raise _apply_error(id, exc.errno, exc.strerror or str(exc), exc.filename) from exc

    def _apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Import under the layer's lock: a second apply (any process) sees the first's."""
        validate_id(id)
        with layer_lock(self.home / _RUN / _LOCKS, id, timeout=self.lock_timeout):
            return self._apply_locked(id, parent, diff)

    def _apply_locked(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        layer = self._dir(id)
        if layer.exists():
            meta = _layout.read_meta(layer)
            if meta.kind != _layout.KIND_IMAGE:
                raise InvalidArgumentError(f"layer {id} is a read-write layer")
            if meta.imported:
                raise AlreadyExistsError(f"layer {id} already holds an imported layer")
        chain: list[str] = []
        parent_id = None
        if parent:
            parent_id = self._resolve(parent)
            chain = self._chain_for_parent(parent, need_files=False)
        stream = archive.decompress(diff)
        staging = make_staging_dir(self.home / _STAGING, id)
        with self._lock:
            self._in_flight.add(staging.name)
        try:
            os.chmod(staging, 0o755)
            size = self._import(stream, staging, parent_id, chain)
            _layout.write_layer_chain(staging, chain)
            self._plan_overlay(staging, chain)
            if layer.exists():
                if self._mounter.count(id) or self._held_elsewhere(id):
                    raise InUseError(f"layer {id} is in use")
                exchange_dirs(staging, layer)
                self._destroy(staging)
            else:
                try:
                    rename_noreplace(staging, layer)
                except FileExistsError:
                    raise AlreadyExistsError(f"layer {id} already exists") from None
            return size
        except BaseException:
            self._destroy(staging)
            raise
        finally:
            stream.close()  # stops a decompressor thread; the caller's stream stays open
            with self._lock:
                self._in_flight.discard(staging.name)

    def _plan_overlay(self, staging: Path, chain: list[str]) -> None:
        """Make the new layer's overlay whiteouts while its parents' index is at hand.

        Best effort: without it the first ``get`` makes them (or
        materialises, if this host cannot).
        """
        if self._overlay_off:
            return
        layers = self._chain_layers(chain)
        layers.append((staging, _layout.read_meta(staging)))
        with contextlib.suppress(OSError):
            ensure_plans(layers)

    def _import(
        self, stream: BinaryIO, staging: Path, parent_id: str | None, chain: list[str]
    ) -> int:
        if os.environ.get(NOREEXEC_ENV):
            # Imported here, not at the top: the helper runs this module as
            # ``python -m``, and runpy warns when the package already imported it.
            from lamina.drivers.windowsfilter._import import load_parent, write_layer

            parents = [load_parent(p) for p in chain]
            root = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return write_layer(stream, root, parents, parent_id=parent_id)
            finally:
                os.close(root)
                for p in parents:
                    os.close(p.fd)
        return self._import_reexec(stream, staging, parent_id, chain)

    def _import_reexec(
        self, stream: BinaryIO, staging: Path, parent_id: str | None, chain: list[str]
    ) -> int:
        env = dict(os.environ)
        env[PARENT_PID_ENV] = str(os.getpid())
        pkg_root = str(Path(lamina.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_root + (
            os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else ""
        )
        argv = [
            sys.executable,
            "-m",
            "lamina.drivers.windowsfilter._import",
            str(staging),
            parent_id or "",
            *chain,
        ]
        feed_error: list[BaseException] = []
        # The helper asks for SIGKILL when its parent ends, and "parent" means
        # the thread that starts it: start it from this thread, which waits.
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                close_fds=True,
            )
            assert proc.stdin is not None and proc.stdout is not None

            def feed() -> None:
                try:
                    while chunk := stream.read(1 << 20):
                        proc.stdin.write(chunk)  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass
                except BaseException as exc:
                    feed_error.append(exc)
                finally:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()  # type: ignore[union-attr]

            feeder = threading.Thread(target=feed, name="windowsfilter-import-feed", daemon=True)
            feeder.start()
            output = proc.stdout.read()
            proc.stdout.close()
            proc.wait()
            feeder.join()
            errors.seek(0)
            err_text = errors.read(8192).decode(errors="replace")
        if feed_error:
            raise feed_error[0]
        try:
            result = json.loads(output.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StateError(f"re-exec error: exit {proc.returncode}: {err_text}") from None
        if "size" in result and proc.returncode == 0:
            return int(result["size"])
        name = str(result.get("error"))
        message = str(result.get("message"))
        code = result.get("errno")
        code = code if isinstance(code, int) else None
        if name == "OSError":
            # the helper's message is str() of its OSError: "[Errno n] text: 'path'"
            raise _apply_error(staging.name.rsplit(".", 2)[0], code, message, None)
        cls = _ERRORS.get(name, StateError)
        if name in _ERRORS:
            raise cls(message, errno=code)
        raise cls(f"re-exec error: {message}: {err_text}", errno=code)

    def _views(
        self, id: str, parent: str | None
    ) -> tuple[str, dict[str, ViewItem], dict[str, ViewItem], Path | None]:
        """(resolved id, view of the layer, view of the parent, sandbox root held by a get)."""
        rid = self._resolve(id)
        meta = self._meta(rid)
        old = self._parent_view(rid, meta, parent)
        if meta.kind == _layout.KIND_SANDBOX:
            root = self.get(rid)
            try:
                new = view_of_tree(root, old)
            except BaseException:
                self.put(rid)
                raise
            return rid, new, old, root
        return rid, view_of_index(self._index_of(rid)), old, None

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        """Add, Modify and Delete, told apart (the seed reports every path as Modify)."""
        rid, new, old, held = self._views(id, parent)
        try:
            return changes_between(new, old)
        finally:
            if held is not None:
                self.put(rid)

    def diff_size(self, id: str, parent: str | None = None) -> int:
        """Bytes of the regular files added or modified (hard links counted once)."""
        rid, new, old, held = self._views(id, parent)
        try:
            seen: set[tuple[int, int]] = set()
            total = 0
            for change in changes_between(new, old):
                if change.kind is ChangeKind.DELETE:
                    continue
                st = os.lstat(new[change.path[1:]].source)
                if stat.S_IFMT(st.st_mode) != stat.S_IFREG:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
            return total
        finally:
            if held is not None:
                self.put(rid)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        """The layer's Windows tar: the imported bytes replayed, else generated."""
        rid = self._resolve(id)
        meta = self._meta(rid)
        layer = self._dir(rid)
        own_parent = not parent or self._resolve(parent) == meta.parent
        # an open stream holds the layer, as a view does: ``remove`` (in any
        # process) refuses it rather than cutting the stream short
        key = stream_hold_key(layer)

        def unhold() -> None:
            self._store.unhold(key)

        if meta.kind == _layout.KIND_IMAGE and meta.imported and own_parent:
            getter = _Getter(layer, meta, None, None)

            def replay(out: BinaryIO) -> None:
                with gzip.open(layer / _layout.LAMINA_DIR / _layout.TAR_SPLIT, "rb") as f:
                    assemble(read_records(f), getter, out)  # type: ignore[arg-type]

            self._store.hold(key)
            return io_buffered(PipeReader(replay, unhold))
        rid, new, old, held = self._views(id, parent)
        try:
            found = changes_between(new, old)
            if held is None:  # a sandbox is held by its get
                self._store.hold(key)
        except BaseException:
            if held is not None:
                self.put(rid)
            raise
        files_dir = held if held is not None else layer / "Files"

        def produce(out: BinaryIO) -> None:
            generate_diff(out, new, found, files_dir=files_dir, hives_dir=layer)

        def release() -> None:
            if held is not None:
                self.put(rid)
            else:
                unhold()

        return io_buffered(PipeReader(produce, release))

    def diff_getter(self, id: str) -> FileGetter:
        """Bodies by tar entry name, without mounting an image layer."""
        rid = self._resolve(id)
        meta = self._meta(rid)
        layer = self._dir(rid)
        if meta.kind == _layout.KIND_SANDBOX:
            root = self.get(rid)
            return _Getter(layer, meta, root, (self, rid))
        return _Getter(layer, meta, None, None)


def _overlay_unavailable() -> str:
    """Why this process cannot mount overlay views ("" when it can try)."""
    if not sys.platform.startswith("linux"):
        return "overlayfs needs Linux"
    if os.geteuid() != 0:
        return "mounting overlayfs and making whiteouts needs root"
    try:
        with open("/proc/filesystems", encoding="ascii", errors="replace") as f:
            if not any(line.split()[-1:] == ["overlay"] for line in f):
                return "the kernel has no overlayfs (modprobe overlay)"
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    return ""


def _apply_error(id: str, code: int | None, message: str, filename: object) -> ArchiveError:
    """The typed error for a failed system call while importing layer ``id``."""
    what = message
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        what = f"{what} on the layer's filesystem ({message})"
    elif filename is not None:
        what = f"{message}: {filename}"
    return ArchiveError(f"applying layer {id} failed: {what}", errno=code or errno.EIO)


class _ViewMounter(SharedMounter):
    """Holds counted across processes; a materialised view goes at the last one.

    A materialised view is a directory, not a kernel mount, so the store
    (which unmounts only what mountinfo lists) would leave it behind: it
    is deleted here, under the store lock, when no live holder is left.
    """

    def _shared_unmount(self, spec: Mount) -> None:
        with self.store.locked():
            super()._shared_unmount(spec)
            if spec.type == _MATERIALISED and not self.store.holders(str(spec.target)):
                _clear_view(spec.target)


def _is_removal(folder: Path) -> bool:
    """Whether ``folder`` is a removal of ours: its record names the folder itself."""
    try:
        with open(folder / _layout.LAMINA_DIR / _REMOVAL_RECORD, "rb") as f:
            return os.fsdecode(f.read(512)) == folder.name
    except OSError:
        return False


def _unmount_view(target: str) -> None:
    """Undo a view nobody alive holds: unmount a sandbox image, delete a view."""
    if os.path.basename(target) == _layout.SANDBOX_DIR:
        unmount_image(target)
    else:
        _clear_view(Path(target))


def _clear_view(path: Path) -> None:
    """Detach whatever is mounted at a view (a crashed holder's overlay) and delete it."""
    if os.path.lexists(path):
        unmount_below(path)
    remove_tree(path)


def io_buffered(raw: PipeReader) -> BinaryIO:
    """A buffered reader over a pipe reader (``diff`` results are context managers)."""
    return io.BufferedReader(raw, 1 << 20)
