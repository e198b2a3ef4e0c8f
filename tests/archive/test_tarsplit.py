"""tar-split records: round trips, the JSON form, and interop with the tar-split tool."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from lamina.archive._tarsplit import (
    Checksum,
    Packer,
    Record,
    RecordType,
    assemble,
    crc64_iso,
    disassemble,
    dump_record,
    read_records,
)
from lamina.errors import StateError


class DirGetter:
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")


def make_tar(tmp: Path, fmt: int) -> bytes:
    src = tmp / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "small.txt").write_bytes(b"hello")
    (src / ("long-" * 20)).mkdir()
    (src / ("long-" * 20) / ("x" * 40 + ".bin")).write_bytes(os.urandom(3000))
    (src / "empty").write_bytes(b"")
    (src / "caf\u00e9").write_bytes(b"unicode")
    os.symlink("dir/small.txt", src / "link")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name in sorted(os.listdir(src)):
            tf.add(src / name, arcname=name)
    return out.getvalue()


def split(data: bytes, checksum: Checksum = Checksum.CRC64) -> list[Record]:
    records: list[Record] = []
    disassemble(io.BytesIO(data), Packer(records.append), checksum=checksum)
    return records


def test_crc64_iso_check_value() -> None:
    assert crc64_iso(b"123456789") == 0xB90956C775A41001
    assert crc64_iso(b"6789", crc64_iso(b"12345")) == 0xB90956C775A41001
    assert crc64_iso(b"") == 0


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("checksum", [Checksum.CRC64, Checksum.SHA256])
def test_round_trip_is_byte_identical(tmp_path: Path, fmt: int, checksum: Checksum) -> None:
    data = make_tar(tmp_path, fmt)
    records = split(data, checksum)
    assert records[-1].type is RecordType.SEGMENT  # the trailer, with tarfile's record padding
    out = io.BytesIO()
    assemble(records, DirGetter(tmp_path / "src"), out)
    assert out.getvalue() == data


def test_json_lines_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    data = make_tar(tmp_path, tarfile.PAX_FORMAT)
    text = b"".join(dump_record(r) for r in split(data))
    records = list(read_records(io.BytesIO(text)))
    out = io.BytesIO()
    assemble(records, DirGetter(tmp_path / "src"), out)
    assert out.getvalue() == data
    (tmp_path / "src" / "dir" / "small.txt").write_bytes(b"HELLO")
    with pytest.raises(StateError):
        assemble(records, DirGetter(tmp_path / "src"), io.BytesIO())
    (tmp_path / "src" / "dir" / "small.txt").write_bytes(b"hello!")
    with pytest.raises(StateError):
        assemble(records, DirGetter(tmp_path / "src"), io.BytesIO())


def test_json_form_matches_tar_split_entry() -> None:
    seg = Record(RecordType.SEGMENT, b"\x00\x01", 0)
    assert dump_record(seg) == b'{"type":2,"payload":"AAE=","position":0}\n'
    empty = Record(RecordType.FILE, b"", 3, "dir/")
    assert dump_record(empty) == b'{"type":1,"name":"dir/","payload":null,"position":3}\n'
    full = Record(RecordType.FILE, bytes(8), 4, "a<b>", 5)
    assert dump_record(full) == (
        b'{"type":1,"name":"a\\u003cb\\u003e","size":5,"payload":"AAAAAAAAAAA=","position":4}\n'
    )
    raw = Record(RecordType.FILE, b"", 1, b"\xff".decode("utf-8", "surrogateescape"))
    assert b'"name_raw":"/w=="' in dump_record(raw)


def test_duplicate_names_refused() -> None:
    packer = Packer(lambda r: None)
    packer.file("a", 0, b"")
    from lamina.errors import InvalidArchiveError

    with pytest.raises(InvalidArchiveError):
        packer.file("a", 0, b"")


needs_tar_split = pytest.mark.skipif(
    shutil.which("tar-split") is None, reason="tar-split (Debian package tar-split) not installed"
)


@needs_tar_split
def test_records_equal_tar_split_disasm(tmp_path: Path) -> None:
    data = make_tar(tmp_path, tarfile.PAX_FORMAT)
    (tmp_path / "t.tar").write_bytes(data)
    subprocess.run(
        [
            "tar-split",
            "disasm",
            "--no-stdout",
            "--output",
            str(tmp_path / "t.json.gz"),
            str(tmp_path / "t.tar"),
        ],
        check=True,
        capture_output=True,
    )
    with gzip.open(tmp_path / "t.json.gz", "rb") as f:
        theirs = list(read_records(f))  # type: ignore[arg-type]
    ours = split(data)
    files = lambda rs: [(r.name, r.size, r.payload) for r in rs if r.type is RecordType.FILE]  # noqa: E731
    assert files(ours) == files(theirs)
    # segments are cut the same way up to the trailer, which tar-split reads in chunks
    segs = lambda rs: [r.payload for r in rs if r.type is RecordType.SEGMENT and r.payload]  # noqa: E731
    assert segs(ours)[:-1] == segs(theirs)[: len(segs(ours)) - 1]
    assert b"".join(segs(ours)) == b"".join(segs(theirs))


@needs_tar_split
def test_tar_split_asm_reads_our_records(tmp_path: Path) -> None:
    data = make_tar(tmp_path, tarfile.GNU_FORMAT)
    with gzip.open(tmp_path / "ours.json.gz", "wb") as f:
        for r in split(data, Checksum.CRC64):
            f.write(dump_record(r))
    proc = subprocess.run(
        [
            "tar-split",
            "asm",
            "--input",
            str(tmp_path / "ours.json.gz"),
            "--path",
            str(tmp_path / "src"),
        ],
        check=True,
        capture_output=True,
    )
    assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(data).digest()
