"""load(save(x)) == x in every format, byte-exact layer tars, both docker-save forms, streams."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
from _images import (
    docker_archive_legacy,
    image_tree,
    layer_tar,
    oci_layout,
    sha256,
    tar_of_dir,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina import Store
from lamina.store import Image

FORMATS = ["docker-archive", "oci-archive", "oci-dir"]


def pipe_of(data: bytes) -> BinaryIO:
    """A non-seekable stream of ``data`` (a pipe fed by a thread)."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(read_fd, "rb")


def summary(store: Store, image: Image) -> tuple[object, ...]:
    layers = {layer.chain_id: layer for layer in store.layers()}
    return (
        image.id,
        image.names,
        [layers[c].diff_id for c in image.layers],
        image.os,
        image.architecture,
        image_tree(store, image),
    )


def base_layers() -> list[bytes]:
    return [
        layer_tar(
            {"etc": None, "etc/os-release": b"ID=test\n", "bin": None, "bin/sh": b"\x7fELF" * 100}
        ),
        layer_tar(
            {
                "etc": None,
                "etc/motd": b"hello\n",
                "etc/os-release": ("whiteout",),
                "l": ("link", "etc/motd"),
            }
        ),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_oci_layout_loads_and_round_trips(tmp_path: Path, driver_name: str, fmt: str) -> None:
    built = oci_layout(tmp_path / "layout", [("demo:1", base_layers())])
    with Store(tmp_path / "a", driver=driver_name) as a:
        (image,) = a.load(tmp_path / "layout")
        assert image.id == built.ids[0]
        assert image.digest == built.images[0]["manifest_digest"]
        assert image.names == ("docker.io/library/demo:1",)
        tree = image_tree(a, image)
        assert tree["etc/motd"][2] == b"hello\n"
        assert "etc/os-release" not in tree
        assert tree["l"] == ("link", "etc/motd")
        before = summary(a, image)
        a.save([image], tmp_path / "out", format=fmt)
    with Store(tmp_path / "b", driver=driver_name) as b:
        (again,) = b.load(tmp_path / "out")
        assert summary(b, again) == before
        # kept blobs go out unchanged: the manifest digest is the original one
        assert again.digest == built.images[0]["manifest_digest"]


def test_layer_diff_is_byte_identical_to_the_original_tar(tmp_path: Path, driver_name: str) -> None:
    tars = base_layers()
    oci_layout(tmp_path / "layout", [("demo", tars)])
    with Store(tmp_path / "s", driver=driver_name) as s:
        (image,) = s.load(tmp_path / "layout")
        layers = {layer.chain_id: layer for layer in s.layers()}
        for chain, original in zip(image.layers, tars, strict=True):
            with s.layer_diff(chain) as f:
                assert f.read() == original
            with s.layer_diff(layers[chain].diff_id) as f:  # by diff ID too
                assert f.read() == original


@pytest.mark.parametrize("keep", [True, False])
def test_legacy_docker_save_from_a_pipe(tmp_path: Path, keep: bool) -> None:
    """manifest.json after the layers, shared layer as a symlink, read from a non-seekable pipe."""
    shared = base_layers()[0]
    data, built = docker_archive_legacy(
        [
            (["one:1"], [shared, layer_tar({"a": b"1"})]),
            (["two:latest", "two:2"], [shared, layer_tar({"b": b"2"})]),
        ]
    )
    with Store(tmp_path / "s", driver="vfs", keep_blobs=keep) as s:
        images = s.load(pipe_of(data))
        assert [i.id for i in images] == built.ids
        assert images[1].names == ("docker.io/library/two:2", "docker.io/library/two:latest")
        assert len(s.layers()) == 3  # the shared base is stored once
        assert image_tree(s, images[1])["b"][2] == b"2"
        for image, info in zip(images, built.images, strict=True):
            for chain, original in zip(image.layers, info["tars"], strict=True):
                with s.layer_diff(chain) as f:
                    assert f.read() == original
        leftovers = (
            list((tmp_path / "s" / "tmp").iterdir()) if (tmp_path / "s" / "tmp").exists() else []
        )
        assert leftovers == []
        blobs = tmp_path / "s" / "blobs" / "sha256"
        kept = sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []
        expected = (
            sorted({sha256(t)[7:] for info in built.images for t in info["tars"]}) if keep else []
        )
        assert kept == expected


def test_our_archives_load_in_one_pass_without_spooling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save puts documents first, so a load from a pipe applies every layer straight away."""
    from lamina.store import _transfer

    direct: list[str] = []
    real = _transfer._apply_direct

    def counting(store: Store, plans: list, member: str, *args: object) -> bool:  # type: ignore[type-arg]
        applied = real(store, plans, member, *args)  # type: ignore[arg-type]
        if applied:
            direct.append(member)
        return applied

    monkeypatch.setattr(_transfer, "_apply_direct", counting)
    big = [layer_tar({"a": os.urandom(1 << 21)}), layer_tar({"b": os.urandom(1 << 21)})]
    oci_layout(tmp_path / "layout", [("demo", big)])
    with Store(tmp_path / "a", driver="vfs") as a:
        (image,) = a.load(tmp_path / "layout")
        out = io.BytesIO()
        a.save(image, out, format="oci-archive")
    with Store(tmp_path / "b", driver="vfs", keep_blobs=False) as b:
        (again,) = b.load(pipe_of(out.getvalue()))
        assert again.id == image.id
        assert len(direct) == 2  # both layers applied from the stream, none spooled
        assert not (tmp_path / "b" / "blobs").exists() or not any(
            (tmp_path / "b" / "blobs").rglob("*/*")
        )


def test_an_oci_archive_with_the_index_last_loads(tmp_path: Path) -> None:
    built = oci_layout(tmp_path / "layout", [("x", base_layers())], compress=False)
    names = sorted(
        str(p.relative_to(tmp_path / "layout"))
        for p in (tmp_path / "layout").rglob("*")
        if p.is_file()
    )
    data = tar_of_dir(tmp_path / "layout", first=tuple(n for n in names if n.startswith("blobs")))
    with Store(tmp_path / "s", driver="vfs") as s:
        (image,) = s.load(io.BytesIO(data))
        assert image.id == built.ids[0]


def test_save_without_kept_blobs_sends_uncompressed_layers(tmp_path: Path) -> None:
    tars = base_layers()
    oci_layout(tmp_path / "layout", [("demo", tars)])
    with Store(tmp_path / "a", driver="vfs", keep_blobs=False) as a:
        (image,) = a.load(tmp_path / "layout")
        a.save(image, tmp_path / "dir", format="oci-dir")
    blobs = {p.name for p in (tmp_path / "dir" / "blobs" / "sha256").iterdir()}
    assert {sha256(t)[7:] for t in tars} <= blobs  # the layer tars themselves, named by diff ID
    with Store(tmp_path / "b", driver="vfs") as b:
        (again,) = b.load(tmp_path / "dir")
        assert again.id == image.id


names = st.text(alphabet="abcdef", min_size=1, max_size=3)
contents = st.binary(max_size=2000)
layer_specs = st.dictionaries(names, contents, min_size=1, max_size=4)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    specs=st.lists(layer_specs, min_size=1, max_size=3),
    fmt=st.sampled_from(FORMATS),
    compress=st.booleans(),
)
def test_property_load_save_load_is_identity(
    tmp_path: Path, driver_name: str, specs: list[dict[str, bytes]], fmt: str, compress: bool
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as work_dir:
        work = Path(work_dir)
        tars = [
            layer_tar({f"d{i}": None, **{f"d{i}/{k}": v for k, v in spec.items()}})
            for i, spec in enumerate(specs)
        ]
        oci_layout(work / "layout", [("prop:1", tars)], compress=compress)
        with Store(work / "a", driver=driver_name) as a:
            (image,) = a.load(work / "layout")
            before = summary(a, image)
            a.save([image], work / "out", format=fmt)
        with Store(work / "b", driver=driver_name) as b:
            (again,) = b.load(work / "out")
            assert summary(b, again) == before
            for chain, original in zip(again.layers, tars, strict=True):
                with b.layer_diff(chain) as f:
                    assert (
                        hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(original).hexdigest()
                    )


def test_a_compressed_docker_save_stream_loads(tmp_path: Path) -> None:
    """``docker save x | gzip`` (or zstd) is one compressed stream; docker load takes it."""
    import gzip

    import zstandard

    data, built = docker_archive_legacy([(["z:1"], [layer_tar({"a": b"1" * 5000})])])
    for packed in (gzip.compress(data), zstandard.ZstdCompressor().compress(data)):
        with Store(tmp_path / f"s{len(packed)}", driver="vfs") as s:
            (image,) = s.load(pipe_of(packed))
            assert image.id == built.ids[0]


def test_multi_platform_index_loads_the_host_image_even_when_sparse(tmp_path: Path) -> None:
    import json

    from lamina import oci

    host = oci.host_platform()
    built = oci_layout(tmp_path / "l", [(None, [layer_tar({"host": b"1"})])])
    root = tmp_path / "l"
    index = json.loads((root / "index.json").read_text())
    host_entry = dict(
        index["manifests"][0], platform={"os": host.os, "architecture": host.architecture}
    )
    other = {
        "mediaType": host_entry["mediaType"],
        "digest": "sha256:" + "0" * 64,
        "size": 10,
        "platform": {"os": "linux", "architecture": "s390x"},
    }  # not in the archive
    nested = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [other, host_entry],
        }
    ).encode()
    (root / "blobs" / "sha256" / sha256(nested)[7:]).write_bytes(nested)
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "digest": sha256(nested),
                        "size": len(nested),
                        "annotations": {"io.containerd.image.name": "docker.io/library/multi:1"},
                    }
                ],
            }
        )
    )
    with Store(tmp_path / "s", driver="vfs") as s:
        (image,) = s.load(root)
        assert image.id == built.ids[0]
        assert image.names == ("docker.io/library/multi:1",)


def test_docker_25_archive_takes_names_from_manifest_json_too(tmp_path: Path) -> None:
    """Docker >= 25 writes an OCI layout plus manifest.json; RepoTags name the image."""
    import json
    import tarfile

    oci_layout(tmp_path / "layout", [(None, base_layers())])
    with Store(tmp_path / "a", driver="vfs") as a:
        (image,) = a.load(tmp_path / "layout")
        assert image.names == ()
        a.tag(image, "named:7")
        out = io.BytesIO()
        a.save(a.image("named:7"), out, format="docker-archive")
    rewritten = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(out.getvalue())) as src,
        tarfile.open(fileobj=rewritten, mode="w") as dst,
    ):
        for member in src:
            body = src.extractfile(member) if member.isfile() else None
            if member.name == "index.json" and body is not None:
                index = json.loads(body.read())
                for entry in index["manifests"]:
                    entry.pop("annotations", None)
                data = json.dumps(index).encode()
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member, body)
    with Store(tmp_path / "b", driver="vfs") as b:
        (again,) = b.load(io.BytesIO(rewritten.getvalue()))
        assert again.id == image.id
        assert again.names == ("docker.io/library/named:7",)
