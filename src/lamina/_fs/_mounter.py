"""Reference-counted views: the one place where ``get``/``put`` are counted.

Drivers describe a layer's view as a :class:`Mount` and never count; the
:class:`Mounter` performs the mount on first acquire and undoes it on the last
release (containerd's lesson after Docker's per-driver counters leaked
mounts).  A ``direct`` mount is a plain directory served as it is, with no
system call, which is how vfs and unprivileged use work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lamina._frozen import Frozen
from lamina.errors import InUseError

__all__ = ["HoldStore", "HoldingMounter", "Mount", "Mounter"]


class Mount(Frozen):
    """A view of a layer described as data.

    ``type`` is ``"direct"`` for a directory served as it is (``target`` is
    that directory), or a kernel filesystem type such as ``"overlay"``.
    ``cwd`` is where relative paths in ``options`` resolve (long lower chains).
    """

    __slots__ = ("cwd", "options", "source", "target", "type")
    __match_args__ = _fields = ("type", "source", "target", "options", "cwd")

    type: str
    source: str
    target: Path
    options: tuple[str, ...]
    cwd: Path | None

    def __init__(
        self,
        type: str,
        source: str,
        target: Path,
        options: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "type", type)
        set_field(self, "source", source)
        set_field(self, "target", target)
        set_field(self, "options", options)
        set_field(self, "cwd", cwd)

    @property
    def is_direct(self) -> bool:
        """True when serving the view needs no mount at all."""
        return self.type == "direct"


MountFn = Callable[[Mount], None]
UnmountFn = Callable[[Mount], None]


def _no_op(_: Mount) -> None:
    return None


class _Entry:
    __slots__ = ("count", "mount")

    def __init__(self, mount: Mount, count: int) -> None:
        self.mount = mount
        self.count = count


class Mounter:
    """Thread-safe reference counts keyed by layer id.

    ``mount_fn``/``unmount_fn`` do the real work for non-direct mounts; they
    are injected so this counting logic stays independent of how mounting is
    done (kernel mount, helper process, another process's shared table).
    """

    def __init__(self, mount_fn: MountFn = _no_op, unmount_fn: UnmountFn = _no_op) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._mount_fn = mount_fn
        self._unmount_fn = unmount_fn

    def _first_hold(self, mount: Mount) -> None:
        """The first holder in this process appears: mount (a direct view needs nothing)."""
        if not mount.is_direct:
            self._mount_fn(mount)

    def _last_release(self, mount: Mount) -> None:
        """The last holder in this process goes: unmount (a direct view needs nothing)."""
        if not mount.is_direct:
            self._unmount_fn(mount)

    def acquire(self, key: str, describe: Callable[[], Mount]) -> Path:
        """Count one user of ``key``'s view, mounting it if it is the first."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                mount = describe()
                self._first_hold(mount)
                entry = self._entries[key] = _Entry(mount, 0)
            entry.count += 1
            return entry.mount.target

    def release(self, key: str) -> None:
        """Drop one user; unmount at zero.  Releasing an unheld view is an error."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise InUseError(f"put of {key!r} without a matching get")
            if entry.count > 1:
                entry.count -= 1
                return
            # unmount first: if it fails the view is still there and still counted
            self._last_release(entry.mount)
            del self._entries[key]

    def count(self, key: str) -> int:
        """Current number of holders of ``key`` in this process."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.count if entry else 0

    def held(self) -> list[str]:
        """Keys with at least one holder."""
        with self._lock:
            return list(self._entries)

    def release_all(self) -> None:
        """Forget every holder and unmount everything (driver cleanup)."""
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            self._last_release(entry.mount)


class HoldStore(Protocol):
    """Where holds are counted across processes (:class:`lamina._fs.RefStore`)."""

    def hold(self, target: str, holder: str | None = None) -> int:
        """Count one hold of ``target``."""
        ...

    def unhold(self, target: str, holder: str | None = None) -> int:
        """Drop one hold of ``target``."""
        ...


class HoldingMounter(Mounter):
    """A :class:`Mounter` whose direct views are also counted in a cross-process store.

    The first ``get`` of a view in this process records a hold, the last
    ``put`` drops it, so that ``remove`` and ``cleanup`` in *other*
    processes see the view as in use.  ``store`` is called on the first
    hold only: a process that never ``get``s never loads or creates it.
    """

    def __init__(
        self,
        store: Callable[[], HoldStore],
        mount_fn: MountFn = _no_op,
        unmount_fn: UnmountFn = _no_op,
    ) -> None:
        super().__init__(mount_fn, unmount_fn)
        self._store = store

    def _first_hold(self, mount: Mount) -> None:
        if mount.is_direct:
            self._store().hold(str(mount.target))
        else:
            self._mount_fn(mount)

    def _last_release(self, mount: Mount) -> None:
        if mount.is_direct:
            self._store().unhold(str(mount.target))
        else:
            self._unmount_fn(mount)
