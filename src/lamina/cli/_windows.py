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
    GoTarWriter,
    WinEntry,
    basic_info_header,
    classify,
    whiteout_header,
)
from lamina.archive._wintar_reader import RawTarReader
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
    """Write the Windows form of a Linux layer tar; returns warnings (skipped entries)."""
    rawsd = base64.b64encode(from_sddl(sddl)).decode()
    warnings: list[str] = []
    w = GoTarWriter(out)
    reader = RawTarReader(src)
    first = True
    while (hdr := reader.next()) is not None:
        if first:
            for top in ("Files", "Hives"):
                w.write_header(
                    basic_info_header(
                        top,
                        0,
                        attributes=FILE_ATTRIBUTE_DIRECTORY,
                        creation=0,
                        last_write=0,
                        last_access=0,
                        change=0,
                    )
                )
            first = False
        rel = archive.clean_entry_name(hdr.name)
        if rel is None:
            raise UnsafeArchiveError(f"unsafe entry name {hdr.name!r}")
        if rel == "" or hdr.typeflag in ("g", "x"):
            reader.skip()
            continue
        base = posixpath.basename(rel)
        if any(c in base for c in '<>:"|?*\\') or any(ord(c) < 32 for c in base):
            warnings.append(f"{rel}: name cannot exist on Windows, skipped")
            reader.skip()
            continue
        name = "Files/" + rel
        if base.startswith(".wh."):
            reader.skip()
            if base == ".wh..wh..opq":
                warnings.append(
                    f"{rel}: opaque directories do not exist in Windows layers, dropped"
                )
                continue
            head = posixpath.dirname(name)
            w.write_header(whiteout_header(posixpath.join(head, base[4:])))
            continue
        t = hdr.mtime * 1_000_000_000
        pax = hdr.pax_map
        if "mtime" in pax:
            from lamina.archive._wintar_reader import parse_pax_time

            t = parse_pax_time(pax["mtime"])
        kind = hdr.typeflag
        if kind in ("3", "4", "6"):
            warnings.append(f"{rel}: device or FIFO cannot exist on Windows, skipped")
            continue
        attrs = {"5": FILE_ATTRIBUTE_DIRECTORY, "2": FILE_ATTRIBUTE_REPARSE_POINT}.get(
            kind, FILE_ATTRIBUTE_ARCHIVE
        )
        size = hdr.data_size if kind == "0" else 0
        out_hdr = basic_info_header(
            name, size, attributes=attrs, creation=t, last_write=t, last_access=t, change=t
        )
        out_hdr.pax_records[PAX_RAWSD] = rawsd
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
            out_hdr.typeflag, out_hdr.mode = "1", 0o644
            out_hdr.linkname = "Files/" + target
            del out_hdr.pax_records[PAX_RAWSD]
        w.write_header(out_hdr)
        while chunk := reader.read(1 << 20):
            w.write(chunk)
    if first:
        raise InvalidArgumentError("the input layer is empty")
    w.close()
    return warnings


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
