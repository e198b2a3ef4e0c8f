"""A tar reader that keeps every raw byte that is not file content (pure).

Byte-exact re-export (tar-split) needs the header blocks, the PAX and GNU
extension blocks, the padding after each body and the end-of-archive
blocks exactly as they were read, so this reader hands them out alongside
the parsed header.  Parsing follows Go's ``archive/tar`` reader, which is
what Docker and hcsshim read Windows layers with: the USTAR prefix is used
for USTAR/PAX/STAR headers only, ``x`` records replace (not merge with) an
earlier ``x`` header, a ``g`` header is returned as an entry of its own,
``\\0`` types are promoted to ``0`` or ``5``, header-only types (links,
devices, directories, FIFOs) carry no body whatever their size field says,
and checksums may be signed or unsigned sums.

Every malformed input raises :class:`~lamina.errors.InvalidArchiveError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from lamina.errors import InvalidArchiveError

__all__ = [
    "BLOCK",
    "HEADER_ONLY_TYPES",
    "MAX_SPECIAL_FILE",
    "RawHeader",
    "RawTarReader",
    "parse_pax_records",
    "parse_pax_time",
]

BLOCK = 512
#: Largest PAX record block or GNU long name accepted (Go's ``maxSpecialFileSize``).
MAX_SPECIAL_FILE = 1 << 20
HEADER_ONLY_TYPES = frozenset("123456")
_ZERO_BLOCK = bytes(BLOCK)


def parse_pax_time(value: str) -> int:
    """A PAX time string as integer nanoseconds (never through float).

    Go right-pads or truncates the fraction to nine digits; a leading ``-``
    applies to the whole value.
    """
    text = value
    negative = text.startswith("-")
    if negative:
        text = text[1:]
    secs, dot, frac = text.partition(".")
    if (
        not secs.isdigit()
        or not secs.isascii()
        or (dot and (not frac.isdigit() or not frac.isascii()))
    ):
        raise InvalidArchiveError(f"invalid PAX time {value!r}")
    ns = int(secs) * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if negative else ns


def parse_pax_records(data: bytes) -> list[tuple[str, str]]:
    """The records of a PAX extended header, in file order (Go's ``parsePAXRecord``)."""
    records: list[tuple[str, str]] = []
    rest = data
    while rest:
        length_text, space, _ = rest.partition(b" ")
        if not space or not length_text.isdigit():
            raise InvalidArchiveError("malformed PAX record: bad length field")
        n = int(length_text)
        if n < 5 or n > len(rest) or n <= len(length_text) + 1:
            raise InvalidArchiveError("malformed PAX record: length out of range")
        record, rest = rest[:n], rest[n:]
        if record[-1:] != b"\n":
            raise InvalidArchiveError("malformed PAX record: missing newline")
        body = record[len(length_text) + 1 : -1]
        key_b, eq, value_b = body.partition(b"=")
        if not eq or not key_b:
            raise InvalidArchiveError("malformed PAX record: missing key")
        key = key_b.decode("utf-8", "surrogateescape")
        value = value_b.decode("utf-8", "surrogateescape")
        if key in ("path", "linkpath", "uname", "gname"):
            if "\x00" in value:
                raise InvalidArchiveError(f"malformed PAX record: NUL in {key}")
        elif "\x00" in key:
            raise InvalidArchiveError("malformed PAX record: NUL in key")
        records.append((key, value))
    return records


def _parse_string(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _parse_numeric(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:
        # GNU base-256: big-endian two's complement with the marker bit.
        inv = 0xFF if field[0] & 0x40 else 0x00
        value = 0
        for i, byte in enumerate(field):
            byte ^= inv
            if i == 0:
                byte &= 0x7F
            value = (value << 8) | byte
        return ~value if inv else value
    text = field.strip(b" \x00")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidArchiveError(f"invalid {what} field {field!r} in tar header") from None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class RawHeader:
    """One tar entry as Go's reader sees it, plus the raw bytes that framed it.

    ``raw`` is everything read since the end of the previous body: that
    body's padding, then every extension header and its data, then the main
    header block (tar-split's segment).  ``pax`` lists the local PAX records
    in file order; ``data_size`` is how many body bytes follow.
    """

    name: str
    typeflag: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str
    uname: str
    gname: str
    devmajor: int
    devminor: int
    raw: bytes
    pax: list[tuple[str, str]] = field(default_factory=list)
    data_size: int = 0
    header_format: str = "v7"

    @property
    def pax_map(self) -> dict[str, str]:
        """Local PAX records as a mapping (a later duplicate wins, as in Go)."""
        return dict(self.pax)


class RawTarReader:
    """Reads entries one by one; bodies must be read (or skipped) in order.

    After :meth:`next` returns None, :attr:`trailer` holds the end-of-archive
    blocks and whatever followed them up to the end of the stream, and
    :attr:`saw_end_marker` tells whether at least one zero block was seen
    (an empty stream has neither).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._remaining = 0
        self._padding = 0
        self._pending = bytearray()
        self.offset = 0
        self.trailer = b""
        self.saw_end_marker = False
        self._done = False

    # -- low level -----------------------------------------------------------

    def _read_exact(self, n: int, what: str) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._stream.read(n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self.offset += len(data)
        if len(data) != n:
            if not data and what == "header":
                return b""
            raise InvalidArchiveError(f"unexpected end of tar stream in {what}")
        return data

    def _raw(self, n: int, what: str) -> bytes:
        data = self._read_exact(n, what)
        self._pending += data
        return data

    # -- bodies --------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Body bytes of the current entry not read yet."""
        return self._remaining

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the current entry's body (all of it if ``n < 0``)."""
        if n < 0 or n > self._remaining:
            n = self._remaining
        if n == 0:
            return b""
        data = self._stream.read(n)
        if not data:
            raise InvalidArchiveError("unexpected end of tar stream in a file body")
        self._remaining -= len(data)
        self.offset += len(data)
        return data

    def skip(self) -> None:
        """Discard the rest of the current body (its bytes are not kept anywhere)."""
        while self._remaining:
            self.read(min(self._remaining, 1 << 20))

    # -- headers -------------------------------------------------------------

    def next(self) -> RawHeader | None:
        """The next entry, or None at the end of the archive."""
        if self._done:
            return None
        if self._remaining:
            raise InvalidArchiveError("internal: body of the previous entry was not consumed")
        if self._padding:
            self._raw(self._padding, "padding")
            self._padding = 0
        pax: list[tuple[str, str]] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._raw(BLOCK, "header")
            if not block:
                self._finish(saw_zero=False)
                return None
            if block == _ZERO_BLOCK:
                second = self._raw(BLOCK, "header")
                if second and second != _ZERO_BLOCK:
                    raise InvalidArchiveError("invalid tar header after a zero block")
                self._finish(saw_zero=True)
                return None
            hdr = self._parse_block(block)
            flag = hdr.typeflag
            if flag in ("x", "g", "L", "K"):
                if hdr.size > MAX_SPECIAL_FILE:
                    raise InvalidArchiveError(
                        f"tar extension header of {hdr.size} bytes is too large"
                    )
                data = self._raw(hdr.size, "extension header")
                pad = -hdr.size % BLOCK
                if pad:
                    self._raw(pad, "padding")
                if flag == "x":
                    pax = parse_pax_records(data)
                    continue
                if flag == "g":
                    records = parse_pax_records(data)
                    hdr.pax = records
                    hdr.size = 0
                    hdr.data_size = 0
                    hdr.raw = bytes(self._pending)
                    self._pending.clear()
                    return hdr
                if flag == "L":
                    long_name = _parse_string(data)
                else:
                    long_link = _parse_string(data)
                continue
            break
        if long_name is not None:
            hdr.name = _decode(long_name)
        if long_link is not None:
            hdr.linkname = _decode(long_link)
        if pax is not None:
            self._merge_pax(hdr, pax)
        if hdr.typeflag == "\x00":
            hdr.typeflag = "5" if hdr.name.endswith("/") else "0"
        if hdr.size < 0:
            raise InvalidArchiveError(f"negative size in tar header of {hdr.name!r}")
        hdr.data_size = 0 if hdr.typeflag in HEADER_ONLY_TYPES else hdr.size
        hdr.raw = bytes(self._pending)
        self._pending.clear()
        self._remaining = hdr.data_size
        self._padding = -hdr.data_size % BLOCK
        return hdr

    def _finish(self, *, saw_zero: bool) -> None:
        self._done = True
        self.saw_end_marker = saw_zero
        while True:
            chunk = self._stream.read(1 << 20)
            if not chunk:
                break
            self.offset += len(chunk)
            self._pending += chunk
        self.trailer = bytes(self._pending)
        self._pending.clear()

    @staticmethod
    def _parse_block(block: bytes) -> RawHeader:
        stored = _parse_numeric(block[148:156], "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 256
        if stored != unsigned:
            high = sum(1 for b in block[:148] + block[156:] if b > 127)
            if stored != unsigned - 256 * high:
                raise InvalidArchiveError("tar header checksum mismatch")
        magic = block[257:263]
        version = block[263:265]
        name = _parse_string(block[0:100])
        if magic == b"ustar\x00" and version == b"00":
            fmt = "ustar"
            prefix = _parse_string(block[345:500])
            if block[508:512] == b"tar\x00":
                fmt = "star"
                prefix = _parse_string(block[345:476])
            if prefix:
                name = prefix + b"/" + name
        elif magic == b"ustar " and version == b" \x00":
            fmt = "gnu"
        else:
            fmt = "v7"
        if fmt == "v7":
            uname = gname = ""
            devmajor = devminor = 0
        else:
            uname = _decode(_parse_string(block[265:297]))
            gname = _decode(_parse_string(block[297:329]))
            devmajor = _parse_numeric(block[329:337], "devmajor")
            devminor = _parse_numeric(block[337:345], "devminor")
        return RawHeader(
            name=_decode(name),
            typeflag=chr(block[156]),
            mode=_parse_numeric(block[100:108], "mode"),
            uid=_parse_numeric(block[108:116], "uid"),
            gid=_parse_numeric(block[116:124], "gid"),
            size=_parse_numeric(block[124:136], "size"),
            mtime=_parse_numeric(block[136:148], "mtime"),
            linkname=_decode(_parse_string(block[157:257])),
            uname=uname,
            gname=gname,
            devmajor=devmajor,
            devminor=devminor,
            raw=b"",
            header_format=fmt,
        )

    @staticmethod
    def _merge_pax(hdr: RawHeader, records: list[tuple[str, str]]) -> None:
        hdr.pax = records
        for key, value in records:
            try:
                if key == "path":
                    hdr.name = value
                elif key == "linkpath":
                    hdr.linkname = value
                elif key == "uname":
                    hdr.uname = value
                elif key == "gname":
                    hdr.gname = value
                elif key in ("uid", "gid", "size"):
                    if not value.isascii() or not value.lstrip("-").isdigit():
                        raise ValueError(value)
                    setattr(hdr, key, int(value))
                elif key == "mtime":
                    hdr.mtime = parse_pax_time(value) // 1_000_000_000
                elif key in ("atime", "ctime"):
                    parse_pax_time(value)
                elif key.startswith("GNU.sparse."):
                    raise InvalidArchiveError("GNU sparse files are not supported")
            except ValueError:
                raise InvalidArchiveError(f"invalid PAX record {key}={value!r}") from None
        hdr.header_format = "pax"
