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
import sys
from typing import BinaryIO

import click

from lamina import archive
from lamina.archive.windows import (
    DEFAULT_SDDL,
    RawTarReader,
    WinEntry,
    classify,
    convert_linux_layer,
    to_sddl,
)
from lamina.errors import LaminaError

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
