"""lamina against skopeo and umoci (containers/image and an independent OCI tool).

* ``skopeo inspect`` accepts lamina's ``save`` in each format and reads the
  image ID (the config digest) lamina reports, with the same layers.
* ``skopeo copy`` of lamina's save into another transport loads back in lamina
  with the ID skopeo reads there.
* ``umoci unpack`` of lamina's oci-dir and oci-archive gives the tree of a
  lamina container, entry by entry; a layer umoci makes (``umoci repack``,
  with an added, a changed and a deleted file) loads in lamina with the tree
  umoci had.

(``skopeo copy docker-daemon: docker-archive:`` as a source of images is in
test_docker.py.)
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from _interop_peers import DockerImage, Skopeo, compare_trees, lamina_tree, oci_ref_name, run

from lamina.store import Store

pytestmark = [pytest.mark.differential, pytest.mark.interop, pytest.mark.root]

Images = Callable[[str], DockerImage]
NewStore = Callable[..., Store]
FORMATS = ["docker-archive", "oci-archive", "oci-dir"]


def _transport(fmt: str, path: Path) -> str:
    return {"docker-archive": "docker-archive", "oci-archive": "oci-archive", "oci-dir": "oci"}[
        fmt
    ] + f":{path}"


def _saved(s: Store, img: object, tmp_path: Path, fmt: str) -> Path:
    out = tmp_path / ("lamina-oci" if fmt == "oci-dir" else f"lamina.{fmt}.tar")
    s.save([img], out, format=fmt)  # type: ignore[list-item]
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["crafted", "built"])
def test_skopeo_inspects_lamina_save(
    skopeo: Skopeo,
    docker_images: Images,
    new_store: NewStore,
    interop_log: list[str],
    tmp_path: Path,
    name: str,
    fmt: str,
) -> None:
    di = docker_images(name)
    s = new_store()
    (img,) = s.load(di.docker_save)
    out = _saved(s, img, tmp_path, fmt)
    transport = _transport(fmt, out)
    assert skopeo.config_digest(transport) == img.id
    info = skopeo.inspect(transport)
    layers = info["Layers"]
    assert isinstance(layers, list) and len(layers) == len(img.layers)
    config = json.loads(skopeo.raw_config(transport))
    assert config["rootfs"]["diff_ids"] == di.diff_ids

    # skopeo writes it into another transport; lamina reads skopeo's output
    other = "oci" if fmt == "docker-archive" else "docker-archive"
    dest = tmp_path / ("skopeo-oci" if other == "oci" else "skopeo.tar")
    dest_ref = f"{other}:{dest}" + (f":{di.ref}" if other == "docker-archive" else ":copied")
    skopeo("copy", "-q", transport, dest_ref)
    s2 = new_store()
    loaded = s2.load(dest)
    assert [i.id for i in loaded] == [skopeo.config_digest(dest_ref)]
    res = compare_trees(
        lamina_tree(s2, loaded[0]),
        di.tree,
        lamina_label=f"lamina container of skopeo's {other} copy",
        peer_label="docker export",
        docker_init=True,
    )
    interop_log.append(f"skopeo {fmt} -> {other}, {name}: {res.comparison.summary()}")
    assert res, res.report()


def _layout_of(out: Path, fmt: str, tmp_path: Path) -> Path:
    if fmt == "oci-dir":
        return out
    layout = tmp_path / "untarred-layout"
    layout.mkdir()
    with tarfile.open(out) as tf:
        tf.extractall(layout, filter="data")
    return layout


@pytest.mark.parametrize("fmt", ["oci-dir", "oci-archive"])
@pytest.mark.parametrize("name", ["crafted", "built"])
def test_umoci_unpacks_lamina_save(
    umoci: str,
    docker_images: Images,
    new_store: NewStore,
    interop_log: list[str],
    tmp_path: Path,
    name: str,
    fmt: str,
) -> None:
    di = docker_images(name)
    s = new_store()
    (img,) = s.load(di.docker_save)
    layout = _layout_of(_saved(s, img, tmp_path, fmt), fmt, tmp_path)
    tag = oci_ref_name(layout)
    bundle = tmp_path / "bundle"
    run([umoci, "unpack", "--image", f"{layout}:{tag}", bundle])
    res = compare_trees(
        lamina_tree(s, img),
        bundle / "rootfs",
        peer_label=f"umoci unpack of lamina's {fmt}",
        exclude=(".",),  # umoci makes the bundle's rootfs directory itself
    )
    interop_log.append(f"umoci unpack lamina {fmt} {name}: {res.comparison.summary()}")
    assert res, res.report()


def test_umoci_repack_loads_in_lamina(
    umoci: str,
    docker_images: Images,
    new_store: NewStore,
    interop_log: list[str],
    tmp_path: Path,
) -> None:
    di = docker_images("crafted")
    s = new_store()
    (img,) = s.load(di.docker_save)
    layout = _saved(s, img, tmp_path, "oci-dir")
    tag = oci_ref_name(layout)
    bundle = tmp_path / "bundle"
    run([umoci, "unpack", "--image", f"{layout}:{tag}", bundle])
    rootfs = bundle / "rootfs"
    (rootfs / "umoci-added.txt").write_bytes(b"added in an umoci bundle\n")
    (rootfs / "etc" / "config").write_bytes(b"version=umoci\n")
    (rootfs / "etc" / "empty").unlink()
    for p in (rootfs / "data" / "opaque").iterdir():
        p.unlink()
    (rootfs / "data" / "opaque").rmdir()
    # whole-second times: Go's tar writer (umoci) rounds a time to the nearest
    # second, so a fractional bundle time would differ from the layer's own
    for i, rel in enumerate(("umoci-added.txt", "etc/config", "etc", "data")):
        os.utime(rootfs / rel, (1_700_000_000 + i, 1_700_000_000 + i))
    run([umoci, "repack", "--image", f"{layout}:repacked", bundle])

    s2 = new_store()
    loaded = s2.load(layout)
    # umoci copies the source descriptor's annotations, io.containerd.image.name
    # included, so both manifests claim one name: find the new one by its digest
    index = json.loads((layout / "index.json").read_text())
    (digest,) = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "repacked"
    ]
    repacked = [i for i in loaded if i.digest == digest]
    assert len(repacked) == 1, [(i.digest, i.names) for i in loaded]
    assert len(repacked[0].layers) == len(img.layers) + 1
    tree = lamina_tree(s2, repacked[0])
    assert "umoci-added.txt" in tree.entries and "etc/empty" not in tree.entries
    assert "data/opaque" not in tree.entries
    res = compare_trees(tree, rootfs, peer_label="umoci's bundle rootfs", exclude=(".",))
    interop_log.append(f"lamina load umoci repack: {res.comparison.summary()}")
    assert res, res.report()
