"""check and repair on real damage; no false positives on a healthy store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _images import layer_tar, oci_layout

from lamina import Store


def loaded(tmp_path: Path, driver: str = "vfs") -> tuple[Store, object]:
    oci_layout(
        tmp_path / "layout",
        [
            (
                "demo:1",
                [
                    layer_tar(
                        {
                            "etc": None,
                            "etc/passwd": b"root:x:0:0\n" * 50,
                            "bin": None,
                            "bin/tool": b"\x7fELF" * 500,
                        }
                    ),
                    layer_tar({"etc": None, "etc/motd": b"hi\n"}),
                ],
            )
        ],
    )
    s = Store(tmp_path / "s", driver=driver)
    (image,) = s.load(tmp_path / "layout")
    return s, image


def layer_dir(s: Store, chain: str) -> Path:
    """Where the vfs driver keeps a layer's files (the driver id is the chain ID's hex)."""
    return s.root / "vfs" / "dir" / chain[7:]


def repaired_ok(s: Store) -> None:
    report = s.check(repair=True)
    assert not report.ok
    again = s.check()
    assert again.ok, again.problems


def test_healthy_store_has_no_problems_even_with_changed_directory_mtimes(
    tmp_path: Path, driver_name: str
) -> None:
    s, image = loaded(tmp_path, driver_name)
    with s:
        c = s.create_container(image)  # type: ignore[arg-type]
        root = s.mount(c)
        (root / "etc" / "new").write_text("x")
        s.unmount(c)
        if driver_name == "vfs":  # what container creation does to directories (podman#25101)
            os.utime(layer_dir(s, image.layers[0]) / "etc", (1, 1))  # type: ignore[attr-defined]
        report = s.check()
        assert report.ok, report.problems
        assert report.problems == ()


def test_flipped_byte_in_a_layer_file(tmp_path: Path) -> None:
    s, image = loaded(tmp_path)
    with s:
        target = layer_dir(s, image.layers[0]) / "bin" / "tool"  # type: ignore[attr-defined]
        data = bytearray(target.read_bytes())
        data[100] ^= 1
        target.write_bytes(bytes(data))
        report = s.check()
        kinds = {(p.kind, p.subject) for p in report.problems}
        assert ("layer-corrupt", image.layers[0]) in kinds  # type: ignore[attr-defined]
        repaired_ok(s)
        assert s.images() == []  # the image needed the damaged layer


def test_truncated_blob(tmp_path: Path) -> None:
    s, image = loaded(tmp_path)
    with s:
        layer = s.layers()[0]
        assert layer.digest is not None
        blob = s.root / "blobs" / "sha256" / layer.digest[7:]
        blob.write_bytes(blob.read_bytes()[:10])
        report = s.check()
        assert [(p.kind, p.subject) for p in report.problems] == [("blob-corrupt", layer.digest)]
        repaired_ok(s)
        assert s.image("demo:1").id == image.id  # the layer itself is fine: the image stays


def test_deleted_layer_directory(tmp_path: Path) -> None:
    import shutil

    s, image = loaded(tmp_path)
    with s:
        top = image.layers[1]  # type: ignore[attr-defined]
        shutil.rmtree(layer_dir(s, top))
        report = s.check()
        assert ("layer-missing", top) in {(p.kind, p.subject) for p in report.problems}
        repaired_ok(s)
        assert s.images() == []
        assert [layer.chain_id for layer in s.layers()] == [image.layers[0]]  # type: ignore[attr-defined]


def test_orphan_driver_layer(tmp_path: Path) -> None:
    s, _ = loaded(tmp_path)
    with s:
        s.driver.create("f" * 64)
        report = s.check()
        assert [(p.kind, p.subject) for p in report.problems] == [("orphan-layer", "f" * 64)]
        repaired_ok(s)
        assert not s.driver.exists("f" * 64)


def test_damaged_database_does_not_stop_open(tmp_path: Path) -> None:
    s, _ = loaded(tmp_path)
    s.close()
    db = tmp_path / "s" / "store.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 200)
    with Store(tmp_path / "s") as again:
        report = again.check()
        kinds = {p.kind for p in report.problems}
        assert "database" in kinds
        assert "orphan-layer" in kinds  # the layers the lost rows described
        repaired_ok(again)
        assert again.images() == []


@pytest.mark.parametrize("repair", [False, True])
def test_check_reports_an_image_whose_layer_row_is_gone(tmp_path: Path, repair: bool) -> None:
    s, image = loaded(tmp_path)
    with s:
        s._db._conn.execute("PRAGMA foreign_keys = OFF")  # what a damaged database can hold
        with s._db.tx() as c:
            c.execute("DELETE FROM layers WHERE chain_id = ?", (image.layers[1],))  # type: ignore[attr-defined]
        s._db._conn.execute("PRAGMA foreign_keys = ON")
        report = s.check(repair=repair)
        kinds = {(p.kind, p.subject) for p in report.problems}
        assert ("image-incomplete", image.id) in kinds  # type: ignore[attr-defined]
        if repair:
            assert s.check().ok, s.check().problems


def test_gc_removes_leftover_files_and_reports_bytes(tmp_path: Path) -> None:
    s, image = loaded(tmp_path)
    with s:
        stray = s.root / "blobs" / "sha256" / ("a" * 64)
        stray.write_bytes(b"x" * 1000)
        os.utime(stray, (1, 1))
        split = s.root / "tar-split" / ("b" * 64 + ".gz")
        split.write_bytes(b"y" * 500)
        os.utime(split, (1, 1))
        report = s.gc()
        assert "sha256:" + "a" * 64 in report.removed
        assert report.reclaimed_bytes >= 1500
        assert not stray.exists() and not split.exists()
        assert s.image("demo:1").id == image.id  # type: ignore[attr-defined]
        assert s.check().ok
        usage = s.disk_usage()
        assert usage.images > 0 and usage.reclaimable == 0
        s.untag("demo:1")
        s.remove_image(image)  # type: ignore[arg-type]
        assert s.disk_usage().layers == 0
