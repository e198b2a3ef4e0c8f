"""Whatever bytes arrive, every lamina.oci reader either parses them or raises a
:class:`lamina.errors.LaminaError`: never ``KeyError``, ``TypeError``,
``ValueError`` or ``RecursionError``.

Two generators: arbitrary JSON documents, and valid documents with one field
replaced by an arbitrary JSON value (the mutations a hostile archive or a
broken registry actually produces).  What parses must also serialise and
parse back to an equal value.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina import errors
from lamina.oci import (
    ImageConfig,
    Index,
    Manifest,
    parse_docker_manifest,
    parse_manifest_or_index,
    parse_oci_index,
    parse_oci_layout,
    parse_repositories,
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

D = "sha256:" + "1" * 64
_VALID: dict[str, object] = {
    "manifest": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 1},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": D,
                "size": 2,
                "annotations": {"a": "b"},
                "urls": ["https://example.com/x"],
            }
        ],
        "annotations": {"k": "v"},
    },
    "index": {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": D,
                "size": 3,
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
                "annotations": {"org.opencontainers.image.ref.name": "x"},
            }
        ],
    },
    "config": {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["A=b"]},
        "rootfs": {"type": "layers", "diff_ids": [D]},
        "history": [{"created_by": "x", "empty_layer": False}],
        "os.features": ["f"],
        "container_config": {"x": 1},
    },
    "docker": [{"Config": "c.json", "RepoTags": ["a:b"], "Layers": ["l/layer.tar"]}],
}

_READERS: dict[str, list[Callable[[bytes], object]]] = {
    "manifest": [Manifest.parse, parse_manifest_or_index],
    "index": [Index.parse, parse_oci_index, parse_manifest_or_index],
    "config": [ImageConfig.parse],
    "docker": [parse_docker_manifest],
}
_ALL_READERS: list[Callable[[bytes], object]] = [
    Manifest.parse,
    Index.parse,
    ImageConfig.parse,
    parse_manifest_or_index,
    parse_oci_index,
    parse_docker_manifest,
    parse_repositories,
    parse_oci_layout,
]


def _paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every position in a JSON value (keys and list indexes from the root)."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _replace(document: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return copy


def _survives(reader: Callable[[bytes], object], data: bytes) -> None:
    try:
        value = reader(data)
    except errors.LaminaError:
        return
    to_bytes = getattr(value, "to_bytes", None)
    if to_bytes is not None:
        assert type(value).parse(to_bytes()) == value  # type: ignore[attr-defined]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(_json)
def test_arbitrary_json_never_escapes_the_error_tree(document: object) -> None:
    data = json.dumps(document).encode()
    for reader in _ALL_READERS:
        _survives(reader, data)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=400)
@given(st.sampled_from(sorted(_VALID)), st.data())
def test_one_mutated_field_never_escapes_the_error_tree(kind: str, data: st.DataObject) -> None:
    document = _VALID[kind]
    path = data.draw(st.sampled_from(_paths(document)))
    mutated = json.dumps(_replace(document, path, data.draw(_json))).encode()
    for reader in _READERS[kind]:
        _survives(reader, mutated)


def test_the_valid_fixtures_parse() -> None:
    for kind, readers in _READERS.items():
        for reader in readers:
            reader(json.dumps(_VALID[kind]).encode())


def _deep_config(levels: int) -> bytes:
    head = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},'
    return head + b'"config":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}"


def test_deep_nesting_is_an_invalid_archive_not_a_recursion_error() -> None:
    # 500 levels: json.loads reads it, but writing it back would hit the recursion limit
    for levels in (500, 5000):
        for reader in (ImageConfig.parse, parse_manifest_or_index):
            try:
                reader(_deep_config(levels))
            except errors.InvalidArchiveError:
                continue
            raise AssertionError(f"a {levels}-deep document parsed")
    # what real configs nest (a few levels) is fine, and writes back
    config = ImageConfig.parse(_deep_config(20))
    assert ImageConfig.parse(config.to_bytes()) == config
    for data in (b"[" * 100_000, b'{"a":' * 100_000):
        for reader in _ALL_READERS:
            try:
                reader(data)
            except errors.InvalidArchiveError:
                continue
            raise AssertionError(f"{reader} accepted {data[:10]!r}…")
