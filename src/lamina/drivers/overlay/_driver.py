"""The overlay driver: layers stacked by the kernel's overlayfs, like overlay2.

Each layer keeps only its own changes in ``diff/`` (see
:mod:`lamina.drivers.overlay._layout`).  ``get`` mounts overlayfs with the
parent chain as lower directories; a layer without parent is served as its
``diff/`` directly.  Chains are named through 26-character short links
relative to ``home``; where the kernel has the new mount API with
``lowerdir+`` (Linux >= 6.8) every lower directory is a separate
``fsconfig`` call, so a chain is limited only by the kernel's own stack
depth (500 lowers, measured by a probe), not by the one page of classic
mount options that stops Docker at 128.

Mount counts are shared by all processes using the store through a
:class:`lamina._fs.RefStore` in a runtime directory (option ``runroot``,
default ``home/.run``), reconciled with
``/proc/self/mountinfo`` so that a crashed process leaks no mounts.

Diffs are native — read from ``diff/`` alone — when the parent asked about
is the layer's real parent and a probe mount shows that this kernel with our
mount options records every change in the upper directory (no redirects, no
metacopy, no opaque copy-up bug); otherwise the naive path compares merged
views.  ``apply_diff`` extracts into ``diff/`` with overlay whiteouts,
without a mount, whatever parent the caller names (a layer tar is always
relative to the layer's own parent): into a fresh sibling that replaces an
empty ``diff/`` in one rename, or, when ``diff/`` has content, into a copy
of it that is swapped in with ``RENAME_EXCHANGE`` (both through
:class:`lamina._fs.StagingArea`), so a failed or killed apply leaves the
layer exactly as it was.

Concurrency and holds.  ``apply_diff`` and ``remove`` take the layer's
lock (``.locks/``): a second apply of the same layer, in any process, waits
for the first (up to ``lock_timeout`` seconds, then
:class:`~lamina.errors.LockTimeoutError`) and applies on top of it, as the
Docker daemon serialises two pulls of one layer.  ``create`` of a child
takes its parent's lock shared, so a parent cannot be removed under a
child being built.  ``remove`` raises :class:`~lamina.errors.InUseError`
for a layer with children, a layer being applied to, and a layer whose
view is held by ``get``, ``lamina mount`` or an open ``diff`` stream in any
process — base layers (served without a mount) included.  ``apply_diff``
refuses a layer whose view is held: the kernel keeps a mounted upper
directory by inode, so the exchange would hide the apply from the view.

A ``size`` storage option on a read-write layer is enforced with an XFS
project quota where the backing filesystem is XFS mounted with ``pquota``,
and elsewhere with a per-layer ext4 image on a loop device that holds the
layer's ``diff/`` and ``work/``.  :meth:`OverlayDriver.expand_sandbox_size`
raises that limit later (the seed's ``ExpandSandboxSize``, under the name
the windowsfilter driver gives it).

Options (keys may carry an ``overlay.`` or ``overlay2.`` prefix):
``size`` (default for read-write layers), ``mountopt`` (extra overlay mount
options, comma-separated), ``runroot``, ``quota`` (``auto``, ``project`` or
``loop``), ``native_diff`` (``auto`` or ``false``), ``mount_api``
(``auto``, ``new`` or ``legacy``), ``detached_views`` (``false`` or
``true``).

Views are held by processes: a process that dies (even by ``kill -9``)
holds nothing any more, and its mounts are undone by the next driver
start-up or ``cleanup`` in any process (or the next ``get``/``put`` of the
same view).  A driver made with
``detached_views=true`` instead records its ``get``s as holds that belong to
no process, survive its exit and are released by a ``put`` from any process
with the same option: that is what a ``lamina mount`` / ``lamina unmount``
pair of commands needs.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, cast

from lamina import archive
from lamina._change import Change
from lamina._fs import (
    DEFAULT_LOCK_TIMEOUT,
    DETACHED,
    MNT_DETACH,
    Mount,
    Mounter,
    MountInfo,
    NativeDiffProbe,
    ProbeFile,
    ProjectQuota,
    RefStore,
    SharedMounter,
    StagingArea,
    copy_tree,
    create_image,
    fs_identity,
    fs_name,
    grow_image,
    grow_mounted_image,
    image_is_mounted,
    layer_lock,
    mount_image,
    mount_spec,
    mountinfo,
    new_mount_api_supported,
    overlay_max_lowers,
    probe_native_diff,
    probe_overlay_mount,
    read_only,
    remove_tree,
    retire_dir,
    statfs_magic,
    supports_d_type,
    umount,
    unlink_lock,
    unmount_below,
    unmount_image,
    write_file_atomic,
)
from lamina._units import ram_in_bytes
from lamina.archive import OVERLAY_OPAQUE_XATTR, overlay_changes, upper_size
from lamina.drivers._base import Driver, FileGetter, StorageOpts, stream_hold_key
from lamina.drivers.overlay._layout import (
    LINK_DIR,
    REMOVING_DIR,
    STAGING_DIR,
    check_layer_id,
    is_layer_name,
    new_link_id,
    read_link,
    read_lower,
    write_small_file,
)
from lamina.errors import (
    AlreadyExistsError,
    IncompatibleFilesystemError,
    InUseError,
    InvalidArgumentError,
    LaminaError,
    LockTimeoutError,
    MaxDepthError,
    NotFoundError,
    PrerequisitesError,
    QuotaNotSupportedError,
    StateError,
)

__all__ = ["OverlayDriver"]

#: Filesystems overlayfs cannot use for its upper and work directories.
_REFUSED_FS = {
    0x794C7630: "overlayfs",
    0x61756673: "aufs",
    0xF15F: "ecryptfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
}
#: Without ``lowerdir+`` the options must fit one page: overlay2's limit.
_LEGACY_MAX_LOWERS = 128
#: The kernel's OVL_MAX_STACK, used if it cannot be measured.
_KERNEL_MAX_LOWERS = 500
_MIN_QUOTA_SIZE = 1 << 20
_OPTION_KEYS = (
    "size",
    "mountopt",
    "runroot",
    "quota",
    "native_diff",
    "mount_api",
    "detached_views",
)
_OVERLAY_PARAMS = Path("/sys/module/overlay/parameters")


def _parse_options(options: Mapping[str, str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for raw_key, value in options.items():
        key = raw_key.lower()
        for prefix in ("overlay2.", "overlay."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key not in _OPTION_KEYS:
            raise InvalidArgumentError(f"overlay: unknown option {raw_key}")
        parsed[key] = value
    choices = {
        "quota": ("auto", "project", "loop"),
        "native_diff": ("auto", "false", "true"),
        "mount_api": ("auto", "new", "legacy"),
        "detached_views": ("false", "true"),
    }
    for key, allowed in choices.items():
        if key in parsed and parsed[key] not in allowed:
            raise InvalidArgumentError(
                f"overlay: option {key} must be one of {', '.join(allowed)}, not {parsed[key]!r}"
            )
    if "size" in parsed:
        ram_in_bytes(parsed["size"])
    return parsed


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    return path


def _default_runroot(home: Path) -> Path:
    """``home/.run``: found by every process using the store, and gone with the store.

    Its contents are keyed by boot id, so a runtime directory on a disk
    that survives a reboot is as good as one on tmpfs.
    """
    return home / ".run"


def _base_mount_options() -> list[str]:
    """Options that make overlayfs keep every change in the upper directory.

    ``index=off`` lets a lower layer serve many mounts (Docker does the
    same); ``redirect_dir=off`` and ``metacopy=off`` keep renamed
    directories and chmod-only copy-ups as plain entries that a walk of
    ``diff/`` can read.  Each is only given when the kernel knows it.
    """
    opts = []
    for name in ("index", "redirect_dir", "metacopy"):
        if (_OVERLAY_PARAMS / name).exists():
            opts.append(f"{name}=off")
    return opts


def _mount_error(exc: OSError, what: str) -> LaminaError:
    text = exc.strerror or str(exc)
    if exc.errno == errno.EINVAL and "too many lower" in text:
        return MaxDepthError(f"{what}: {text}", errno=exc.errno)
    return StateError(f"{what}: {text}", errno=exc.errno)


def _opaque_ancestor(directory: str, rel: str) -> bool:
    """Whether a directory on the way to ``rel`` in this layer is opaque (hides the lowers).

    Only asked after ``rel`` was not found here, so the walk stops at the
    first ancestor this layer does not have.
    """
    path = directory
    for part in rel.split("/")[:-1]:
        path = f"{path}/{part}"
        try:
            if os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y":
                return True
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return False


class _OverlayFileGetter:
    """Serves a layer's files from ``diff/`` then its lowers, without mounting.

    A name is looked up the way overlayfs resolves it: the first layer
    holding it wins, and a layer stops the search with a whiteout, a
    non-directory on the way, or an opaque directory on the way.
    """

    def __init__(self, dirs: list[str], layer_id: str) -> None:
        self._dirs = dirs
        self._id = layer_id

    def get(self, name: str) -> BinaryIO:
        rel = archive.clean_entry_name(name)
        if rel is None:
            raise InvalidArgumentError(f"invalid entry name {name!r}")
        for directory in self._dirs:
            try:
                return archive.open_beneath(directory, rel)
            except NotFoundError as exc:
                if exc.errno != errno.ENOENT:
                    # a non-directory or symlink on the way, or at the name a
                    # whiteout (0:0 device) or anything not a regular file: it hides the lowers
                    break
                if _opaque_ancestor(directory, rel):
                    break
        raise NotFoundError(f"{name}: not in layer {self._id}")

    def close(self) -> None:
        return None


_APPLY_PREFIX = ".apply"
LOCK_DIR = ".locks"


_stream_key = stream_hold_key


class _HoldingStream(io.RawIOBase):
    """A readable stream that drops a hold when closed (or collected)."""

    def __init__(self, inner: BinaryIO, release: Callable[[], object]) -> None:
        super().__init__()
        self._inner = inner
        self._release: Callable[[], object] | None = release

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                release, self._release = self._release, None
                if release is not None:
                    release()
        super().close()


class OverlayDriver(Driver):
    """Docker's overlay2 on lamina's contract; see the module docstring."""

    name = "overlay"

    def __init__(self, home: Path, options: Mapping[str, str] | None = None) -> None:
        opts = _parse_options(options or {})
        if not sys.platform.startswith("linux"):
            raise PrerequisitesError("overlay needs Linux (kernel overlayfs)")
        if os.geteuid() != 0:
            raise PrerequisitesError(
                "overlay needs root: it mounts overlayfs and makes whiteout device nodes "
                "(use the vfs driver unprivileged)"
            )
        home = Path(home).absolute()
        testdir = _existing_ancestor(home)
        magic = statfs_magic(testdir)
        self.backing_fs = fs_name(magic)
        if magic in _REFUSED_FS:
            raise IncompatibleFilesystemError(
                f"overlay cannot run on {_REFUSED_FS[magic]} ({testdir}): "
                "overlayfs refuses it as an upper layer"
            )
        self._base_options = _base_mount_options()
        extra = [o for o in opts.get("mountopt", "").split(",") if o]
        self._mount_options = (*self._base_options, *extra)
        real_home = os.path.realpath(home)  # of what exists of it: the same once made
        # the store's own runtime directory is where it is (or will be) without the option
        default_runroot = _default_runroot(Path(real_home))
        self.runroot = Path(opts.get("runroot", default_runroot)).absolute()
        # every process of a store would repeat these probes: their verdicts
        # are kept in the runtime directory, keyed by boot, kernel, fs and options
        self._probes = ProbeFile(
            self.runroot / "probes", fs_identity(testdir), ",".join(self._mount_options)
        )
        api = opts.get("mount_api", "auto")
        new_api_ok = self._probes.get("new_api") == "1"
        if not new_api_ok and self._probes.get("new_api") != "0":
            new_api_ok = new_mount_api_supported("overlay")
            self._probes.put("new_api", "1" if new_api_ok else "0")
        if api == "new" and not new_api_ok:
            raise PrerequisitesError("overlay: the kernel has no new mount API with lowerdir+")
        self._new_api = api != "legacy" and new_api_ok
        if self._probes.get("mount") != "ok":
            self._probe_mount(testdir, extra)
            self._probes.put("mount", "ok")
        if self._probes.get("d_type") != "1":
            if not supports_d_type(testdir):
                raise IncompatibleFilesystemError(
                    f"overlay: {self.backing_fs} at {testdir} is formatted without d_type "
                    "support (xfs: mkfs.xfs -n ftype=1; ext4: tune2fs -O filetype)"
                )
            self._probes.put("d_type", "1")
        if testdir != home:
            os.makedirs(home, mode=0o710, exist_ok=True)
            real_home = os.path.realpath(home)
        self._root = Path(real_home)
        os.makedirs(self._root / LINK_DIR, mode=0o700, exist_ok=True)
        self._links = self._root / LINK_DIR
        self._staging = self._root / STAGING_DIR
        self._removing = self._root / REMOVING_DIR
        self._locks = self._root / LOCK_DIR
        self._area = StagingArea(self._staging)
        #: seconds an apply waits for another process's apply of the same layer
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT
        self._store = RefStore(self.runroot)
        self._probes.save()
        self._default_size = ram_in_bytes(opts["size"]) if "size" in opts else 0
        self._quota_mode = opts.get("quota", "auto")
        self._native_mode = opts.get("native_diff", "auto")
        self._detached = opts.get("detached_views", "false") == "true"
        self._native_probe: NativeDiffProbe | None = None
        self._project_quota: ProjectQuota | None = None
        self._quota_error: QuotaNotSupportedError | None = None
        self._quota_checked = False
        self._max_lowers: int | None = None if self._new_api else _LEGACY_MAX_LOWERS
        super().__init__(home, options)
        self._reconcile(startup=True)

    def _probe_mount(self, testdir: Path, extra: list[str]) -> None:
        """Mount a scratch overlay, so that an unusable kernel or filesystem fails here."""
        try:
            probe_overlay_mount(testdir, self._base_options)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise PrerequisitesError(
                    "overlay: the kernel has no overlayfs (modprobe overlay)", errno=exc.errno
                ) from exc
            if exc.errno == errno.EPERM:
                raise PrerequisitesError(
                    f"overlay: not allowed to mount: {exc.strerror}", errno=exc.errno
                ) from exc
            raise IncompatibleFilesystemError(
                f"overlay: overlayfs cannot use {self.backing_fs} at {testdir}: {exc.strerror}",
                errno=exc.errno,
            ) from exc
        if extra:
            try:
                probe_overlay_mount(testdir, self._mount_options)
            except OSError as exc:
                raise InvalidArgumentError(
                    f"overlay: mountopt {','.join(extra)} rejected: {exc.strerror}",
                    errno=exc.errno,
                ) from exc

    @property
    def max_lowers(self) -> int:
        """How many lower layers a view may stack: 128 with mount(2), else the kernel's.

        The kernel's limit costs about 500 ``fsconfig`` calls to measure, so
        it is measured once per boot and kernel (kept with the other probe
        verdicts), and only asked for by chains deeper than 128.
        """
        return self._lowers_limit(persist=True)

    def _lowers_limit(self, *, persist: bool) -> int:
        """:attr:`max_lowers`; kept for the next process only with ``persist`` (not by queries)."""
        if self._max_lowers is None:
            stored = self._probes.get("max_lowers") or ""
            if stored.isdigit():
                self._max_lowers = int(stored)
            else:
                self._max_lowers = overlay_max_lowers() or _KERNEL_MAX_LOWERS
                if persist and not read_only(self.runroot):
                    self._probes.put("max_lowers", str(self._max_lowers))
                    self._probes.save()
        return self._max_lowers

    def _make_mounter(self) -> Mounter:
        return SharedMounter(self._store, self._do_mount, self._do_unmount, count_direct=True)

    # -- paths ---------------------------------------------------------------------

    def _dir(self, id: str) -> Path:
        return self._root / check_layer_id(id)

    def _existing_dir(self, id: str) -> Path:
        path = self._dir(id)
        if not path.is_dir():
            raise NotFoundError(f"layer {id} does not exist")
        return path

    def _diff_dir(self, id: str) -> Path:
        """The real path of the layer's upper directory (its quota image mounted)."""
        self._existing_dir(id)
        return Path(self._upper(id))

    def _upper(self, layer: str) -> str:
        """Real path of a layer's upper directory, mounting its quota image if it is not.

        One readlink: ``diff`` is a directory, or the symlink ``quota/diff``
        into the layer's image (which a reboot unmounts).  This runs for
        every lower of a 500-deep chain, where ``os.path.realpath`` (an
        lstat per path component) cost ten times as much.
        """
        diff = f"{self._root}/{layer}/diff"
        try:
            target = os.readlink(diff)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):  # a directory (or gone)
                return diff
            raise
        if target != "quota/diff":
            raise StateError(f"{diff}: unexpected link target {target!r}")
        self._ensure_image(self._root / layer)
        return f"{self._root}/{layer}/quota/diff"

    def _chain(self, path: Path) -> list[str]:
        """Ids of the parent chain's layers, nearest first (one readlink each).

        Strings, not Paths: this runs for every lower of a 500-deep chain.
        """
        root = os.fspath(self._root)
        result = []
        for entry in read_lower(path) or []:
            try:
                target = os.readlink(f"{root}/{entry}")
            except FileNotFoundError:
                raise StateError(f"{path}: lower {entry} is missing (run cleanup)") from None
            parts = target.split("/")
            if len(parts) != 3 or parts[0] != ".." or parts[2] != "diff":
                raise StateError(f"{root}/{entry}: unexpected link target {target!r}")
            result.append(parts[1])
        return result

    def _lower_dirs(self, path: Path) -> list[str]:
        """Real paths of the parent chain's upper directories, nearest first."""
        return [self._upper(layer) for layer in self._chain(path)]

    # -- quota ---------------------------------------------------------------------

    def _ensure_image(self, layer_dir: Path) -> None:
        """Mount a layer's size-limited filesystem image if it is not (after a reboot)."""
        image = layer_dir / "quota.img"
        if not image.exists() or image_is_mounted(layer_dir / "quota"):
            return
        with self._store.locked():
            if not image_is_mounted(layer_dir / "quota"):
                try:
                    mount_image(image, layer_dir / "quota")
                except OSError as exc:
                    raise StateError(
                        f"{layer_dir}: cannot mount its quota image: {exc.strerror}",
                        errno=exc.errno,
                    ) from exc

    def _quota_kind(self) -> str:
        """ "project" or "loop"; QuotaNotSupportedError saying why neither works."""
        if not self._quota_checked:
            self._quota_checked = True
            if self._quota_mode in ("auto", "project") and self.backing_fs == "xfs":
                try:
                    self._project_quota = ProjectQuota(self._root)
                except QuotaNotSupportedError as exc:
                    self._quota_error = exc
            elif self._quota_mode == "project":
                self._quota_error = QuotaNotSupportedError(
                    f"project quotas need XFS with pquota; {self._root} is on {self.backing_fs}"
                )
        if self._project_quota is not None:
            return "project"
        if self._quota_mode == "project":
            assert self._quota_error is not None
            raise self._quota_error
        if not os.path.exists("/dev/loop-control"):
            raise QuotaNotSupportedError(
                "size needs XFS project quotas or loop devices; neither is available"
                + (f" ({self._quota_error})" if self._quota_error else "")
            )
        return "loop"

    def _setup_quota(self, staging: Path, size: int) -> None:
        """Make ``diff`` and ``work`` in ``staging`` limited to ``size`` bytes."""
        kind = self._quota_kind()
        if kind == "project":
            assert self._project_quota is not None
            with self._store.locked():
                self._project_quota.set_quota(staging, size)
            write_small_file(staging / "quota", f"project {size}\n", 0o600)
            os.mkdir(staging / "diff", 0o755)
            os.mkdir(staging / "work", 0o700)
            return
        if size < _MIN_QUOTA_SIZE:
            raise InvalidArgumentError(f"size {size} is too small for a filesystem image (1M)")
        image, mountpoint = staging / "quota.img", staging / "quota"
        os.mkdir(mountpoint, 0o700)
        try:
            create_image(image, size)
            mount_image(image, mountpoint)
        except OSError as exc:
            raise QuotaNotSupportedError(
                f"cannot make a {size}-byte filesystem image: {exc.strerror}", errno=exc.errno
            ) from exc
        os.mkdir(mountpoint / "diff", 0o755)
        os.mkdir(mountpoint / "work", 0o700)
        os.symlink("quota/diff", staging / "diff")
        os.symlink("quota/work", staging / "work")

    def _size_option(self, storage_opt: StorageOpts | None, rw: bool) -> int:
        size = self._default_size if rw else 0
        for key, value in (storage_opt or {}).items():
            if key.lower() != "size":
                raise InvalidArgumentError(f"overlay: unknown storage option {key}")
            if not rw:
                raise InvalidArgumentError(
                    "overlay: the size option is only supported for read-write layers"
                )
            size = ram_in_bytes(value)
        return size

    def expand_sandbox_size(self, id: str, size: str | int) -> None:
        """Raise a size-limited read-write layer's limit to ``size`` (Docker units or bytes).

        The Linux counterpart of the seed's ``ExpandSandboxSize``, named as
        the windowsfilter driver names it.  Works while the layer's view is
        mounted: an XFS project quota just gets the higher limit; a
        filesystem image grows online where the kernel allows this process
        to resize ext4 (``CAP_SYS_RESOURCE``), else offline while nothing
        uses it (InUseError while a view is held).  Smaller than the
        current limit is an InvalidArgumentError (no shrinking); the same
        size finishes a grow that a crash interrupted, or does nothing.
        """
        if isinstance(size, bool) or not isinstance(size, (int, str)):
            raise InvalidArgumentError(f"invalid size: {size!r}")
        new = ram_in_bytes(size) if isinstance(size, str) else size
        if new < 0:
            raise InvalidArgumentError(f"invalid size: {size!r}")
        path = self._existing_dir(id)
        with self._store.locked():  # no other process mounts the image meanwhile
            if (path / "quota.img").exists():
                self._grow_image(id, path, new)
            elif (path / "quota").is_file():
                self._grow_project_quota(id, path, new)
            else:
                raise InvalidArgumentError(f"layer {id} has no size limit to expand")

    def _grow_image(self, id: str, path: Path, new: int) -> None:
        image, mountpoint = path / "quota.img", path / "quota"
        current = os.stat(image).st_size
        if new < current:
            raise InvalidArgumentError(
                f"layer {id} is limited to {current} bytes; it cannot shrink to {new}"
            )
        try:
            if image_is_mounted(mountpoint):
                try:
                    grow_mounted_image(image, mountpoint, new)
                    return
                except PermissionError as exc:
                    denied = exc  # no CAP_SYS_RESOURCE: resize it unmounted instead
                busy = self._mounter.count(id) > 0  # a direct view (no parent) is no mount
                if not busy:
                    try:
                        unmount_image(mountpoint, lazy=False)
                    except OSError as exc:
                        if exc.errno != errno.EBUSY:
                            raise
                        busy = True
                if busy:
                    raise InUseError(
                        f"layer {id} is in use, and this process may not resize a mounted "
                        f"ext4 image ({denied.strerror}: that needs CAP_SYS_RESOURCE); "
                        "put its views and retry",
                        errno=errno.EBUSY,
                    ) from denied
                try:
                    grow_image(image, new)
                except BaseException:
                    with contextlib.suppress(OSError):
                        mount_image(image, mountpoint)  # as it was
                    raise
                mount_image(image, mountpoint)
            else:
                grow_image(image, new)
        except OSError as exc:
            raise StateError(
                f"cannot grow the image of layer {id} to {new} bytes: {exc.strerror}",
                errno=exc.errno,
            ) from exc

    def _grow_project_quota(self, id: str, path: Path, new: int) -> None:
        record = (path / "quota").read_text(encoding="ascii").split()
        if len(record) != 2 or record[0] != "project" or not record[1].isdigit():
            raise StateError(f"{path}/quota: malformed quota record {record!r}")
        current = int(record[1])
        if new < current:
            raise InvalidArgumentError(
                f"layer {id} is limited to {current} bytes; it cannot shrink to {new}"
            )
        quota = self._project_quota or ProjectQuota(self._root)
        try:
            quota.set_limit(path, new)
        except OSError as exc:
            raise StateError(
                f"cannot raise the project quota of layer {id}: {exc.strerror}", errno=exc.errno
            ) from exc
        write_file_atomic(path / "quota", f"project {new}\n".encode(), 0o600)

    # -- storage ---------------------------------------------------------------------

    def create(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create an image layer: an empty ``diff/`` over ``parent``."""
        self._create(id, parent, self._size_option(storage_opt, rw=False))

    def create_read_write(
        self,
        id: str,
        parent: str | None = None,
        *,
        mount_label: str = "",
        storage_opt: StorageOpts | None = None,
    ) -> None:
        """Create a container layer; ``size`` (Docker units, 50M = 50 MiB) limits its writes."""
        self._create(id, parent, self._size_option(storage_opt, rw=True))

    def _create(self, id: str, parent: str | None, size: int) -> None:
        target = self._dir(id)
        if os.path.lexists(target):
            raise AlreadyExistsError(f"layer {id} already exists")
        if not parent:
            self._build(id, target, None, size)
            return
        self._existing_dir(parent)
        try:
            # shared: siblings are built side by side, but the parent is not removed meanwhile
            with layer_lock(self._locks, parent, timeout=self.lock_timeout, shared=True):
                self._build(id, target, self._existing_dir(parent), size)
        except LockTimeoutError as exc:
            raise InUseError(f"parent layer {parent} of {id} is being removed: {exc}") from exc

    def _build(self, id: str, target: Path, parent_dir: Path | None, size: int) -> None:
        """Stage the layer's directory and publish it under its name in one rename."""
        lowers: list[str] = []
        if parent_dir is not None:
            lowers = [f"{LINK_DIR}/{read_link(parent_dir)}", *(read_lower(parent_dir) or [])]
            if len(lowers) > _LEGACY_MAX_LOWERS and len(lowers) > self.max_lowers:
                raise MaxDepthError(
                    f"max depth exceeded: layer {id} would have {len(lowers)} lower layers; "
                    f"overlayfs here stacks at most {self.max_lowers}"
                )
        staging = self._area.new(id, 0o710)
        link_path: Path | None = None
        try:
            os.chmod(staging, 0o710)
            if size:
                self._setup_quota(staging, size)
            else:
                os.mkdir(staging / "diff", 0o755)
                if parent_dir is not None:
                    os.mkdir(staging / "work", 0o700)
            self._inherit_root(staging / "diff", parent_dir)
            if lowers:
                write_small_file(staging / "lower", ":".join(lowers))
            while True:
                link = new_link_id()
                try:
                    os.symlink(f"../{id}/diff", self._links / link)
                except FileExistsError:
                    continue
                link_path = self._links / link
                break
            write_small_file(staging / "link", link)
            if parent_dir is not None:
                write_small_file(parent_dir / "committed", "", 0o600)
            try:
                self._area.publish(staging, target)
            except FileExistsError:
                raise AlreadyExistsError(f"layer {id} already exists") from None
        except BaseException:
            if link_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(link_path)
            self._area.discard(staging, self._discard)
            raise

    def _inherit_root(self, diff: Path, parent_dir: Path | None) -> None:
        """Give a new ``diff/`` its parent's root mode and owner (0755 root:root without one).

        overlayfs shows the upper directory's root as the view's root, so a
        plain 0755 ``diff/`` would undo a parent layer's ``./`` entry (a
        child layer tar rarely repeats it); containers/storage does the same.
        """
        mode, uid, gid = 0o755, 0, 0
        if parent_dir is not None:
            st = os.stat(self._diff_dir(parent_dir.name))
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        os.chown(diff, uid, gid)
        os.chmod(diff, mode)

    def _discard(self, path: Path) -> None:
        """Delete a layer directory that is out of sight, unmounting what is inside."""
        unmount_below(path)
        remove_tree(path)

    def remove(self, id: str) -> None:
        """Delete a layer (renamed out of sight first); a missing layer is fine.

        InUseError, and nothing changes, for a layer with children, one
        being applied to, or one whose view is held (``get``, ``lamina
        mount``, a ``diff`` stream) by any live process.
        """
        path = self._dir(id)
        if not os.path.lexists(path):
            return
        if self._mounter.count(id):  # outside the store lock: the mounter's comes first
            raise InUseError(f"layer {id} is in use (this process holds its view); cannot remove")
        try:
            with layer_lock(self._locks, id, timeout=0):
                self._refuse_if_parent(id, path)
                with self._store.locked():
                    self._refuse_if_held(id, path, "remove")
                    retired = retire_dir(path, self._removing, id)
                unlink_lock(self._locks, id)
        except LockTimeoutError:
            raise InUseError(
                f"layer {id} is in use: being applied to, or a child is being created on it"
            ) from None
        if retired is None:
            return
        with contextlib.suppress(StateError, OSError):
            os.unlink(self._links / read_link(retired))
        self._discard(retired)

    def parent(self, id: str) -> str | None:
        """The nearest entry of ``lower``, followed through its short link to the layer id."""
        chain = self._chain(self._existing_dir(id))
        return chain[0] if chain else None

    def _hold_targets(self, path: Path) -> list[str]:
        """Every key under which a view of the layer at ``path`` is counted."""
        return [
            str(path / "merged"),  # a layer with a parent
            str(path / "diff"),  # a base layer, served as its diff/
            str(path / "quota" / "diff"),  # a size-limited base layer
            _stream_key(path),  # an open diff stream
        ]

    def _refuse_if_held(self, id: str, path: Path, what: str) -> None:
        if self._mounter.count(id):  # outside the store lock: the mounter's comes first
            raise InUseError(f"layer {id} is in use (this process holds its view); cannot {what}")
        held = self._store.first_held(self._hold_targets(path))
        if held is not None:
            holders = held[1]
            raise InUseError(
                f"layer {id} is in use (held by {', '.join(sorted(holders))}: "
                f"get, mount or a diff stream); cannot {what}"
            )

    def _refuse_if_parent(self, id: str, path: Path) -> None:
        """InUseError if a layer stands on this one (its short link is in a ``lower`` file).

        ``committed`` marks a layer that ever had a child: only those pay
        for the scan of the other layers' ``lower`` files.
        """
        if not (path / "committed").exists():
            return
        try:
            entry = f"{LINK_DIR}/{read_link(path)}"
        except StateError:
            return
        for name in self._layer_names():
            if name == id:
                continue
            try:
                lower = read_lower(self._root / name)
            except (StateError, OSError):
                continue
            if lower and entry in lower:
                raise InUseError(f"layer {id} has children (layer {name} stands on it)")

    def exists(self, id: str) -> bool:
        """Whether ``home/<id>`` exists (invalid or reserved ids never do)."""
        try:
            return self._dir(id).is_dir()
        except InvalidArgumentError:
            return False

    def _layer_names(self) -> list[str]:
        return [
            e.name
            for e in os.scandir(self._root)
            if is_layer_name(e.name) and e.is_dir(follow_symlinks=False)
        ]

    def status(self) -> list[tuple[str, str]]:
        """overlay2's pairs plus mount API, depth limit, quota mechanism and layer count."""
        probe = self._probe(persist=False)
        try:
            quota = self._quota_kind()
            quota_text = "xfs project quota" if quota == "project" else "loop-mounted ext4 image"
        except QuotaNotSupportedError as exc:
            quota_text = f"unsupported ({exc})"
        native = self._native_mode != "false" and probe.native
        pairs = [
            ("Backing Filesystem", self.backing_fs),
            ("Supports d_type", "true"),
            ("Native Overlay Diff", str(native).lower()),
        ]
        if not native:
            pairs.append(
                ("Native Diff Disabled Because", probe.reason or "native_diff option is false")
            )
        pairs += [
            ("Using metacopy", str(probe.metacopy).lower()),
            ("Mount API", "fsconfig lowerdir+" if self._new_api else "mount(2)"),
            ("Mount Options", ",".join(self._mount_options)),
            ("Max Depth", str(self._lowers_limit(persist=False))),
            ("Quota", quota_text),
            ("Layers", str(len(self._layer_names()))),
            ("Runtime Directory", str(self.runroot)),
        ]
        return pairs

    def get_metadata(self, id: str) -> dict[str, str]:
        """WorkDir, MergedDir, UpperDir and (with a parent) LowerDir, as Docker reports them."""
        path = self._existing_dir(id)
        meta = {
            "WorkDir": str(path / "work"),
            "MergedDir": str(path / "merged"),
            "UpperDir": str(self._diff_dir(id)),
        }
        lowers = self._lower_dirs(path)
        if lowers:
            meta["LowerDir"] = ":".join(lowers)
        return meta

    # -- views ----------------------------------------------------------------------

    def _mount_spec(self, id: str, mount_label: str) -> Mount:
        path = self._existing_dir(id)
        lower = read_lower(path)
        diff = Path(self._upper(id))
        if lower is None:
            return Mount(type="direct", source=str(diff), target=diff)
        # the images of size-limited parents (unmounted by a reboot) are
        # mounted by _do_mount if the kernel cannot find a lower: checking
        # them here would cost two readlinks per layer of the chain
        options = list(self._mount_options)
        if (path / "committed").exists():
            options.append("lowerdir=" + ":".join([f"{LINK_DIR}/{read_link(path)}", *lower]))
        else:
            options.append("lowerdir=" + ":".join(lower))
            options += [f"upperdir={id}/diff", f"workdir={id}/work"]
        if mount_label:
            options.append(f"context={mount_label}")
        if not self._new_api:
            if any(c in id for c in ",:\\"):
                raise InvalidArgumentError(f"layer id {id!r} cannot be given to mount(2)")
            size = len(",".join(options).encode())
            if size >= os.sysconf("SC_PAGESIZE"):
                raise MaxDepthError(
                    f"cannot mount layer {id}: {len(lower)} lower layers need {size} bytes of "
                    "mount options, more than one page (this kernel lacks lowerdir+)"
                )
        return Mount("overlay", "overlay", path / "merged", tuple(options), cwd=self._root)

    def get(self, id: str, mount_label: str = "") -> Path:
        """Root of the layer's view; with ``detached_views`` the hold outlives this process."""
        if not self._detached:
            return super().get(id, mount_label)
        spec = self._mount_spec(id, mount_label)
        if spec.is_direct:
            self._store.hold(str(spec.target), DETACHED)
        else:
            self._store.acquire(
                str(spec.target),
                lambda: self._do_mount(spec),
                lambda: self._do_unmount(spec),
                holder=DETACHED,
            )
        return spec.target

    def _hold_store(self) -> RefStore:
        """``lamina mount`` holds are counted in the store that counts every view."""
        return self._store

    def _view_target(self, id: str) -> Mount:
        """Just enough of the view's spec to release it: its kind and target."""
        path = self._existing_dir(id)
        if read_lower(path) is None:
            diff = Path(self._upper(id))
            return Mount(type="direct", source=str(diff), target=diff)
        return Mount("overlay", "overlay", path / "merged")

    def unmount(self, id: str) -> None:
        """Release one ``mount`` (from any process); the view goes away at the last one."""
        spec = self._view_target(id)
        left = self._store.release(str(spec.target), lambda: self._do_unmount(spec), DETACHED)
        if left < 0:
            raise InUseError(f"unmount of {id!r} without a matching mount")

    def put(self, id: str) -> None:
        """Release one ``get``; with ``detached_views`` one detached hold, from any process."""
        if not self._detached:
            super().put(id)
            return
        path = self._existing_dir(id)
        if read_lower(path) is None:
            if self._store.unhold(self._upper(id), DETACHED) < 0:
                raise InUseError(f"put of {id!r} without a matching get")
            return
        spec = Mount("overlay", "overlay", path / "merged")
        if self._store.release(str(spec.target), lambda: self._do_unmount(spec), DETACHED) < 0:
            raise InUseError(f"put of {id!r} without a matching get")

    def _do_mount(self, spec: Mount) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(spec.target, 0o700)
        try:
            try:
                mount_spec(spec, new_api=self._new_api)
            except FileNotFoundError:
                # a lower that is a size-limited layer whose image is not
                # mounted (after a reboot): mount the chain's images, retry
                self._lower_dirs(Path(spec.target).parent)
                mount_spec(spec, new_api=self._new_api)
        except (OSError, LaminaError) as exc:
            with contextlib.suppress(OSError):
                os.rmdir(spec.target)
            if isinstance(exc, LaminaError):
                raise
            raise _mount_error(exc, f"cannot mount {spec.target}") from exc

    def _do_unmount(self, spec: Mount) -> None:
        try:
            umount(spec.target, MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise StateError(
                    f"cannot unmount {spec.target}: {exc.strerror}", errno=exc.errno
                ) from exc
        with contextlib.suppress(OSError):
            os.rmdir(spec.target)

    def _view_mounts(self, table: list[MountInfo] | None = None) -> list[str]:
        """Overlay views mounted at ``home/<id>/merged`` (whoever mounted them)."""
        found = []
        prefix = f"{self._root}/"
        for m in table if table is not None else mountinfo():
            if not m.mountpoint.startswith(prefix):
                continue
            rel = m.mountpoint[len(prefix) :].split("/")
            if len(rel) == 2 and rel[1] == "merged" and is_layer_name(rel[0]):
                found.append(m.mountpoint)
        return found

    def _reconcile(self, startup: bool = False) -> list[str]:
        """Drop crashed holders and unmount the views nobody alive holds.

        At start-up, with no view of this store mounted at all, there is
        nothing to unmount, and dead holders' records are dropped by the
        next operation that reads them: the lock and the state file are
        left alone.
        """

        def unmount(target: str) -> None:
            with contextlib.suppress(OSError):
                umount(target, MNT_DETACH)
            with contextlib.suppress(OSError):
                os.rmdir(target)

        views = self._view_mounts()
        if startup and not views:
            return []
        return self._store.reconcile(views, unmount)

    def cleanup(self) -> None:
        """Release this process's views and all detached ones, unmount leaks, sweep leftovers.

        Views held by other live processes stay.  Leftovers: half-built
        layers in ``.staging``, half-removed ones in ``.removing`` (both only
        when the process that made them is gone), interrupted ``apply_diff``
        directories, dangling or missing short links.  Quota images are
        unmounted too when no process holds any view; they are mounted again
        on demand.
        """
        super().cleanup()
        self._store.sweep_temporaries()
        with self._store.locked() as table:
            for holders in table.values():
                holders.pop(DETACHED, None)
            self._reconcile()
            StagingArea(self._staging).sweep(remove=self._discard)
            StagingArea(self._removing).sweep(remove=self._discard)
            self._repair_links()
            for name in self._layer_names():
                self._sweep_layer(self._root / name)
            if not self._store.counts():
                for name in self._layer_names():
                    # not lazily: an image still in use (an apply_diff in another
                    # process) stays mounted rather than being detached and then
                    # mounted a second time by the next _ensure_image
                    try:
                        unmount_image(self._root / name / "quota", lazy=False)
                    except OSError as exc:
                        if exc.errno != errno.EBUSY:
                            raise

    def _repair_links(self) -> None:
        building = (
            {n.rsplit(".", 2)[0] for n in os.listdir(self._staging)}
            if (self._staging.is_dir())
            else set()
        )
        for entry in os.scandir(self._links):
            if not entry.is_symlink():
                continue
            target = os.readlink(entry.path)
            owner = Path(target).parent.name
            if owner in building:
                continue
            if not os.path.lexists(self._root / owner):
                os.unlink(entry.path)
        for name in self._layer_names():
            try:
                link = read_link(self._root / name)
            except StateError:
                continue
            if not os.path.lexists(self._links / link):
                os.symlink(f"../{name}/diff", self._links / link)

    def _sweep_layer(self, path: Path) -> None:
        """Delete the ``.apply`` stages of applies whose process is gone."""
        for parent in (path, path / "quota"):
            StagingArea(parent, _APPLY_PREFIX).sweep()

    # -- diffs -------------------------------------------------------------------------

    def _probe(self, *, persist: bool = True) -> NativeDiffProbe:
        """The native-diff verdict: from the probe file, else measured (and kept there).

        ``status`` passes ``persist=False``: a query writes nothing to the
        store, so its measurement stays in this process (a store on a
        read-only disk never persists one).  A diff keeps it for the next
        process, since measuring costs a scratch mount.
        """
        if self._native_probe is None:
            native = self._probes.get("native_diff")
            if native in ("0", "1"):
                self._native_probe = NativeDiffProbe(
                    native == "1",
                    self._probes.get("native_reason") or "",
                    self._probes.get("native_metacopy") == "1",
                )
            elif not persist or read_only(self.runroot):
                return probe_native_diff(self._root, self._mount_options)
            else:
                probe = probe_native_diff(
                    self._root, self._mount_options, self.runroot / "native-diff.json"
                )
                self._probes.put("native_diff", "1" if probe.native else "0")
                self._probes.put("native_reason", " ".join(probe.reason.split()))
                self._probes.put("native_metacopy", "1" if probe.metacopy else "0")
                self._probes.save()
                self._native_probe = probe
        return self._native_probe

    def _use_native(self) -> bool:
        """Whether diffs may be read from upper directories on this kernel."""
        if self._native_mode == "false":
            return False
        return self._probe().native

    def _is_parent(self, id: str, parent: str | None) -> bool:
        """Whether ``parent`` is the layer's real parent (None: it has none)."""
        lower = read_lower(self._existing_dir(id))
        if not parent:
            return lower is None
        if not lower:
            return False
        return lower[0] == f"{LINK_DIR}/{read_link(self._existing_dir(parent))}"

    def _native(self, id: str, parent: str | None) -> bool:
        return self._use_native() and self._is_parent(id, parent)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        """Tar of ``diff/`` with overlay whiteouts turned into ``.wh.`` entries (native)."""
        if not self._native(id, parent):
            return super().diff(id, parent)
        key = _stream_key(self._existing_dir(id))
        self._store.hold(key)
        try:
            stream = archive.export_tree(
                self._diff_dir(id), whiteouts=archive.WhiteoutFormat.OVERLAY
            )
        except BaseException:
            self._store.unhold(key)
            raise
        holding = _HoldingStream(stream, lambda: self._store.unhold(key))
        return cast(BinaryIO, holding)  # reads go straight to the exporter: no second buffer

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        """Changes read from ``diff/`` against the lower chain (native), sorted."""
        if not self._native(id, parent):
            return super().changes(id, parent)
        path = self._existing_dir(id)
        return overlay_changes(self._diff_dir(id), self._lower_dirs(path))

    def diff_size(self, id: str, parent: str | None = None) -> int:
        """``du`` of ``diff/`` (native, as overlay2), else the naive changes' size."""
        if not self._native(id, parent):
            return super().diff_size(id, parent)
        return upper_size(self._diff_dir(id))

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Extract a layer tar into ``diff/`` with overlay whiteouts, all or nothing; no mount.

        ``parent`` may be None (the layer's recorded parent is meant) or
        the real parent; another layer is an InvalidArgumentError, raised
        before anything is touched.  An empty ``diff/`` is filled in a
        sibling directory that replaces it in one rename (the fast path, no
        copy); a ``diff/`` with content is copied (a reflink where the
        filesystem can), applied and swapped in.  Holds the layer's lock:
        a concurrent apply waits, then applies on top.  Returns the size the
        archive engine reports (the sum of the entries' sizes).
        """
        path = self._existing_dir(id)
        if parent and not self._is_parent(id, parent):
            raise InvalidArgumentError(
                f"layer {parent} is not the parent of {id}: a layer tar applies to its own parent"
            )
        options = archive.ApplyOptions(whiteouts=archive.WhiteoutFormat.OVERLAY)
        with layer_lock(self._locks, id, timeout=self.lock_timeout):
            path = self._existing_dir(id)  # not removed while we waited
            self._refuse_if_held(id, path, "apply to it")
            diff_dir = self._diff_dir(id)
            area = StagingArea(diff_dir.parent, _APPLY_PREFIX)
            area.sweep()  # what an apply killed before us left
            with os.scandir(diff_dir) as entries:
                empty = next(entries, None) is None
            with area.staged("", 0o755) as stage:
                if empty:
                    st = os.lstat(diff_dir)
                    os.chown(stage, st.st_uid, st.st_gid)
                    os.chmod(stage, stat.S_IMODE(st.st_mode))
                    size = archive.apply_layer(diff, stage, options)
                    area.replace_empty(stage, diff_dir)
                else:
                    copy_tree(diff_dir, stage)
                    size = archive.apply_layer(diff, stage, options)
                    area.exchange(stage, diff_dir)  # the stage now holds the old tree
            return size

    def diff_getter(self, id: str) -> FileGetter:
        """Files by tar entry name from ``diff/`` and then the lower chain; no mount."""
        path = self._existing_dir(id)
        return _OverlayFileGetter([self._upper(id), *self._lower_dirs(path)], id)

    def views(self) -> dict[str, int]:
        """Mounted views and how many processes hold each (for diagnostics and tests)."""
        return self._store.counts()

    def mounted_views(self) -> list[str]:
        """Overlay views under ``home`` that the kernel has mounted right now."""
        return self._view_mounts()
