"""The streaming tar reader against tars written by Python's tarfile and GNU tar."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina.archive._tarreader import TYPE_DIR, TYPE_LINK, TYPE_REG, TYPE_SYMLINK, TarReader
from lamina.errors import InvalidArchiveError


def _tar(
    members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _entries(raw: bytes) -> list[tuple[str, str, bytes]]:
    reader = TarReader(io.BytesIO(raw))
    out = []
    while (entry := reader.next_entry()) is not None:
        body = b""
        while chunk := reader.read_body(1 << 16):
            body += chunk
        out.append((entry.name, entry.type, body))
    return out


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_names_types_and_bodies(fmt: int) -> None:
    d = tarfile.TarInfo("dir")
    d.type = tarfile.DIRTYPE
    s = tarfile.TarInfo("dir/link")
    s.type = tarfile.SYMTYPE
    s.linkname = "../target"
    h = tarfile.TarInfo("dir/hard")
    h.type = tarfile.LNKTYPE
    h.linkname = "dir/file"
    raw = _tar([(d, None), _file("dir/file", b"x" * 1000), (s, None), (h, None)], fmt)
    assert _entries(raw) == [
        ("dir/", TYPE_DIR, b""),
        ("dir/file", TYPE_REG, b"x" * 1000),
        ("dir/link", TYPE_SYMLINK, b""),
        ("dir/hard", TYPE_LINK, b""),
    ]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_and_links(fmt: int) -> None:
    name = "/".join(["component"] * 40)
    target = "t" * 300
    s = tarfile.TarInfo(name + "-link")
    s.type = tarfile.SYMTYPE
    s.linkname = target
    raw = _tar([_file(name, b"data"), (s, None)], fmt)
    reader = TarReader(io.BytesIO(raw))
    first = reader.next_entry()
    assert first is not None and first.name == name and first.size == 4
    second = reader.next_entry()
    assert second is not None and second.linkname == target
    assert reader.next_entry() is None


def test_pax_xattrs_are_raw_bytes_and_times_have_nanoseconds() -> None:
    info, data = _file("f", b"abc")
    info.pax_headers = {
        "SCHILY.xattr.user.text": "hello",
        "mtime": "1700000000.123456789",
    }
    raw = _tar([(info, data)])
    # a binary xattr value cannot go through tarfile's str headers; splice one in by hand
    reader = TarReader(io.BytesIO(raw))
    entry = reader.next_entry()
    assert entry is not None
    assert entry.xattrs == {"user.text": b"hello"}
    assert entry.mtime_ns == 1_700_000_000_123_456_789


def test_binary_xattr_value_from_gnu_tar(tmp_path: Path) -> None:
    if shutil.which("tar") is None or shutil.which("setfattr") is None:
        pytest.skip("GNU tar and setfattr (package attr) are needed")
    f = tmp_path / "src" / "f"
    f.parent.mkdir()
    f.write_bytes(b"x")
    value = "0x0100000200100000000000000000000000000000"  # binary, with NUL bytes
    try:
        subprocess.run(["setfattr", "-n", "user.bin", "-v", value, str(f)], check=True)
    except subprocess.CalledProcessError:
        pytest.skip("filesystem refuses user xattrs")
    out = subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--format=pax",
            "-cf",
            "-",
            "-C",
            str(f.parent),
            "f",
        ],
        check=True,
        capture_output=True,
    ).stdout
    entry = TarReader(io.BytesIO(out)).next_entry()
    assert entry is not None
    assert entry.xattrs["user.bin"] == bytes.fromhex(value[2:])


def test_base256_numbers() -> None:
    info, data = _file("big-ids", b"", uid=3_000_000_000, gid=5)
    raw = _tar([(info, data)], tarfile.GNU_FORMAT)
    entry = TarReader(io.BytesIO(raw)).next_entry()
    assert entry is not None and entry.uid == 3_000_000_000


def test_bad_checksum_is_rejected() -> None:
    raw = bytearray(_tar([_file("f", b"abc")]))
    raw[0] ^= 0x01  # name byte changes, checksum no longer matches
    with pytest.raises(InvalidArchiveError, match="checksum"):
        _entries(bytes(raw))


def test_truncated_body_is_rejected() -> None:
    raw = _tar([_file("f", b"a" * 5000)])
    with pytest.raises(InvalidArchiveError, match="truncated"):
        _entries(raw[: 512 + 1000])


def test_truncated_header_is_rejected() -> None:
    raw = _tar([_file("f", b"a"), _file("g", b"b")])
    with pytest.raises(InvalidArchiveError, match="truncated"):
        _entries(raw[: 1024 + 100])


def test_eof_at_header_boundary_is_a_clean_end() -> None:
    raw = _tar([_file("f", b"a")])
    assert [e[0] for e in _entries(raw[:1024])] == ["f"]


def test_oversized_pax_record_is_rejected() -> None:
    info, data = _file("f", b"")
    info.pax_headers = {"comment": "x" * (1 << 20)}
    with pytest.raises(InvalidArchiveError, match="exceeds"):
        _entries(_tar([(info, data)]))


def test_sparse_files_are_refused() -> None:
    info, data = _file("f", b"")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    with pytest.raises(InvalidArchiveError, match="sparse"):
        _entries(_tar([(info, data)]))
