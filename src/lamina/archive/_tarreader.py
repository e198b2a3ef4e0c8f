"""A streaming tar reader made for applying layers (pure: bytes in, entries out).

It reads ustar, GNU (long names ``L``/``K``) and PAX (``x``/``g``) headers
from any readable stream, one 512-byte block at a time, and leaves the file
body in the stream so the caller copies it straight to its destination.
Why not :mod:`tarfile`: it decodes and re-checks more than we need per
entry, cannot hand out raw xattr bytes from PAX records cleanly, and is a
third of the apply cost on small files.

Every malformed input raises :class:`~lamina.errors.InvalidArchiveError`:
bad checksums, truncation in a header or a body, oversized extension
records, negative sizes, owners outside the 32-bit id space, NUL bytes in
PAX names or xattr names, and formats we refuse (GNU sparse files).  Times
beyond what the kernel interfaces take (about ±292 years around 1970) are
clamped to the epoch, as Docker's ``Chtimes`` does, rather than refused.

Extension data is bounded per entry (PAX records and GNU long names
together, :data:`MAX_EXTENSION_BYTES`) and global PAX records are bounded in
number (:data:`MAX_GLOBAL_RECORDS`): they are merged into every later entry,
so an unbounded set would cost work per entry without costing input bytes.
"""

from __future__ import annotations

import errno
import os
from zlib import adler32

from lamina.errors import ArchiveTooLargeError, InvalidArchiveError

# ``typing`` is for the checker only: importing it at run time (``re`` and more
# behind it) adds milliseconds to every process that applies a layer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = [
    "BLOCK",
    "MAX_EXTENSION_BYTES",
    "MAX_GLOBAL_RECORDS",
    "TYPE_BLK",
    "TYPE_CHR",
    "TYPE_DIR",
    "TYPE_FIFO",
    "TYPE_LINK",
    "TYPE_REG",
    "TYPE_SYMLINK",
    "TarEntry",
    "TarReader",
]

BLOCK = 512
#: Most extension bytes (PAX records and GNU long names) one entry may carry
#: (Go's archive/tar allows 1 MiB per extension header).
MAX_EXTENSION_BYTES = 1 << 20
#: Most global PAX records a stream may set; they apply to every later entry.
MAX_GLOBAL_RECORDS = 64
#: Largest valid uid/gid: (uid_t)-1 means "leave unchanged" to chown(2).
_MAX_ID = (1 << 32) - 2
#: Times outside this many seconds from the epoch do not fit a 64-bit nanosecond count.
_MAX_SECONDS = (1 << 63) // 1_000_000_000 - 1
#: Input is read this much at a time; headers and small bodies are sliced from it.
_READ = 1 << 20
#: A body with at least this much left beyond the buffer is copied by the kernel
#: (``sendfile``) when the input is a plain file, never passing through Python.
_KERNEL_COPY_MIN = 128 << 10

TYPE_REG = "0"
TYPE_LINK = "1"
TYPE_SYMLINK = "2"
TYPE_CHR = "3"
TYPE_BLK = "4"
TYPE_DIR = "5"
TYPE_FIFO = "6"
_TYPE_CONTIG = "7"

_ZERO_BLOCK = bytes(BLOCK)
_HEADER_ONLY = frozenset((TYPE_LINK, TYPE_SYMLINK, TYPE_DIR, TYPE_CHR, TYPE_BLK, TYPE_FIFO))
#: typeflag byte -> type; a NUL typeflag is a regular file (old tars)
_TYPEFLAGS = tuple(chr(b) if b else TYPE_REG for b in range(256))


class TarEntry:
    """One member: header fields after extension records are applied.

    A plain class with slots rather than a dataclass: one is made per entry
    on the hottest path, and ``dataclasses`` costs start-up time.
    """

    __slots__ = (
        "atime_ns",
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "pax",
        "size",
        "type",
        "uid",
        "xattrs",
    )

    def __init__(
        self,
        name: str,
        type: str,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        linkname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        atime_ns: int | None = None,
        xattrs: dict[str, bytes] | None = None,
        pax: dict[str, bytes] | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.atime_ns = atime_ns
        self.xattrs: dict[str, bytes] = {} if xattrs is None else xattrs
        self.pax: dict[str, bytes] = {} if pax is None else pax

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"TarEntry({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TarEntry):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def _number(raw: bytes, what: str) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if raw and raw[0] & 0x80:
        value = int.from_bytes(raw[1:], "big")
        if raw[0] == 0xFF:  # negative two's complement
            value -= 1 << (8 * (len(raw) - 1))
        elif raw[0] != 0x80:
            raise InvalidArchiveError(f"bad base-256 {what} field")
        return value
    text = raw.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidArchiveError(f"bad octal {what} field {raw!r}") from None


def _checksum_ok(block: bytes, stored: int) -> bool:
    # Adler-32's low half is 1 + the byte sum mod 65521; 256 bytes sum to at most
    # 65280, so over each half it is the exact sum, computed in C.
    unsigned = (
        (adler32(block[:256]) & 0xFFFF)
        + (adler32(block[256:]) & 0xFFFF)
        - 2
        - sum(block[148:156])
        + 256
    )
    if unsigned == stored:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
    return signed == stored


def _parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX ``"<len> <key>=<value>\\n"`` records; values stay bytes (xattrs are binary)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # trailing padding some writers leave
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise InvalidArchiveError("malformed PAX record (no length)")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InvalidArchiveError("malformed PAX record length") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise InvalidArchiveError("malformed PAX record (bad length)")
        eq = data.find(b"=", space + 1, end)
        if eq < 0:
            raise InvalidArchiveError("malformed PAX record (no '=')")
        key = data[space + 1 : eq].decode("utf-8", "surrogateescape")
        records[key] = data[eq + 1 : end - 1]
        pos = end
    return records


def _time_ns(seconds: int, frac_ns: int = 0) -> int:
    """Nanoseconds since the epoch; out-of-range times become the epoch (as Docker's)."""
    if -_MAX_SECONDS <= seconds <= _MAX_SECONDS:
        return seconds * 1_000_000_000 + frac_ns
    return 0


def _pax_time_ns(raw: bytes) -> int:
    text = raw.decode("ascii", "replace").strip()
    try:
        if "." in text:
            whole, frac = text.split(".", 1)
            sign = -1 if whole.startswith("-") else 1
            frac_ns = int((frac + "000000000")[:9]) if frac else 0
            return _time_ns(int(whole), sign * frac_ns)
        return _time_ns(int(text))
    except ValueError:
        raise InvalidArchiveError(f"bad PAX time {text!r}") from None


def _pax_name(raw: bytes, key: str) -> str:
    if b"\x00" in raw:
        raise InvalidArchiveError(f"PAX {key} contains a NUL byte")
    return _decode(raw)


def _pax_int(raw: bytes, key: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArchiveError(f"bad PAX {key} {raw!r}") from None
    if value < 0:
        raise InvalidArchiveError(f"negative PAX {key}")
    return value


class TarReader:
    """Iterates the entries of a tar stream; the caller consumes each body.

    After ``next_entry()`` returns an entry, exactly ``entry.size`` body bytes
    are pending: write them with :meth:`copy_body`, read them with
    :meth:`read_body`, or let the next ``next_entry()`` skip them.

    Input is read a mebibyte at a time and headers are sliced from that
    buffer, so a small member costs no read call of its own.  Built with
    :meth:`over_file`, the reader takes its input from a plain file with
    ``pread`` and lets the kernel copy large bodies (``sendfile``): those
    bytes are never copied into Python at all.
    """

    def __init__(self, stream: BinaryIO | None) -> None:
        self._stream = stream
        self._fd = -1  # over_file: the input file ...
        self._src = 0  # ... the file offset of the next byte to read from it
        self._src_start = 0
        self._src_end = 0  # the file's size when the reader was made
        self._limit: int | None = None
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0  # next unconsumed byte of _buf
        self._pending = 0  # body bytes of the current entry not yet consumed
        self._padding = 0  # padding after the current body
        self._global_pax: dict[str, bytes] = {}
        self.offset = 0  # bytes consumed from the stream
        #: True once the end-of-archive block was read (not merely the end of the stream)
        self.saw_end_marker = False

    @classmethod
    def over_file(cls, fd: int, start: int, *, limit: int | None = None) -> TarReader:
        """A reader of the plain tar in file ``fd`` from byte ``start`` (fd stays the caller's).

        ``limit`` caps the bytes read, as the decompression guard does for streams.
        """
        reader = cls(None)
        reader._fd = fd
        reader._src = reader._src_start = start
        reader._src_end = os.fstat(fd).st_size
        reader._limit = limit
        return reader

    @property
    def input_offset(self) -> int:
        """over_file: where in the file the bytes consumed so far end."""
        return self._src - (len(self._buf) - self._pos)

    # -- raw reading ---------------------------------------------------

    def _charge(self, n: int) -> None:
        if self._limit is not None and self._src + n - self._src_start > self._limit:
            raise ArchiveTooLargeError(f"layer exceeds the limit of {self._limit} bytes")

    def _more(self) -> bytes:
        """The next chunk of input (b"" at its end)."""
        if self._fd < 0:
            assert self._stream is not None
            return self._stream.read(_READ)
        want = min(_READ, self._src_end - self._src)
        if want <= 0:
            want = _READ  # the file may have grown; pread says for sure
        data = os.pread(self._fd, want, self._src)
        self._charge(len(data))
        self._src += len(data)
        return data

    def _refill(self) -> bool:
        """Replace the (consumed) buffer by the next chunk; False at the end of input."""
        data = self._more()
        self._buf = data
        self._view = memoryview(data)
        self._pos = 0
        return bool(data)

    def _read_exact(self, n: int, what: str) -> bytes:
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            self.offset += n
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        got = len(parts[0])
        while got < n:
            if not self._refill():
                raise InvalidArchiveError(f"truncated tar: unexpected end of stream in {what}")
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            got += take
        self.offset += n
        return b"".join(parts)

    def _skip(self, n: int, what: str) -> None:
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            self.offset += n
            return
        self._pos = len(self._buf)
        self.offset += avail
        n -= avail
        if self._fd >= 0:
            if self._src + n > self._src_end:
                raise InvalidArchiveError(f"truncated tar: unexpected end of stream in {what}")
            self._charge(n)
            self._src += n
            self.offset += n
            return
        while n > 0:
            if not self._refill():
                raise InvalidArchiveError(f"truncated tar: unexpected end of stream in {what}")
            take = min(n, len(self._buf))
            self._pos = take
            self.offset += take
            n -= take

    def _read_extension(self, size: int, what: str) -> bytes:
        if size < 0 or size > MAX_EXTENSION_BYTES:
            raise InvalidArchiveError(f"{what} of {size} bytes exceeds the limit")
        data = self._read_exact(size, what)
        pad = -size % BLOCK
        if pad:
            self._read_exact(pad, what)
        return data

    def read_tail(self, most: int) -> int:
        """Consume up to ``most`` bytes after the archive (a decoder then checks its trailer)."""
        got = len(self._buf) - self._pos
        self._pos = len(self._buf)
        while got < most and self._refill():
            got += len(self._buf)
            self._pos = len(self._buf)
        return got

    # -- bodies ----------------------------------------------------------

    def read_body(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current body (empty when it is consumed)."""
        n = min(n, self._pending)
        if n <= 0:
            return b""
        if self._pos >= len(self._buf) and not self._refill():
            raise InvalidArchiveError("truncated tar: unexpected end of stream in file data")
        pos = self._pos
        data = self._buf[pos : pos + n]
        self._pos = pos + len(data)
        self._pending -= len(data)
        self.offset += len(data)
        return data

    def take_body(self) -> bytes:
        """The rest of the current body as bytes (its padding passed): for small bodies."""
        data = self.read_body(self._pending)
        if self._pending:
            parts = [data]
            while self._pending:
                parts.append(self.read_body(self._pending))
            data = b"".join(parts)
        if self._padding:
            self._skip(self._padding, "padding")
            self._padding = 0
        return data

    def copy_body(self, out_fd: int) -> None:
        """Write the rest of the current body to ``out_fd`` (and pass its padding)."""
        left = self._pending
        while left:
            pos = self._pos
            avail = len(self._buf) - pos
            if not avail:
                if self._fd >= 0 and left >= _KERNEL_COPY_MIN:
                    self._kernel_copy(out_fd, left)
                    break
                if not self._refill():
                    raise InvalidArchiveError(
                        "truncated tar: unexpected end of stream in file data"
                    )
                pos, avail = 0, len(self._buf)
            n = left if left < avail else avail
            view = self._view[pos : pos + n]
            while view:
                view = view[os.write(out_fd, view) :]
            self._pos = pos + n
            self.offset += n
            left -= n
        self._pending = 0
        if self._padding:
            self._skip(self._padding, "padding")
            self._padding = 0

    def _kernel_copy(self, out_fd: int, count: int) -> None:
        if self._src + count > self._src_end:
            raise InvalidArchiveError("truncated tar: unexpected end of stream in file data")
        self._charge(count)
        while count:
            try:
                sent = os.sendfile(out_fd, self._fd, self._src, count)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                sent = self._copy_by_pread(out_fd, count)
            if not sent:
                raise InvalidArchiveError("truncated tar: unexpected end of stream in file data")
            self._src += sent
            self.offset += sent
            count -= sent

    def _copy_by_pread(self, out_fd: int, count: int) -> int:
        """Where sendfile cannot write to this file: one chunk through a buffer."""
        data = os.pread(self._fd, min(count, _READ), self._src)
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view) :]
        return len(data)

    def skip_body(self) -> None:
        """Discard whatever is left of the current body and its padding."""
        if self._pending:
            self._skip(self._pending, "file data")
            self._pending = 0
        if self._padding:
            self._skip(self._padding, "padding")
            self._padding = 0

    # -- headers ----------------------------------------------------------

    def _header_block(self) -> bytes | None:
        pos = self._pos
        end = pos + BLOCK
        if end <= len(self._buf):
            self._pos = end
            self.offset += BLOCK
            return self._buf[pos:end]
        if pos >= len(self._buf):
            if not self._refill():
                return None
            if len(self._buf) >= BLOCK:
                self._pos = BLOCK
                self.offset += BLOCK
                return self._buf[:BLOCK]
        return self._read_exact(BLOCK, "tar header")

    def next_entry(self) -> TarEntry | None:
        """The next member, or None at the end of the archive."""
        if self._pending or self._padding:
            self.skip_body()
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: dict[str, bytes] = {}
        extension_bytes = 0
        while True:
            block = self._header_block()
            if block is None:
                if long_name is None and long_link is None and not pax:
                    return None  # EOF at a header boundary: accepted, like Go and Docker
                raise InvalidArchiveError("truncated tar: extension header without its entry")
            if block == _ZERO_BLOCK:
                if long_name is not None or long_link is not None or pax:
                    raise InvalidArchiveError("truncated tar: extension header without its entry")
                self.saw_end_marker = True
                return None  # end-of-archive marker; trailing blocks are ignored
            try:
                stored = int(block[148:156].rstrip(b"\x00 "), 8)
                size = int(block[124:136].rstrip(b"\x00 "), 8)
            except ValueError:
                stored = _number(block[148:156], "checksum")
                size = _number(block[124:136], "size")
            if not _checksum_ok(block, stored):
                raise InvalidArchiveError(
                    f"bad tar header checksum at offset {self.offset - BLOCK}"
                )
            typeflag = _TYPEFLAGS[block[156]]
            if size < 0:
                raise InvalidArchiveError("negative size in tar header")
            if typeflag in "xgLK":
                extension_bytes += size
                if extension_bytes > MAX_EXTENSION_BYTES:
                    raise InvalidArchiveError(
                        f"extension headers of one entry: {extension_bytes} bytes exceeds the limit"
                    )
                if typeflag == "x":
                    pax.update(_parse_pax(self._read_extension(size, "PAX header")))
                elif typeflag == "g":
                    self._global_pax.update(
                        _parse_pax(self._read_extension(size, "PAX global header"))
                    )
                    if len(self._global_pax) > MAX_GLOBAL_RECORDS:
                        raise InvalidArchiveError(
                            f"more than {MAX_GLOBAL_RECORDS} global PAX records"
                        )
                elif typeflag == "L":
                    long_name = _cstr(self._read_extension(size, "GNU long name"))
                else:
                    long_link = _cstr(self._read_extension(size, "GNU long link name"))
                continue
            return self._entry(block, typeflag, size, long_name, long_link, pax)

    def _entry(
        self,
        block: bytes,
        typeflag: str,
        size: int,
        long_name: bytes | None,
        long_link: bytes | None,
        local_pax: dict[str, bytes],
    ) -> TarEntry:
        pax = {**self._global_pax, **local_pax} if self._global_pax else local_pax
        if long_name is not None:
            raw_name = long_name
        elif block[345] and block[257:263] == b"ustar\x00":
            raw_name = _cstr(block[345:500]) + b"/" + _cstr(block[0:100])
        else:
            end = block.find(b"\x00", 0, 100)
            raw_name = block[: end if end >= 0 else 100]
        if typeflag == "S" or (pax and any(k.startswith("GNU.sparse.") for k in pax)):
            raise InvalidArchiveError("sparse files in layer tars are not supported")
        if typeflag == _TYPE_CONTIG:
            typeflag = TYPE_REG
        if typeflag == TYPE_REG and raw_name.endswith(b"/") and not block[156]:
            typeflag = TYPE_DIR  # old tars: a "regular" entry named like a directory
        try:  # the usual spelling; anything else goes the careful way
            mode = int(block[100:108].rstrip(b"\x00 "), 8)
            uid = int(block[108:116].rstrip(b"\x00 "), 8)
            gid = int(block[116:124].rstrip(b"\x00 "), 8)
            mtime = int(block[136:148].rstrip(b"\x00 "), 8)
        except ValueError:
            mode = _number(block[100:108], "mode")
            uid = _number(block[108:116], "uid")
            gid = _number(block[116:124], "gid")
            mtime = _number(block[136:148], "mtime")
        if long_link is not None:
            linkname = _decode(long_link)
        elif block[157]:
            linkname = _decode(_cstr(block[157:257]))
        else:
            linkname = ""
        device = typeflag in (TYPE_CHR, TYPE_BLK)
        entry = TarEntry(
            raw_name.decode("utf-8", "surrogateescape"),
            typeflag,
            mode & 0o7777,
            uid,
            gid,
            size,
            # out of range: the epoch, as in _time_ns
            mtime * 1_000_000_000 if -_MAX_SECONDS <= mtime <= _MAX_SECONDS else 0,
            linkname,
            _number(block[329:337], "devmajor") if device else 0,
            _number(block[337:345], "devminor") if device else 0,
        )
        if pax:
            self._apply_pax(entry, pax)
        if not (0 <= entry.uid <= _MAX_ID and 0 <= entry.gid <= _MAX_ID):
            raise InvalidArchiveError(f"{entry.name}: owner {entry.uid}:{entry.gid} out of range")
        if device and not (0 <= entry.devmajor <= _MAX_ID and 0 <= entry.devminor <= _MAX_ID):
            raise InvalidArchiveError(f"{entry.name}: device number out of range")
        if entry.type in _HEADER_ONLY:
            entry.size = 0  # like Go's reader: these types never carry a body
        self._pending = entry.size
        self._padding = -entry.size % BLOCK
        return entry

    @staticmethod
    def _apply_pax(entry: TarEntry, pax: dict[str, bytes]) -> None:
        entry.pax = pax
        for key, value in pax.items():
            if key == "path":
                entry.name = _pax_name(value, key)
            elif key == "linkpath":
                entry.linkname = _pax_name(value, key)
            elif key == "size":
                entry.size = _pax_int(value, key)
            elif key == "uid":
                entry.uid = _pax_int(value, key)
            elif key == "gid":
                entry.gid = _pax_int(value, key)
            elif key == "mtime":
                entry.mtime_ns = _pax_time_ns(value)
            elif key == "atime":
                entry.atime_ns = _pax_time_ns(value)
            elif key.startswith("SCHILY.xattr."):
                if "\x00" in key:
                    raise InvalidArchiveError(f"xattr name {key!r} contains a NUL byte")
                entry.xattrs[key[len("SCHILY.xattr.") :]] = value
