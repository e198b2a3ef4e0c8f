"""Digests, diff IDs, chain IDs and the verifying streams, checked against hashlib.

Every expected value here is computed independently with :mod:`hashlib` on
the spec's formula, never with the code under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest

from lamina import errors
from lamina.oci import (
    Digest,
    HashingReader,
    HashingWriter,
    chain_id,
    chain_ids,
    diff_id,
    digest_of,
    digest_stream,
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


HEX = "0123456789abcdef" * 4


# -- Digest -----------------------------------------------------------------


def test_digest_is_a_validated_string() -> None:
    d = Digest("sha256:" + HEX)
    assert d == "sha256:" + HEX and isinstance(d, str)
    assert d.algorithm == "sha256" and d.encoded == HEX and d.short() == HEX[:12]
    assert Digest(d) is d
    assert {d: 1}["sha256:" + HEX] == 1  # usable as the plain string it is
    long = Digest("sha512:" + "ab" * 64)
    assert long.algorithm == "sha512" and len(long.encoded) == 128
    assert Digest.from_hex(HEX) == d
    assert type(pickle.loads(pickle.dumps(d))) is Digest
    assert json.dumps({"d": d}) == json.dumps({"d": "sha256:" + HEX})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        HEX,  # no algorithm
        "sha256:" + HEX.upper(),  # upper-case hex is refused
        "SHA256:" + HEX,
        "sha256:" + HEX[:-1],  # too short
        "sha256:" + HEX + "0",  # too long
        "sha256:" + HEX[:-1] + "g",
        "sha512:" + HEX,  # sha512 needs 128 hex
        "md5:" + "0" * 32,  # not an OCI algorithm
        "sha384:" + "0" * 96,
        " sha256:" + HEX,
        "sha256:" + HEX + "\n",
        "sha256+b64u:" + HEX,
    ],
)
def test_malformed_digests_are_refused(text: str) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        Digest(text)


def test_digest_of_and_digest_stream_match_hashlib() -> None:
    data = b"layer bytes\n" * 10_000
    assert digest_of(data) == sha256(data)
    assert digest_of(data, "sha512") == "sha512:" + hashlib.sha512(data).hexdigest()
    assert digest_stream(io.BytesIO(data)) == (sha256(data), len(data))
    with pytest.raises(errors.InvalidArgumentError):
        digest_of(data, "md5")


def test_diff_id_is_the_sha256_of_the_uncompressed_tar(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("box\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(tmp_path / "etc", "etc")
    tar = buffer.getvalue()
    assert diff_id(tar) == sha256(tar)
    assert diff_id(io.BytesIO(tar)) == sha256(tar)


# -- chain IDs ----------------------------------------------------------------


def test_chain_id_follows_the_spec_recursion() -> None:
    layers = [sha256(f"layer {n}".encode()) for n in range(4)]
    # the spec, written out: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256("<prev> <DiffID(Ln)>")
    expected = [layers[0]]
    for layer in layers[1:]:
        expected.append(sha256(f"{expected[-1]} {layer}".encode("ascii")))
    assert chain_ids(layers) == expected
    assert chain_id(layers) == expected[-1]
    assert chain_id(layers[:1]) == layers[0]


def test_chain_id_of_a_known_stack() -> None:
    """A hand-checked pair: printf 'sha256:aaa… sha256:bbb…' | sha256sum."""
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    text = f"{a} {b}".encode()
    assert chain_id([a, b]) == "sha256:" + hashlib.sha256(text).hexdigest()


def test_chain_id_refuses_an_empty_stack_and_bad_diff_ids() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        chain_id([])
    with pytest.raises(errors.InvalidArgumentError):
        chain_id(["sha256:" + "A" * 64])


# -- HashingReader ------------------------------------------------------------


def test_reader_passes_bytes_through_and_verifies_at_the_end() -> None:
    data = bytes(range(256)) * 5000
    reader = HashingReader(io.BytesIO(data), sha256(data), len(data))
    out = bytearray()
    while chunk := reader.read(4096):
        out += chunk
    assert bytes(out) == data
    assert reader.digest == sha256(data) and reader.size == len(data)
    assert reader.verify() == sha256(data)


def test_reader_readinto_works_like_read() -> None:
    data = b"x" * 100_000 + b"y"
    reader = HashingReader(io.BytesIO(data), sha256(data), len(data))
    buffer = bytearray(7000)
    total = bytearray()
    while count := reader.readinto(buffer):
        total += buffer[:count]
    assert bytes(total) == data


def test_reader_raises_on_a_wrong_digest_when_it_reaches_the_end() -> None:
    data = b"the real content"
    reader = HashingReader(io.BytesIO(data), sha256(b"something else"))
    assert reader.read(5) == b"the r"
    with pytest.raises(errors.IntegrityError):
        reader.read()  # reading to the end is enough to be told


def test_reader_raises_on_a_short_stream() -> None:
    data = b"truncated"
    reader = HashingReader(io.BytesIO(data), sha256(data + b"!"), len(data) + 1)
    assert reader.read(len(data)) == data
    with pytest.raises(errors.IntegrityError, match="declared"):
        reader.read(1)


def test_reader_refuses_the_first_byte_past_the_declared_size() -> None:
    data = b"a" * 1000
    reader = HashingReader(io.BytesIO(data), expected_size=999)
    with pytest.raises(errors.IntegrityError, match="longer"):
        reader.read()


def test_reader_without_expectations_only_measures(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"blob" * 1000)
    with path.open("rb") as raw, HashingReader(raw) as reader:
        assert len(reader.read()) == 4000
        assert reader.digest == sha256(b"blob" * 1000)
        assert reader.verify() == reader.digest
    assert raw.closed


def test_reader_with_a_sha512_digest_hashes_with_sha512() -> None:
    data = b"sha512 content"
    expected = "sha512:" + hashlib.sha512(data).hexdigest()
    reader = HashingReader(io.BytesIO(data), expected)
    assert reader.read() == data
    assert reader.digest == expected


def test_verify_reads_what_a_tar_reader_left_behind() -> None:
    """tarfile stops at the end-of-archive blocks; the blob's digest covers the padding too."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("file")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    blob = buffer.getvalue() + bytes(20480)  # more zero records after the end, as some writers pad
    reader = HashingReader(io.BytesIO(blob), sha256(blob), len(blob))
    with tarfile.open(fileobj=reader, mode="r|") as tf:
        names = [member.name for member in tf]
    assert names == ["file"]
    assert reader.size < len(blob)  # the reader has not seen everything yet
    assert reader.verify() == sha256(blob)
    assert reader.size == len(blob)
    tampered = HashingReader(io.BytesIO(blob[:-1] + b"x"), sha256(blob), len(blob))
    with tarfile.open(fileobj=tampered, mode="r|") as tf:
        list(tf)
    with pytest.raises(errors.IntegrityError):
        tampered.verify()  # the damage is in the padding nobody parsed


def test_reader_is_a_raw_stream() -> None:
    data = b"line one\nline two\n" * 1000
    reader = HashingReader(io.BytesIO(data), sha256(data))
    buffered = io.BufferedReader(reader)
    assert buffered.readline() == b"line one\n"
    assert buffered.read() == data[9:]
    assert reader.digest == sha256(data)
    buffered.close()
    assert reader.closed


# -- HashingWriter ------------------------------------------------------------


def test_writer_hashes_and_verifies_what_it_writes(tmp_path: Path) -> None:
    data = b"config json"
    path = tmp_path / "blob"
    with path.open("wb") as raw:
        writer = HashingWriter(raw, sha256(data), len(data))
        writer.write(data[:4])
        writer.write(memoryview(data)[4:])
        assert writer.verify() == sha256(data)
    assert path.read_bytes() == data


def test_writer_reports_a_mismatch_and_a_short_write() -> None:
    writer = HashingWriter(io.BytesIO(), sha256(b"expected"))
    writer.write(b"different")
    with pytest.raises(errors.IntegrityError, match="does not match"):
        writer.verify()
    short = HashingWriter(io.BytesIO(), expected_size=10)
    short.write(b"12345")
    with pytest.raises(errors.IntegrityError):
        short.verify()


def test_writer_close_flushes_and_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    raw = path.open("wb")
    with HashingWriter(raw, sha256(b"abc")) as writer:  # type: ignore[arg-type]
        writer.write(b"abc")
        writer.verify()
    assert raw.closed and path.read_bytes() == b"abc"


def test_writer_refuses_a_write_past_the_declared_size() -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink, expected_size=3)
    with pytest.raises(errors.IntegrityError):
        writer.write(b"four")
    assert sink.getvalue() == b""  # nothing past the limit reached the file


def test_integrity_error_is_a_lamina_error_but_not_an_archive_error() -> None:
    assert issubclass(errors.IntegrityError, errors.LaminaError)
    assert not issubclass(errors.IntegrityError, errors.ArchiveError)
    assert issubclass(errors.AuthenticationError, errors.RegistryError)
    assert issubclass(errors.RegistryError, errors.LaminaError)
