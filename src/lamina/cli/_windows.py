"""``lamina windows ...``: look inside Windows layers, and make one from a Linux layer.

* ``lamina windows ls LAYER.tar`` lists every entry of a Windows layer tar
  with its attributes, creation time, junction flag, streams, extended
  attributes and its security descriptor in SDDL;
* ``lamina windows convert LINUX.tar -o WINDOWS.tar`` turns a plain Linux
  layer into a Windows one the way go-containerregistry does for images
  built on Linux (``Files/`` prefix, ``Files`` and ``Hives`` directories, a
  default security descriptor), written with go-winio backuptar's entry
  shapes (attributes, creation time, type-only modes).
"""

from __future__ import annotations

import base64
import json
import posixpath
import sys
from typing import BinaryIO

import click

from lamina import archive
from lamina.archive._sddl import from_sddl, to_sddl
from lamina.archive._wintar import (
    C_ISDIR,
    C_ISLNK,
    C_ISREG,
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    PAX_RAWSD,
    GoHeader,
    GoTarWriter,
    WinEntry,
    basic_info_header,
    classify,
    fold,
    whiteout_header,
)
from lamina.archive._wintar_reader import RawHeader, RawTarReader, parse_pax_time
from lamina.errors import InvalidArgumentError, LaminaError, UnsafeArchiveError

__all__ = ["attribute_letters", "convert_linux_layer", "windows"]

_ATTRIBUTE_LETTERS = [
    (0x1, "R"),
    (0x2, "H"),
    (0x4, "S"),
    (0x10, "D"),
    (0x20, "A"),
    (0x80, "N"),
    (0x100, "T"),
    (0x200, "P"),
    (0x400, "L"),
    (0x800, "C"),
    (0x1000, "O"),
    (0x2000, "I"),
    (0x4000, "E"),
]
DEFAULT_SDDL = "O:BUG:BU"


def attribute_letters(attributes: int) -> str:
    """``attrib``-style letters for FILE_ATTRIBUTE_* bits (``DA`` for a directory...)."""
    return "".join(letter for bit, letter in _ATTRIBUTE_LETTERS if attributes & bit) or "-"


def _open_input(path: str) -> BinaryIO:
    raw: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    return archive.decompress(raw)


def _describe(entry: WinEntry) -> dict[str, object]:
    pax = dict(entry.pax)
    info: dict[str, object] = {
        "name": entry.name,
        "kind": entry.kind.value,
        "size": entry.size,
        "attributes": entry.attributes,
        "attribute_letters": attribute_letters(entry.attributes),
        "creation_time": pax.get("LIBARCHIVE.creationtime"),
    }
    if entry.rawsd is not None:
        try:
            info["sddl"] = to_sddl(entry.rawsd)
        except LaminaError as exc:
            info["sddl"] = f"<unreadable: {exc}>"
    if entry.linkname:
        info["target"] = entry.linkname
    if entry.junction:
        info["junction"] = True
    if entry.xattrs:
        info["xattrs"] = {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()}
    return info


@click.group("windows")
def windows() -> None:
    """Inspect Windows image layers and convert Linux layers into them.

    \b
    Example:
      lamina windows ls layer.tar.gz
      lamina windows convert linux-layer.tar.gz -o windows-layer.tar
    """


@windows.command("ls")
@click.argument("layer", default="-")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def ls_command(layer: str, as_json: bool) -> None:
    """List a Windows layer tar: attributes, size, SDDL, name.

    \b
    Example:
      lamina windows ls layer.tar.gz
      D--    0 O:BAG:SYD:PAI(A;OICI;FA;;;BA)  Files/Windows
    """
    with _open_input(layer) as stream:
        reader = RawTarReader(stream)
        while (hdr := reader.next()) is not None:
            reader.skip()
            info = _describe(classify(hdr))
            if as_json:
                click.echo(json.dumps(info, ensure_ascii=False))
                continue
            extra = f" -> {info['target']}" if "target" in info else ""
            if info.get("junction"):
                extra += " [junction]"
            click.echo(
                f"{info['kind']:<8} {info['attribute_letters']:<6} {entry_size(info):>10} "
                f"{info.get('sddl', '-')}  {info['name']}{extra}"
            )


def entry_size(info: dict[str, object]) -> str:
    return str(info["size"])


def _windows_target(target: str) -> str:
    return ("C:" if target.startswith("/") else "") + target.replace("/", "\\")


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
        rel = archive.clean_entry_name(hdr.name)
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
            out_hdr.linkname = _windows_target(hdr.linkname)
        elif kind == "1":
            target = archive.clean_entry_name(hdr.linkname)
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


@windows.command("convert")
@click.argument("linux_layer", default="-")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="Where to write the Windows layer tar ('-' for stdout).",
)
@click.option(
    "--sddl",
    default=DEFAULT_SDDL,
    show_default=True,
    help="Security descriptor given to every entry.",
)
def convert_command(linux_layer: str, output: str, sddl: str) -> None:
    """Convert a Linux layer tar (plain, gzip or zstd) into a Windows layer tar.

    \b
    Example:
      lamina windows convert app-layer.tar.gz -o app-layer-windows.tar
    """
    with _open_input(linux_layer) as src:
        if output == "-":
            warnings = convert_linux_layer(src, sys.stdout.buffer, sddl=sddl)
        else:
            with open(output, "wb") as out:
                warnings = convert_linux_layer(src, out, sddl=sddl)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
