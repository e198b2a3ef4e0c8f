"""The Windows layer tar format: go-winio backuptar entries in Go archive/tar framing (pure).

A Windows image layer is a PAX tar whose top level is ``Files/`` (the
container's ``C:\\``), ``Hives/`` (registry hive deltas) and, in base
layers, ``UtilityVM/Files/``.  Windows metadata rides in PAX records:

* ``MSWINDOWS.fileattr`` — ``FILE_ATTRIBUTE_*`` bits in decimal;
* ``MSWINDOWS.rawsd`` — base64 of the self-relative security descriptor;
* ``MSWINDOWS.mountpoint`` — present on a symlink entry that is a junction;
* ``MSWINDOWS.xattr.<name>`` — base64 of one NTFS extended attribute;
* ``LIBARCHIVE.creationtime`` — the creation time as a PAX time string;

and alternate data streams are separate regular entries named
``<file>:<stream>`` that directly follow their file.  A deletion is a bare
``dir/.wh.name`` entry.

This module reads those entries (:func:`classify`, :class:`LayerValidator`
for the ordering rules Windows' importer enforces) and writes them exactly
as Go's ``archive/tar`` writer plus go-winio's ``backuptar`` do
(:class:`GoTarWriter`, :func:`basic_info_header`, :func:`stream_header`,
:func:`whiteout_header`), because a regenerated Windows layer is compared
byte for byte with what a Windows host would have produced.
"""

from __future__ import annotations

import base64
import binascii
import enum
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from lamina.archive.windows._reader import BLOCK, RawHeader, parse_pax_time
from lamina.errors import InvalidArchiveError, UnsafeArchiveError

__all__ = [
    "C_ISDIR",
    "C_ISLNK",
    "C_ISREG",
    "FILE_ATTRIBUTE_ARCHIVE",
    "FILE_ATTRIBUTE_DIRECTORY",
    "FILE_ATTRIBUTE_READONLY",
    "FILE_ATTRIBUTE_REPARSE_POINT",
    "MUTATED_FILES",
    "PAX_CREATIONTIME",
    "PAX_FILEATTR",
    "PAX_MOUNTPOINT",
    "PAX_RAWSD",
    "PAX_SD",
    "PAX_XATTR_PREFIX",
    "EntryKind",
    "GoHeader",
    "GoTarWriter",
    "LayerValidator",
    "WinEntry",
    "basic_info_header",
    "classify",
    "filetime_to_ns",
    "fold",
    "format_pax_time",
    "linux_symlink_target",
    "ns_to_filetime",
    "stream_header",
    "whiteout_header",
    "windows_link_target",
]

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

PAX_FILEATTR = "MSWINDOWS.fileattr"
PAX_RAWSD = "MSWINDOWS.rawsd"
PAX_SD = "MSWINDOWS.sd"
PAX_MOUNTPOINT = "MSWINDOWS.mountpoint"
PAX_XATTR_PREFIX = "MSWINDOWS.xattr."
PAX_CREATIONTIME = "LIBARCHIVE.creationtime"

#: Files the Windows importer rewrites after import; their original bytes are
#: kept beside the layer under these names (moby's ``mutatedFiles``).
MUTATED_FILES: Mapping[str, str] = {
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD": "bcd.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG": "bcd.log.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG1": "bcd.log1.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG2": "bcd.log2.bak",
}

# Mode bits backuptar writes (type bits only, never permissions).
C_ISDIR = 0o40000
C_ISREG = 0o100000
C_ISLNK = 0o120000

_EPOCH_AS_FILETIME = 116444736000000000
_WHITEOUT_PREFIX = ".wh."


# -- times ----------------------------------------------------------------------------


def format_pax_time(ns: int) -> str:
    """Go's ``formatPAXTime``: seconds, then a fraction with trailing zeros trimmed."""
    secs, nsecs = divmod(ns, 1_000_000_000)
    if nsecs == 0:
        return str(secs)
    sign = ""
    if secs < 0:
        sign = "-"
        secs = -(secs + 1)
        nsecs = -(nsecs - 1_000_000_000)
    return f"{sign}{secs}.{nsecs:09d}".rstrip("0")


def filetime_to_ns(filetime: int) -> int:
    """Win32 FILETIME (100 ns ticks since 1601) to Unix nanoseconds."""
    return (filetime - _EPOCH_AS_FILETIME) * 100


def ns_to_filetime(ns: int) -> int:
    """Unix nanoseconds to FILETIME, truncating like ``windows.NsecToFiletime``."""
    ticks = -(-ns // 100) if ns < 0 else ns // 100
    return ticks + _EPOCH_AS_FILETIME


# -- Go archive/tar writer ------------------------------------------------------------


@dataclass
class GoHeader:
    """The fields of Go's ``tar.Header`` that Windows layer writers set.

    Times are integer nanoseconds since the Unix epoch; None is Go's zero
    ``time.Time``.  ``format`` is ``"pax"`` (``tar.FormatPAX``, what
    backuptar asks for) or ``"unknown"`` (a bare ``tar.Header{}`` such as a
    whiteout, whose mtime Go rounds and whose atime/ctime it drops).
    """

    name: str
    typeflag: str = "0"
    mode: int = 0
    size: int = 0
    mtime: int | None = None
    atime: int | None = None
    ctime: int | None = None
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax_records: dict[str, str] = field(default_factory=dict)
    format: str = "pax"


_BASIC_KEYS = frozenset(
    ["path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"]
)


def _is_ascii(text: str) -> bool:
    return all(0 < ord(c) < 0x80 for c in text)


def _to_ascii(text: str) -> str:
    return text if _is_ascii(text) else "".join(c for c in text if 0 < ord(c) < 0x80)


def _fits_octal(width: int, value: int) -> bool:
    return value >= 0 and (width >= 22 or value < 1 << ((width - 1) * 3))


def _fits_base256(width: int, value: int) -> bool:
    if width >= 9:
        return True
    bits = (width - 1) * 8
    return -(1 << bits) <= value < (1 << bits)


def _split_ustar_path(name: str) -> tuple[str, str] | None:
    raw = name.encode("utf-8", "surrogateescape")
    length = len(raw)
    if length <= 100 or not _is_ascii(name):
        return None
    if length > 156:
        length = 156
    elif raw[length - 1 : length] == b"/":
        length -= 1
    i = raw[:length].rfind(b"/")
    nlen = len(raw) - i - 1
    if i <= 0 or nlen > 100 or nlen == 0 or i > 155:
        return None
    return name[:i], name[i + 1 :]


def _pax_record(key: str, value: str) -> bytes:
    """Go's ``formatPAXRecord``: the decimal length counts itself."""
    body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    size = len(body)
    size += len(str(size))
    record = str(size).encode() + body
    if len(record) != size:
        record = str(len(record)).encode() + body
    return record


def _put_string(block: bytearray, offset: int, width: int, text: str) -> None:
    raw = text.encode("utf-8", "surrogateescape")
    block[offset : offset + min(len(raw), width)] = raw[:width]
    if len(raw) < width:
        block[offset + len(raw)] = 0
    if len(raw) > width and block[offset + width - 1] == 0x2F:
        n = len(raw[: width - 1].rstrip(b"/"))
        block[offset + n] = 0


def _put_octal(block: bytearray, offset: int, width: int, value: int) -> None:
    if not _fits_octal(width, value):
        value = 0
    digits = format(value, "o")
    pad = width - len(digits) - 1
    if pad > 0:
        digits = "0" * pad + digits
    _put_string(block, offset, width, digits)


def _finish_block(block: bytearray) -> bytes:
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[148:156] = b"        "
    chksum = sum(block)
    _put_octal(block, 148, 7, chksum)
    block[155] = 0x20
    return bytes(block)


class GoTarWriter:
    """Writes tar entries byte-for-byte as Go's ``archive/tar`` ``Writer`` does.

    Only what Windows layer writers use is supported: USTAR and PAX output
    (never GNU), no sparse files, no global headers.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._remaining = 0
        self._pad = 0
        self.written = 0

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def _flush(self) -> None:
        if self._remaining:
            raise InvalidArchiveError(f"tar writer: missed writing {self._remaining} bytes")
        if self._pad:
            self._emit(bytes(self._pad))
            self._pad = 0

    def write_header(self, hdr: GoHeader) -> None:
        """Go's ``WriteHeader``: pick USTAR when allowed, else PAX."""
        self._flush()
        typeflag = hdr.typeflag
        if typeflag == "\x00":
            typeflag = "5" if hdr.name.endswith("/") else "0"
        mtime, atime, ctime = hdr.mtime, hdr.atime, hdr.ctime
        if hdr.format == "unknown":
            if mtime is not None:
                secs, rem = divmod(mtime, 1_000_000_000)
                mtime = (secs + (1 if rem * 2 >= 1_000_000_000 else 0)) * 1_000_000_000
            atime = ctime = None
        ustar_ok, pax_hdrs = self._allowed(hdr, typeflag, mtime, atime, ctime)
        if ustar_ok:
            self._write_ustar(hdr, typeflag, mtime)
        else:
            self._write_pax(hdr, typeflag, mtime, pax_hdrs)

    def _allowed(
        self, hdr: GoHeader, typeflag: str, mtime: int | None, atime: int | None, ctime: int | None
    ) -> tuple[bool, dict[str, str]]:
        ustar = True
        prefer_pax = False
        pax: dict[str, str] = {}

        def verify_string(value: str, width: int, key: str) -> None:
            nonlocal ustar
            raw_len = len(value.encode("utf-8", "surrogateescape"))
            too_long = raw_len > width
            if not _is_ascii(value) or too_long:
                if key != "path" or _split_ustar_path(value) is None:
                    ustar = False
                pax[key] = value
            if hdr.pax_records.get(key) == value:
                pax[key] = value

        def verify_numeric(value: int, width: int, key: str | None) -> None:
            nonlocal ustar
            if not _fits_octal(width, value):
                ustar = False
                if key is None:
                    raise InvalidArchiveError(f"tar writer: cannot encode {value}")
                pax[key] = str(value)
            if key is not None and hdr.pax_records.get(key) == str(value):
                pax[key] = str(value)

        def verify_time(ts: int | None, width: int, key: str) -> None:
            nonlocal ustar, prefer_pax
            if ts is None:
                return
            secs, nsecs = divmod(ts, 1_000_000_000)
            is_mtime = key == "mtime"
            fits = _fits_octal(width, secs)
            if not is_mtime or not fits:
                ustar = False
            if not is_mtime or not fits or nsecs:
                prefer_pax = True
                pax[key] = format_pax_time(ts)
            if hdr.pax_records.get(key) == format_pax_time(ts):
                pax[key] = format_pax_time(ts)

        verify_string(hdr.name, 100, "path")
        verify_string(hdr.linkname, 100, "linkpath")
        verify_string(hdr.uname, 32, "uname")
        verify_string(hdr.gname, 32, "gname")
        verify_numeric(hdr.mode, 8, None)
        verify_numeric(hdr.uid, 8, "uid")
        verify_numeric(hdr.gid, 8, "gid")
        verify_numeric(hdr.size, 12, "size")
        verify_numeric(hdr.devmajor, 8, None)
        verify_numeric(hdr.devminor, 8, None)
        verify_time(mtime, 12, "mtime")
        verify_time(atime, 12, "atime")
        verify_time(ctime, 12, "ctime")
        if typeflag in "0346" and hdr.name.endswith("/"):
            raise InvalidArchiveError("tar writer: filename may not have trailing slash")
        if typeflag in "xgLK":
            raise InvalidArchiveError("tar writer: extension headers cannot be written directly")
        only_pax = False
        if hdr.pax_records:
            for key, value in hdr.pax_records.items():
                if key in pax:
                    continue
                if key not in _BASIC_KEYS and not key.startswith("GNU.sparse"):
                    pax[key] = value
            only_pax = True
        for key, value in pax.items():
            if (
                not key
                or "=" in key
                or "\x00" in key
                or (key in ("path", "linkpath", "uname", "gname") and "\x00" in value)
            ):
                raise InvalidArchiveError(f"tar writer: invalid PAX record {key!r}")
        if only_pax:
            ustar = False
        if hdr.format == "pax" and prefer_pax:
            ustar = False
        if hdr.format not in ("pax", "unknown", "ustar"):
            raise InvalidArchiveError(f"tar writer: unsupported format {hdr.format}")
        if hdr.format == "ustar" and not ustar:
            raise InvalidArchiveError("tar writer: header cannot be encoded as USTAR")
        return ustar, pax

    def _template(
        self, hdr: GoHeader, typeflag: str, mtime: int | None, name: str, linkname: str
    ) -> bytearray:
        block = bytearray(BLOCK)
        secs = 0 if mtime is None else mtime // 1_000_000_000
        block[156] = ord(typeflag)
        _put_string(block, 0, 100, name)
        _put_string(block, 157, 100, linkname)
        _put_octal(block, 100, 8, hdr.mode)
        _put_octal(block, 108, 8, hdr.uid)
        _put_octal(block, 116, 8, hdr.gid)
        _put_octal(block, 124, 12, hdr.size)
        _put_octal(block, 136, 12, secs)
        _put_string(block, 265, 32, hdr.uname)
        _put_string(block, 297, 32, hdr.gname)
        _put_octal(block, 329, 8, hdr.devmajor)
        _put_octal(block, 337, 8, hdr.devminor)
        return block

    def _write_ustar(self, hdr: GoHeader, typeflag: str, mtime: int | None) -> None:
        name, prefix = hdr.name, ""
        split = _split_ustar_path(hdr.name)
        if split is not None:
            prefix, name = split
        block = self._template(hdr, typeflag, mtime, name, hdr.linkname)
        _put_string(block, 345, 155, prefix)
        self._raw_header(_finish_block(block), hdr.size, typeflag)

    def _write_pax(
        self, hdr: GoHeader, typeflag: str, mtime: int | None, pax: dict[str, str]
    ) -> None:
        if pax:
            data = b"".join(_pax_record(k, pax[k]) for k in sorted(pax, key=_go_key))
            if len(data) > 1 << 20:
                raise InvalidArchiveError("tar writer: PAX records too long")
            head, tail = posixpath.split(hdr.name)
            xname = _to_ascii(posixpath.normpath(posixpath.join(head, "PaxHeaders.0", tail)))
            xraw = xname.encode()[:100]
            xname = xraw.decode("ascii").rstrip("/")
            block = bytearray(BLOCK)
            block[156] = ord("x")
            _put_string(block, 0, 100, xname)
            _put_octal(block, 100, 8, 0)
            _put_octal(block, 108, 8, 0)
            _put_octal(block, 116, 8, 0)
            _put_octal(block, 124, 12, len(data))
            _put_octal(block, 136, 12, 0)
            self._emit(_finish_block(block))
            self._emit(data)
            pad = -len(data) % BLOCK
            if pad:
                self._emit(bytes(pad))
        block = self._template(hdr, typeflag, mtime, _to_ascii(hdr.name), _to_ascii(hdr.linkname))
        self._raw_header(_finish_block(block), hdr.size, typeflag)

    def _raw_header(self, block: bytes, size: int, typeflag: str) -> None:
        self._emit(block)
        body = 0 if typeflag in "123456" else size
        self._remaining = body
        self._pad = -body % BLOCK

    def write(self, data: bytes) -> None:
        """Body bytes of the current entry."""
        if len(data) > self._remaining:
            raise InvalidArchiveError("tar writer: write too long")
        self._remaining -= len(data)
        self._emit(data)

    def close(self) -> None:
        """Pad the last body and write the two zero blocks (no record padding)."""
        self._flush()
        self._emit(bytes(2 * BLOCK))


def _go_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


# -- backuptar headers -----------------------------------------------------------------


def basic_info_header(
    name: str,
    size: int,
    *,
    attributes: int,
    creation: int,
    last_write: int,
    last_access: int,
    change: int,
) -> GoHeader:
    """go-winio ``BasicInfoHeader``: times in Unix ns, PAX fileattr and creationtime."""
    hdr = GoHeader(
        name=name,
        typeflag="0",
        size=size,
        mtime=last_write,
        atime=last_access,
        ctime=change,
        pax_records={
            PAX_FILEATTR: str(attributes),
            PAX_CREATIONTIME: format_pax_time(creation),
        },
    )
    if attributes & FILE_ATTRIBUTE_DIRECTORY:
        hdr.mode |= C_ISDIR
        hdr.size = 0
        hdr.typeflag = "5"
    return hdr


def stream_header(owner: GoHeader, stream: str, size: int) -> GoHeader:
    """The entry of an alternate data stream, written right after its owner's data."""
    return GoHeader(
        name=f"{owner.name}:{stream}",
        typeflag="0",
        mode=owner.mode,
        size=size,
        mtime=owner.mtime,
        atime=owner.atime,
        ctime=owner.ctime,
        format=owner.format,
    )


def whiteout_header(path: str) -> GoHeader:
    """A deletion as moby and hcsshim write it: a bare header of ``dir/.wh.name``."""
    head, tail = posixpath.split(path)
    return GoHeader(
        name=posixpath.join(head, _WHITEOUT_PREFIX + tail), typeflag="\x00", format="unknown"
    )


# -- link targets ------------------------------------------------------------------------


def linux_symlink_target(target: str) -> str:
    """Where a Windows symlink or junction points, as a Linux symlink target.

    Backslashes become slashes and an NT (``\\??\\``) or drive prefix is
    dropped, so ``C:\\Users`` points at ``/Users`` of the merged tree; the
    exact Windows target is kept in the layer's metadata.
    """
    t = target.replace("\\", "/")
    if t.startswith("/??/"):
        t = t[4:]
    if len(t) >= 2 and t[1] == ":" and t[0].isalpha():
        t = t[2:] or "/"
    return t


def windows_link_target(target: str) -> str:
    """A Linux symlink target as Windows writes one (``C:\\x`` or ``..\\x``)."""
    if target.startswith("/"):
        return "C:" + target.replace("/", "\\")
    return target.replace("/", "\\")


# -- reading entries ---------------------------------------------------------------------


class EntryKind(enum.Enum):
    """What one tar entry of a Windows layer is."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    LINK = "link"
    STREAM = "stream"
    WHITEOUT = "whiteout"


@dataclass
class WinEntry:
    """A parsed Windows layer entry, with every PAX record kept verbatim."""

    kind: EntryKind
    name: str
    size: int
    mode: int
    typeflag: str
    linkname: str
    mtime_ns: int
    atime_ns: int | None
    ctime_ns: int | None
    pax: list[tuple[str, str]]
    attributes: int
    creation_ns: int
    rawsd: bytes | None
    junction: bool
    xattrs: dict[str, bytes]
    stream_owner: str = ""
    stream_name: str = ""

    @property
    def target(self) -> str:
        """For a whiteout, the path it deletes."""
        head, tail = posixpath.split(self.name)
        return posixpath.join(head, tail[len(_WHITEOUT_PREFIX) :])


_TOP_LEVEL = ("Files", "Hives", "UtilityVM")


def _check_name(name: str) -> str:
    """Refuse names that could leave the layer or that Windows could not hold."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise UnsafeArchiveError(f"unsafe entry name {name!r} in Windows layer")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeArchiveError(f"unsafe entry name {name!r} in Windows layer")
    if any(ord(c) < 32 for c in name):
        raise InvalidArchiveError(f"control character in entry name {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArchiveError(f"entry name {name!r} is not UTF-8") from None
    clean = "/".join(parts)
    if parts[0] not in _TOP_LEVEL:
        raise InvalidArchiveError(
            f"{name!r}: Windows layer entries live under Files/, Hives/ or UtilityVM/"
        )
    if parts[0] == "UtilityVM" and len(parts) > 1 and parts[1] != "Files":
        raise InvalidArchiveError(f"{name!r}: invalid UtilityVM layer entry")
    return clean


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidArchiveError(f"malformed base64 in {what}") from None


def classify(hdr: RawHeader) -> WinEntry:
    """Interpret one raw tar entry as go-winio's ``FileInfoFromHeader`` would.

    Validation of a single entry happens here (names, record syntax);
    rules spanning entries are :class:`LayerValidator`'s.
    """
    pax = hdr.pax_map
    name = _check_name(hdr.name)
    base = posixpath.basename(name)
    flag = hdr.typeflag
    if flag == "g":
        raise InvalidArchiveError("PAX global headers are not supported in Windows layers")
    mtime_ns = hdr.mtime * 1_000_000_000
    if "mtime" in pax:
        mtime_ns = parse_pax_time(pax["mtime"])
    atime = parse_pax_time(pax["atime"]) if "atime" in pax else None
    ctime = parse_pax_time(pax["ctime"]) if "ctime" in pax else None
    attributes = 0
    if PAX_FILEATTR in pax:
        text = pax[PAX_FILEATTR]
        if not text.isascii() or not text.isdigit() or int(text) > 0xFFFFFFFF:
            raise InvalidArchiveError(f"{name}: malformed {PAX_FILEATTR} {text!r}")
        attributes = int(text)
    elif flag == "5":
        attributes = FILE_ATTRIBUTE_DIRECTORY
    creation = mtime_ns
    if PAX_CREATIONTIME in pax:
        try:
            creation = parse_pax_time(pax[PAX_CREATIONTIME])
        except InvalidArchiveError:
            raise InvalidArchiveError(f"{name}: malformed {PAX_CREATIONTIME}") from None
    rawsd = _b64(pax[PAX_RAWSD], f"{name} {PAX_RAWSD}") if PAX_RAWSD in pax else None
    if rawsd is not None and (len(rawsd) < 20 or rawsd[0] != 1):
        raise InvalidArchiveError(f"{name}: {PAX_RAWSD} is not a security descriptor")
    xattrs = {
        key[len(PAX_XATTR_PREFIX) :]: _b64(value, f"{name} {key}")
        for key, value in hdr.pax
        if key.startswith(PAX_XATTR_PREFIX)
    }
    if any(not k or len(k) > 255 or not k.isascii() for k in xattrs):
        raise InvalidArchiveError(f"{name}: invalid extended attribute name")
    if any(len(v) > 0xFFFF for v in xattrs.values()):
        raise InvalidArchiveError(f"{name}: extended attribute value too long")
    kind: EntryKind
    owner = stream = ""
    if base.startswith(_WHITEOUT_PREFIX):
        kind = EntryKind.WHITEOUT
        if len(base) == len(_WHITEOUT_PREFIX):
            raise InvalidArchiveError(f"{name}: whiteout without a target")
    elif flag == "1":
        kind = EntryKind.LINK
        link = _check_name(hdr.linkname)
        parts = link.split("/")
        if parts[0] != "Files" and parts[:2] != ["UtilityVM", "Files"]:
            raise InvalidArchiveError(f"{name}: invalid hard link target {hdr.linkname!r}")
    elif flag == "2":
        kind = EntryKind.SYMLINK
        if not hdr.linkname or "\x00" in hdr.linkname:
            raise InvalidArchiveError(f"{name}: symlink without a target")
    elif flag == "5":
        kind = EntryKind.DIR
    elif flag == "0":
        kind = EntryKind.FILE
    else:
        raise InvalidArchiveError(
            f"{name}: tar entry type {flag!r} cannot exist in a Windows layer"
        )
    if ":" in base:
        if kind is not EntryKind.FILE:
            raise InvalidArchiveError(f"{name}: ':' is not allowed in a Windows file name")
        owner_base, _, stream = base.partition(":")
        if not owner_base or not stream or ":" in stream:
            raise InvalidArchiveError(f"{name}: malformed alternate data stream name")
        kind = EntryKind.STREAM
        owner = posixpath.join(posixpath.dirname(name), owner_base)
    if kind is EntryKind.WHITEOUT and ":" in base:
        raise InvalidArchiveError(f"{name}: malformed whiteout")
    if any(c in base for c in '<>"|?*'):
        raise InvalidArchiveError(f"{name}: character not allowed in a Windows file name")
    return WinEntry(
        kind=kind,
        name=name,
        size=hdr.size,
        mode=hdr.mode,
        typeflag=flag,
        linkname=hdr.linkname,
        mtime_ns=mtime_ns,
        atime_ns=atime,
        ctime_ns=ctime,
        pax=list(hdr.pax),
        attributes=attributes,
        creation_ns=creation,
        rawsd=rawsd,
        junction=PAX_MOUNTPOINT in pax,
        xattrs=xattrs,
        stream_owner=owner,
        stream_name=stream,
    )


def fold(path: str) -> str:
    """Case-insensitive identity of a Windows path (NTFS compares case-insensitively)."""
    return path.casefold()


class LayerValidator:
    """The ordering rules of the Windows importer, checked entry by entry.

    * a directory must appear before anything inside it (Windows creates
      every entry with ``FILE_CREATE`` relative to its open parent);
    * a name may appear once (case-insensitively);
    * an alternate data stream must directly follow its file (or another
      stream of that file);
    * a base layer (no parents) may not delete anything, and deletions are
      only legal under ``Files/`` and ``UtilityVM/Files/`` (their directory
      need not be in the tar: Windows removes them after the import);
    * nothing may be created beneath a symlink or a file.

    A non-base layer that touches ``UtilityVM`` starts from a clone of its
    parent's utility VM (hcsshim's ``initUtilityVM``); the writer declares
    the cloned paths with :meth:`inherit`, after which tar entries may be
    created inside cloned directories and may replace cloned paths.
    """

    def __init__(self, *, base_layer: bool) -> None:
        self.base_layer = base_layer
        self._kinds: dict[str, EntryKind] = {}
        self._inherited: dict[str, EntryKind] = {}
        self._last_main: WinEntry | None = None

    def inherit(self, path: str, kind: EntryKind) -> None:
        """Declare ``path`` present before this layer's entries (a cloned utility VM)."""
        self._inherited[fold(path)] = kind

    def forget(self, path: str) -> None:
        """``path`` and what is below it were removed while importing.

        Cloned paths are forgotten; this layer's own entries stay known (a
        name still appears once per tar) but no longer count as directories.
        """
        key = fold(path)
        prefix = key + "/"
        for known in list(self._inherited):
            if known == key or known.startswith(prefix):
                del self._inherited[known]
        for known, kind in self._kinds.items():
            if (known == key or known.startswith(prefix)) and kind is EntryKind.DIR:
                self._kinds[known] = EntryKind.WHITEOUT

    def seen(self, path: str) -> EntryKind | None:
        """The kind of entry this layer created at ``path``, if any."""
        return self._kinds.get(fold(path))

    def check(self, entry: WinEntry) -> None:
        """Raise InvalidArchiveError if ``entry`` may not come next."""
        name = entry.name
        if entry.kind is EntryKind.STREAM:
            last = self._last_main
            if last is None or fold(last.name) != fold(entry.stream_owner):
                raise InvalidArchiveError(
                    f"{name}: alternate data stream without its file right before it"
                )
            if last.kind not in (EntryKind.FILE, EntryKind.DIR):
                raise InvalidArchiveError(f"{name}: alternate data stream on a {last.kind.value}")
            key = fold(name)
            if key in self._kinds:
                raise InvalidArchiveError(f"{name}: duplicate entry")
            self._kinds[key] = EntryKind.STREAM
            return
        self._last_main = None if entry.kind in (EntryKind.WHITEOUT, EntryKind.LINK) else entry
        parent = posixpath.dirname(name)
        if entry.kind is EntryKind.WHITEOUT:
            target = entry.target
            top = target.split("/")
            if self.base_layer:
                raise InvalidArchiveError(f"{name}: a base layer cannot have tombstones")
            if not (top[0] == "Files" and len(top) > 1) and not (
                top[:2] == ["UtilityVM", "Files"] and len(top) > 2
            ):
                raise InvalidArchiveError(f"{name}: invalid tombstone")
            kind = self._kinds.get(fold(parent))
            if kind is not None and kind is not EntryKind.DIR:
                raise InvalidArchiveError(f"{name}: {parent!r} is not a directory")
            return
        if parent:
            self._need_dir(parent, name)
        key = fold(name)
        if key in self._kinds:
            raise InvalidArchiveError(f"{name}: duplicate entry in Windows layer")
        self._kinds[key] = entry.kind

    def _need_dir(self, parent: str, name: str) -> None:
        kind = self._kinds.get(fold(parent)) or self._inherited.get(fold(parent))
        if kind is None:
            raise InvalidArchiveError(f"{name}: its directory {parent!r} must come first")
        if kind is not EntryKind.DIR:
            raise InvalidArchiveError(f"{name}: {parent!r} is not a directory")
