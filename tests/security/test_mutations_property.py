"""Property: mutated layers never escape and never fail with anything but a lamina error.

Valid layers (plain, gzip, zstd) are damaged in two ways before being applied
into a jail (``conftest.py``):

* raw byte mutations — flip a bit, insert, delete, overwrite, truncate —
  anywhere in the stream, compressed or not (mostly caught by checksums and
  framing);
* header mutations with a recomputed checksum, so the damage gets past the
  checksum and reaches the engine: hostile names (``..``, absolute paths,
  whiteouts, NUL), types, sizes, owners, times and link targets.

The jail asserts after every example that the sentinel tree and
``/etc/passwd`` are unchanged, that no host file was linked into the root,
that no descriptor or decompression thread was left behind, and that only
:class:`lamina.errors.LaminaError` was raised (anything else propagates and
fails the example).  CI runs 200 examples in a few seconds; raise
``LAMINA_HYPOTHESIS_EXAMPLES`` for a longer hunt.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from typing import Any

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BLOCK = 512


def _base_layer(fmt: int) -> bytes:
    """A small layer using every feature the engine handles."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mtime = 1_600_000_000
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            for k, v in kw.items():
                setattr(info, k, v)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("etc", tarfile.DIRTYPE)
        add("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/passwd")
        add("etc/sym", tarfile.SYMTYPE, linkname="../sentinel/hello")
        add("usr/lib/" + "long" * 40, data=b"long name" * 20)
        add("usr/bin/suid", data=b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000)
        add("usr/.wh.gone")
        add("var", tarfile.DIRTYPE)
        add("var/.wh..wh..opq")
        add("var/fifo", tarfile.FIFOTYPE)
        add("var/data", data=os.urandom(3000))
        if fmt == tarfile.PAX_FORMAT:
            add("x", data=b"xattr", pax_headers={"SCHILY.xattr.user.k": "v", "mtime": "1.5"})
    return buf.getvalue()


BASES = {"pax": _base_layer(tarfile.PAX_FORMAT), "gnu": _base_layer(tarfile.GNU_FORMAT)}


def _header_offsets(raw: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        return [m.offset for m in tf.getmembers()]


HEADERS = {key: _header_offsets(raw) for key, raw in BASES.items()}
# ustar header fields: (offset, width)
FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "type": (156, 1),
    "linkname": (157, 100),
    "prefix": (345, 155),
}
HOSTILE = [
    b"../sentinel/hello",
    b"../../../../etc/passwd",
    b"/etc/passwd",
    b"..",
    b".",
    b"",
    b"\x00",
    b"etc/sym/hello",
    b"etc/sym",
    b".wh...",
    b".wh..wh..opq",
    b"var/.wh.data",
    b"etc",
    b"77777777777",
    b"\x80\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"-1",
    b"0123",
    b"12345670123",
    b"1",
    b"2",
    b"3",
    b"5",
    b"6",
    b"7",
    b"g",
    b"x",
    b"L",
    b"S",
]


def _fix_checksum(raw: bytearray, offset: int) -> None:
    block = raw[offset : offset + BLOCK]
    if len(block) < BLOCK:
        return
    block[148:156] = b" " * 8
    raw[offset + 148 : offset + 156] = b"%06o\x00 " % sum(block)


field_edit = st.tuples(
    st.just("field"),
    st.integers(0, 100),  # which header (modulo the count)
    st.sampled_from(sorted(FIELDS)),
    st.one_of(st.sampled_from(HOSTILE), st.binary(max_size=12)),
)
byte_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 64)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 30)),
)


def _edit_headers(base: str, edits: list[tuple[Any, ...]]) -> bytes:
    raw = bytearray(BASES[base])
    offsets = HEADERS[base]
    for _, which, field, value in edits:
        at = offsets[which % len(offsets)]
        start, width = FIELDS[field]
        chunk = bytes(value[:width]).ljust(width, b"\x00") if field != "type" else value[:1]
        raw[at + start : at + start + len(chunk)] = chunk
        _fix_checksum(raw, at)
    return bytes(raw)


def _edit_bytes(raw: bytes, edits: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(raw)
    for edit in edits:
        kind, pos = edit[0], edit[1] % (len(out) + 1)
        if kind == "flip" and pos < len(out):
            out[pos] ^= 1 << edit[2]
        elif kind == "insert":
            out[pos:pos] = edit[2]
        elif kind == "delete":
            del out[pos : pos + edit[2]]
        elif kind == "overwrite":
            out[pos : pos + len(edit[2])] = edit[2]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": lambda b: gzip.compress(b, 1),
    "zstd": lambda b: zstandard.ZstdCompressor(level=1).compress(b),
}

EXAMPLES = int(os.environ.get("LAMINA_HYPOTHESIS_EXAMPLES", "200"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    base=st.sampled_from(sorted(BASES)),
    compression=st.sampled_from(sorted(COMPRESS)),
    header_edits=st.lists(field_edit, max_size=4),
    byte_edits=st.lists(byte_edit, max_size=3),
    edit_compressed=st.booleans(),
)
def test_mutated_layers_stay_inside_and_fail_typed(
    jail_factory: Callable[[], Any],
    base: str,
    compression: str,
    header_edits: list[tuple[Any, ...]],
    byte_edits: list[tuple[Any, ...]],
    edit_compressed: bool,
) -> None:
    plain = _edit_headers(base, header_edits)
    if edit_compressed:
        raw = _edit_bytes(COMPRESS[compression](plain), byte_edits)
    else:
        raw = COMPRESS[compression](_edit_bytes(plain, byte_edits))
    jail = jail_factory()
    jail.apply(raw)  # success or a LaminaError; the jail checks the outside
    jail.discard()
