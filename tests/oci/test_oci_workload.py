"""lamina.oci on the real workload: the OCI layouts of the Debian image in ``oci-gz/``
and ``oci-tar/`` (built by ``../shared/bench/make-workload.sh``, cached by
``scripts/ci-workload.sh`` under ``$BENCH_DIR/work``).

Every digest is checked against an independent computation: ``sha256sum``
(coreutils) for blobs and layer tars, hashlib for chain IDs written out from
the spec.  Skips, saying why, where the workload is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lamina.oci import (
    HashingReader,
    ImageConfig,
    Manifest,
    blob_path,
    chain_ids,
    diff_id,
    is_manifest,
    layer_compression,
    layout_images,
    parse_oci_index,
    parse_oci_layout,
)

pytestmark = pytest.mark.workload

WORK = Path(os.environ.get("BENCH_DIR") or "/var/tmp/lamina-bench") / "work"
NAMES = ["base", "full", "small", "big"]


def layout(name: str) -> Path:
    root = WORK / name
    if not (root / "index.json").is_file() or not (root / "oci-layout").is_file():
        marker = WORK / "UNAVAILABLE"
        why = marker.read_text().strip() if marker.exists() else "not built"
        pytest.skip(f"real workload layout {root} unavailable ({why}); run scripts/ci-workload.sh")
    return root


def sha256sum(path: Path) -> str:
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum (coreutils) not installed")
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return "sha256:" + out.stdout.split()[0]


def read_blob(root: Path, digest: str, size: int) -> bytes:
    with (root / blob_path(digest)).open("rb") as raw:
        return HashingReader(raw, digest, size).read()


@pytest.mark.parametrize("name", ["oci-gz", "oci-tar"])
def test_workload_layout_parses_and_every_small_blob_verifies(name: str) -> None:
    root = layout(name)
    assert parse_oci_layout((root / "oci-layout").read_bytes()) == "1.0.0"
    images = layout_images(parse_oci_index((root / "index.json").read_bytes()))
    # bare ref names read as Docker Hub references (DESIGN.md: "full" is library/full:latest)
    assert [str(names[0]) for _, names in images] == [
        f"docker.io/library/{n}:latest" for n in NAMES
    ]
    for descriptor, _ in images:
        assert is_manifest(descriptor.media_type)
        manifest_bytes = read_blob(root, descriptor.digest, descriptor.size)
        assert descriptor.digest == sha256sum(root / blob_path(descriptor.digest))
        manifest = Manifest.parse(manifest_bytes)
        config_bytes = read_blob(root, manifest.config.digest, manifest.config.size)
        config = ImageConfig.parse(config_bytes)
        assert str(config.platform) == "linux/amd64"
        assert len(config.diff_ids) == len(manifest.layers)
        want = "none" if name == "oci-tar" else "gzip"
        for layer, diff in zip(manifest.layers, config.diff_ids, strict=True):
            assert layer_compression(layer.media_type) == want
            assert (root / blob_path(layer.digest)).stat().st_size == layer.size
            if name == "oci-tar":
                assert layer.digest == diff  # an uncompressed layer's blob is its diff ID


def test_workload_chain_ids_match_the_spec_recursion() -> None:
    root = layout("oci-tar")
    images = dict(
        (str(names[0]), descriptor)
        for descriptor, names in layout_images(parse_oci_index((root / "index.json").read_bytes()))
    )
    full = images["docker.io/library/full:latest"]
    manifest = Manifest.parse(read_blob(root, full.digest, full.size))
    config = ImageConfig.parse(read_blob(root, manifest.config.digest, manifest.config.size))
    base, top = config.diff_ids
    expected_top = "sha256:" + hashlib.sha256(f"{base} {top}".encode()).hexdigest()
    assert chain_ids(config.diff_ids) == [base, expected_top]


def test_workload_layer0_diff_id_from_the_tar_and_from_the_gzip_blob() -> None:
    tar_root, gz_root = layout("oci-tar"), layout("oci-gz")
    gz_images = layout_images(parse_oci_index((gz_root / "index.json").read_bytes()))
    base = gz_images[0][0]
    manifest = Manifest.parse(read_blob(gz_root, base.digest, base.size))
    config = ImageConfig.parse(read_blob(gz_root, manifest.config.digest, manifest.config.size))
    layer = manifest.layers[0]
    expected = config.diff_ids[0]
    # the uncompressed blob, hashed while streaming, against coreutils
    tar_path = tar_root / blob_path(expected)
    assert sha256sum(tar_path) == expected
    with tar_path.open("rb") as raw:
        assert diff_id(raw) == expected
    # the gzip blob: its digest is the blob's, its diff ID that of what it decompresses to
    gz_path = gz_root / blob_path(layer.digest)
    assert sha256sum(gz_path) == layer.digest
    with gz_path.open("rb") as raw:
        verified = HashingReader(raw, layer.digest, layer.size)
        with gzip.GzipFile(fileobj=verified) as tar:  # type: ignore[arg-type]
            assert diff_id(tar) == expected  # type: ignore[arg-type]
        verified.verify()


def test_workload_deep_chain_against_sha256sum() -> None:
    chain_dir = WORK / "layers" / "chain"
    tars = sorted(chain_dir.glob("*.tar")) if chain_dir.is_dir() else []
    if len(tars) < 2:
        pytest.skip(f"{chain_dir}: the workload's deep chain is not built")
    diffs = [sha256sum(tar) for tar in tars]
    expected = [diffs[0]]
    for diff in diffs[1:]:
        expected.append("sha256:" + hashlib.sha256(f"{expected[-1]} {diff}".encode()).hexdigest())
    assert chain_ids(diffs) == expected
