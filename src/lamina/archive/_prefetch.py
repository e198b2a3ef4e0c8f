"""Read the metadata a changes walk will need, many requests at a time.

With cold caches, ``overlay_changes`` waits for one disk read after
another: the upper directory's blocks and inodes, then the same name looked
up in the lower layers.  Those waits, not Python, are its cost on a small
change (measured on a loop-mounted ext4 with direct I/O: 50-60 ms for 100
changed files in a 50,000-file image, about 5 ms of it Python).  Here threads issue
the same system calls side by side (each releases the interpreter lock
while it waits): every lower lookup is a task of its own, so the reads
overlap and the walk that follows finds the kernel's caches warm (measured:
34-40 ms there; in the benchmark run 31.7 ms, against 62.8 ms before).  A
listing of the upper tree alone gains nothing (``diff_size`` does not use
this): its reads depend on each other.  Nothing is returned and nothing is
followed: a failure here is ignored, and the real walk meets and reports it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

__all__ = ["warm_for_changes"]

_THREADS = 8
_PROBE_TASKS = 8
_COLD_SECONDS = 0.001  # for the probe tasks: a few disk reads, or none at all
#: Entries warmed at most: a small change is warmed whole; for a big one, whose
#: walk costs far more than its waits, a second pass over everything would
#: only add work when the caches are warm already.
_MAX_ENTRIES = 4096


def warm_for_changes(upper: str, lowers: Sequence[str], threads: int = _THREADS) -> None:
    """lstat everything below ``upper`` and each name's matches in ``lowers``, in parallel.

    The first few tasks run in this thread, timed: when they take no time
    the caches are warm, the walk will not wait either, and threads would
    only fight over the interpreter lock (measured: a 4 ms call became 16 ms).
    """
    warmer = _Warmer(upper, list(lowers))
    start = time.perf_counter()
    for _ in range(_PROBE_TASKS):
        if not warmer.todo:
            return
        warmer.todo.extend(warmer.do(warmer.todo.pop()))
    if warmer.todo and time.perf_counter() - start >= _COLD_SECONDS:
        warmer.run(threads)


# A task: a directory of the upper tree to list (relative path), or the lower
# paths of one name, looked up in order until one exists.
_Task = str | tuple[str, ...]


class _Warmer:
    def __init__(self, upper: str, lowers: list[str]) -> None:
        self.upper = upper
        self.lowers = lowers
        self.todo: list[_Task] = [""]
        self.busy = 0
        self.entries = 0
        self.cond = threading.Condition()

    def run(self, threads: int) -> None:
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _work(self) -> None:
        cond = self.cond
        while True:
            with cond:
                while not self.todo and self.busy:
                    cond.wait()
                if not self.todo:
                    cond.notify_all()
                    return
                task = self.todo.pop()
                self.busy += 1
            found: list[_Task] = []
            try:
                found = self.do(task)
            finally:
                with cond:
                    self.todo.extend(found)
                    self.busy -= 1
                    cond.notify_all()

    def do(self, task: _Task) -> list[_Task]:
        """Run one task; the new tasks it found."""
        if isinstance(task, tuple):
            _first_existing(task)
            return []
        return self._list(task)

    def _list(self, rel: str) -> list[_Task]:
        """Stat a directory's entries; its subdirectories and lower lookups are new tasks."""
        prefix = f"{rel}/" if rel else ""
        if self.entries >= _MAX_ENTRIES:
            return []
        try:
            with os.scandir(f"{self.upper}/{rel}" if rel else self.upper) as it:
                entries = list(it)
        except OSError:
            return []
        self.entries += len(entries)  # under the GIL: at worst a little over the budget
        tasks: list[_Task] = []
        for entry in entries:
            try:
                entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    tasks.append(prefix + entry.name)
            except OSError:
                continue
            if self.lowers:
                tasks.append(tuple(f"{lower}/{prefix}{entry.name}" for lower in self.lowers))
        return tasks


def _first_existing(paths: tuple[str, ...]) -> None:
    """The walk stops at the first layer that has the name: so does the warming."""
    for path in paths:
        try:
            os.lstat(path)
            return
        except OSError:
            pass
