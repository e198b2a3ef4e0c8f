"""The store on the real workload: the debootstrap Debian image's OCI layouts.

``oci-gz/`` and ``oci-tar/`` are built by ``../shared/bench/make-workload.sh``
(cached under ``$BENCH_DIR/work``); skipped, saying why, when absent.  The
``base`` image is taken out of each layout by hard links (no copy).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from _images import tree

from lamina import Store

pytestmark = pytest.mark.workload

WORK = Path(os.environ.get("BENCH_DIR") or "/var/tmp/lamina-bench") / "work"


def sub_layout(name: str, ref: str, dest: Path) -> Path:
    root = WORK / name
    if not (root / "index.json").is_file():
        marker = WORK / "UNAVAILABLE"
        why = marker.read_text().strip() if marker.exists() else "not built"
        pytest.skip(f"real workload layout {root} unavailable ({why}); run scripts/ci-workload.sh")
    index = json.loads((root / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    blobs = root / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"][7:]).read_bytes())
    needed = [
        entry["digest"],
        manifest["config"]["digest"],
        *(x["digest"] for x in manifest["layers"]),
    ]
    (dest / "blobs" / "sha256").mkdir(parents=True)
    for digest in needed:
        target = dest / "blobs" / "sha256" / digest[7:]
        try:
            os.link(blobs / digest[7:], target)
        except OSError:
            pytest.skip("the workload is on another filesystem than the test's temp dir")
    (dest / "oci-layout").write_bytes((root / "oci-layout").read_bytes())
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return dest


@pytest.mark.parametrize("layout", ["oci-gz", "oci-tar"])
def test_debian_base_loads_rebuilds_byte_exact_and_round_trips(
    tmp_path: Path, driver_name: str, layout: str
) -> None:
    source = sub_layout(layout, "base", tmp_path / "layout")
    with Store(tmp_path / "a", driver=driver_name) as a:
        (image,) = a.load(source)
        assert image.names == ("docker.io/library/base:latest",)
        for layer in a.layers():
            hasher = hashlib.sha256()
            with a.layer_diff(layer.chain_id) as f:
                while chunk := f.read(1 << 20):
                    hasher.update(chunk)
            assert "sha256:" + hasher.hexdigest() == layer.diff_id
        assert a.check().ok
        c = a.create_container(image)
        before = tree(a.mount(c))
        a.unmount(c)
        assert "etc/os-release" in before
        with open(tmp_path / "saved.tar", "wb") as out:
            a.save(image, out)
    with Store(tmp_path / "b", driver=driver_name) as b, open(tmp_path / "saved.tar", "rb") as f:
        (again,) = b.load(f)
        assert again.id == image.id and again.digest == image.digest
        c = b.create_container(again)
        assert tree(b.mount(c)) == before
        b.unmount(c)
