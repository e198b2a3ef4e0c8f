"""What lamina.oci writes, read by the peers; what the peers write, read by lamina.oci.

skopeo (containers/image) and umoci are the reference readers and writers of
OCI layouts and docker-archives here: an ``index.json``, ``oci-layout`` and
``manifest.json`` made by :mod:`lamina.oci` must be accepted by them with the
same digests, names and layers, and their output must parse with lamina.oci's
readers and verify blob by blob.  Skips where a tool is not installed
(``scripts/ci-apt.sh`` installs both).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    HashingReader,
    ImageConfig,
    Manifest,
    blob_path,
    docker_archive_image,
    docker_archive_manifest,
    layout_images,
    oci_index,
    oci_layout_file,
    parse_docker_manifest,
    parse_manifest_or_index,
    parse_oci_index,
    parse_reference,
    safe_member_path,
)

pytestmark = pytest.mark.differential


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (scripts/ci-apt.sh installs it)")
    return path


def run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Image:
    """A small two-layer linux/amd64 image, every document made by lamina.oci."""

    def __init__(self) -> None:
        self.layers = [
            layer_tar({"etc/hostname": b"box\n"}),
            layer_tar({"etc/motd": b"made by lamina\n"}),
        ]
        self.diff_ids = [sha256(layer) for layer in self.layers]
        base = ImageConfig("amd64", "linux", self.diff_ids[:1], config={"Cmd": ["/bin/sh"]})
        # the second layer as a commit would add it: with its history entry
        self.config = base.with_layer(
            self.diff_ids[1], created="2026-12-08T00:00:00Z", created_by="lamina commit"
        ).to_bytes()
        self.manifest = Manifest(
            Descriptor(OCI_CONFIG, sha256(self.config), len(self.config)),
            [
                Descriptor(OCI_LAYER, d, len(b))
                for d, b in zip(self.diff_ids, self.layers, strict=True)
            ],
        ).to_bytes()
        self.descriptor = Descriptor(OCI_MANIFEST, sha256(self.manifest), len(self.manifest))

    def blobs(self) -> dict[str, bytes]:
        return {sha256(b): b for b in (*self.layers, self.config, self.manifest)}

    def write_layout(self, root: Path, names: list[str]) -> None:
        (root / "blobs" / "sha256").mkdir(parents=True)
        for digest, blob in self.blobs().items():
            (root / blob_path(digest)).write_bytes(blob)
        (root / "oci-layout").write_bytes(oci_layout_file())
        refs = [parse_reference(n) for n in names]
        (root / "index.json").write_bytes(oci_index([(self.descriptor, refs)]))

    def write_docker_archive(self, path: Path, names: list[str]) -> None:
        members = {blob_path(d): b for d, b in self.blobs().items() if b is not self.manifest}
        members["manifest.json"] = docker_archive_manifest(
            [
                docker_archive_image(
                    sha256(self.config), self.diff_ids, [parse_reference(n) for n in names]
                )
            ]
        )
        with tarfile.open(path, "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_skopeo_and_umoci_read_a_layout_lamina_wrote(tmp_path: Path) -> None:
    skopeo, umoci = tool("skopeo"), tool("umoci")
    image = Image()
    image.write_layout(tmp_path / "layout", ["debian:12", "localhost:5000/x:y"])
    # umoci lists the ref.name annotations: the tags
    tags = run(umoci, "ls", "--layout", str(tmp_path / "layout")).split()
    assert sorted(tags) == ["12", "y"]
    # skopeo finds the image by its tag and gives back our bytes unchanged
    ref = f"oci:{tmp_path / 'layout'}:12"
    raw = run(skopeo, "inspect", "--raw", ref).encode()
    assert raw == image.manifest
    assert run(skopeo, "inspect", "--config", "--raw", ref).encode() == image.config
    info = json.loads(run(skopeo, "inspect", ref))
    assert info["Digest"] == sha256(image.manifest)
    assert info["Layers"] == image.diff_ids
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        out = {}
        for member in tf:
            if member.isfile():
                extracted = tf.extractfile(member)
                assert extracted is not None
                out[safe_member_path(member.name)] = extracted.read()
        return out


def test_lamina_reads_the_docker_archive_skopeo_writes(tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    image = Image()
    image.write_layout(tmp_path / "layout", ["debian:12"])
    out = tmp_path / "skopeo.tar"
    run(
        skopeo,
        "--insecure-policy",
        "copy",
        "-q",
        f"oci:{tmp_path / 'layout'}:12",
        f"docker-archive:{out}:debian:12",
    )
    members = read_tar(out)
    [entry] = parse_docker_manifest(members["manifest.json"])
    assert [str(r) for r in entry.repo_tags] == ["docker.io/library/debian:12"]
    config = ImageConfig.parse(members[entry.config])
    assert config.diff_ids == tuple(image.diff_ids)
    for path, diff in zip(entry.layers, config.diff_ids, strict=True):
        HashingReader(io.BytesIO(members[path]), diff).read()


def test_skopeo_reads_a_docker_archive_lamina_wrote(tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    image = Image()
    archive = tmp_path / "lamina.tar"
    image.write_docker_archive(archive, ["debian:12", "quay.io/o/r:1"])
    info = json.loads(run(skopeo, "inspect", f"docker-archive:{archive}"))
    assert info["Layers"] == image.diff_ids
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Created"] == "2026-12-08T00:00:00Z"
    # skopeo picks an image of the archive by its RepoTags: both names must resolve
    # (the familiar "debian:12" as docker.io/library/debian:12), and a third must not
    for name in ("docker.io/library/debian:12", "quay.io/o/r:1"):
        run(skopeo, "inspect", f"docker-archive:{archive}:{name}")
    missing = subprocess.run(
        [skopeo, "inspect", f"docker-archive:{archive}:docker.io/library/other:1"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode != 0
    # and copies it into a layout that lamina.oci reads back, blob by blob
    run(
        skopeo,
        "--insecure-policy",
        "copy",
        "-q",
        f"docker-archive:{archive}:quay.io/o/r:1",
        f"oci:{tmp_path / 'copy'}:r1",
    )
    root = tmp_path / "copy"
    [(descriptor, names)] = layout_images(parse_oci_index((root / "index.json").read_bytes()))
    assert [str(n) for n in names] == ["docker.io/library/r1:latest"]  # skopeo writes the tag only

    def blob(digest: str, size: int | None = None) -> bytes:
        with (root / blob_path(digest)).open("rb") as raw:
            return HashingReader(raw, digest, size).read()

    manifest = parse_manifest_or_index(
        blob(descriptor.digest, descriptor.size), descriptor.media_type
    )
    assert isinstance(manifest, Manifest)
    config = ImageConfig.parse(blob(manifest.config.digest, manifest.config.size))
    assert config.diff_ids == tuple(image.diff_ids)
    for layer in manifest.layers:
        blob(layer.digest, layer.size)
