"""windowsfilter: bad Windows layers get a typed error and leave no layer behind."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import E, base_layer, go_layer

from lamina import drivers
from lamina.archive.windows import GoHeader, GoTarWriter
from lamina.drivers.windowsfilter import WindowsFilterDriver
from lamina.errors import InvalidArchiveError, LaminaError, UnsafeArchiveError


@pytest.fixture(params=["reexec", "inline"])
def driver(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WindowsFilterDriver]:
    if request.param == "inline":
        monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    else:
        monkeypatch.delenv("LAMINA_WINDOWSFILTER_NOREEXEC", raising=False)
    d = drivers.new_driver("windowsfilter", tmp_path / "root")
    assert isinstance(d, WindowsFilterDriver)
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(go_layer(base_layer())))
    yield d


def raw_tar(headers: list[tuple[GoHeader, bytes]]) -> bytes:
    out = io.BytesIO()
    w = GoTarWriter(out)
    for hdr, body in headers:
        w.write_header(hdr)
        if body:
            w.write(body)
    w.close()
    return out.getvalue()


def d(name: str) -> tuple[GoHeader, bytes]:
    return GoHeader(name=name, typeflag="5", mode=0o40000), b""


def f(name: str, body: bytes = b"x", **kw: object) -> tuple[GoHeader, bytes]:
    return GoHeader(name=name, typeflag="0", size=len(body), **kw), body  # type: ignore[arg-type]


CASES: dict[str, tuple[bytes, type[LaminaError], str | None]] = {
    "stream without its file": (
        raw_tar([d("Files"), f("Files/a.txt:evil")]),
        InvalidArchiveError,
        "base",
    ),
    "stream after another file": (
        raw_tar([d("Files"), f("Files/a"), f("Files/b"), f("Files/a:s")]),
        InvalidArchiveError,
        "base",
    ),
    "dot-dot": (raw_tar([d("Files"), f("Files/../../escape")]), UnsafeArchiveError, "base"),
    "absolute": (raw_tar([f("/etc/evil")]), UnsafeArchiveError, "base"),
    "backslash traversal": (
        raw_tar([d("Files"), f("Files/a\\..\\..\\x")]),
        UnsafeArchiveError,
        "base",
    ),
    "other top level": (raw_tar([d("Other"), f("Other/x")]), InvalidArchiveError, "base"),
    "bad UtilityVM": (raw_tar([d("UtilityVM"), d("UtilityVM/Other")]), InvalidArchiveError, None),
    "child before parent": (raw_tar([d("Files"), f("Files/dir/x")]), InvalidArchiveError, "base"),
    "duplicate in another case": (
        raw_tar([d("Files"), f("Files/A"), f("Files/a")]),
        InvalidArchiveError,
        "base",
    ),
    "inside a file": (
        raw_tar([d("Files"), f("Files/a"), f("Files/a/b")]),
        InvalidArchiveError,
        "base",
    ),
    "base layer tombstone": (
        raw_tar([d("Files"), (GoHeader(name="Files/.wh.x", typeflag="0"), b"")]),
        InvalidArchiveError,
        None,
    ),
    "tombstone in Hives": (
        raw_tar([d("Hives"), (GoHeader(name="Hives/.wh.x", typeflag="0"), b"")]),
        InvalidArchiveError,
        "base",
    ),
    "bad fileattr": (
        raw_tar([d("Files"), f("Files/a", pax_records={"MSWINDOWS.fileattr": "0x20"})]),
        InvalidArchiveError,
        "base",
    ),
    "bad rawsd": (
        raw_tar([d("Files"), f("Files/a", pax_records={"MSWINDOWS.rawsd": "%%%"})]),
        InvalidArchiveError,
        "base",
    ),
    "bad creationtime": (
        raw_tar([d("Files"), f("Files/a", pax_records={"LIBARCHIVE.creationtime": "yesterday"})]),
        InvalidArchiveError,
        "base",
    ),
    "hard link to nothing": (
        raw_tar([d("Files"), (GoHeader(name="Files/l", typeflag="1", linkname="Files/none"), b"")]),
        InvalidArchiveError,
        "base",
    ),
    "hard link outside": (
        raw_tar(
            [
                d("Files"),
                (GoHeader(name="Files/l", typeflag="1", linkname="Files/../../etc/passwd"), b""),
            ]
        ),
        UnsafeArchiveError,
        "base",
    ),
    "hard link to a directory": (
        raw_tar(
            [
                d("Files"),
                d("Files/dir"),
                (GoHeader(name="Files/l", typeflag="1", linkname="Files/dir"), b""),
            ]
        ),
        InvalidArchiveError,
        "base",
    ),
    "device node": (
        raw_tar([d("Files"), (GoHeader(name="Files/dev", typeflag="3"), b"")]),
        InvalidArchiveError,
        "base",
    ),
    "write through a symlink": (
        raw_tar(
            [
                d("Files"),
                (GoHeader(name="Files/s", typeflag="2", linkname="/tmp"), b""),
                f("Files/s/x"),
            ]
        ),
        InvalidArchiveError,
        "base",
    ),
    "colon in a directory name": (
        raw_tar([d("Files"), d("Files/a:b")]),
        InvalidArchiveError,
        "base",
    ),
}


def _truncated() -> bytes:
    data = go_layer(base_layer())
    return data[: len(data) // 2]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_layer_gets_typed_error_and_leaves_nothing(
    driver: WindowsFilterDriver, case: str, tmp_path: Path
) -> None:
    data, error, parent = CASES[case]
    driver.create("bad", parent)
    with pytest.raises(error):
        driver.apply_diff("bad", parent, io.BytesIO(data))
    _assert_clean(driver, tmp_path)


def _assert_clean(driver: WindowsFilterDriver, tmp_path: Path) -> None:
    meta = (driver.home / "bad" / ".lamina" / "meta.json").read_text()
    assert '"imported":false' in meta  # the created layer is untouched
    assert os.listdir(driver.home / "bad") == [".lamina", "Files", "layerchain.json"] or sorted(
        os.listdir(driver.home / "bad")
    ) == [".lamina", "Files", "layerchain.json"]
    assert os.listdir(driver.home / "bad" / "Files") == []
    assert os.listdir(driver.home / ".lamina-staging") == []
    assert sorted(os.listdir(tmp_path)) == ["root"]
    assert not Path("/etc/evil").exists()


def test_truncated_tar(driver: WindowsFilterDriver, tmp_path: Path) -> None:
    driver.create("bad")
    with pytest.raises(InvalidArchiveError):
        driver.apply_diff("bad", None, io.BytesIO(_truncated()))
    _assert_clean(driver, tmp_path)


def test_truncated_at_a_block_boundary(driver: WindowsFilterDriver, tmp_path: Path) -> None:
    data = go_layer([E("dir", "Files", top=True), E("file", "Files/a", b"x")])
    driver.create("bad")
    with pytest.raises(InvalidArchiveError):
        driver.apply_diff("bad", None, io.BytesIO(data[:-1024]))
    _assert_clean(driver, tmp_path)


def test_corrupt_checksum_and_pax(driver: WindowsFilterDriver, tmp_path: Path) -> None:
    data = bytearray(go_layer([E("dir", "Files", top=True), E("file", "Files/a", b"x")]))
    data[600] ^= 0xFF  # inside the second header block's PAX data or header
    driver.create("bad")
    with pytest.raises(InvalidArchiveError):
        driver.apply_diff("bad", None, io.BytesIO(bytes(data)))
    _assert_clean(driver, tmp_path)


def test_python_tarfile_hostile_names(driver: WindowsFilterDriver, tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("Files")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        ti = tarfile.TarInfo("Files/" + "../" * 5 + "tmp/pwned")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    driver.create("bad")
    with pytest.raises(UnsafeArchiveError):
        driver.apply_diff("bad", None, io.BytesIO(out.getvalue()))
    _assert_clean(driver, tmp_path)
    assert not Path("/tmp/pwned").exists()
