"""Images and containers: names, ids, prefixes, removal rules, commit, export, 10,000 images."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from _images import image_tree, layer_tar, oci_layout, tree

from lamina import ChangeKind, Store
from lamina.errors import InUseError, InvalidArgumentError, NotFoundError


def load_demo(store: Store, tmp_path: Path, name: str = "demo:1") -> object:
    layout = tmp_path / f"layout-{name.replace(':', '-').replace('/', '_')}"
    oci_layout(
        layout,
        [
            (
                name,
                [
                    layer_tar(
                        {
                            "etc": None,
                            "etc/passwd": b"root:x:0:0\n",
                            "etc/hosts": b"127.0.0.1\n",
                            "usr": None,
                            "usr/old": b"old",
                        }
                    ),
                ],
            )
        ],
    )
    (image,) = store.load(layout)
    return image


def test_names_ids_and_prefixes(tmp_path: Path) -> None:
    with Store(tmp_path / "s", driver="vfs") as s:
        image = load_demo(s, tmp_path)
        assert s.image("demo:1") == image
        assert s.image("docker.io/library/demo:1") == image
        assert s.image(image.id) == image  # type: ignore[attr-defined]
        assert s.image(image.id[7:19]) == image  # type: ignore[attr-defined]
        s.tag(image, "other/name:x")  # type: ignore[arg-type]
        assert s.image("other/name:x").names == (
            "docker.io/library/demo:1",
            "docker.io/other/name:x",
        )
        s.untag("demo:1")
        with pytest.raises(NotFoundError):
            s.image("demo:1")
        with pytest.raises(NotFoundError):
            s.untag("demo:1")
        with pytest.raises(NotFoundError):
            s.image("nothing:here")
        with pytest.raises(NotFoundError):
            s.image("ffffffffffff")


def test_ambiguous_prefix_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path / "s", driver="vfs") as s:
        ids = []
        for n in range(40):  # 40 ids: two share a first hex digit for sure
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "n": n,
                    "rootfs": {"type": "layers", "diff_ids": []},
                }
            ).encode()
            ids.append(s._add_image(config, None, [], [], None))
        first = {}
        for i in ids:
            first.setdefault(i[7], []).append(i)
        digit, group = next((d, g) for d, g in first.items() if len(g) > 1)
        with pytest.raises(InvalidArgumentError):
            s.image(digit)
        assert s.image(group[0]).id == group[0]


def test_ten_thousand_images_list(tmp_path: Path) -> None:
    with Store(tmp_path / "s", driver="vfs") as s:
        for n in range(10_000):
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "n": n,
                    "rootfs": {"type": "layers", "diff_ids": []},
                }
            ).encode()
            s._add_image(config, None, [], [f"docker.io/library/img:{n}"], None)
        images = s.images()
        assert len(images) == 10_000
        assert s.image("img:9999").config["n"] == 9999
        s.remove_image("img:5000")
        assert len(s.images()) == 9_999


def test_remove_image_in_use_and_force(tmp_path: Path, driver_name: str) -> None:
    with Store(tmp_path / "s", driver=driver_name) as s:
        image = load_demo(s, tmp_path)
        c = s.create_container(image, name="web")  # type: ignore[arg-type]
        with pytest.raises(InUseError):
            s.remove_image("demo:1")
        s.remove_image("demo:1", force=True)  # names go, layers stay for the container
        assert s.images()[0].names == ()
        assert len(s.layers()) == 1
        assert s.containers() == [c]
        assert s.container("web") == c
        s.remove_container("web")
        s.remove_image(image)  # type: ignore[arg-type]
        assert s.images() == [] and s.layers() == []
        assert s.gc().removed == ()


def test_remove_image_keeps_layers_another_image_needs(tmp_path: Path) -> None:
    base = layer_tar({"a": b"1"})
    oci_layout(tmp_path / "l", [("one", [base]), ("two", [base, layer_tar({"b": b"2"})])])
    with Store(tmp_path / "s", driver="vfs") as s:
        one, two = s.load(tmp_path / "l")
        assert len(s.layers()) == 2
        s.remove_image(one)
        assert [layer.chain_id for layer in s.layers()] == list(two.layers)
        s.remove_image(two)
        assert s.layers() == []
        assert list((tmp_path / "s" / "blobs" / "sha256").iterdir()) == []


def test_commit_added_changed_deleted_then_save_load_in_a_fresh_store(
    tmp_path: Path, driver_name: str
) -> None:
    with Store(tmp_path / "a", driver=driver_name) as a:
        image = load_demo(a, tmp_path)
        c = a.create_container(image, name="box")  # type: ignore[arg-type]
        root = a.mount(c)
        (root / "etc" / "new.conf").write_text("added\n")
        (root / "etc" / "passwd").write_text("root:x:0:0\nme:x:1000:1000\n")
        os.unlink(root / "etc" / "hosts")
        (root / "usr" / "old").unlink()
        (root / "usr").rmdir()
        expected = tree(root)
        a.unmount(c)
        changes = {(str(ch.path), ch.kind) for ch in a.changes(c)}
        assert ("/etc/new.conf", ChangeKind.ADD) in changes
        assert ("/etc/passwd", ChangeKind.MODIFY) in changes
        assert ("/etc/hosts", ChangeKind.DELETE) in changes
        assert ("/usr", ChangeKind.DELETE) in changes
        for compression in ("gzip", "zstd", "none"):
            new = a.commit(
                c,
                f"committed:{compression}",
                compression=compression,
                message="change",
                author="tester",
            )
            assert new.config["history"][-1]["comment"] == "change"
            assert new.config["author"] == "tester"
            assert len(new.layers) == 2
            assert new.created is not None
            layer = {x.chain_id: x for x in a.layers()}[new.layers[-1]]
            # one diff, one layer: the first commit's blob describes it; later ones add blobs
            assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
        a.save(a.image("committed:zstd"), tmp_path / "zstd", format="oci-dir")
        index = json.loads((tmp_path / "zstd" / "index.json").read_text())
        blobs = tmp_path / "zstd" / "blobs" / "sha256"
        manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
        top = manifest["layers"][-1]
        assert top["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert (blobs / top["digest"][7:]).read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
        a.save([a.image("committed:gzip"), a.image("committed:zstd")], tmp_path / "out.tar")
        ids = {a.image("committed:gzip").id, a.image("committed:zstd").id}
        digests = {a.image("committed:gzip").digest, a.image("committed:zstd").digest}
    with Store(tmp_path / "b", driver=driver_name) as b:
        loaded = b.load(tmp_path / "out.tar")
        assert {i.id for i in loaded} == ids
        assert {i.digest for i in loaded} == digests  # the committed blobs went out unchanged
        for image in loaded:
            assert image_tree(b, image) == expected


def test_export_is_the_flattened_tree(tmp_path: Path, driver_name: str) -> None:
    with Store(tmp_path / "s", driver=driver_name) as s:
        image = load_demo(s, tmp_path)
        c = s.create_container(image)  # type: ignore[arg-type]
        root = s.mount(c)
        (root / "etc" / "hosts").unlink()
        (root / "x").write_bytes(b"new")
        s.unmount(c)
        out = io.BytesIO()
        s.export(c, out)
        s.export(c, tmp_path / "export.tar")
        assert (tmp_path / "export.tar").read_bytes() == out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = {m.name.rstrip("/") for m in tar}
        body = tar.extractfile("x").read()  # type: ignore[union-attr]
    assert names == {"etc", "etc/passwd", "usr", "usr/old", "x"}
    assert body == b"new"


def test_mount_is_counted_across_store_instances(tmp_path: Path, driver_name: str) -> None:
    with Store(tmp_path / "s", driver=driver_name) as s:
        image = load_demo(s, tmp_path)
        c = s.create_container(image)  # type: ignore[arg-type]
        first = s.mount(c)
    with Store(tmp_path / "s") as again:  # a second process would do the same
        assert again.driver.name == driver_name
        second = again.mount(c)
        assert second == first
        again.unmount(c)
        assert (first / "etc" / "passwd").exists()
        again.unmount(c)
        with pytest.raises(InUseError):
            again.unmount(c)


def test_container_names_are_unique(tmp_path: Path) -> None:
    from lamina.errors import AlreadyExistsError

    with Store(tmp_path / "s", driver="vfs") as s:
        image = load_demo(s, tmp_path)
        s.create_container(image, name="one")  # type: ignore[arg-type]
        with pytest.raises(AlreadyExistsError):
            s.create_container(image, name="one")  # type: ignore[arg-type]
        assert len(s.containers()) == 1
        with pytest.raises(NotFoundError):
            s.container("two")


def test_a_mounted_container_is_removed_only_with_force(tmp_path: Path, driver_name: str) -> None:
    with Store(tmp_path / "s", driver=driver_name) as s:
        image = load_demo(s, tmp_path)
        c = s.create_container(image)  # type: ignore[arg-type]
        s.mount(c)
        s.mount(c)
        with pytest.raises(InUseError):
            s.remove_container(c)
        assert s.containers() == [c]
        s.remove_container(c, force=True)
        assert s.containers() == []
        assert s.check().ok


def test_image_by_digest_reference(tmp_path: Path) -> None:
    with Store(tmp_path / "s", driver="vfs") as s:
        image = load_demo(s, tmp_path)
        assert s.image(f"demo@{image.digest}") == image  # type: ignore[attr-defined]


def test_layer_lock_times_out_with_a_typed_error(tmp_path: Path) -> None:
    from lamina._fs import file_lock

    lock = tmp_path / "x.lock"
    # a second open file is a second holder
    with file_lock(lock), pytest.raises(InUseError), file_lock(lock, timeout=0.1):
        pass
    with file_lock(lock, timeout=0.1):  # released with the first holder
        pass
