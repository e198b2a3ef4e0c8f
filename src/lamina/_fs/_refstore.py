"""Mount reference counts shared by every process that uses one store.

The in-process :class:`~lamina._fs.Mounter` counts ``get``/``put`` within a
process; this module counts *processes*.  A view is mounted when its first
holder anywhere appears and unmounted when its last holder anywhere goes,
so ``put`` in one process never pulls a view out from under another.

State lives in a runtime directory (``mounts.json`` beside ``mounts.lock``)
and is only read or written under an exclusive ``flock`` of the lock file.
Each holder is recorded as ``<pid>:<start time>`` with a count, so a holder
that died (``kill -9``) is recognised even if its pid was reused, and its
counts are dropped.  Every operation reconciles with the kernel's own
record, ``/proc/self/mountinfo``:

* a view whose holders are all dead but which is still mounted is a leak
  and is unmounted;
* a view that holders think is mounted but is not (unmounted behind our
  back, or a reboot) is mounted again by the next acquire;
* the whole table is discarded when the boot id changes (the runtime
  directory may live on a disk that survives reboots).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lamina._fs._atomic import made_by_other_live_process, sweep_atomic_writes, write_file_atomic
from lamina._fs._mount import MNT_DETACH, MountInfo, is_mounted, mountinfo, umount
from lamina._fs._mounter import HoldingMounter, Mount, MountFn, UnmountFn
from lamina._fs._probe import boot_id
from lamina._fs._staging import owner_alive, owner_token
from lamina.errors import StateError

__all__ = ["DETACHED", "RefStore", "SharedMounter", "holder_alive", "this_holder"]

#: The holder of views that outlive the process that asked for them (a CLI
#: ``mount`` command): never reaped for being dead, released explicitly.
DETACHED = "detached"

_Table = dict[str, dict[str, int]]


def this_holder() -> str:
    """This process's holder name, ``<pid>:<start time>``."""
    return owner_token()


def holder_alive(holder: str) -> bool:
    """Whether the process a holder name describes is still running (not a reused pid).

    :data:`DETACHED` holds belong to no process and are always alive.
    """
    if holder == DETACHED:
        return True
    return owner_alive(holder)


def _make_run_dir(path: Path) -> None:
    """Create the runtime directory; on a read-only filesystem leave it missing."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise


class RefStore:
    """Cross-process holder counts for mount targets, kept in ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        _make_run_dir(self.run_dir)
        self._lock_path = self.run_dir / "mounts.lock"
        self._state_path = self.run_dir / "mounts.json"
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._table: _Table | None = None

    # -- locking and persistence ------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[_Table]:
        """Hold the store's lock (re-entrant in this thread); yields the live table.

        Changes made to the table are written back when the outermost
        ``locked`` block ends.  The lock also serialises other per-store
        work that must not interleave across processes (mounting images).
        """
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    assert self._table is not None
                    yield self._table
                finally:
                    self._depth -= 1
                return
            import json  # not at module level: layer creation never counts views

            fd = self._open_lock()
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                table = self._load()
                before = json.dumps(table, sort_keys=True)
                self._table, self._depth = table, 1
                try:
                    yield table
                finally:
                    self._table, self._depth = None, 0
                    if json.dumps(table, sort_keys=True) != before and not self.read_only:
                        self._save(table)
            finally:
                if fd is not None:
                    os.close(fd)  # releases the flock

    #: True once the run directory was found on a read-only filesystem
    read_only = False

    def _open_lock(self) -> int | None:
        """The lock file's descriptor; on a read-only filesystem, opened read-only.

        A read-only store records no holds: nothing can be removed or
        applied through it, so a hold would protect nothing from *this*
        mount, and there is nowhere to write one.  Its lock is still taken
        when the file exists (``flock`` works on a read-only descriptor, and
        the lock is the inode's, shared with a read-write mount of the same
        store), so reads of the table never see a writer's half-done work.
        """
        if not self.read_only:
            _make_run_dir(self.run_dir)
            try:
                return os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno != errno.EROFS:
                    raise
                self.read_only = True
        try:
            return os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # nobody ever held anything in this store

    def _load(self) -> _Table:
        """The table; a damaged one (hand-edited, foreign) reads as empty, as after a reboot.

        An unreadable one (a directory in its place, EIO) is a StateError.
        A torn one cannot happen: :meth:`_save` replaces it by rename.
        """
        import json

        try:
            with open(self._state_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(
                f"{self._state_path}: cannot read the mount table: {exc.strerror}",
                errno=exc.errno,
            ) from exc
        try:
            data: Any = json.loads(raw)
        except ValueError:
            return {}
        if not isinstance(data, dict) or data.get("boot_id") != boot_id():
            return {}
        mounts = data.get("mounts")
        if not isinstance(mounts, dict):
            return {}
        table: _Table = {}
        for target, holders in mounts.items():
            if isinstance(holders, dict):
                table[str(target)] = {
                    str(h): n
                    for h, n in holders.items()
                    if isinstance(n, int) and not isinstance(n, bool) and n > 0
                }
        return table

    def _save(self, table: _Table) -> None:
        """Replace ``mounts.json`` through the one atomic write (its leftovers are swept).

        Not fsynced: the table only describes this boot's mounts, and after a
        power loss the boot id discards it anyway; the rename alone keeps it
        whole across a ``kill -9``.
        """
        import json

        data = json.dumps({"boot_id": boot_id(), "mounts": table}, sort_keys=True)
        write_file_atomic(self._state_path, data.encode(), 0o600, durable=False)

    def sweep_temporaries(self) -> None:
        """Delete the temporary files of table writes a crash interrupted (``cleanup``)."""
        with self.locked():
            if not self.read_only:  # a read-only store cannot have been written by a crash
                self._sweep_temporaries()

    def _sweep_temporaries(self) -> None:
        """Delete ``mounts.json`` temporaries whose writer is gone (called under the lock).

        :func:`write_file_atomic`'s own leftovers, and the ``mounts.json.<pid>.tmp``
        that earlier versions wrote beside it by hand.
        """
        sweep_atomic_writes(self.run_dir)
        for name in os.listdir(self.run_dir):
            pid = name[len("mounts.json.") : -len(".tmp")]
            legacy = name.startswith("mounts.json.") and name.endswith(".tmp") and pid.isdigit()
            if legacy and not made_by_other_live_process(f"x.{pid}.0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.run_dir / name)

    # -- operations ---------------------------------------------------------------------

    @staticmethod
    def _live(table: _Table, target: str) -> dict[str, int]:
        """Drop dead holders of ``target``.

        A target left with no holders stays in the table (empty) until an
        operation that can unmount it has looked at it: forgetting it here
        would forget a leaked mount.
        """
        holders = {h: n for h, n in table.get(target, {}).items() if n > 0 and holder_alive(h)}
        if target in table:
            table[target] = holders
        return holders

    @staticmethod
    def _mounted(target: str, mounts: Iterable[MountInfo] | None = None) -> bool:
        if mounts is None:
            return is_mounted(target)
        return any(m.mountpoint == target for m in mounts)

    def acquire(
        self,
        target: str,
        mount: Callable[[], None],
        unmount: Callable[[], None],
        holder: str | None = None,
    ) -> int:
        """Count this process (or ``holder``) as a holder of ``target``, mounting it if needed.

        Returns the number of holders afterwards.  A mount that is present
        but held by nobody alive is stale (its holder crashed): it is
        unmounted and made again, so a view always reflects the current layer.
        """
        with self.locked() as table:
            holders = self._live(table, target)
            mounted = self._mounted(target)
            if mounted and not holders:
                unmount()
                mounted = False
            if not mounted:
                mount()
            me = holder or this_holder()
            holders[me] = holders.get(me, 0) + 1
            table[target] = holders
            return len(holders)

    def release(self, target: str, unmount: Callable[[], None], holder: str | None = None) -> int:
        """Drop one hold of this process (or ``holder``); unmount when no live holder is left.

        Returns the number of holders still holding it, or -1 (and changes
        nothing) when an explicit ``holder`` held nothing.
        """
        with self.locked() as table:
            holders = self._live(table, target)
            me = holder or this_holder()
            if holder is not None and me not in holders:
                return -1
            if holders.get(me, 0) > 1:
                holders[me] -= 1
            else:
                holders.pop(me, None)
            if holders:
                table[target] = holders
                return len(holders)
            table.pop(target, None)
            if self._mounted(target):
                unmount()
            return 0

    def hold(self, target: str, holder: str | None = None) -> int:
        """Count a hold of a view that needs no mount (a directory served as it is).

        Returns the number of live holders afterwards.  Such holds are what
        ``remove`` and ``cleanup`` of every process respect.
        """
        with self.locked() as table:
            holders = self._live(table, target)
            me = holder or this_holder()
            holders[me] = holders.get(me, 0) + 1
            table[target] = holders
            return len(holders)

    def unhold(self, target: str, holder: str | None = None) -> int:
        """Drop one :meth:`hold`; -1 (and no change) when ``holder`` held nothing."""
        with self.locked() as table:
            holders = self._live(table, target)
            me = holder or this_holder()
            if me not in holders:
                return -1
            if holders[me] > 1:
                holders[me] -= 1
            else:
                del holders[me]
            if holders:
                table[target] = holders
            else:
                table.pop(target, None)
            return len(holders)

    def _nothing_recorded(self) -> bool:
        """True when no table exists: a query then answers without creating state."""
        return not self._depth and not self._state_path.exists()

    def holders(self, target: str) -> dict[str, int]:
        """Live holders of ``target`` and their counts."""
        if self._nothing_recorded():
            return {}
        with self.locked() as table:
            return dict(self._live(table, target))

    def first_held(self, targets: Iterable[str]) -> tuple[str, dict[str, int]] | None:
        """The first of ``targets`` that a live holder holds, with its holders; one lock."""
        if self._nothing_recorded():
            return None
        with self.locked() as table:
            for target in targets:
                holders = self._live(table, target)
                if holders:
                    return target, dict(holders)
        return None

    def counts(self) -> dict[str, int]:
        """Number of live holding processes per target (dead holders dropped)."""
        if self._nothing_recorded():
            return {}
        with self.locked() as table:
            live = {t: len(self._live(table, t)) for t in list(table)}
            return {t: n for t, n in live.items() if n}

    def reconcile(
        self,
        candidates: Iterable[str] = (),
        unmount: Callable[[str], None] | None = None,
    ) -> list[str]:
        """Drop dead holders and unmount views nobody alive holds.

        ``candidates`` are further mount targets found in mountinfo (say,
        every view under a driver's home) that are unmounted too if nobody
        holds them: that is how mounts of a crashed process stop leaking even
        if its record was lost.  Returns the targets that were unmounted.
        """
        do_unmount = unmount or (lambda t: umount(t, MNT_DETACH))
        unmounted = []
        with self.locked() as table:
            mounts = mountinfo()  # read under the lock: views change only under it
            for target in sorted(set(table) | set(candidates)):
                if self._live(table, target):
                    continue
                if self._mounted(target, mounts):
                    do_unmount(target)
                    unmounted.append(target)
                table.pop(target, None)
        return unmounted


class SharedMounter(HoldingMounter):
    """A :class:`Mounter` whose first acquire / last release per process consult a RefStore.

    ``mount_fn``/``unmount_fn`` perform the real mount and unmount; they are
    only called when no other live process holds the view.  With
    ``count_direct`` direct views (a directory served as it is) are counted
    in the store too, with no mount (:class:`HoldingMounter`): a hold is a
    hold, whatever serves it, and ``remove`` in another process must see it.
    """

    def __init__(
        self,
        store: RefStore,
        mount_fn: MountFn,
        unmount_fn: UnmountFn,
        *,
        count_direct: bool = False,
    ) -> None:
        self.store = store
        self._real_mount = mount_fn
        self._real_unmount = unmount_fn
        self._count_direct = count_direct
        super().__init__(lambda: store, self._shared_mount, self._shared_unmount)

    def _first_hold(self, mount: Mount) -> None:
        if mount.is_direct and not self._count_direct:
            return
        super()._first_hold(mount)

    def _last_release(self, mount: Mount) -> None:
        if mount.is_direct and not self._count_direct:
            return
        super()._last_release(mount)

    def _shared_mount(self, spec: Mount) -> None:
        self.store.acquire(
            str(spec.target), lambda: self._real_mount(spec), lambda: self._real_unmount(spec)
        )

    def _shared_unmount(self, spec: Mount) -> None:
        self.store.release(str(spec.target), lambda: self._real_unmount(spec))
