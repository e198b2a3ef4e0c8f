"""Tar header encoding: ustar blocks, with a PAX extended header only when needed.

We encode headers ourselves rather than through :mod:`tarfile`: export is a
hot path (a later issue wants it at GNU ``tar -c`` speed) and most entries
need nothing but one plain ustar block, which a single ``struct.pack`` and a
checksum over the few non-zero field bytes produce.

The output follows what Go's ``archive/tar`` writes in PAX format, as Docker
uses it: ``ustar\\0`` magic, version ``00``, octal fields zero-padded and
NUL-terminated, checksum as six octal digits, NUL, space.  A name longer
than 100 bytes is split into the ustar prefix field when it can be; PAX
records (sorted by key, so output is deterministic) carry what ustar
cannot: long or non-ASCII names and link names, ids or sizes or times out
of octal range, and ``SCHILY.xattr.*``.  Numbers out of range are also
written base-256 (GNU) in the ustar field so that readers ignoring PAX
still see them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = [
    "BLKTYPE",
    "BLOCK",
    "CHRTYPE",
    "DIRTYPE",
    "END_OF_ARCHIVE",
    "FIFOTYPE",
    "LNKTYPE",
    "REGTYPE",
    "SYMTYPE",
    "XHDTYPE",
    "encode_header",
    "padding",
    "pax_records",
]

BLOCK = 512
REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
XHDTYPE = b"x"
END_OF_ARCHIVE = bytes(2 * BLOCK)

_MAGIC = b"ustar\x0000"
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
assert _HEADER.size == BLOCK
# The checksum is computed with its own field as eight spaces.
_CONSTANT_SUM = sum(_MAGIC) + 8 * ord(" ")
_ZERO7 = b"0000000\x00"
_PLAIN_CONSTANT_SUM = _CONSTANT_SUM + 2 * sum(_ZERO7)  # plus the zero device numbers
_MAX_OCTAL7 = 0o7777777
_MAX_OCTAL11 = 0o77777777777
_PAX_DIR = b"PaxHeaders.0"
_PADDING = [bytes(n) for n in range(BLOCK)]


def padding(size: int) -> bytes:
    """Zero bytes that complete a member of ``size`` bytes to a whole block."""
    return _PADDING[-size % BLOCK]


def _base256(value: int, width: int) -> bytes:
    """GNU's binary number form for values that do not fit in octal."""
    if value < 0:
        raw = (value + (1 << (8 * width))).to_bytes(width, "big")
        return b"\xff" + raw[1:]
    return b"\x80" + value.to_bytes(width - 1, "big")


def _number(value: int, width: int, limit: int) -> tuple[bytes, bool]:
    """The field for ``value`` and whether it fitted in octal."""
    if 0 <= value <= limit:
        return b"%0*o\x00" % (width - 1, value), True
    return _base256(value, width), False


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a long ASCII name, split at a slash, if the fields hold it."""
    # The rightmost slash that leaves a prefix of at most 155 bytes and a
    # non-empty rest; any earlier slash only makes the rest longer.
    cut = name.rfind(b"/", 0, min(len(name) - 1, 156))
    if cut <= 0 or len(name) - cut - 1 > 100:
        return None
    return name[:cut], name[cut + 1 :]


def _ascii_field(value: bytes, width: int) -> bytes:
    """A best-effort ustar field for a value that lives in a PAX record."""
    return bytes(c for c in value if c < 0x80)[:width]


def pax_records(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serialise ``key=value`` records, sorted by key, as PAX ``"%d %s=%s\\n"`` lines."""
    out = []
    for key, value in sorted(records):
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out.append(str(length).encode() + body)
    return b"".join(out)


def _block(
    name: bytes,
    prefix: bytes,
    mode: bytes,
    uid: bytes,
    gid: bytes,
    size: bytes,
    mtime: bytes,
    typeflag: bytes,
    linkname: bytes,
    devmajor: bytes,
    devminor: bytes,
) -> bytes:
    checksum = (
        _CONSTANT_SUM
        + sum(name)
        + sum(prefix)
        + sum(mode)
        + sum(uid)
        + sum(gid)
        + sum(size)
        + sum(mtime)
        + typeflag[0]
        + sum(linkname)
        + sum(devmajor)
        + sum(devminor)
    )
    return _HEADER.pack(
        name,
        mode,
        uid,
        gid,
        size,
        mtime,
        b"%06o\x00 " % checksum,
        typeflag,
        linkname,
        _MAGIC,
        b"",
        b"",
        devmajor,
        devminor,
        prefix,
    )


_small_octals: dict[int, tuple[bytes, int]] = {}


def _octal7(value: int) -> tuple[bytes, int]:
    """A 7-digit octal field and its byte sum, cached: modes and ids repeat."""
    hit = _small_octals.get(value)
    if hit is None:
        field = b"%07o\x00" % value
        hit = (field, sum(field))
        if len(_small_octals) < 4096:
            _small_octals[value] = hit
    return hit


def _plain(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    mtime: int,
    size: int,
    linkname: bytes,
) -> bytes:
    """The common case: one ustar block, every value fits its field."""
    mode_f, mode_s = _octal7(mode)
    uid_f, uid_s = _octal7(uid)
    gid_f, gid_s = _octal7(gid)
    size_f = b"%011o\x00" % size
    mtime_f = b"%011o\x00" % mtime
    checksum = (
        _PLAIN_CONSTANT_SUM
        + sum(name)
        + mode_s
        + uid_s
        + gid_s
        + sum(size_f)
        + sum(mtime_f)
        + typeflag[0]
        + sum(linkname)
    )
    return _HEADER.pack(
        name,
        mode_f,
        uid_f,
        gid_f,
        size_f,
        mtime_f,
        b"%06o\x00 " % checksum,
        typeflag,
        linkname,
        _MAGIC,
        b"",
        b"",
        _ZERO7,
        _ZERO7,
        b"",
    )


def encode_header(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
    mtime: int,
    size: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """The header block(s) of one member: an optional PAX ``x`` header, then ustar.

    ``name`` is the full member name (with the trailing ``/`` of a
    directory); uname and gname are always empty, as Docker writes them.
    """
    if (
        not xattrs
        and len(name) <= 100
        and len(linkname) <= 100
        and 0 <= size <= _MAX_OCTAL11
        and 0 <= mtime <= _MAX_OCTAL11
        and 0 <= uid <= _MAX_OCTAL7
        and 0 <= gid <= _MAX_OCTAL7
        and not devmajor
        and not devminor
        and name.isascii()
        and linkname.isascii()
    ):
        return _plain(name, typeflag, mode & 0o7777, uid, gid, mtime, size, linkname)
    records: list[tuple[bytes, bytes]] = [(b"SCHILY.xattr." + key, value) for key, value in xattrs]
    prefix = b""
    field_name = name
    if len(name) > 100 or not name.isascii():
        split = _split_ustar(name) if name.isascii() else None
        if split is None:
            records.append((b"path", name))
            field_name = _ascii_field(name, 100)
        else:
            prefix, field_name = split
    link_field = linkname
    if len(linkname) > 100 or not linkname.isascii():
        records.append((b"linkpath", linkname))
        link_field = _ascii_field(linkname, 100)

    mode_f = b"%07o\x00" % (mode & 0o7777)
    if 0 <= uid <= _MAX_OCTAL7:
        uid_f = b"%07o\x00" % uid
    else:
        uid_f, _ = _number(uid, 8, _MAX_OCTAL7)
        records.append((b"uid", b"%d" % uid))
    if 0 <= gid <= _MAX_OCTAL7:
        gid_f = b"%07o\x00" % gid
    else:
        gid_f, _ = _number(gid, 8, _MAX_OCTAL7)
        records.append((b"gid", b"%d" % gid))
    size_f, fits = _number(size, 12, _MAX_OCTAL11)
    if not fits:
        records.append((b"size", b"%d" % size))
    mtime_f, fits = _number(mtime, 12, _MAX_OCTAL11)
    if not fits:
        records.append((b"mtime", b"%d" % mtime))
    if devmajor or devminor:
        major_f, _ = _number(devmajor, 8, _MAX_OCTAL7)
        minor_f, _ = _number(devminor, 8, _MAX_OCTAL7)
    else:
        major_f = minor_f = _ZERO7

    header = _block(
        field_name,
        prefix,
        mode_f,
        uid_f,
        gid_f,
        size_f,
        mtime_f,
        typeflag,
        link_field,
        major_f,
        minor_f,
    )
    if not records:
        return header
    data = pax_records(records)
    base = name.rstrip(b"/")
    slash = base.rfind(b"/")
    pax_name = base[: slash + 1] + _PAX_DIR + b"/" + base[slash + 1 :]
    pax_header = _block(
        _ascii_field(pax_name, 100),
        b"",
        b"0000644\x00",
        _ZERO7,
        _ZERO7,
        b"%011o\x00" % len(data),
        b"00000000000\x00",
        XHDTYPE,
        b"",
        _ZERO7,
        _ZERO7,
    )
    return pax_header + data + padding(len(data)) + header
