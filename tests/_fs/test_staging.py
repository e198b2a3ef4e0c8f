"""The staging area and the per-layer locks (lamina._fs._staging), with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lamina._fs import (
    StagingArea,
    layer_lock,
    lock_is_free,
    owner_alive,
    owner_token,
    sweep_atomic_writes,
    unlink_lock,
    write_file_atomic,
)
from lamina.errors import InUseError, LockTimeoutError

_DEAD = 2**22 + 12345  # above pid_max on default systems
_SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_publish_is_noreplace_and_exchange_swaps(tmp_path: Path) -> None:
    area = StagingArea(tmp_path / "staging")
    target = tmp_path / "layer"
    stage = area.new("layer")
    (stage / "new").write_text("new")
    area.publish(stage, target)
    assert (target / "new").read_text() == "new"
    other = area.new("layer")
    with pytest.raises(FileExistsError):
        area.publish(other, target)
    (other / "newer").write_text("newer")
    area.exchange(other, target)
    assert (target / "newer").exists() and (other / "new").exists()
    area.discard(other)
    assert os.listdir(tmp_path / "staging") == []


def test_staged_block_discards_on_failure(tmp_path: Path) -> None:
    area = StagingArea(tmp_path / "staging")
    with pytest.raises(RuntimeError), area.staged("x") as stage:
        (stage / "half").write_text("half")
        raise RuntimeError("fill failed")
    assert os.listdir(tmp_path / "staging") == []


def test_sweep_keys_on_its_own_records_and_live_owners(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    root.mkdir()
    dead = root / f"a.{_DEAD}.0123456789ab"
    live_other = root / f"b.{os.getppid()}.0123456789ab"
    foreign = root / "c-removing"  # a name we never made: not ours to delete
    for path in (dead, live_other, foreign):
        path.mkdir()
    area = StagingArea(root)
    mine = area.new("d")  # in flight in this process
    second = StagingArea(root)  # another driver object of this process
    assert second.sweep() == [dead]
    assert live_other.exists() and foreign.exists() and mine.exists()
    area.discard(mine)
    own_leftover = root / f"e.{os.getpid()}.0123456789ab"  # ours, but not in flight
    own_leftover.mkdir()
    assert second.sweep() == [own_leftover]


def test_prefix_narrows_the_area(tmp_path: Path) -> None:
    (tmp_path / f".apply.{_DEAD}.0123456789ab").mkdir()
    (tmp_path / f"diff.{_DEAD}.0123456789ab").mkdir()
    assert [p.name for p in StagingArea(tmp_path, ".apply").sweep()] == [
        f".apply.{_DEAD}.0123456789ab"
    ]
    assert (tmp_path / f"diff.{_DEAD}.0123456789ab").exists()


def test_sweep_of_one_base(tmp_path: Path) -> None:
    for base in ("x", "y"):
        (tmp_path / f"{base}.{_DEAD}.0123456789ab").mkdir()
    assert [p.name for p in StagingArea(tmp_path).sweep("x")] == [f"x.{_DEAD}.0123456789ab"]


_HOLD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from lamina._fs import layer_lock
    with layer_lock(sys.argv[2], "layer", shared=sys.argv[3] == "shared"):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def _holder(lock_dir: Path, how: str = "exclusive") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, _SRC, str(lock_dir), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_times_out_with_a_typed_error_while_another_process_holds_it(
    tmp_path: Path,
) -> None:
    proc = _holder(tmp_path)
    try:
        assert not lock_is_free(tmp_path, "layer")
        start = time.monotonic()
        with pytest.raises(LockTimeoutError) as info, layer_lock(tmp_path, "layer", timeout=0.3):
            pass
        assert isinstance(info.value, InUseError)
        assert time.monotonic() - start >= 0.3
        with layer_lock(tmp_path, "other", timeout=0):
            pass  # other keys are independent
    finally:
        proc.communicate("")
    with layer_lock(tmp_path, "layer", timeout=0):
        pass


def test_a_killed_holder_holds_nothing(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    proc.kill()
    proc.wait()
    assert lock_is_free(tmp_path, "layer")
    with layer_lock(tmp_path, "layer", timeout=0):
        pass


def test_shared_locks_coexist_and_exclude_a_writer(tmp_path: Path) -> None:
    proc = _holder(tmp_path, "shared")
    try:
        with layer_lock(tmp_path, "layer", shared=True, timeout=0):
            pass
        with pytest.raises(LockTimeoutError), layer_lock(tmp_path, "layer", timeout=0):
            pass
    finally:
        proc.communicate("")


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    with (
        layer_lock(tmp_path, "layer"),
        pytest.raises(LockTimeoutError),
        layer_lock(tmp_path, "layer", timeout=0),
    ):
        pass


def test_unlinked_lock_file_is_not_a_second_lock(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        # a remover that holds the lock may unlink its file; a waiter must not
        # lock the orphaned inode while a new file at the path is locked by another
        [name] = os.listdir(tmp_path)
        os.unlink(tmp_path / name)
        with layer_lock(tmp_path, "layer", timeout=0):
            assert os.listdir(tmp_path) == [name]
    finally:
        proc.communicate("")
    with layer_lock(tmp_path, "layer", timeout=0):
        unlink_lock(tmp_path, "layer")
    assert os.listdir(tmp_path) == []


def test_owner_tokens_tell_a_reused_pid_from_the_owner() -> None:
    assert owner_alive(owner_token())
    assert not owner_alive(f"{os.getpid()}:1")  # our pid, another start time
    assert not owner_alive(f"{_DEAD}:1")
    assert not owner_alive("garbage")


def test_sweep_atomic_writes_removes_only_dead_writers_temporaries(tmp_path: Path) -> None:
    write_file_atomic(tmp_path / "record", b"x")
    dead = tmp_path / f".record.{_DEAD}.0123456789ab.tmp"
    live = tmp_path / f".record.{os.getppid()}.0123456789ab.tmp"
    other = tmp_path / ".something.tmp"
    for path in (dead, live, other):
        path.write_bytes(b"half")
    assert sweep_atomic_writes(tmp_path) == [dead.name]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "record"])
