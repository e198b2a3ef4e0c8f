"""Hostile and broken archives: a clear typed error, nothing added, nothing written outside.

Every "outside" target is a sentinel directory inside tmp_path (never a host
directory), and the test asserts that it survived unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from _images import docker_archive_legacy, layer_tar, oci_layout, sha256, tar_of_dir

from lamina import Store
from lamina.errors import IntegrityError, InvalidArchiveError, UnsafeArchiveError


def members(entries: list[tuple[str, bytes | tuple[str, str]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def assert_empty(store: Store) -> None:
    assert store.images() == []
    assert store.layers() == []
    assert store.gc().removed == ()


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    return outside


def check_sentinel(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert (outside / "passwd").read_text() == "root:x:0:0\n"


def test_layer_digest_mismatch_is_integrity_error_and_adds_nothing(tmp_path: Path) -> None:
    built = oci_layout(
        tmp_path / "layout", [("bad", [layer_tar({"a": b"1"}), layer_tar({"b": b"2"})])]
    )
    del built
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    manifest_path = tmp_path / "layout" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_bytes())
    second = tmp_path / "layout" / "blobs" / "sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(second.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer's CRC: the bytes differ, the size does not
    second.write_bytes(bytes(data))
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(IntegrityError):
            s.load(tmp_path / "layout")
        assert_empty(s)


def test_diff_id_mismatch_is_integrity_error(tmp_path: Path) -> None:
    """A layer whose blob is right but whose config promises another diff ID."""
    data, _ = docker_archive_legacy([(["x:1"], [layer_tar({"a": b"1"})])])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        entries = [(m.name, tar.extractfile(m).read() if m.isfile() else None) for m in tar]  # type: ignore[union-attr]
    forged = []
    for name, body in entries:
        if body is None:
            continue
        if name.endswith("/layer.tar"):
            body = layer_tar({"a": b"2"})
        forged.append((name, body))
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(IntegrityError):
            s.load(io.BytesIO(members(forged)))
        assert_empty(s)


def test_manifest_naming_a_path_outside_is_unsafe(tmp_path: Path, sentinel: Path) -> None:
    manifest = json.dumps(
        [{"Config": "../../outside/passwd", "RepoTags": [], "Layers": []}]
    ).encode()
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(UnsafeArchiveError):
            s.load(io.BytesIO(members([("manifest.json", manifest)])))
        assert_empty(s)
    check_sentinel(sentinel)


@pytest.mark.parametrize("target", ["../outside/passwd", "/etc/passwd", "a/../../x"])
def test_symlinked_member_leaving_the_archive_is_unsafe(
    tmp_path: Path, sentinel: Path, target: str
) -> None:
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(UnsafeArchiveError):
            s.load(
                io.BytesIO(members([("layer.tar", ("symlink", target)), ("manifest.json", b"[]")]))
            )
        assert_empty(s)
    check_sentinel(sentinel)


def test_symlinked_member_inside_the_archive_is_followed_inside(tmp_path: Path) -> None:
    """The shared layer of a legacy docker save is such a link: it loads (see roundtrip tests);
    a manifest.json that is itself a link to another member is read through it."""
    data, built = docker_archive_legacy([(["x:1"], [layer_tar({"a": b"1"})])])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        entries = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    renamed = [("real-manifest" if n == "manifest.json" else n, b) for n, b in entries]
    renamed.append(("manifest.json", ("symlink", "real-manifest")))
    with Store(tmp_path / "s", driver="vfs") as s:
        (image,) = s.load(io.BytesIO(members(renamed)))
        assert image.id == built.ids[0]


def test_truncated_archive_is_invalid_and_adds_nothing(tmp_path: Path) -> None:
    oci_layout(tmp_path / "layout", [("t", [layer_tar({"a": b"x" * 300_000})])], compress=False)
    data = tar_of_dir(tmp_path / "layout", first=("oci-layout", "index.json"))
    with Store(tmp_path / "s", driver="vfs") as s:
        end = data.rindex(b"x" * 512) + 512  # the end of the last member's body
        end += -end % 512
        for cut in (len(data) // 2, 700, 513, end):
            with pytest.raises((InvalidArchiveError, IntegrityError)):
                s.load(io.BytesIO(data[:cut]))
            assert_empty(s)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01" + bytes(range(256)) * 8,  # a JPEG
        b"",
        gzip.compress(b"not a tar at all" * 100),
        b"\0" * 1024,
    ],
    ids=["jpeg", "empty", "gzip", "zeros"],
)
def test_not_an_archive_is_invalid(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "input"
    path.write_bytes(payload)
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(InvalidArchiveError):
            s.load(path)
        assert_empty(s)


def test_a_tar_that_is_no_image_is_invalid(tmp_path: Path) -> None:
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(InvalidArchiveError):
            s.load(io.BytesIO(members([("etc/passwd", b"root:x:0:0\n")])))
        assert_empty(s)


def test_config_not_matching_its_name_is_integrity_error(tmp_path: Path) -> None:
    data, built = docker_archive_legacy([(["x:1"], [layer_tar({"a": b"1"})])])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        entries = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    config_name = built.ids[0][7:] + ".json"
    forged = [(n, b.replace(b'"amd64"', b'"arm64"') if n == config_name else b) for n, b in entries]
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises(IntegrityError):
            s.load(io.BytesIO(members(forged)))
        assert_empty(s)


def test_layer_of_a_hostile_tar_escaping_is_refused_inside_the_store(
    tmp_path: Path, sentinel: Path
) -> None:
    """A layer tar whose entries climb out: apply refuses it; nothing outside changes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../../outside/passwd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    oci_layout(tmp_path / "layout", [("evil", [buf.getvalue()])])
    with Store(tmp_path / "s", driver="vfs") as s:
        with pytest.raises((UnsafeArchiveError, InvalidArchiveError)):
            s.load(tmp_path / "layout")
        assert_empty(s)
    check_sentinel(sentinel)
    assert sha256(b"") != ""  # keep the helper import honest
