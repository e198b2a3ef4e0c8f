"""apply_layer given an open plain file: read by descriptor, big bodies copied by the kernel.

The engine takes this path only for a file object exactly as :func:`open`
makes it; these tests check that it gives the same tree as the stream path,
keeps the caller's file position meaningful, and refuses truncated or
oversized input with the same typed errors.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lamina.archive import ApplyOptions, apply_layer
from lamina.errors import ArchiveTooLargeError, InvalidArchiveError

BIG = 3 * (1 << 20) + 12345  # beyond the reader's 1 MiB buffer: sendfile territory


def _payload(n: int, seed: int) -> bytes:
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (n // 4096 + 1))[:n]


def _layer() -> tuple[bytes, dict[str, bytes]]:
    files = {
        "small-1": b"a" * 700,
        "big": _payload(BIG, 7),
        "dir/after-big": b"b" * 5000,
        "dir/big2": _payload(2 * (1 << 20), 3),
        "empty": b"",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue(), files


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_file_and_stream_give_the_same_tree(tmp_path: Path) -> None:
    raw, files = _layer()
    layer = tmp_path / "layer.tar"
    layer.write_bytes(raw)
    via_stream, via_file = tmp_path / "s", tmp_path / "f"
    via_stream.mkdir()
    via_file.mkdir()
    size_stream = apply_layer(io.BytesIO(raw), via_stream)
    with open(layer, "rb") as f:
        size_file = apply_layer(f, via_file)
        assert f.tell() == len(raw)  # the whole tar (end marker and padding) consumed
    assert size_file == size_stream == sum(len(d) for d in files.values())
    assert _tree(via_file) == _tree(via_stream) == files
    assert os.stat(via_file / "big").st_mtime == 1_600_000_000


def test_tar_starting_inside_the_file(tmp_path: Path) -> None:
    raw, files = _layer()
    prefix = b"not a tar " * 100
    layer = tmp_path / "blob"
    layer.write_bytes(prefix + raw)
    dest = tmp_path / "d"
    dest.mkdir()
    with open(layer, "rb") as f:
        f.seek(len(prefix))
        apply_layer(f, dest)
        assert f.tell() == len(prefix) + len(raw)
    assert _tree(dest) == files


@pytest.mark.parametrize("cut", [BIG // 2, 1 << 20, 512 * 3 + 100])
@pytest.mark.parametrize("via", ["file", "stream"])
def test_truncated_body_is_refused(tmp_path: Path, cut: int, via: str) -> None:
    raw, _ = _layer()
    start = raw.index(_payload(BIG, 7)[:4096])  # where the big body begins
    layer = tmp_path / "layer.tar"
    layer.write_bytes(raw[: start + cut] if cut > 2048 else raw[:cut])
    dest = tmp_path / "d"
    dest.mkdir()
    with open(layer, "rb") as f, pytest.raises(InvalidArchiveError, match="truncated"):
        apply_layer(f if via == "file" else io.BytesIO(f.read()), dest)


@pytest.mark.parametrize("via", ["file", "stream"])
def test_size_limit_applies_to_files_too(tmp_path: Path, via: str) -> None:
    raw, _ = _layer()
    layer = tmp_path / "layer.tar"
    layer.write_bytes(raw)
    dest = tmp_path / "d"
    dest.mkdir()
    with open(layer, "rb") as f, pytest.raises(ArchiveTooLargeError):
        src = f if via == "file" else io.BytesIO(f.read())
        apply_layer(src, dest, ApplyOptions(max_bytes=2 << 20))


class _CountingReader(io.BufferedReader):
    """A wrapper that must see every byte (as a hashing reader would)."""

    seen = 0

    def read(self, n: int | None = -1, /) -> bytes:
        data = super().read(n)
        self.seen += len(data)
        return data

    def readinto(self, b: bytearray | memoryview, /) -> int:  # type: ignore[override]
        n = super().readinto(b)
        self.seen += n
        return n


def test_wrappers_are_read_through_not_around(tmp_path: Path) -> None:
    raw, files = _layer()
    layer = tmp_path / "layer.tar"
    layer.write_bytes(raw)
    dest = tmp_path / "d"
    dest.mkdir()
    with _CountingReader(io.FileIO(layer, "rb")) as f:
        apply_layer(f, dest)
        assert f.seen == len(raw)
    assert _tree(dest) == files


def _dir_tar(*dirs: tuple[str, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mode in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tf.addfile(info)
    return buf.getvalue()


def test_directory_modes_are_exact_whether_new_or_merged(tmp_path: Path) -> None:
    """New directories skip fchmod/fchown only where mkdir already gave the right result."""
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "merged").mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(dest / "merged", 5, 5)
    raw = _dir_tar(("sg", 0o2775), ("sg/child", 0o755), ("merged", 0o751), ("plain", 0o755))
    apply_layer(io.BytesIO(raw), dest)
    modes = {n: os.stat(dest / n).st_mode & 0o7777 for n in ("sg", "sg/child", "merged", "plain")}
    # a setgid parent would pass its bit on to a new directory: the tar's mode wins
    assert modes == {"sg": 0o2775, "sg/child": 0o755, "merged": 0o751, "plain": 0o755}
    if os.geteuid() == 0:
        st = os.stat(dest / "merged")
        assert (st.st_uid, st.st_gid) == (0, 0)  # the tar's owner, not the one on disk
