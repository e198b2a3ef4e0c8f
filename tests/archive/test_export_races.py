"""Export while a running container swaps what was listed: no host byte may reach the tar.

A container can ``rename`` a symlink to a host file, a device node of a host
disk, a FIFO a host process writes to, or a symlink to a host directory over
a name the export has listed.  The races are made deterministic at two seams:

* the export is lazy: the first ``read`` lists the root (and stops inside a
  4 MiB first file), the swap happens, and the rest is read;
* for :func:`export_changes`, which ``lstat``\\ s each path just before
  opening it, the swap is done by the exporter's own ``os.open`` of the body
  (a real rename, made at the one instant that matters).

Each case asserts that the sentinel bytes of the host never appear in what
was read and that the export stops with :class:`LayerChangedError` naming
the path (a :class:`~lamina.errors.LaminaError`).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from lamina import Change, ChangeKind
from lamina.archive import export_changes, export_tree
from lamina.errors import LaminaError, LayerChangedError

SENTINEL = b"HOST-SECRET-9c1e4f"
BIG = 4 << 20  # bigger than one buffered read: the first read stops inside it
BODY = b"L" * 4096  # the listed body of b-file; a swapped-in reader would fill it

# A swap: (tmp dir, root, name) -> the swapped-in thing is renamed over root/name.
Swap = Callable[[Path, Path, str], None]


def _host(tmp: Path) -> Path:
    host = tmp / "host"
    if not host.exists():
        host.mkdir()
        (host / "f").write_bytes(SENTINEL * 256)
        (host / "secret").write_bytes(SENTINEL * 256)
    return host


def swap_symlink_to_host_file(tmp: Path, root: Path, name: str) -> None:
    stage = tmp / "stage-link"
    os.symlink(_host(tmp) / "secret", stage)
    os.rename(stage, root / name)


_FIFO_WRITERS: list[int] = []


def swap_fifo_fed_by_host(tmp: Path, root: Path, name: str) -> None:
    stage = tmp / "stage-fifo"
    os.mkfifo(stage)
    fd = os.open(stage, os.O_RDWR | os.O_NONBLOCK)  # a host process holds it, full of data
    os.write(fd, SENTINEL * 256)
    _FIFO_WRITERS.append(fd)
    os.rename(stage, root / name)


def swap_char_device(tmp: Path, root: Path, name: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    stage = tmp / "stage-chr"
    os.mknod(stage, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    os.rename(stage, root / name)


def swap_other_regular_file(tmp: Path, root: Path, name: str) -> None:
    stage = tmp / "stage-reg"
    stage.write_bytes(BODY)  # same size, other inode: not what was listed
    os.rename(stage, root / name)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[int]:
    """The rdev of a loop block device whose disk holds the sentinel (root only)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "disk.img"
    backing.write_bytes(SENTINEL * (1 << 16))
    proc = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"no loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield os.stat(dev).st_rdev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _swap_block_device(rdev: int) -> Swap:
    def swap(tmp: Path, root: Path, name: str) -> None:
        stage = tmp / "stage-blk"
        os.mknod(stage, 0o600 | stat.S_IFBLK, rdev)
        os.rename(stage, root / name)

    return swap


FILE_SWAPS: dict[str, Swap] = {
    "symlink-to-host-file": swap_symlink_to_host_file,
    "fifo-fed-by-host": swap_fifo_fed_by_host,
    "char-device": swap_char_device,
    "other-regular-file": swap_other_regular_file,
}


@pytest.fixture(autouse=True)
def _close_fifo_writers() -> Iterator[None]:
    yield
    while _FIFO_WRITERS:
        os.close(_FIFO_WRITERS.pop())


def _layer(tmp: Path) -> Path:
    root = tmp / "layer"
    (root / "d").mkdir(parents=True)
    (root / "a-big").write_bytes(b"a" * BIG)
    (root / "b-file").write_bytes(BODY)
    (root / "d" / "f").write_bytes(b"layer d/f")
    return root


def _drain(stream: BinaryIO, first: bytes = b"") -> tuple[bytes, BaseException | None]:
    """Everything the stream gives until its end or its error (then closed)."""
    chunks = [first]
    error: BaseException | None = None
    try:
        while chunk := stream.read(1 << 16):
            chunks.append(chunk)
    except Exception as exc:  # what a caller of the export would see
        error = exc
    finally:
        stream.close()
    return b"".join(chunks), error


def _assert_refused(data: bytes, error: BaseException | None, path: str) -> None:
    assert SENTINEL not in data, "host bytes in the exported tar"
    assert isinstance(error, LaminaError), f"expected a lamina error, got {error!r}"
    assert isinstance(error, LayerChangedError), repr(error)
    assert error.path == path


def _export_tree_with_swap(tmp: Path, swap: Swap, name: str) -> tuple[bytes, BaseException | None]:
    root = _layer(tmp)
    stream = export_tree(root)
    first = stream.read(1)  # the root is listed; the export is inside a-big
    swap(tmp, root, name)
    return _drain(stream, first)


@pytest.mark.parametrize("kind", sorted(FILE_SWAPS))
def test_export_tree_refuses_a_listed_file_swapped(tmp_path: Path, kind: str) -> None:
    data, error = _export_tree_with_swap(tmp_path, FILE_SWAPS[kind], "b-file")
    _assert_refused(data, error, "b-file")


def test_export_tree_refuses_a_listed_file_swapped_for_a_host_disk(
    tmp_path: Path, loop_device: int
) -> None:
    data, error = _export_tree_with_swap(tmp_path, _swap_block_device(loop_device), "b-file")
    _assert_refused(data, error, "b-file")


def _swap_dir_for_host_dir(tmp: Path, root: Path, name: str) -> None:
    os.rename(root / name, tmp / "moved-away")
    os.symlink(_host(tmp), root / name)


def test_export_tree_does_not_enter_a_listed_directory_swapped_for_a_symlink(
    tmp_path: Path,
) -> None:
    data, error = _export_tree_with_swap(tmp_path, _swap_dir_for_host_dir, "d")
    _assert_refused(data, error, "d")


# --- export_changes: the swap lands between the lstat and the open of the body


@pytest.fixture
def swap_on_open(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[], None]], None]:
    """Run ``action`` when the exporter opens ``name`` (not as a directory), once."""
    real_open = os.open

    def arm(name: str, action: Callable[[], None]) -> None:
        armed = [True]

        def hooked(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if armed[0] and path == name and not flags & os.O_DIRECTORY:
                armed[0] = False
                action()
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", hooked)

    return arm


_CHANGES = [
    Change("/a-big", ChangeKind.ADD),
    Change("/b-file", ChangeKind.ADD),
    Change("/d", ChangeKind.ADD),
    Change("/d/f", ChangeKind.ADD),
]


@pytest.mark.parametrize("kind", sorted(FILE_SWAPS))
def test_export_changes_refuses_a_file_swapped_before_its_open(
    tmp_path: Path, kind: str, swap_on_open: Callable[[str, Callable[[], None]], None]
) -> None:
    root = _layer(tmp_path)
    swap_on_open("b-file", lambda: FILE_SWAPS[kind](tmp_path, root, "b-file"))
    data, error = _drain(export_changes(root, _CHANGES))
    _assert_refused(data, error, "b-file")


def test_export_changes_refuses_a_host_disk_swapped_before_its_open(
    tmp_path: Path, loop_device: int, swap_on_open: Callable[[str, Callable[[], None]], None]
) -> None:
    root = _layer(tmp_path)
    swap = _swap_block_device(loop_device)
    swap_on_open("b-file", lambda: swap(tmp_path, root, "b-file"))
    data, error = _drain(export_changes(root, _CHANGES))
    _assert_refused(data, error, "b-file")


def test_export_changes_does_not_enter_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    root = _layer(tmp_path)
    stream = export_changes(root, _CHANGES)
    first = stream.read(1)  # inside a-big: nothing of d is opened yet
    _swap_dir_for_host_dir(tmp_path, root, "d")
    data, error = _drain(stream, first)
    _assert_refused(data, error, "d/f")


def test_a_file_removed_after_the_listing_is_left_out(tmp_path: Path) -> None:
    """Vanishing is not a swap: the entry is skipped, as Docker does, and the tar completes."""
    root = _layer(tmp_path)
    stream = export_tree(root)
    first = stream.read(1)
    os.unlink(root / "b-file")
    data, error = _drain(stream, first)
    assert error is None
    assert b"b-file" not in data and b"layer d/f" in data


def test_reading_on_after_the_error_never_gives_an_end_of_archive(tmp_path: Path) -> None:
    """A caller that swallows the error and reads on must not get a tar that looks whole."""
    root = _layer(tmp_path)
    stream = export_tree(root)
    first = stream.read(1)
    swap_symlink_to_host_file(tmp_path, root, "b-file")
    _, error = _drain_open(stream)
    assert isinstance(error, LayerChangedError)
    for _ in range(2):
        with pytest.raises(LayerChangedError):
            stream.read(1 << 16)
    stream.close()
    assert first


def _drain_open(stream: BinaryIO) -> tuple[bytes, BaseException | None]:
    chunks = []
    try:
        while chunk := stream.read(1 << 16):
            chunks.append(chunk)
    except Exception as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


# --- the primitive itself: one rule whether the kernel walks (openat2) or we do


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_open_dir_beneath_never_crosses_a_symlink(tmp_path: Path, use_openat2: bool) -> None:
    from lamina.archive import _paths

    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    os.symlink(_host(tmp_path), root / "a" / "link")
    (root / "a" / "file").write_bytes(b"x")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(_paths.open_dir_beneath(fd, "a/b", use_openat2=use_openat2))
        for rel in ("a/link", "a/link/x", "a/file", "a/file/x"):
            with pytest.raises(OSError) as caught:
                _paths.open_dir_beneath(fd, rel, use_openat2=use_openat2)
            # the kernel says ELOOP or ENOTDIR for a symlink, ENOTDIR for a file
            assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR), rel
    finally:
        os.close(fd)


def test_open_beneath_reaches_past_path_max_without_following(tmp_path: Path) -> None:
    """openat2 gives up past PATH_MAX (ENAMETOOLONG); the walk takes over, with the same rule."""
    from lamina.archive import open_beneath
    from lamina.errors import NotFoundError

    root = tmp_path / "root"
    root.mkdir()
    part = "d" * 200
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(25):  # 25 * 201 bytes: past PATH_MAX (4096)
        os.mkdir(part, dir_fd=fd)
        nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with os.fdopen(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"deep")
    os.symlink(_host(tmp_path) / "secret", "link", dir_fd=fd)
    os.close(fd)
    rel = "/".join([part] * 25)
    with open_beneath(root, rel + "/f") as body:
        assert body.read() == b"deep"
    with pytest.raises(NotFoundError):
        open_beneath(root, rel + "/link")
