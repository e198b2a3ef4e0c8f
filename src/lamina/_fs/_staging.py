"""The staging area, and the per-layer locks that keep concurrent writers apart.

Every driver builds a layer the same way:

1. **new** — :meth:`StagingArea.new` makes a private directory
   ``<area>/<base>.<pid>.<random>``; its name is the area's *record* of who
   is building it;
2. **fill** — the driver writes into it (a copy of the parent, an applied tar);
3. **publish** — :meth:`StagingArea.publish` renames it to its visible name
   with ``RENAME_NOREPLACE`` (a new layer), :meth:`StagingArea.replace_empty`
   renames it over an empty directory, or :meth:`StagingArea.exchange`
   swaps it with the visible tree in one ``RENAME_EXCHANGE`` (an apply into
   a layer that has content), after which the stage holds the old tree and
   is discarded;
4. **sweep** — :meth:`StagingArea.sweep` deletes leftovers of crashed
   builders.  It keys on its own records only: an entry whose name does not
   parse as a stage of this area is never touched (a layer id that happens to
   end in ``-removing`` is not a leftover), and a stage whose process is still
   alive — another process, or another driver object or thread in this one
   (:data:`_IN_FLIGHT`) — is work in flight, not a leftover.

So at every instant the visible name holds the complete old tree or the
complete new one, whatever fails (a truncated tar, ``ENOSPC``, ``kill -9``).

Locks.  :func:`layer_lock` takes an ``flock`` on ``<lock dir>/<digest of the
key>.lock``, exclusive for writers (apply, remove) and shared for readers
that need the layer to stay (creating a child on it).  A waiter polls until
its timeout and then raises :class:`~lamina.errors.LockTimeoutError` (an
``InUseError``).  The kernel drops a dead holder's lock with its last file
descriptor, so ``kill -9`` never leaves a layer locked, and
:func:`lock_is_free` lets ``cleanup`` tell a live apply (locked) from a
crashed one (free).  A lock file may be unlinked by whoever holds it
exclusively (the remover of its layer): a locker checks after ``flock`` that
the file it locked is still the one at the path, and starts again if not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lamina._fs._atomic import (
    exchange_dirs,
    made_by_other_live_process,
    make_staging_dir,
    remove_tree,
    rename_noreplace,
)
from lamina.errors import LockTimeoutError

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "StagingArea",
    "layer_lock",
    "lock_is_free",
    "owner_alive",
    "owner_token",
    "unlink_lock",
]

#: Seconds a writer waits for another process's apply or remove of the same layer.
#: An apply of a large layer takes minutes on a slow disk; Docker waits forever.
DEFAULT_LOCK_TIMEOUT = 600.0

# stages being filled by this process, by absolute path: the pid in a stage's
# name cannot tell apart two driver objects (or threads) of one process
_IN_FLIGHT: set[str] = set()
_IN_FLIGHT_LOCK = threading.Lock()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None  # a zombie holds nothing any more
    return fields[19].decode()


def owner_token(pid: int | None = None) -> str:
    """``<pid>:<start time>``: names a process so that a reused pid is not mistaken for it."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid)}"


def owner_alive(token: str) -> bool:
    """Whether the process an :func:`owner_token` names is still running."""
    pid_text, _, start = token.partition(":")
    if not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) == start


def _parse_stage(name: str) -> tuple[str, int] | None:
    """``(base, pid)`` of a stage name ``<base>.<pid>.<hex digits>``, else None."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
        return None
    if any(c not in "0123456789abcdef" for c in parts[2]):
        return None
    return parts[0], int(parts[1])


class StagingArea:
    """A directory of layers (or layer parts) being built; see the module docstring.

    ``prefix`` narrows the area to stages whose base starts with it, for an
    area that shares its directory with other entries (a layer's own
    directory holding its ``.apply`` stages next to ``diff/``).
    """

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self.root = Path(root)
        self.prefix = prefix

    def new(self, base: str, mode: int = 0o700) -> Path:
        """Make a fresh private stage for ``base``; it is in flight until discarded."""
        stage = make_staging_dir(self.root, self.prefix + base, mode)  # EROFS: typed there
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.add(os.fspath(stage))
        return stage

    def publish(self, stage: Path, target: str | os.PathLike[str]) -> None:
        """Rename the stage to ``target``; FileExistsError if ``target`` exists."""
        rename_noreplace(stage, target)
        self.forget(stage)

    def replace_empty(self, stage: Path, target: str | os.PathLike[str]) -> None:
        """Rename the stage over ``target``, an *empty* directory, in one step.

        rename(2) replaces an empty directory atomically and fails with
        ``ENOTEMPTY`` on one with content, which is then a FileExistsError
        (someone filled it meanwhile; the caller's lock should prevent that).
        """
        try:
            os.rename(stage, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(exc.errno, exc.strerror, os.fspath(target)) from exc
            raise
        self.forget(stage)

    def exchange(self, stage: Path, target: str | os.PathLike[str]) -> None:
        """Swap the stage with ``target`` in one step; the stage then holds the old tree."""
        exchange_dirs(stage, target)

    def forget(self, stage: Path) -> None:
        """The stage is published (or gone): it is no longer this process's work in flight."""
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.discard(os.fspath(stage))

    def discard(self, stage: Path, remove: Callable[[Path], None] = remove_tree) -> None:
        """Delete a stage (or the old tree an exchange left in it)."""
        try:
            remove(stage)
        finally:
            self.forget(stage)

    @contextlib.contextmanager
    def staged(self, base: str, mode: int = 0o700) -> Iterator[Path]:
        """A new stage that is discarded when the block ends, whatever happens."""
        stage = self.new(base, mode)
        try:
            yield stage
        finally:
            if os.path.lexists(stage):
                self.discard(stage)
            else:
                self.forget(stage)

    def leftovers(self, base: str | None = None) -> list[Path]:
        """Stages of this area made by processes that are gone (optionally of one ``base``)."""
        try:
            names = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        with _IN_FLIGHT_LOCK:
            in_flight = set(_IN_FLIGHT)
        found = []
        for name in names:
            parsed = _parse_stage(name)
            if parsed is None or not parsed[0].startswith(self.prefix):
                continue  # not one of our records: never ours to delete
            if base is not None and parsed[0] != (self.prefix + base)[:200]:
                continue
            path = self.root / name
            if os.fspath(path) in in_flight or made_by_other_live_process(name):
                continue  # work in flight, here or in another process
            found.append(path)
        return found

    def sweep(
        self, base: str | None = None, remove: Callable[[Path], None] = remove_tree
    ) -> list[Path]:
        """Delete the leftovers of crashed builders; returns what was deleted."""
        swept = self.leftovers(base)
        for path in swept:
            remove(path)
        return swept


def _lock_path(lock_dir: str | os.PathLike[str], key: str) -> str:
    # keys are layer ids, up to 255 bytes: name the file by a digest
    return os.path.join(lock_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")


def _open_locked(path: str, how: int) -> int | None:
    """Open and ``flock`` the lock file; None if it is held (``LOCK_NB``) by someone else."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder unlinked it while we waited: lock the new one


@contextlib.contextmanager
def layer_lock(
    lock_dir: str | os.PathLike[str],
    key: str,
    *,
    timeout: float = DEFAULT_LOCK_TIMEOUT,
    shared: bool = False,
    what: str = "layer",
) -> Iterator[None]:
    """Hold the lock of ``key`` for the block; LockTimeoutError after ``timeout`` seconds.

    ``timeout=0`` does not wait at all.  The wait polls (10 ms, doubling to
    200 ms) rather than blocking in ``flock``, so that it can time out
    without a signal.
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = _lock_path(lock_dir, key)
    how = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        fd = _open_locked(path, how)
        if fd is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeoutError(
                f"{what} {key} is locked by another apply or remove "
                f"(waited {timeout:g} s); retry when it is done",
                errno=errno.EWOULDBLOCK,
            )
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.2)
    try:
        yield
    finally:
        os.close(fd)


def lock_is_free(lock_dir: str | os.PathLike[str], key: str) -> bool:
    """Whether nobody holds ``key``'s lock right now (a crashed holder holds nothing)."""
    path = _lock_path(lock_dir, key)
    if not os.path.exists(path):
        return True
    fd = _open_locked(path, fcntl.LOCK_EX)
    if fd is None:
        return False
    os.close(fd)
    return True


def unlink_lock(lock_dir: str | os.PathLike[str], key: str) -> None:
    """Delete ``key``'s lock file; call it only while holding that lock exclusively."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_lock_path(lock_dir, key))
