"""A layer that does not fit: a clear, typed ENOSPC error and nothing left open.

Each test applies into a fresh, tiny loop-mounted ext4 (root only) that runs
out of blocks or of inodes part-way through the layer.  The engine must
raise :class:`lamina.errors.ArchiveError` carrying ``errno.ENOSPC``, close
every descriptor and stop its decompressor thread, and write nothing
outside the layer root.  Removing what was half-applied is the driver's job
(``apply_diff`` applies into a staging directory and discards it on error);
here we check that the filesystem and the engine are usable again
afterwards: the same root takes a layer that fits once the debris is gone.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import tarfile
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lamina.errors import ArchiveError

FreshFs = Callable[..., AbstractContextManager[Path]]


def _tar(members: Iterable[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _assert_enospc(result: object) -> None:
    assert isinstance(result, ArchiveError), f"expected an ArchiveError, got {result!r}"
    assert result.errno == errno.ENOSPC
    assert "space" in str(result)


def _retry_after_cleanup(jail: Any) -> None:
    jail.reset()
    assert jail.apply(_tar([("small", b"fits")])) == 4
    assert (jail.dest / "small").read_bytes() == b"fits"


@pytest.mark.parametrize("compression", ["none", "none+helpers", "gzip", "zstd"])
def test_out_of_blocks(fresh_fs: FreshFs, jail_at: Any, compression: str) -> None:
    raw = _tar([("d", None), ("d/a", os.urandom(1 << 20)), ("d/big", os.urandom(24 << 20))])
    if compression == "gzip":
        raw = gzip.compress(raw, 1)
    elif compression == "zstd":
        raw = zstandard.ZstdCompressor(level=1).compress(raw)
    with fresh_fs(8 << 20) as mnt:
        jail = jail_at(mnt / "jail", via_file=True, helpers=compression == "none+helpers")
        # the jail also checks descriptors, threads and helper processes
        _assert_enospc(jail.apply(raw))
        assert jail.helper_runs == jail.helpers
        assert (jail.dest / "d/a").stat().st_size == 1 << 20  # it got that far, no further
        _retry_after_cleanup(jail)


@pytest.mark.parametrize("helpers", [False, True], ids=["alone", "helpers"])
def test_out_of_inodes(fresh_fs: FreshFs, jail_at: Any, helpers: bool) -> None:
    raw = _tar([(f"dir{i}/f{j}", b"") for i in range(20) for j in range(20)])
    with fresh_fs(16 << 20, inodes=128) as mnt:
        jail = jail_at(mnt / "jail", via_file=helpers, helpers=helpers)
        _assert_enospc(jail.apply(raw))
        assert jail.helper_runs == helpers
        _retry_after_cleanup(jail)


def test_out_of_space_for_symlink_targets(fresh_fs: FreshFs, jail_at: Any) -> None:
    # long symlink targets need a data block each (1 KiB blocks on a tiny ext4,
    # plenty of inodes): blocks run out inside symlinkat
    members = [(f"l{i}", "t" * 900) for i in range(12000)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, target in members:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    with fresh_fs(8 << 20, inodes=16384) as mnt:
        jail = jail_at(mnt / "jail")
        _assert_enospc(jail.apply(buf.getvalue()))
        _retry_after_cleanup(jail)
