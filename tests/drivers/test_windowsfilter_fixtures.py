"""Windows layer fixtures built from the format notes (no real Microsoft layer is public).

Two independent producers write the same logical layers:

* :func:`go_layer` with lamina's Go-compatible writer, entries shaped the
  way go-winio's backuptar writes them (what a Windows host exports);
* :func:`tarfile_layer` with Python's :mod:`tarfile` and ``pax_headers``
  (another producer's framing: its own PAX header names, record padding
  to 10 KiB), so the importer is not only tested against its own writer.

The layers: a base with UtilityVM and the four BCD files, config hives, a
junction, a hard link, an alternate data stream, long and non-ASCII names;
a first diff layer with deletions (one spelled in another case), a
cross-layer hard link, a modified file, streams and hive deltas; a second
diff layer deleting a directory, with a directory symlink, a stream on a
directory and a whiteout whose name needs the USTAR prefix.

The tests in this file check the generators themselves against Python's
tarfile reader.
"""

from __future__ import annotations

import base64
import io
import tarfile
from dataclasses import dataclass, field

from lamina.archive.windows import (
    PAX_CREATIONTIME,
    PAX_FILEATTR,
    PAX_MOUNTPOINT,
    PAX_RAWSD,
    PAX_XATTR_PREFIX,
    GoHeader,
    GoTarWriter,
    basic_info_header,
    format_pax_time,
    from_sddl,
    stream_header,
    whiteout_header,
)

T0 = 1_591_714_327_123_456_700  # 2020-06-09, 100 ns resolution like NTFS
SD_ADMIN = base64.b64encode(
    from_sddl("O:BAG:SYD:PAI(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)(A;OICIIO;GA;;;CO)(A;;0x1200a9;;;BU)")
).decode()
SD_USERS = "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="


@dataclass
class E:
    """One logical entry of a fixture layer."""

    kind: str  # dir, file, symlink, junction, link, stream, whiteout
    name: str
    data: bytes = b""
    attrs: int | None = None
    sd: str | None = SD_ADMIN
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    t: int = T0
    top: bool = False  # a top-level Files/Hives/UtilityVM entry: no security descriptor


def _attrs(e: E) -> int:
    if e.attrs is not None:
        return e.attrs
    return {"dir": 0x10, "symlink": 0x400, "junction": 0x410}.get(e.kind, 0x20)


def base_layer() -> list[E]:
    """A base layer: Files with config hives, UtilityVM with BCD files."""
    cfg = "Files/Windows/System32/config"
    return [
        E("dir", "Files", top=True),
        E("dir", "Files/Program Files"),
        E(
            "file",
            "Files/Program Files/app.exe",
            b"MZ" + bytes(range(256)) * 8,
            xattrs={"$KERNEL.PURGE.ESBCACHE": b"\x01\x02\x03"},
        ),
        E("dir", "Files/Users"),
        E("dir", "Files/Users/Public"),
        E("file", "Files/Users/Public/readme.txt", b"read me\r\n", sd=SD_USERS),
        E(
            "stream",
            "Files/Users/Public/readme.txt:Zone.Identifier",
            b"[ZoneTransfer]\r\nZoneId=3\r\n",
        ),
        E("file", "Files/Users/Public/caf\u00e9 \u65e5\u672c.txt", b"non-ascii name"),
        E("junction", "Files/Documents and Settings", target="C:\\Users"),
        E("dir", "Files/Windows"),
        E("dir", "Files/Windows/System32"),
        E("dir", cfg),
        *(
            E("file", f"{cfg}/{h}", h.encode() * 3)
            for h in ("DEFAULT", "SAM", "SECURITY", "SOFTWARE", "SYSTEM")
        ),
        E("dir", "Files/Windows/System32/drivers"),
        E("dir", "Files/Windows/System32/drivers/etc"),
        E("file", "Files/Windows/System32/drivers/etc/hosts", b"127.0.0.1 localhost\r\n"),
        E("link", "Files/Windows/System32/app-hardlink.exe", target="Files/Program Files/app.exe"),
        E("file", "Files/empty.txt", b""),
        E("dir", "Files/" + "d" * 60),
        E("file", "Files/" + "d" * 60 + "/" + "f" * 60 + ".txt", b"long name"),
        E("dir", "UtilityVM", top=True),
        E("dir", "UtilityVM/Files", top=True),
        E("dir", "UtilityVM/Files/EFI", top=True),
        E("dir", "UtilityVM/Files/EFI/Microsoft", top=True),
        E("dir", "UtilityVM/Files/EFI/Microsoft/Boot", top=True),
        E("file", "UtilityVM/Files/EFI/Microsoft/Boot/BCD", b"regf" + bytes(4092), top=True),
        E("file", "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG", b"log0", top=True),
        E("file", "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG1", b"log1" * 300, top=True),
        E("file", "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG2", b"", top=True),
    ]


def diff_layer_1() -> list[E]:
    """Deletions (one in another case), a cross-layer hard link, modified files, streams."""
    t = T0 + 86_400 * 10**9
    return [
        E("dir", "Files", top=True, t=t),
        E("whiteout", "Files/.wh.EMPTY.TXT"),
        E("dir", "Files/Users", t=t),
        E("dir", "Files/Users/Public", t=t),
        E("whiteout", "Files/Users/Public/.wh.readme.txt"),
        E("file", "Files/Users/Public/new.txt", b"new file\r\n", t=t),
        E("stream", "Files/Users/Public/new.txt:meta", b"stream one"),
        E("stream", "Files/Users/Public/new.txt:second", b"stream two" * 100),
        E("link", "Files/Users/Public/app-link.exe", target="Files/Program Files/app.exe"),
        E("dir", "Files/Windows", t=t),
        E("dir", "Files/Windows/System32", t=t),
        E("dir", "Files/Windows/System32/drivers", t=t),
        E("dir", "Files/Windows/System32/drivers/etc", t=t),
        E("file", "Files/Windows/System32/drivers/etc/hosts", b"10.0.0.1 modified\r\n", t=t),
        E("dir", "Hives", top=True, t=t),
        E("file", "Hives/Software_Delta", b"regf-software", top=True, t=t),
        E("file", "Hives/System_Delta", b"regf-system", top=True, t=t),
    ]


def diff_layer_2() -> list[E]:
    """A deleted directory, a directory symlink, a stream on a directory, a long whiteout."""
    t = T0 + 2 * 86_400 * 10**9 + 500
    deep = "Files/" + "/".join(["deep-directory-name"] * 5)
    return [
        E("dir", "Files", top=True, t=t),
        E("whiteout", "Files/.wh.Program Files"),
        E("whiteout", "Files/" + "d" * 60 + "/.wh." + "f" * 60 + ".txt"),
        E("dir", "Files/Users", t=t),
        E("dir", "Files/Users/Public", t=t),
        E("junction", "Files/Users/Public/docs", target="C:\\Users\\Public\\Documents", t=t),
        E("symlink", "Files/Users/Public/rel-link", target="..\\Public\\new.txt", t=t),
        E("dir", "Files/Users/Public/withstream", t=t),
        E("stream", "Files/Users/Public/withstream:dirdata", b"directory stream"),
        *(E("dir", "/".join(deep.split("/")[: i + 2]), t=t) for i in range(5)),
        E("whiteout", deep + "/.wh.gone.txt"),
        E("dir", "Hives", top=True, t=t),
        E("file", "Hives/System_Delta", b"regf-system-2", top=True, t=t),
    ]


def go_layer(entries: list[E]) -> bytes:
    """The layer as go-winio backuptar + Go archive/tar write it."""
    out = io.BytesIO()
    w = GoTarWriter(out)
    owner: GoHeader | None = None
    for e in entries:
        if e.kind == "whiteout":
            w.write_header(whiteout_header(_wh(e.name)))
            owner = None
            continue
        if e.kind == "stream":
            assert owner is not None
            stream = e.name.rpartition(":")[2]
            w.write_header(stream_header(owner, stream, len(e.data)))
            w.write(e.data)
            continue
        hdr = basic_info_header(
            e.name,
            len(e.data),
            attributes=_attrs(e),
            creation=e.t - 10**9,
            last_write=e.t,
            last_access=e.t + 100,
            change=e.t + 200,
        )
        if e.sd and not e.top:
            hdr.pax_records[PAX_RAWSD] = e.sd
        for k, v in e.xattrs.items():
            hdr.pax_records[PAX_XATTR_PREFIX + k] = base64.b64encode(v).decode()
        if e.kind == "file" and e.data:
            hdr.mode |= 0o100000
        if e.kind in ("symlink", "junction"):
            hdr.typeflag = "2"
            hdr.mode |= 0o120000
            hdr.linkname = e.target
            if e.kind == "junction":
                hdr.pax_records[PAX_MOUNTPOINT] = "1"
        if e.kind == "link":
            hdr.typeflag = "1"
            hdr.mode = 0o644
            hdr.linkname = e.target
            hdr.pax_records.pop(PAX_RAWSD, None)
        w.write_header(hdr)
        if e.kind == "file":
            w.write(e.data)
        owner = hdr
    w.close()
    return out.getvalue()


def _wh(name: str) -> str:
    """The whiteout fixture names are written already prefixed; whiteout_header adds it."""
    head, _, tail = name.rpartition("/")
    assert tail.startswith(".wh.")
    return f"{head}/{tail[4:]}"


def tarfile_layer(entries: list[E]) -> bytes:
    """The same layer written by Python's tarfile (another producer's framing)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.mtime = e.t // 10**9
            ti.mode = 0
            pax: dict[str, str] = {}
            if e.kind == "whiteout":
                tf.addfile(ti)
                continue
            pax["mtime"] = format_pax_time(e.t)
            if e.kind != "stream":
                pax[PAX_FILEATTR] = str(_attrs(e))
                pax[PAX_CREATIONTIME] = format_pax_time(e.t - 10**9)
                if e.sd and not e.top and e.kind != "link":
                    pax[PAX_RAWSD] = e.sd
                for k, v in e.xattrs.items():
                    pax[PAX_XATTR_PREFIX + k] = base64.b64encode(v).decode()
            if e.kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif e.kind in ("symlink", "junction"):
                ti.type = tarfile.SYMTYPE
                ti.linkname = e.target
                if e.kind == "junction":
                    pax[PAX_MOUNTPOINT] = "1"
            elif e.kind == "link":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e.target
            ti.pax_headers = pax
            if e.kind in ("file", "stream"):
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return out.getvalue()


def layer_size(entries: list[E]) -> int:
    """The seed's size: regular main-stream entries only."""
    return sum(len(e.data) for e in entries if e.kind == "file")


# -- tests of the generators themselves -----------------------------------------------


def _read_all(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def test_go_layer_is_a_tar_python_reads_with_every_record() -> None:
    members = _read_all(go_layer(base_layer()))
    names = [m.name for m in members]
    assert names[0] == "Files" and "UtilityVM/Files/EFI/Microsoft/Boot/BCD" in names
    app = next(m for m in members if m.name == "Files/Program Files/app.exe")
    assert app.pax_headers[PAX_RAWSD] == SD_ADMIN
    assert app.pax_headers[PAX_FILEATTR] == "32"
    assert app.pax_headers[PAX_CREATIONTIME] == format_pax_time(T0 - 10**9)
    junction = next(m for m in members if m.name == "Files/Documents and Settings")
    assert junction.issym() and junction.linkname == "C:\\Users"
    assert junction.pax_headers[PAX_MOUNTPOINT] == "1"
    stream = next(m for m in members if m.name.endswith(":Zone.Identifier"))
    assert set(stream.pax_headers) == {"atime", "ctime", "mtime"}


def test_go_layer_whiteouts_are_bare_ustar_headers() -> None:
    data = go_layer(diff_layer_2())
    members = _read_all(data)
    long_wh = next(m for m in members if m.name.endswith("/.wh." + "f" * 60 + ".txt"))
    assert long_wh.pax_headers == {} and long_wh.mtime == 0 and long_wh.mode == 0
    deep_wh = next(m for m in members if m.name.endswith(".wh.gone.txt"))
    assert len(deep_wh.name) > 100 and deep_wh.pax_headers == {}


def test_tarfile_layer_carries_the_same_names() -> None:
    for layer in (base_layer(), diff_layer_1(), diff_layer_2()):
        assert [m.name for m in _read_all(tarfile_layer(layer))] == [
            m.name for m in _read_all(go_layer(layer))
        ]
