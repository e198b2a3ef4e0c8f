"""Manifests, indexes, image configs and descriptors: strict parsing, canonical output.

The fixtures are documents in the shapes Docker, BuildKit and the OCI tools
write (field order, ``null`` slices, unknown fields included); digests in them
are computed with hashlib where they must be real.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle

import pytest

from lamina import errors
from lamina.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_DOCUMENT_SIZE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    History,
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    is_config,
    is_index,
    is_layer,
    is_manifest,
    is_nondistributable,
    layer_compression,
    layer_media_type,
    parse_manifest_or_index,
    parse_platform,
)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# A Docker schema 2 manifest as `docker push` / the Hub serve it (indented, Go field order).
DOCKER_MANIFEST_BYTES = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": 1457, "digest": sha("config")},
        "layers": [
            {"mediaType": DOCKER_LAYER, "size": 2152262, "digest": sha("layer0")},
            {"mediaType": DOCKER_LAYER, "size": 32, "digest": sha("layer1")},
        ],
    },
    indent=3,
).encode()

# A BuildKit-style OCI manifest with annotations and an OCI 1.1 subject.
OCI_MANIFEST_BYTES = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha("oci config"), "size": 585},
        "layers": [
            {
                "mediaType": OCI_LAYER_ZSTD,
                "digest": sha("zstd layer"),
                "size": 1234,
                "annotations": {"io.containers.zstd-chunked.manifest-position": "1:2:3:4"},
            }
        ],
        "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
        "subject": {"mediaType": OCI_MANIFEST, "digest": sha("subject"), "size": 10},
    }
).encode()

# A docker-built config: unknown fields (container, container_config, docker_version), a null
# slice, empty_layer history entries.
DOCKER_CONFIG_BYTES = json.dumps(
    {
        "architecture": "arm64",
        "variant": "v8",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["bash"],
            "Labels": None,
            "OnBuild": None,
        },
        "container": "6f3b3a1f1e7c",
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", 'CMD ["bash"]']},
        "created": "2026-11-20T00:00:00.123456789Z",
        "docker_version": "20.10.23",
        "history": [
            {
                "created": "2026-11-20T00:00:00Z",
                "created_by": "/bin/sh -c #(nop) ADD file:abc in / ",
            },
            {
                "created": "2026-11-20T00:00:01Z",
                "created_by": '/bin/sh -c #(nop)  CMD ["bash"]',
                "empty_layer": True,
            },
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha("diff0")]},
    }
).encode()


# -- media types ---------------------------------------------------------------


def test_media_type_kinds_span_both_vocabularies() -> None:
    assert is_index(OCI_INDEX) and is_index(DOCKER_MANIFEST_LIST)
    assert is_manifest(OCI_MANIFEST) and is_manifest(DOCKER_MANIFEST)
    assert is_manifest(DOCKER_MANIFEST + "; charset=utf-8")  # as a Content-Type
    assert is_config(OCI_CONFIG) and is_config(DOCKER_CONFIG)
    assert not is_manifest(OCI_INDEX) and not is_index(OCI_MANIFEST)
    assert not is_manifest("application/vnd.docker.distribution.manifest.v1+prettyjws")
    for layer, compression in [
        (OCI_LAYER, "none"),
        (OCI_LAYER_GZIP, "gzip"),
        (OCI_LAYER_ZSTD, "zstd"),
        (DOCKER_LAYER, "gzip"),
        ("application/vnd.docker.image.rootfs.diff.tar", "none"),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"),
        (OCI_LAYER_NONDISTRIBUTABLE_GZIP, "gzip"),
    ]:
        assert is_layer(layer) and layer_compression(layer) == compression
    assert layer_compression(OCI_CONFIG) is None
    assert is_nondistributable("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    assert is_nondistributable(OCI_LAYER_NONDISTRIBUTABLE_GZIP)
    assert not is_nondistributable(OCI_LAYER_GZIP)
    assert layer_media_type("zstd") == OCI_LAYER_ZSTD
    assert layer_media_type("gzip", docker=True) == DOCKER_LAYER
    with pytest.raises(errors.InvalidArgumentError):
        layer_media_type("bzip2")


# -- manifests -------------------------------------------------------------------


def test_docker_manifest_parses() -> None:
    manifest = Manifest.parse(DOCKER_MANIFEST_BYTES)
    assert manifest.media_type == DOCKER_MANIFEST
    assert manifest.config == Descriptor(DOCKER_CONFIG, sha("config"), 1457)
    assert [layer.digest for layer in manifest.layers] == [sha("layer0"), sha("layer1")]
    assert manifest.layers[0].size == 2152262
    assert manifest.subject is None and dict(manifest.annotations) == {}


def test_oci_manifest_keeps_annotations_and_subject() -> None:
    manifest = Manifest.parse(OCI_MANIFEST_BYTES)
    assert manifest.annotations["org.opencontainers.image.created"] == "2026-12-01T00:00:00Z"
    assert manifest.layers[0].annotations == {
        "io.containers.zstd-chunked.manifest-position": "1:2:3:4"
    }
    assert manifest.subject is not None and manifest.subject.digest == sha("subject")


@pytest.mark.parametrize("document", [DOCKER_MANIFEST_BYTES, OCI_MANIFEST_BYTES])
def test_manifest_canonical_bytes_round_trip(document: bytes) -> None:
    manifest = Manifest.parse(document)
    canonical = manifest.to_bytes()
    assert Manifest.parse(canonical) == manifest
    # canonical: sorted keys, no whitespace, and what json.dumps(sort_keys) gives independently
    assert (
        canonical
        == json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":")).encode()
    )
    assert canonical.decode() == canonical.decode().strip() and b"\n" not in canonical
    assert hash(manifest) == hash(Manifest.parse(canonical))
    assert pickle.loads(pickle.dumps(manifest)) == manifest


def test_a_built_manifest_is_what_docker_would_read() -> None:
    config = Descriptor(OCI_CONFIG, sha("c"), 2)
    layer = Descriptor(OCI_LAYER_GZIP, sha("l"), 3)
    data = json.loads(Manifest(config, [layer]).to_bytes())
    assert data == {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha("c"), "size": 2},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha("l"), "size": 3}],
    }


def _broken(change: dict[str, object]) -> bytes:
    document = json.loads(DOCKER_MANIFEST_BYTES)
    for key, value in change.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"not json",
        b"[]",
        b"\xff\xfe{}",
        _broken({"schemaVersion": 1}),  # Docker schema 1
        _broken({"schemaVersion": 3}),
        _broken({"schemaVersion": "2"}),
        _broken({"schemaVersion": True}),
        _broken({"schemaVersion": ...}),
        _broken({"config": ...}),
        _broken({"layers": ...}),
        _broken({"layers": {}}),
        _broken({"layers": [1]}),
        _broken({"config": {"mediaType": DOCKER_CONFIG, "size": 1}}),  # no digest
        _broken({"config": {"mediaType": DOCKER_CONFIG, "size": 1, "digest": "sha256:abc"}}),
        _broken({"config": {"mediaType": DOCKER_CONFIG, "size": 1, "digest": sha("x").upper()}}),
        _broken({"config": {"mediaType": DOCKER_CONFIG, "size": -1, "digest": sha("x")}}),
        _broken({"config": {"mediaType": DOCKER_CONFIG, "size": 1.5, "digest": sha("x")}}),
        _broken({"config": {"mediaType": "", "size": 1, "digest": sha("x")}}),
        _broken({"mediaType": DOCKER_MANIFEST_LIST}),  # an index where a manifest belongs
        _broken({"mediaType": "text/plain"}),
        _broken({"manifests": []}),
        _broken({"annotations": {"a": 1}}),
        DOCKER_MANIFEST_BYTES.replace(
            b'"schemaVersion": 2,', b'"schemaVersion": 2, "schemaVersion": 2,'
        ),
        DOCKER_MANIFEST_BYTES.replace(b"1457", b"NaN"),
    ],
)
def test_bad_manifests_are_invalid_archives(document: bytes) -> None:
    with pytest.raises(errors.InvalidArchiveError):
        Manifest.parse(document)


def test_building_a_bad_descriptor_is_an_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        Descriptor(OCI_LAYER, "sha256:nothex", 1)
    with pytest.raises(errors.InvalidArgumentError):
        Descriptor(OCI_LAYER, sha("x"), -1)
    with pytest.raises(errors.InvalidArgumentError):
        Manifest(Descriptor(OCI_CONFIG, sha("x"), 1), [], media_type=OCI_INDEX)


# -- indexes --------------------------------------------------------------------


DOCKER_LIST_BYTES = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST,
                "size": 529,
                "digest": sha("amd64"),
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": DOCKER_MANIFEST,
                "size": 529,
                "digest": sha("arm64"),
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            },
            {
                "mediaType": DOCKER_MANIFEST,
                "size": 529,
                "digest": sha("windows"),
                "platform": {
                    "architecture": "amd64",
                    "os": "windows",
                    "os.version": "10.0.20348.2113",
                },
            },
        ],
    }
).encode()


def test_manifest_list_parses_with_platforms() -> None:
    index = Index.parse(DOCKER_LIST_BYTES)
    assert index.media_type == DOCKER_MANIFEST_LIST
    assert [str(p) for p in index.platforms()] == ["linux/amd64", "linux/arm64", "windows/amd64"]
    assert index.manifests[2].platform is not None
    assert index.manifests[2].platform.os_version == "10.0.20348.2113"
    assert Index.parse(index.to_bytes()) == index


def test_index_and_manifest_are_told_apart() -> None:
    assert isinstance(parse_manifest_or_index(DOCKER_LIST_BYTES), Index)
    assert isinstance(parse_manifest_or_index(DOCKER_MANIFEST_BYTES), Manifest)
    # no mediaType in the document (allowed by OCI): the shape decides, or the descriptor's type
    shapeless = json.loads(DOCKER_LIST_BYTES)
    del shapeless["mediaType"]
    assert isinstance(parse_manifest_or_index(json.dumps(shapeless).encode()), Index)
    assert isinstance(parse_manifest_or_index(json.dumps(shapeless).encode(), OCI_INDEX), Index)
    # a Content-Type that contradicts the document is refused
    with pytest.raises(errors.InvalidArchiveError, match="does not match"):
        parse_manifest_or_index(DOCKER_LIST_BYTES, DOCKER_MANIFEST)
    with pytest.raises(errors.InvalidArchiveError):
        Index.parse(DOCKER_MANIFEST_BYTES)
    with pytest.raises(errors.InvalidArchiveError):
        parse_manifest_or_index(DOCKER_MANIFEST_BYTES, "application/octet-stream")


def test_bad_index_platform_is_an_invalid_archive() -> None:
    document = json.loads(DOCKER_LIST_BYTES)
    document["manifests"][0]["platform"] = {"os": "linux"}
    with pytest.raises(errors.InvalidArchiveError):
        Index.parse(json.dumps(document).encode())


# -- image configs ------------------------------------------------------------------


def test_docker_config_parses_and_keeps_unknown_fields() -> None:
    config = ImageConfig.parse(DOCKER_CONFIG_BYTES)
    assert (config.os, config.architecture, config.variant) == ("linux", "arm64", "v8")
    assert str(config.platform) == "linux/arm64"
    assert config.diff_ids == (sha("diff0"),)
    assert config.created == "2026-11-20T00:00:00.123456789Z"
    assert config.config is not None and config.config["Cmd"] == ["bash"]
    assert config.history[1] == History(
        "2026-11-20T00:00:01Z", '/bin/sh -c #(nop)  CMD ["bash"]', empty_layer=True
    )
    assert set(config.extra) == {"container", "container_config", "docker_version"}
    written = json.loads(config.to_bytes())
    original = json.loads(DOCKER_CONFIG_BYTES)
    assert written == original  # nothing lost, nothing invented
    assert ImageConfig.parse(config.to_bytes()) == config
    assert pickle.loads(pickle.dumps(config)) == config


def test_config_for_a_commit_appends_one_layer_and_its_history() -> None:
    config = ImageConfig.parse(DOCKER_CONFIG_BYTES)
    new = config.with_layer(
        sha("diff1"), created="2026-12-08T04:00:00Z", created_by="lamina commit", comment="c"
    )
    assert new.diff_ids == (sha("diff0"), sha("diff1"))
    assert new.created == "2026-12-08T04:00:00Z"
    assert new.history[-1] == History("2026-12-08T04:00:00Z", "lamina commit", comment="c")
    assert new.extra == config.extra and new.config == config.config
    assert config.diff_ids == (sha("diff0"),)  # the old value is unchanged
    data = json.loads(new.to_bytes())
    assert data["rootfs"] == {"type": "layers", "diff_ids": [sha("diff0"), sha("diff1")]}
    assert data["docker_version"] == "20.10.23"


def test_a_minimal_oci_config() -> None:
    config = ImageConfig("amd64", "linux", [sha("d")])
    assert json.loads(config.to_bytes()) == {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha("d")]},
    }
    assert config.platform == parse_platform("linux/amd64")
    with pytest.raises(errors.InvalidArgumentError):
        ImageConfig("amd64", "linux", [], extra={"os": "windows"})


def _config_with(change: dict[str, object]) -> bytes:
    document = json.loads(DOCKER_CONFIG_BYTES)
    for key, value in change.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "document",
    [
        _config_with({"os": ...}),
        _config_with({"architecture": ...}),
        _config_with({"architecture": ""}),
        _config_with({"rootfs": ...}),
        _config_with({"rootfs": {"type": "layers", "diff_ids": ["sha256:short"]}}),
        _config_with({"rootfs": {"type": "layers", "diff_ids": [7]}}),
        _config_with({"rootfs": {"type": "other", "diff_ids": []}}),
        _config_with({"history": [{"empty_layer": "yes"}]}),
        _config_with({"history": ["x"]}),
        _config_with({"created": 17}),
        _config_with({"config": []}),
        b'{"os": "linux"',
    ],
)
def test_bad_configs_are_invalid_archives(document: bytes) -> None:
    with pytest.raises(errors.InvalidArchiveError):
        ImageConfig.parse(document)


def test_documents_are_immutable() -> None:
    manifest = Manifest.parse(OCI_MANIFEST_BYTES)
    with pytest.raises(AttributeError):
        manifest.layers = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        manifest.annotations["x"] = "y"  # type: ignore[index]
    copied = copy.deepcopy(manifest)
    assert copied == manifest


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", {"d": None, "c": True}]}) == (
        '{"a":["é",{"c":true,"d":null}],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_oversized_documents_are_refused_before_parsing() -> None:
    padding = b" " * MAX_DOCUMENT_SIZE
    with pytest.raises(errors.ArchiveTooLargeError):
        Manifest.parse(DOCKER_MANIFEST_BYTES + padding)
    with pytest.raises(errors.ArchiveTooLargeError):
        ImageConfig.parse(DOCKER_CONFIG_BYTES + padding)
    with pytest.raises(errors.ArchiveTooLargeError):
        parse_manifest_or_index(DOCKER_LIST_BYTES + padding)
    # whitespace is valid JSON: under a raised limit the same bytes parse
    big = Manifest.parse(DOCKER_MANIFEST_BYTES + padding, limit=2 * MAX_DOCUMENT_SIZE)
    assert big == Manifest.parse(DOCKER_MANIFEST_BYTES)
