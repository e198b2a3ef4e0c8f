"""The OCI image layout and the docker-archive as data, on real files.

Each test writes a real layout directory or a real ``docker save``-shaped tar
with :mod:`tarfile`, then reads it back only through lamina.oci's parsers and
the paths they return, verifying every blob with :class:`HashingReader`, the
way the store will.  Expected digests come from hashlib.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from lamina import errors
from lamina.oci import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    MAX_INDEX_FILE_SIZE,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    DockerArchiveImage,
    HashingReader,
    ImageConfig,
    Manifest,
    blob_path,
    chain_id,
    digest_from_blob_path,
    docker_archive_image,
    docker_archive_manifest,
    docker_repositories,
    image_name,
    layout_images,
    oci_index,
    oci_layout_file,
    parse_docker_manifest,
    parse_oci_index,
    parse_oci_layout,
    parse_reference,
    parse_repositories,
    safe_member_path,
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Image:
    """A two-layer image made from scratch: layers, config, manifest, all as bytes."""

    def __init__(self, tag: str) -> None:
        self.layers = [
            layer_tar({"etc/hostname": b"box\n", "bin/sh": b"#!sh\n"}),
            layer_tar({"etc/motd": tag.encode()}),
        ]
        self.diff_ids = [sha256(layer) for layer in self.layers]
        self.config = ImageConfig("amd64", "linux", self.diff_ids).to_bytes()
        self.manifest = Manifest(
            Descriptor(OCI_CONFIG, sha256(self.config), len(self.config)),
            [
                Descriptor(OCI_LAYER, d, len(b))
                for d, b in zip(self.diff_ids, self.layers, strict=True)
            ],
        ).to_bytes()
        self.descriptor = Descriptor(OCI_MANIFEST, sha256(self.manifest), len(self.manifest))

    def blobs(self) -> dict[str, bytes]:
        return {sha256(blob): blob for blob in (*self.layers, self.config, self.manifest)}


def read_verified(root: Path, member: str, digest: str, size: int | None = None) -> bytes:
    with (root / safe_member_path(member)).open("rb") as raw:
        return HashingReader(raw, digest, size).read()


# -- member paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("blobs/sha256/ab", "blobs/sha256/ab"),
        ("./blobs//sha256/ab", "blobs/sha256/ab"),
        ("abc/layer.tar", "abc/layer.tar"),
        ("manifest.json", "manifest.json"),
        ("dir/", "dir"),
    ],
)
def test_safe_member_paths_are_cleaned(name: str, clean: str) -> None:
    assert safe_member_path(name) == clean


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "blobs/../../x",
        "a/../b",
        "..",
        "",
        ".",
        "./",
        "a\\..\\b",
        "a\0b",
        "//etc/passwd",
    ],
)
def test_unsafe_member_paths_are_refused(name: str) -> None:
    with pytest.raises(errors.UnsafeArchiveError):
        safe_member_path(name)


def test_blob_paths() -> None:
    digest = sha256(b"x")
    assert blob_path(digest) == "blobs/sha256/" + digest[7:]
    assert digest_from_blob_path(blob_path(digest)) == digest
    assert digest_from_blob_path("./blobs/sha256/" + digest[7:]) == digest
    assert digest_from_blob_path("blobs/sha256/" + digest[7:].upper()) is None
    assert digest_from_blob_path("blobs/md5/" + "0" * 32) is None
    assert digest_from_blob_path("index.json") is None
    with pytest.raises(errors.UnsafeArchiveError):
        digest_from_blob_path("blobs/../../sha256/x")
    long = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert blob_path(long).startswith("blobs/sha512/")


# -- OCI layout -----------------------------------------------------------------


def write_layout(root: Path, images: list[tuple[Image, list[str]]]) -> None:
    (root / "blobs" / "sha256").mkdir(parents=True)
    for image, _ in images:
        for digest, blob in image.blobs().items():
            (root / blob_path(digest)).write_bytes(blob)
    (root / "oci-layout").write_bytes(oci_layout_file())
    (root / "index.json").write_bytes(
        oci_index(
            [(image.descriptor, [parse_reference(n) for n in names]) for image, names in images]
        )
    )


def test_an_oci_layout_written_and_read_back(tmp_path: Path) -> None:
    first, second = Image("one"), Image("two")
    write_layout(tmp_path, [(first, ["debian:12", "localhost:5000/x:y"]), (second, [])])
    assert json.loads((tmp_path / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert parse_oci_layout((tmp_path / "oci-layout").read_bytes()) == "1.0.0"

    index = parse_oci_index((tmp_path / "index.json").read_bytes())
    raw = json.loads((tmp_path / "index.json").read_bytes())
    assert raw["manifests"][0]["annotations"] == {
        ANNOTATION_IMAGE_NAME: "docker.io/library/debian:12",
        ANNOTATION_REF_NAME: "12",
    }
    images = layout_images(index)
    assert [[str(n) for n in names] for _, names in images] == [
        ["docker.io/library/debian:12", "localhost:5000/x:y"],
        [],
    ]
    for (descriptor, _), image in zip(images, (first, second), strict=True):
        manifest = Manifest.parse(
            read_verified(
                tmp_path, blob_path(descriptor.digest), descriptor.digest, descriptor.size
            )
        )
        config_bytes = read_verified(
            tmp_path, blob_path(manifest.config.digest), manifest.config.digest
        )
        config = ImageConfig.parse(config_bytes)
        for layer, diff in zip(manifest.layers, config.diff_ids, strict=True):
            # uncompressed layers: the blob digest is the diff ID
            assert read_verified(tmp_path, blob_path(layer.digest), diff, layer.size)
        assert chain_id(config.diff_ids) == chain_id(image.diff_ids)
        assert sha256(config_bytes) == sha256(image.config)  # the image id


def test_a_damaged_blob_in_a_layout_is_an_integrity_error(tmp_path: Path) -> None:
    image = Image("x")
    write_layout(tmp_path, [(image, ["x"])])
    layer = tmp_path / blob_path(image.diff_ids[1])
    data = bytearray(layer.read_bytes())
    data[600] ^= 1
    layer.write_bytes(bytes(data))
    with pytest.raises(errors.IntegrityError):
        read_verified(tmp_path, blob_path(image.diff_ids[1]), image.diff_ids[1])


def test_layout_names_follow_the_design_rule() -> None:
    # containerd's full name wins over the bare tag
    assert image_name(
        {ANNOTATION_IMAGE_NAME: "docker.io/library/debian:12", ANNOTATION_REF_NAME: "12"}
    ) == parse_reference("debian:12")
    # a bare ref.name is read as a reference: "full" is docker.io/library/full:latest
    assert str(image_name({ANNOTATION_REF_NAME: "full"})) == "docker.io/library/full:latest"
    assert str(image_name({ANNOTATION_REF_NAME: "quay.io/a/b:1"})) == "quay.io/a/b:1"
    # names that do not parse give no name (the image still loads, untagged)
    assert image_name({ANNOTATION_REF_NAME: "Not A Name"}) is None
    assert image_name({}) is None
    assert image_name({ANNOTATION_IMAGE_NAME: "BAD NAME", ANNOTATION_REF_NAME: "ok"}) == (
        parse_reference("ok")
    )


def test_layout_entries_for_one_digest_must_agree() -> None:
    image = Image("x")
    entry = image.descriptor.to_dict()
    clash = dict(entry, size=entry["size"] + 1)  # type: ignore[operator]
    document = json.dumps({"schemaVersion": 2, "manifests": [entry, clash]}).encode()
    with pytest.raises(errors.InvalidArchiveError):
        layout_images(parse_oci_index(document))


@pytest.mark.parametrize(
    "document",
    [b'{"imageLayoutVersion": "2.0.0"}', b"{}", b'{"imageLayoutVersion": 1}', b"x"],
)
def test_bad_oci_layout_files(document: bytes) -> None:
    with pytest.raises(errors.InvalidArchiveError):
        parse_oci_layout(document)


def test_index_json_tolerates_unknown_entries_and_keeps_the_workload_shape() -> None:
    """The workload's own index.json shape: four entries with bare ref names."""
    index = parse_oci_index(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": sha256(name.encode()),
                        "size": 423,
                        "annotations": {ANNOTATION_REF_NAME: name},
                    }
                    for name in ("base", "full", "small", "big")
                ]
                + [{"mediaType": "application/vnd.example+json", "digest": sha256(b""), "size": 0}],
            }
        ).encode()
    )
    images = layout_images(index)
    assert [str(names[0]) for _, names in images] == [
        f"docker.io/library/{n}:latest" for n in ("base", "full", "small", "big")
    ]


# -- docker-archive -------------------------------------------------------------------


def docker_save_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def read_docker_archive(path: Path) -> list[tuple[DockerArchiveImage, ImageConfig]]:
    """Read a docker-archive as the store will: manifest.json, then the paths it names."""
    with tarfile.open(path) as tf:
        members = {safe_member_path(m.name): m for m in tf.getmembers() if m.isfile()}

        def member(name: str) -> bytes:
            extracted = tf.extractfile(members[name])
            assert extracted is not None
            return extracted.read()

        result = []
        for entry in parse_docker_manifest(member("manifest.json")):
            config = ImageConfig.parse(member(entry.config))
            assert len(entry.layers) == len(config.diff_ids)
            for layer, diff in zip(entry.layers, config.diff_ids, strict=True):
                HashingReader(io.BytesIO(member(layer)), diff).read()
            result.append((entry, config))
        return result


def test_a_docker_25_archive_round_trip(tmp_path: Path) -> None:
    """Docker ≥ 25: an OCI layout plus manifest.json pointing at blobs/sha256/…"""
    image = Image("25")
    manifest = docker_archive_manifest(
        [
            docker_archive_image(
                sha256(image.config),
                image.diff_ids,
                [parse_reference("debian:12"), parse_reference("quay.io/o/r:1")],
            )
        ]
    )
    raw = json.loads(manifest)
    assert raw == [
        {
            "Config": blob_path(sha256(image.config)),
            "RepoTags": ["debian:12", "quay.io/o/r:1"],  # Docker's familiar names
            "Layers": [blob_path(d) for d in image.diff_ids],
        }
    ]
    members = {blob_path(d): b for d, b in image.blobs().items()}
    members["oci-layout"] = oci_layout_file()
    members["index.json"] = oci_index([(image.descriptor, [parse_reference("debian:12")])])
    members["manifest.json"] = manifest
    members["repositories"] = docker_repositories(
        [([parse_reference("debian:12")], image.diff_ids[-1][7:])]
    )
    docker_save_tar(tmp_path / "save.tar", members)

    [(entry, config)] = read_docker_archive(tmp_path / "save.tar")
    assert [str(r) for r in entry.repo_tags] == [
        "docker.io/library/debian:12",
        "quay.io/o/r:1",
    ]
    assert config.diff_ids == tuple(image.diff_ids)
    assert parse_repositories(members["repositories"]) == {"debian": {"12": image.diff_ids[-1][7:]}}


def test_a_legacy_archive_with_layer_directories(tmp_path: Path) -> None:
    """Docker < 25 / skopeo: <hex>.json config, <id>/layer.tar, repositories."""
    image = Image("legacy")
    ids = [hashlib.sha256(f"v1 id {n}".encode()).hexdigest() for n in range(2)]
    config_name = sha256(image.config)[7:] + ".json"
    members = {config_name: image.config}
    for layer_id, data in zip(ids, image.layers, strict=True):
        members[f"{layer_id}/VERSION"] = b"1.0"
        members[f"{layer_id}/json"] = b"{}"
        members[f"{layer_id}/layer.tar"] = data
    members["manifest.json"] = json.dumps(
        [
            {
                "Config": config_name,
                "RepoTags": ["user/app:1", "localhost:5000/app:latest"],
                "Layers": [f"{i}/layer.tar" for i in ids],
            },
            {"Config": config_name, "RepoTags": None, "Layers": [f"{i}/layer.tar" for i in ids]},
        ]
    ).encode()
    members["repositories"] = json.dumps({"user/app": {"1": ids[-1]}}).encode()
    docker_save_tar(tmp_path / "legacy.tar", members)

    entries = read_docker_archive(tmp_path / "legacy.tar")
    assert [str(r) for r in entries[0][0].repo_tags] == [
        "docker.io/user/app:1",
        "localhost:5000/app:latest",
    ]
    assert entries[1][0].repo_tags == ()  # an untagged image (RepoTags: null)
    assert entries[0][0].layers == tuple(f"{i}/layer.tar" for i in ids)


def test_layer_sources_for_foreign_layers_round_trip() -> None:
    foreign = Descriptor(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        sha256(b"windows base"),
        1000,
        urls=["https://mcr.microsoft.com/v2/windows/blobs/x"],
    )
    entry = docker_archive_image(
        sha256(b"c"), [sha256(b"l")], layer_sources={sha256(b"l"): foreign}
    )
    [parsed] = parse_docker_manifest(docker_archive_manifest([entry]))
    assert parsed == entry
    assert parsed.layer_sources[sha256(b"l")].urls == foreign.urls


@pytest.mark.parametrize(
    "entry",
    [
        {"Config": "../../etc/passwd", "RepoTags": [], "Layers": []},
        {"Config": "c.json", "RepoTags": [], "Layers": ["../../etc/passwd"]},
        {"Config": "/etc/shadow", "RepoTags": [], "Layers": []},
        {"Config": "c.json", "RepoTags": [], "Layers": ["ok/layer.tar", "x/../../y"]},
    ],
)
def test_manifest_json_naming_paths_outside_is_unsafe(tmp_path: Path, entry: object) -> None:
    with pytest.raises(errors.UnsafeArchiveError):
        parse_docker_manifest(json.dumps([entry]).encode())
    # and so is the same manifest.json inside a real tar, before any member is opened
    docker_save_tar(tmp_path / "evil.tar", {"manifest.json": json.dumps([entry]).encode()})
    with pytest.raises(errors.UnsafeArchiveError):
        read_docker_archive(tmp_path / "evil.tar")


@pytest.mark.parametrize(
    "document",
    [
        b"{}",  # an object, not an array
        b"[1]",
        b'[{"RepoTags": [], "Layers": []}]',  # no Config
        b'[{"Config": "c", "RepoTags": []}]',  # no Layers
        b'[{"Config": "c", "Layers": [1]}]',
        b'[{"Config": "c", "Layers": [], "RepoTags": ["Bad:Tag:x"]}]',
        b'[{"Config": "c", "Layers": [], "RepoTags": [7]}]',
        b'[{"Config": "c", "Layers": [], "LayerSources": {"nodigest": {}}}]',
        b"\x89PNG\r\n",
        b"\xff\xd8\xff\xe0 JFIF",  # a JPEG is not a manifest.json
    ],
)
def test_bad_manifest_json_is_an_invalid_archive(document: bytes) -> None:
    with pytest.raises(errors.InvalidArchiveError):
        parse_docker_manifest(document)


def test_oversized_archive_index_files_are_refused() -> None:
    padding = b" " * MAX_INDEX_FILE_SIZE
    with pytest.raises(errors.ArchiveTooLargeError):
        parse_docker_manifest(b"[]" + padding)
    with pytest.raises(errors.ArchiveTooLargeError):
        parse_oci_index(b'{"schemaVersion": 2, "manifests": []}' + padding)
    with pytest.raises(errors.ArchiveTooLargeError):
        parse_repositories(b"{}" + padding)
    # an index.json may be bigger than a single manifest may
    assert parse_oci_index(b'{"schemaVersion": 2, "manifests": []}' + b" " * (5 << 20))


def test_repo_tags_hold_tags_only() -> None:
    pinned = parse_reference("debian@sha256:" + "1" * 64)
    with pytest.raises(errors.InvalidArgumentError):
        docker_archive_manifest([docker_archive_image(sha256(b"c"), [], [pinned])])


@pytest.mark.parametrize("document", [b"[]", b'{"a": "b"}', b'{"a": {"t": 1}}'])
def test_bad_repositories_files(document: bytes) -> None:
    with pytest.raises(errors.InvalidArchiveError):
        parse_repositories(document)


def test_docker_media_types_in_an_archive_manifest() -> None:
    """A Docker schema 2 image (as pulled from the Hub) written as an OCI index entry."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = Manifest(
        Descriptor(DOCKER_CONFIG, sha256(config), len(config)),
        [Descriptor(DOCKER_LAYER, sha256(b"gz"), 2)],
        media_type=DOCKER_MANIFEST,
    ).to_bytes()
    descriptor = Descriptor(DOCKER_MANIFEST, sha256(manifest), len(manifest))
    [(entry, names)] = layout_images(parse_oci_index(oci_index([(descriptor, [])])))
    assert entry == descriptor and names == []
