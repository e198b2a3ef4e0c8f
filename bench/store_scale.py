#!/usr/bin/env python3
"""How the image store scales with the number of images (issue 12: 10,000 images).

usage: python bench/store_scale.py [--images N] [--runs R] [--dir DIR]

Builds, through the public API, a store holding N images (default 10,000)
that share one small layer: one OCI layout with N manifests, each with its
own config and name, given to one ``Store.load``.  Then it times, R times
each (median and best reported):

* ``Store.images()`` in a process that has the store open (the library call);
* ``lamina images -q`` as a whole process (start-up included);
* ``Store.remove_image`` of one image, with the bytes it made SQLite write
  (what the process passed to write(2): SQLite's log pages), which shows that removing one image is
  one small write, not a rewrite of the store.

Run it on a fresh loop-mounted ext4 (``--dir`` on one; see bench/README.md):
the root filesystem here has no journal and its timings mean little.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from lamina import Store  # noqa: E402


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(layout: Path, count: int) -> None:
    """An OCI layout of ``count`` images over one shared one-file layer."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("hello")
        info.size = 6
        info.mtime = 1_700_000_000
        tf.addfile(info, io.BytesIO(b"hello\n"))
    layer_tar = buf.getvalue()
    layer = _blob(layout, layer_tar)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    manifests = []
    for n in range(count):
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Labels": {"n": str(n)}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        cdesc = _blob(layout, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
        }
        mdesc = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **mdesc,
                "annotations": {
                    "io.containerd.image.name": f"bench.local/scale/img:{n}",
                    "org.opencontainers.image.ref.name": str(n),
                },
            }
        )
    index = {"schemaVersion": 2, "manifests": manifests}
    (layout / "index.json").write_text(json.dumps(index))


def _written() -> int:
    """Bytes this process has passed to write(2) so far (``wchar`` of /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, help="scratch directory (a fresh loop-mounted ext4)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lamina-store-scale-", dir=args.dir))
    layout, root = scratch / "layout", scratch / "store"
    started = time.perf_counter()
    make_layout(layout, args.images)
    made = time.perf_counter()
    with Store(root, driver="vfs") as s:
        loaded = s.load(layout)
    built = time.perf_counter()
    print(f"layout of {args.images} images: {made - started:.1f} s; load: {built - made:.1f} s")
    assert len(loaded) == args.images

    lib: list[float] = []
    proc: list[float] = []
    with Store(root) as s:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            listed = s.images()
            lib.append(time.perf_counter() - t0)
            assert len(listed) == args.images
    lamina = [sys.executable, "-m", "lamina", "--root", str(root), "images", "-q"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = subprocess.run(lamina, check=True, capture_output=True, env=env).stdout
        proc.append(time.perf_counter() - t0)
        assert out.count(b"\n") == args.images
    removes: list[tuple[float, int]] = []
    with Store(root) as s:
        for n in range(args.runs):
            before = _written()
            t0 = time.perf_counter()
            s.remove_image(f"bench.local/scale/img:{n}")
            removes.append((time.perf_counter() - t0, _written() - before))

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1e3:.1f} ms, best {min(values) * 1e3:.1f} ms"

    print(f"Store.images() of {args.images}: {ms(lib)}")
    print(f"lamina images -q (whole process): {ms(proc)}")
    print(
        f"remove_image: {ms([t for t, _ in removes])}; "
        f"bytes written per remove: {[w for _, w in removes]}"
    )
    subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
