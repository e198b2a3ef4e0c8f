"""The Windows backup-tar format: Go archive/tar byte compatibility, parsing, validation."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina.archive.windows import (
    EntryKind,
    GoHeader,
    GoTarWriter,
    LayerValidator,
    RawTarReader,
    basic_info_header,
    classify,
    filetime_to_ns,
    format_pax_time,
    ns_to_filetime,
    parse_pax_records,
    parse_pax_time,
    stream_header,
    whiteout_header,
)
from lamina.errors import InvalidArchiveError, UnsafeArchiveError

T = 1_591_714_327_123_456_700

GO_PROGRAM = r"""
package main

import (
	"archive/tar"
	"bufio"
	"encoding/base64"
	"encoding/json"
	"os"
	"time"
)

type H struct {
	Name     string            `json:"name"`
	Typeflag string            `json:"typeflag"`
	Mode     int64             `json:"mode"`
	Size     int64             `json:"size"`
	Mtime    *int64            `json:"mtime"`
	Atime    *int64            `json:"atime"`
	Ctime    *int64            `json:"ctime"`
	Linkname string            `json:"linkname"`
	Uid      int               `json:"uid"`
	Pax      map[string]string `json:"pax"`
	Format   string            `json:"format"`
	Body     string            `json:"body"`
}

func t(ns *int64) time.Time {
	if ns == nil {
		return time.Time{}
	}
	return time.Unix(0, *ns)
}

func main() {
	w := tar.NewWriter(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var h H
		if err := json.Unmarshal(sc.Bytes(), &h); err != nil {
			panic(err)
		}
		hdr := &tar.Header{Name: h.Name, Typeflag: h.Typeflag[0], Mode: h.Mode, Size: h.Size,
			ModTime: t(h.Mtime), AccessTime: t(h.Atime), ChangeTime: t(h.Ctime),
			Linkname: h.Linkname, Uid: h.Uid, PAXRecords: h.Pax}
		if h.Format == "pax" {
			hdr.Format = tar.FormatPAX
		}
		if err := w.WriteHeader(hdr); err != nil {
			panic(err)
		}
		body, _ := base64.StdEncoding.DecodeString(h.Body)
		if _, err := w.Write(body); err != nil {
			panic(err)
		}
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
}
"""


def headers() -> list[tuple[GoHeader, bytes]]:
    sd = "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="
    out: list[tuple[GoHeader, bytes]] = []
    d = basic_info_header(
        "Files", 0, attributes=0x10, creation=T, last_write=T, last_access=T, change=T
    )
    out.append((d, b""))
    f = basic_info_header(
        "Files/a.txt",
        5,
        attributes=0x20,
        creation=T - 7,
        last_write=T + 300,
        last_access=T,
        change=T + 1_000_000_000,
    )
    f.pax_records["MSWINDOWS.rawsd"] = sd
    f.pax_records["MSWINDOWS.xattr.Foo"] = base64.b64encode(b"bar").decode()
    f.mode |= 0o100000
    out.append((f, b"hello"))
    out.append((stream_header(f, "Zone.Identifier", 3), b"abc"))
    whole = basic_info_header(
        "Files/whole",
        0,
        attributes=0x20,
        creation=T,
        last_write=1_591_714_327 * 10**9,
        last_access=T,
        change=T,
    )
    out.append((whole, b""))
    long_name = "Files/" + "x" * 120 + "/y.txt"
    out.append(
        (
            basic_info_header(
                long_name, 2, attributes=0x20, creation=T, last_write=T, last_access=T, change=T
            ),
            b"hi",
        )
    )
    out.append(
        (
            basic_info_header(
                "Files/caf\u00e9/\u65e5\u672c\u8a9e.txt",
                1,
                attributes=0x20,
                creation=T,
                last_write=T,
                last_access=T,
                change=T,
            ),
            b"1",
        )
    )
    link = basic_info_header(
        "Files/junction", 0, attributes=0x410, creation=T, last_write=T, last_access=T, change=T
    )
    link.typeflag, link.mode, link.linkname = "2", link.mode | 0o120000, "C:\\Users\\" + "z" * 110
    link.pax_records["MSWINDOWS.mountpoint"] = "1"
    out.append((link, b""))
    out.append((whiteout_header("Files/dir/gone"), b""))
    out.append((whiteout_header("Files/" + "w" * 90 + "/" + "v" * 60), b""))
    out.append((whiteout_header("Files/" + "u" * 150), b""))
    out.append((whiteout_header("Files/\u00e9t\u00e9"), b""))
    out.append((GoHeader(name="plain", typeflag="0", size=1, mtime=T, format="unknown"), b"p"))
    out.append(
        (GoHeader(name="neg", typeflag="0", mtime=-1_500_000_000, atime=T, format="pax"), b"")
    )
    out.append((GoHeader(name="trail/" * 20 + "x", typeflag="5", mode=0o40000, mtime=T), b""))
    out.append((GoHeader(name="big-uid", uid=1 << 22, mtime=10**9), b""))
    return out


def ours(items: list[tuple[GoHeader, bytes]]) -> bytes:
    buf = io.BytesIO()
    w = GoTarWriter(buf)
    for hdr, body in items:
        w.write_header(hdr)
        w.write(body)
    w.close()
    return buf.getvalue()


@pytest.mark.skipif(
    shutil.which("go") is None, reason="Go toolchain (Debian golang-go) not installed"
)
def test_writer_matches_go_archive_tar_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "w.go").write_text(GO_PROGRAM)
    env = {
        "HOME": str(tmp_path),
        "GOCACHE": str(tmp_path / "cache"),
        "GOPATH": str(tmp_path / "gp"),
        "PATH": "/usr/bin:/bin",
        "GO111MODULE": "off",
    }
    subprocess.run(
        ["go", "build", "-o", str(tmp_path / "w"), str(tmp_path / "w.go")],
        check=True,
        env=env,
        capture_output=True,
    )
    lines = []
    for hdr, body in headers():
        lines.append(
            json.dumps(
                {
                    "name": hdr.name,
                    "typeflag": hdr.typeflag,
                    "mode": hdr.mode,
                    "size": hdr.size,
                    "mtime": hdr.mtime,
                    "atime": hdr.atime,
                    "ctime": hdr.ctime,
                    "linkname": hdr.linkname,
                    "uid": hdr.uid,
                    "pax": hdr.pax_records,
                    "format": hdr.format,
                    "body": base64.b64encode(body).decode(),
                }
            )
        )
    go = subprocess.run(
        [str(tmp_path / "w")], input="\n".join(lines).encode(), check=True, capture_output=True
    ).stdout
    mine = ours(headers())
    if go != mine:
        for i in range(0, max(len(go), len(mine)), 512):
            assert go[i : i + 512] == mine[i : i + 512], f"first difference in block {i // 512}"
    assert go == mine


def test_pax_time_formatting_and_parsing() -> None:
    assert format_pax_time(T) == "1591714327.1234567"
    assert format_pax_time(10**9) == "1"
    assert format_pax_time(-1_500_000_000) == "-1.5"
    assert parse_pax_time("1591714327.1234567") == T
    assert parse_pax_time("1.123456789123") == 1_123_456_789
    assert parse_pax_time("-1.5") == -1_500_000_000
    with pytest.raises(InvalidArchiveError):
        parse_pax_time("1e9")
    assert filetime_to_ns(ns_to_filetime(T)) == T
    assert ns_to_filetime(0) == 116444736000000000


def test_reader_gives_raw_bytes_that_rebuild_the_stream() -> None:
    data = ours(headers())
    reader = RawTarReader(io.BytesIO(data))
    rebuilt = b""
    names = []
    while (hdr := reader.next()) is not None:
        rebuilt += hdr.raw + reader.read()
        names.append(hdr.name)
    rebuilt += reader.trailer
    assert rebuilt == data and reader.saw_end_marker
    assert (
        "Files/" + "x" * 120 + "/y.txt" in names
        and "Files/caf\u00e9/\u65e5\u672c\u8a9e.txt" in names
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        py = [m.name for m in tf.getmembers()]
    assert names == py


def test_reader_gnu_long_names_and_base256() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("g/" + "n" * 200)
        ti.uid = 1 << 30  # needs base-256
        ti.linkname = "t" * 150
        ti.type = tarfile.SYMTYPE
        tf.addfile(ti)
    hdr = RawTarReader(io.BytesIO(buf.getvalue())).next()
    assert hdr is not None and hdr.name == "g/" + "n" * 200 and hdr.linkname == "t" * 150
    assert hdr.uid == 1 << 30


@pytest.mark.parametrize("data", [b"4 a=\n", b"9 k=v\n", b"x k=v\n", b"6 =vv\n", b"7 kvv\n\n"])
def test_malformed_pax_records(data: bytes) -> None:
    with pytest.raises(InvalidArchiveError):
        parse_pax_records(data)


def test_classify_and_validate() -> None:
    def entry(name: str, flag: str = "0", **pax: str):  # type: ignore[no-untyped-def]
        buf = io.BytesIO()
        w = GoTarWriter(buf)
        w.write_header(GoHeader(name=name, typeflag=flag, pax_records=dict(pax)))
        w.close()
        hdr = RawTarReader(io.BytesIO(buf.getvalue())).next()
        assert hdr is not None
        return classify(hdr)

    files = entry("Files", "5")
    assert files.kind is EntryKind.DIR and files.attributes == 0x10
    a = entry("Files/a.txt", **{"MSWINDOWS.fileattr": "33", "LIBARCHIVE.creationtime": "5.5"})
    assert a.attributes == 33 and a.creation_ns == 5_500_000_000
    s = entry("Files/a.txt:s")
    assert s.kind is EntryKind.STREAM and s.stream_owner == "Files/a.txt"
    wh = entry("Files/.wh..wh..opq")
    assert wh.kind is EntryKind.WHITEOUT and wh.target == "Files/.wh..opq"  # not opaque on Windows
    v = LayerValidator(base_layer=False)
    for e in (files, a, s):
        v.check(e)
    v.check(wh)
    with pytest.raises(InvalidArchiveError):
        v.check(entry("Files/b:s"))
    with pytest.raises(InvalidArchiveError):
        LayerValidator(base_layer=True).check(wh)
    with pytest.raises(UnsafeArchiveError):
        entry("Files/a\\b")
    with pytest.raises(InvalidArchiveError):
        entry("Files/a?b")
