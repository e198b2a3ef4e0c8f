"""Linux layer tar -> Windows layer tar, the way go-containerregistry converts images.

Entries move under ``Files/``, ``Files`` and ``Hives`` directories come
first, every entry gets a default security descriptor (``O:BUG:BU``,
BUILTIN\\Users as owner and group, no DACL) and go-winio backuptar's entry
shapes (attributes, creation time, type-only modes), written by the
Go-exact writer.  What a Linux tar may hold but a Windows layer may not is
repaired or skipped, and each such change is returned as a warning: the
output is always one that the windowsfilter driver (and Windows) imports.
"""

from __future__ import annotations

import base64
import posixpath
from typing import BinaryIO

from lamina.archive._paths import clean_entry_name
from lamina.archive.windows._reader import RawHeader, RawTarReader, parse_pax_time
from lamina.archive.windows._sddl import DEFAULT_SDDL, from_sddl
from lamina.archive.windows._tar import (
    C_ISDIR,
    C_ISLNK,
    C_ISREG,
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    PAX_RAWSD,
    GoHeader,
    GoTarWriter,
    basic_info_header,
    fold,
    whiteout_header,
    windows_link_target,
)
from lamina.errors import InvalidArgumentError, UnsafeArchiveError

__all__ = ["convert_linux_layer"]


def convert_linux_layer(src: BinaryIO, out: BinaryIO, *, sddl: str = DEFAULT_SDDL) -> list[str]:
    """Write the Windows form of a Linux layer tar; returns warnings (what was changed).

    The output is what the windowsfilter driver (and Windows) accepts:

    * every directory comes before what is in it: a Linux tar may leave
      parent directories out (many do), so missing ones are made, with the
      time of the entry that needed them;
    * a name appears once, compared as Windows compares names (without
      case): of ``PAM.7.gz`` and ``pam.7.gz`` the first is kept and the
      second skipped with a warning, and a directory spelled two ways is
      one directory, named as it was first (later entries inside it follow
      that spelling);
    * names Windows cannot hold (``:``, ``?``, control characters...),
      devices and FIFOs are skipped with a warning, as is what depends on
      a skipped entry (a hard link to it, entries beneath it).
    """
    return _Converter(out, sddl).run(RawTarReader(src))


class _Converter:
    """One conversion: the names written so far, by their Windows identity."""

    def __init__(self, out: BinaryIO, sddl: str) -> None:
        self.rawsd = base64.b64encode(from_sddl(sddl)).decode()
        self.writer = GoTarWriter(out)
        self.warnings: list[str] = []
        #: fold(path below Files/) -> (spelling written, Linux typeflag)
        self.written: dict[str, tuple[str, str]] = {}

    def run(self, reader: RawTarReader) -> list[str]:
        first = True
        while (hdr := reader.next()) is not None:
            if first:
                for top in ("Files", "Hives"):
                    self.writer.write_header(_dir_header(top, 0))
                first = False
            self._entry(reader, hdr)
        if first:
            raise InvalidArgumentError("the input layer is empty")
        self.writer.close()
        return self.warnings

    def _canonical(self, rel: str) -> tuple[str, str | None]:
        """``rel`` spelled as its written directories are, and what blocks it (or None)."""
        parts = rel.split("/")
        for i in range(len(parts) - 1):
            known = self.written.get(fold("/".join(parts[: i + 1])))
            if known is None:
                break
            spelling, kind = known
            if kind != "5":
                return rel, spelling
            parts[: i + 1] = spelling.split("/")
        return "/".join(parts), None

    def _parents(self, rel: str, t: int) -> None:
        """Write the directories above ``rel`` that are not written yet."""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            head = "/".join(parts[:i])
            if fold(head) not in self.written:
                header = _dir_header("Files/" + head, t)
                header.pax_records[PAX_RAWSD] = self.rawsd
                self.writer.write_header(header)
                self.written[fold(head)] = (head, "5")

    def _entry(self, reader: RawTarReader, hdr: RawHeader) -> None:
        rel = clean_entry_name(hdr.name)
        if rel is None:
            raise UnsafeArchiveError(f"unsafe entry name {hdr.name!r}")
        if rel == "" or hdr.typeflag in ("g", "x"):
            reader.skip()
            return
        base = posixpath.basename(rel)
        if any(c in base for c in '<>:"|?*\\') or any(ord(c) < 32 for c in base):
            self.warnings.append(f"{rel}: name cannot exist on Windows, skipped")
            reader.skip()
            return
        original = rel
        rel, blocked = self._canonical(rel)
        if blocked is not None:
            self.warnings.append(f"{original}: {blocked!r} is not a directory on Windows, skipped")
            reader.skip()
            return
        t = hdr.mtime * 1_000_000_000
        if "mtime" in hdr.pax_map:
            t = parse_pax_time(hdr.pax_map["mtime"])
        if base.startswith(".wh."):
            reader.skip()
            if base == ".wh..wh..opq":
                self.warnings.append(
                    f"{original}: opaque directories do not exist in Windows layers, dropped"
                )
                return
            head = posixpath.dirname(rel)
            self.writer.write_header(
                whiteout_header(posixpath.join("Files/" + head if head else "Files", base[4:]))
            )
            return
        kind = hdr.typeflag
        if kind in ("3", "4", "6"):
            self.warnings.append(f"{original}: device or FIFO cannot exist on Windows, skipped")
            reader.skip()
            return
        known = self.written.get(fold(rel))
        if known is not None:
            reader.skip()
            if not (known[1] == "5" and kind == "5"):
                self.warnings.append(
                    f"{original}: the same name on Windows as {known[0]!r}, which is kept; skipped"
                )
            elif known[0] != rel:
                self.warnings.append(f"{original}: one directory on Windows with {known[0]!r}")
            return
        self._parents(rel, t)
        out_hdr = self._header(rel, original, hdr, t)
        if out_hdr is None:
            reader.skip()
            return
        self.writer.write_header(out_hdr)
        self.written[fold(rel)] = (rel, "5" if kind == "5" else kind or "0")
        while chunk := reader.read(1 << 20):
            self.writer.write(chunk)

    def _header(self, rel: str, original: str, hdr: RawHeader, t: int) -> GoHeader | None:
        kind = hdr.typeflag
        attrs = {"5": FILE_ATTRIBUTE_DIRECTORY, "2": FILE_ATTRIBUTE_REPARSE_POINT}.get(
            kind, FILE_ATTRIBUTE_ARCHIVE
        )
        size = hdr.data_size if kind == "0" else 0
        out_hdr = basic_info_header(
            "Files/" + rel,
            size,
            attributes=attrs,
            creation=t,
            last_write=t,
            last_access=t,
            change=t,
        )
        out_hdr.pax_records[PAX_RAWSD] = self.rawsd
        if kind == "0" and size:
            out_hdr.mode |= C_ISREG
        elif kind == "5":
            out_hdr.mode = C_ISDIR
        elif kind == "2":
            out_hdr.typeflag, out_hdr.mode = "2", C_ISLNK
            out_hdr.linkname = windows_link_target(hdr.linkname)
        elif kind == "1":
            target = clean_entry_name(hdr.linkname)
            if not target:
                raise UnsafeArchiveError(f"unsafe hard link target {hdr.linkname!r}")
            known = self.written.get(fold(target))
            if known is None or known[1] not in ("0", "1"):
                self.warnings.append(
                    f"{original}: hard link to {target!r}, which the Windows layer lacks; skipped"
                )
                return None
            out_hdr.typeflag, out_hdr.mode = "1", 0o644
            out_hdr.linkname = "Files/" + known[0]
            del out_hdr.pax_records[PAX_RAWSD]
        return out_hdr


def _dir_header(name: str, t: int) -> GoHeader:
    return basic_info_header(
        name,
        0,
        attributes=FILE_ATTRIBUTE_DIRECTORY,
        creation=t,
        last_write=t,
        last_access=t,
        change=t,
    )
