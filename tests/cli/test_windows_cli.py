"""``lamina windows ls`` and ``lamina windows convert``."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from lamina import drivers
from lamina.cli._windows import attribute_letters, windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers"))
from test_windowsfilter_fixtures import SD_ADMIN, base_layer, go_layer


def test_ls_shows_attributes_and_sddl(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(go_layer(base_layer()))
    result = CliRunner().invoke(windows, ["ls", "--json", str(tmp_path / "base.tar")])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in map(json.loads, result.output.splitlines())}
    app = rows["Files/Program Files/app.exe"]
    assert (
        app["sddl"]
        == "O:BAG:SYD:PAI(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)(A;OICIIO;GA;;;CO)(A;;0x1200a9;;;BU)"
    )
    assert app["attribute_letters"] == "A" and app["xattrs"] == {"$KERNEL.PURGE.ESBCACHE": "AQID"}
    assert rows["Files/Users/Public/readme.txt"]["sddl"] == "O:BUG:BU"
    assert rows["Files/Documents and Settings"]["junction"] is True
    assert rows["Files/Users/Public/readme.txt:Zone.Identifier"]["kind"] == "stream"
    plain = CliRunner().invoke(windows, ["ls", str(tmp_path / "base.tar")])
    assert "O:BUG:BU  Files/Users/Public/readme.txt" in plain.output
    assert "-> C:\\Users [junction]" in plain.output
    assert SD_ADMIN  # the fixture's descriptor is what ls decoded above
    assert attribute_letters(0x10 | 0x400) == "DL"


def test_convert_linux_layer_imports_as_windows_layer(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in [
            ("etc", "d", b""),
            ("etc/hosts", "f", b"127.0.0.1\n"),
            ("etc/.wh.old", "f", b""),
            ("bin", "d", b""),
            ("bin/sh", "f", b"#!"),
            ("bin/link", "l", b"sh"),
            ("dev", "d", b""),
            ("dev/null", "c", b""),
            ("etc/bad?name", "f", b""),
        ]:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, data.decode()
                data = b""
            elif kind == "c":
                ti.type = tarfile.CHRTYPE
            ti.size = len(data) if kind == "f" else 0
            tf.addfile(ti, io.BytesIO(data) if kind == "f" else None)
    (tmp_path / "linux.tar").write_bytes(buf.getvalue())
    out = tmp_path / "win.tar"
    result = CliRunner().invoke(
        windows, ["convert", str(tmp_path / "linux.tar"), "-o", str(out), "--sddl", "O:BAG:BA"]
    )
    assert result.exit_code == 0, result.output
    assert "dev/null" in result.output and "bad?name" in result.output  # warned and skipped
    with tarfile.open(out) as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:2]] == ["Files", "Hives"]
    hosts = next(m for m in members if m.name == "Files/etc/hosts")
    assert hosts.pax_headers["MSWINDOWS.rawsd"] == (
        "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAgAgAAAQIAAAAAAAUgAAAAIAIAAA=="
    )
    d = drivers.new_driver("windowsfilter", tmp_path / "store")
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(go_layer(base_layer())))
    d.create("app", "base")
    with open(out, "rb") as f:
        assert d.apply_diff("app", "base", f) == len(b"127.0.0.1\n") + 2
    root = d.get("app")
    try:
        assert (root / "etc/hosts").read_bytes() == b"127.0.0.1\n"
        assert (root / "bin/link").is_symlink()
    finally:
        d.put("app")
    with d.diff("app") as f:
        assert f.read() == out.read_bytes()


def _linux_tar(entries: list[tuple[str, str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, data.decode()
                data = b""
            ti.size = len(data) if kind == "f" else 0
            tf.addfile(ti, io.BytesIO(data) if kind == "f" else None)
    return buf.getvalue()


def test_convert_makes_what_the_driver_accepts_from_a_debian_shaped_layer(tmp_path: Path) -> None:
    """No parent directory entries and names equal but for case, as in real Debian layers.

    The seed's convert wrote them as they came and exited 0; the driver then
    refused the output ("its directory must come first", "duplicate entry").
    """
    linux = _linux_tar(
        [
            ("usr/share/man/man7/PAM.7.gz", "f", b"upper"),  # no usr/, usr/share/... entries
            ("usr/share/man/man7/pam.7.gz", "f", b"lower"),  # one name on Windows
            ("usr/Lib/a.txt", "f", b"a"),
            ("usr/lib/b.txt", "f", b"b"),  # inside the same directory on Windows
            ("usr/lib", "d", b""),  # the directory's own entry, after its children
            ("etc/motd", "f", b"motd"),
            ("etc/MOTD/x", "f", b"x"),  # beneath a file on Windows
            ("bin/sh", "f", b"#!"),
            ("bin/ash", "h", b"bin/sh"),  # a hard link group
            ("bin/pam", "h", b"usr/share/man/man7/pam.7.gz"),  # to the kept spelling
        ]
    )
    (tmp_path / "linux.tar").write_bytes(linux)
    out = tmp_path / "win.tar"
    result = CliRunner().invoke(windows, ["convert", str(tmp_path / "linux.tar"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "usr/share/man/man7/pam.7.gz" in result.output and "PAM.7.gz" in result.output
    assert "etc/MOTD/x" in result.output
    d = drivers.new_driver("windowsfilter", tmp_path / "store")
    d.create("app")
    with open(out, "rb") as f:
        d.apply_diff("app", None, f)
    root = d.get("app")
    try:
        assert (root / "usr/share/man/man7/PAM.7.gz").read_bytes() == b"upper"
        assert not (root / "usr/share/man/man7/pam.7.gz").exists()
        assert sorted(p.name for p in (root / "usr/Lib").iterdir()) == ["a.txt", "b.txt"]
        assert not (root / "usr/lib").exists()
        assert (root / "etc/motd").read_bytes() == b"motd"
        sh, ash = (root / "bin/sh").stat(), (root / "bin/ash").stat()
        assert sh.st_ino == ash.st_ino
        assert (root / "bin/pam").read_bytes() == b"upper"
    finally:
        d.put("app")


_DEBIAN = Path("/var/tmp/lamina-bench/work/layers/layer0.tar")


def test_convert_a_real_debian_layer_and_import_it(tmp_path: Path) -> None:
    if not _DEBIAN.is_file():
        pytest.skip(f"no real Debian layer at {_DEBIAN}")
    out = tmp_path / "win.tar"
    result = CliRunner().invoke(windows, ["convert", str(_DEBIAN), "-o", str(out)])
    assert result.exit_code == 0, result.output
    d = drivers.new_driver("windowsfilter", tmp_path / "store")
    d.create("debian")
    with open(out, "rb") as f:
        assert d.apply_diff("debian", None, f) > 0
    root = d.get("debian")
    try:
        assert (root / "etc/os-release").exists() or (root / "usr/lib/os-release").exists()
    finally:
        d.put("debian")
