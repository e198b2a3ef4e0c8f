"""``diff`` of a read-write layer whose container swaps what was listed, on every driver.

The layer is held with ``get`` as a running container holds it, and the
container's moves are made through that view.  The race is deterministic:
the layer's first file is 8 MiB, so once the export has listed the layer
(vfs and overlay list on the first read; windowsfilter lists in ``diff``
itself and its producer thread blocks on the pipe inside that file) nothing
after it has been opened yet.  Then the swap, then the rest of the stream.

vfs ``diff(C, None)`` and overlay's native ``diff`` copied a host disk's
bytes (a loop device node renamed over a listed file) and a host FIFO's
into the tar; windowsfilter's sandbox ``diff`` followed a directory swapped
for a symlink and exported a host file.  Now every driver stops with
:class:`~lamina.errors.LayerChangedError` and no host byte is read.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from lamina import drivers
from lamina.drivers._base import Driver
from lamina.errors import LaminaError, LayerChangedError, NotFoundError

SENTINEL = b"HOST-SECRET-4be07a"
BIG = 8 << 20  # past the pipe, the writer's buffer and one buffered read

Swap = Callable[[Path, Path, str], None]


def _host(tmp: Path) -> Path:
    host = tmp / "host"
    if not host.exists():
        host.mkdir()
        (host / "f").write_bytes(SENTINEL * 256)
        (host / "secret").write_bytes(SENTINEL * 256)
    return host


@pytest.fixture(params=["vfs", "overlay", "windowsfilter"])
def layer(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Driver, str, Path]]:
    """(driver, id, the view a container writes to) of a read-write layer with no parent."""
    name = request.param
    options: dict[str, str] = {}
    if name == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay needs root")
    if name == "windowsfilter":
        monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
        options = {"windowsfilter.sandbox": "dir"}
    driver = drivers.new_driver(name, tmp_path / "store", options)
    driver.create_read_write("c", None)
    view = Path(driver.get("c"))
    try:
        (view / "a-big").write_bytes(b"a" * BIG)
        (view / "b-file").write_bytes(b"L" * 4096)
        (view / "d").mkdir()
        (view / "d" / "f").write_bytes(b"layer d/f")
        yield driver, "c", view
    finally:
        driver.put("c")
        driver.cleanup()


_FIFO_WRITERS: list[int] = []


@pytest.fixture(autouse=True)
def _close_fifo_writers() -> Iterator[None]:
    yield
    while _FIFO_WRITERS:
        os.close(_FIFO_WRITERS.pop())


def _stage(view: Path) -> Path:
    """Where the container prepares what it swaps in (made after the listing: never exported)."""
    stage = view / "zz-stage"
    stage.mkdir(exist_ok=True)
    return stage


def swap_symlink(tmp: Path, view: Path, name: str) -> None:
    link = _stage(view) / "link"
    os.symlink(_host(tmp) / "secret", link)
    os.rename(link, view / name)


def swap_fifo(tmp: Path, view: Path, name: str) -> None:
    fifo = _stage(view) / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a host process holds it, full of data
    os.write(fd, SENTINEL * 256)
    _FIFO_WRITERS.append(fd)
    os.rename(fifo, view / name)


def swap_dir(tmp: Path, view: Path, name: str) -> None:
    os.rename(view / name, _stage(view) / "moved-away")
    os.symlink(_host(tmp), view / name)


@pytest.fixture
def host_disk(tmp_path: Path) -> Iterator[Swap]:
    """A swap that renames a node of a loop device (whose disk holds the sentinel) over a name."""
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
    rdev = os.stat(dev).st_rdev

    def swap(tmp: Path, view: Path, name: str) -> None:
        node = _stage(view) / "disk"
        os.mknod(node, 0o600 | stat.S_IFBLK, rdev)
        os.rename(node, view / name)

    try:
        yield swap
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _diff_with_swap(
    tmp: Path, layer: tuple[Driver, str, Path], swap: Swap, name: str
) -> tuple[bytes, BaseException | None]:
    driver, id, view = layer
    chunks: list[bytes] = []
    error: BaseException | None = None
    stream: BinaryIO = driver.diff(id, None)
    try:
        chunks.append(stream.read(1))  # listed; the export is inside a-big
        swap(tmp, view, name)
        while chunk := stream.read(1 << 16):
            chunks.append(chunk)
    except Exception as exc:  # what the caller of diff sees
        error = exc
    finally:
        stream.close()
    return b"".join(chunks), error


def _assert_refused(data: bytes, error: BaseException | None, path: str) -> None:
    assert SENTINEL not in data, "host bytes in the exported tar"
    assert isinstance(error, LaminaError), f"expected a lamina error, got {error!r}"
    assert isinstance(error, LayerChangedError), repr(error)
    assert error.path.endswith(path)


def test_file_swapped_for_a_symlink_to_a_host_file(
    tmp_path: Path, layer: tuple[Driver, str, Path]
) -> None:
    data, error = _diff_with_swap(tmp_path, layer, swap_symlink, "b-file")
    _assert_refused(data, error, "b-file")


def test_directory_swapped_for_a_symlink_to_a_host_directory(
    tmp_path: Path, layer: tuple[Driver, str, Path]
) -> None:
    data, error = _diff_with_swap(tmp_path, layer, swap_dir, "d")
    assert SENTINEL not in data, "host bytes in the exported tar"
    assert isinstance(error, LayerChangedError), repr(error)


def test_file_swapped_for_a_fifo_a_host_process_feeds(
    tmp_path: Path, layer: tuple[Driver, str, Path]
) -> None:
    data, error = _diff_with_swap(tmp_path, layer, swap_fifo, "b-file")
    assert SENTINEL not in data, "host bytes in the exported tar"
    if layer[0].name == "windowsfilter":
        # a FIFO listed as a file has no body in a Windows layer (size 0): never opened
        assert error is None or isinstance(error, LaminaError), repr(error)
    else:
        _assert_refused(data, error, "b-file")


def test_file_swapped_for_a_host_disk_device(
    tmp_path: Path, layer: tuple[Driver, str, Path], host_disk: Swap
) -> None:
    data, error = _diff_with_swap(tmp_path, layer, host_disk, "b-file")
    assert SENTINEL not in data, "host bytes in the exported tar"
    if layer[0].name == "windowsfilter":
        # a device node listed as a file has no body in a Windows layer (size 0): never opened
        assert error is None or isinstance(error, LaminaError), repr(error)
    else:
        _assert_refused(data, error, "b-file")


def _getter_name(driver: Driver, rel: str) -> str:
    return f"Files/{rel}" if driver.name == "windowsfilter" else rel


@pytest.mark.parametrize("swap", [swap_symlink, swap_fifo, swap_dir], ids=lambda f: f.__name__)
def test_file_getter_serves_only_the_regular_file_at_a_name(
    tmp_path: Path, layer: tuple[Driver, str, Path], swap: Swap
) -> None:
    """``diff_getter`` (tar-split replay) opens beneath the view and refuses anything swapped in.

    Before, overlay's and windowsfilter's getters let a bare ``OSError``
    out for a FIFO or a symlink at the name.
    """
    driver, id, view = layer
    getter = driver.diff_getter(id)
    try:
        with getter.get(_getter_name(driver, "b-file")) as body:
            assert body.read() == b"L" * 4096
        name = "b-file" if swap is not swap_dir else "d"
        swap(tmp_path, view, name)
        wanted = "b-file" if swap is not swap_dir else "d/f"
        with pytest.raises(NotFoundError):
            getter.get(_getter_name(driver, wanted))
    finally:
        getter.close()
