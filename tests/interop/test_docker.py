"""lamina against a real Docker daemon (issue 12, item 4).

* An image saved by ``docker save`` and by ``skopeo copy docker-daemon:…
  docker-archive:`` loads in lamina with the image ID Docker reports, and a
  lamina container of it has, entry by entry, the tree ``docker export`` gives
  for a Docker container of the same image.
* ``layer_diff()`` of every loaded layer is byte-identical to the layer tar
  Docker saved (and, for the workload, to the original tar files).
* lamina's ``save`` is accepted by ``docker load`` with the same ID and tree.
* A lamina commit with added, changed and deleted files loads in Docker and
  shows the same files.

The daemon is private to the session (``conftest.dockerd``) and nothing is
pulled: the images are made from files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import _interop_images
import pytest
from _interop_peers import (
    BENCH_WORK,
    Docker,
    DockerImage,
    compare_trees,
    docker_save_layer_names,
    lamina_tree,
    open_member,
    same_bytes,
)

from lamina.store import Store

pytestmark = [pytest.mark.differential, pytest.mark.interop, pytest.mark.root]

CAP = _interop_images.CAP_NET_RAW_EP
NAMES = ["crafted", "built", pytest.param("debian", marks=pytest.mark.workload)]

Images = Callable[[str], DockerImage]
NewStore = Callable[..., Store]


def _log(log: list[str], line: str) -> None:
    log.append(line)


@pytest.mark.parametrize("source", ["docker-save", "skopeo-copy"])
@pytest.mark.parametrize("name", NAMES)
def test_docker_archive_loads_with_dockers_id_and_tree(
    docker_images: Images, new_store: NewStore, interop_log: list[str], name: str, source: str
) -> None:
    di = docker_images(name)
    archive = di.docker_save if source == "docker-save" else di.skopeo_save
    if archive is None:
        pytest.skip("skopeo is not installed (Debian package skopeo)")
    s = new_store()
    loaded = s.load(archive)
    assert [i.id for i in loaded] == [di.id]
    img = loaded[0]
    assert f"docker.io/{di.ref}" in img.names
    assert img.config["rootfs"]["diff_ids"] == di.diff_ids
    assert s.image(di.ref).id == di.id
    assert s.image(di.id[len("sha256:") : len("sha256:") + 12]).id == di.id

    res = compare_trees(
        lamina_tree(s, img),
        di.tree,
        lamina_label=f"lamina container ({source})",
        peer_label=f"docker export of {name}",
        docker_init=True,
    )
    _log(interop_log, f"docker {name} {source}: {res.comparison.summary()}")
    assert res, res.report()


@pytest.mark.parametrize("name", ["crafted", "built"])
def test_vfs_store_gives_dockers_tree_too(
    docker_images: Images, new_store: NewStore, interop_log: list[str], name: str
) -> None:
    """The same load and tree on the portable vfs driver (full copies, no overlayfs)."""
    di = docker_images(name)
    s = new_store(driver="vfs")
    (img,) = s.load(di.docker_save)
    assert img.id == di.id
    assert {layer.driver for layer in s.layers()} == {"vfs"}
    res = compare_trees(
        lamina_tree(s, img),
        di.tree,
        lamina_label="lamina vfs container",
        peer_label=f"docker export of {name}",
        docker_init=True,
    )
    interop_log.append(f"docker {name} on lamina vfs: {res.comparison.summary()}")
    assert res, res.report()


@pytest.mark.parametrize("name", NAMES)
def test_layer_diff_is_the_layer_docker_saved(
    docker_images: Images, new_store: NewStore, name: str
) -> None:
    di = docker_images(name)
    s = new_store()
    (img,) = s.load(di.docker_save)
    assert len(img.layers) == len(di.diff_ids)
    for diff_id in di.diff_ids:
        with s.layer_diff(diff_id) as f, di.saved_layer(diff_id) as saved:
            assert same_bytes(f, saved), f"layer {diff_id} differs from docker save's"
    # the same layers by chain ID
    for chain_id, diff_id in zip(img.layers, di.diff_ids, strict=True):
        with s.layer_diff(chain_id) as f:
            assert "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == diff_id


def test_crafted_layers_survive_docker_byte_for_byte(docker_images: Images) -> None:
    """Docker's own save reproduces our original layer tars (its tar-split), so the
    layer_diff checks above also compare with the bytes first written."""
    di = docker_images("crafted")
    originals = _interop_images.layers()
    for diff_id, original in zip(di.diff_ids, originals, strict=True):
        with di.saved_layer(diff_id) as f:
            assert f.read() == original


def _one_image_layout(src: Path, ref_name: str, dest: Path) -> Path:
    """A copy of OCI layout ``src`` holding one image (blobs hardlinked where possible)."""
    index = json.loads((src / "index.json").read_text())
    (desc,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name
    ]
    manifest = json.loads((src / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    blobs = [
        desc["digest"],
        manifest["config"]["digest"],
        *(m["digest"] for m in manifest["layers"]),
    ]
    (dest / "blobs" / "sha256").mkdir(parents=True)
    shutil.copyfile(src / "oci-layout", dest / "oci-layout")
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    for digest in blobs:
        a, b = src / "blobs" / "sha256" / digest[7:], dest / "blobs" / "sha256" / digest[7:]
        try:
            os.link(a, b)
        except OSError:
            shutil.copyfile(a, b)
    return dest


@pytest.mark.workload
def test_layer_diff_of_the_workload_is_the_original_tar(
    new_store: NewStore, tmp_path: Path
) -> None:
    """The workload's gzip OCI layout, loaded as a directory: each layer_diff() is
    byte for byte the uncompressed tar the layout was made from."""
    layout = BENCH_WORK / "oci-gz"
    originals = [BENCH_WORK / "layers" / "layer0.tar", BENCH_WORK / "layers" / "layer1.tar"]
    if not (layout / "index.json").exists() or not all(p.exists() for p in originals):
        pytest.skip(f"no real workload at {BENCH_WORK} (scripts/ci-workload.sh builds it)")
    s = new_store()
    # only the "full" image: the layout also holds a 1 GiB and a 50k-file image
    loaded = s.load(_one_image_layout(layout, "full", tmp_path / "full-only"))
    assert len(loaded) == 1 and "docker.io/library/full:latest" in loaded[0].names
    diff_ids = loaded[0].config["rootfs"]["diff_ids"]
    assert len(diff_ids) == 2
    for diff_id, original in zip(diff_ids, originals, strict=True):
        want = hashlib.sha256()
        with open(original, "rb") as f:
            while chunk := f.read(1 << 20):
                want.update(chunk)
        got = hashlib.sha256()
        size = 0
        with s.layer_diff(diff_id) as f:
            while chunk := f.read(1 << 20):
                got.update(chunk)
                size += len(chunk)
        assert size == original.stat().st_size
        assert got.hexdigest() == want.hexdigest() == diff_id.removeprefix("sha256:")


SAVE_FORMATS = ["docker-archive", "oci-archive"]


@pytest.mark.parametrize("fmt", SAVE_FORMATS)
@pytest.mark.parametrize(
    "name", ["crafted", "built", pytest.param("debian", marks=pytest.mark.workload)]
)
def test_lamina_save_loads_in_docker(
    dockerd: Docker,
    docker_images: Images,
    new_store: NewStore,
    interop_log: list[str],
    name: str,
    fmt: str,
) -> None:
    if fmt != "docker-archive" and dockerd.major < 25:
        pytest.skip(
            f"Docker {dockerd.version} loads only docker-archive (OCI archives: Docker 25+)"
        )
    if name == "debian" and fmt != "docker-archive":
        pytest.skip("the workload goes through one format only, to keep the run short")
    di = docker_images(name)
    work = dockerd.tmp(f"save-{name}-{fmt}")  # on Docker's loop fs: the workload is big
    work.mkdir()
    s = new_store()
    (img,) = s.load(di.docker_save)
    ref = f"lamina-test/from-lamina-{name}:{fmt}"
    s.tag(img, ref)
    expected = lamina_tree(s, img)
    out = work / f"{name}.{fmt}.tar"
    s.save([img], out, format=fmt)

    dockerd.purge()  # Docker must build the image from lamina's bytes, not reuse its own
    dockerd("load", "-i", out)
    assert dockerd.image_id(ref) == img.id
    tree = dockerd.export_tree(ref, work / "docker-export")
    res = compare_trees(
        expected,
        tree,
        peer_label=f"docker export after docker load of lamina's {fmt}",
        docker_init=True,
    )
    _log(interop_log, f"docker load lamina {fmt} {name}: {res.comparison.summary()}")
    assert res, res.report()


def test_commit_loads_in_docker_with_the_same_files(
    dockerd: Docker,
    docker_images: Images,
    new_store: NewStore,
    interop_log: list[str],
) -> None:
    di = docker_images("crafted")
    work = dockerd.tmp("commit")
    work.mkdir()
    s = new_store()
    (img,) = s.load(di.docker_save)
    c = s.create_container(img, name="interop-commit")
    root = s.mount(c)
    try:
        (root / "added.txt").write_bytes(b"added by lamina\n")
        os.chown(root / "added.txt", 1000, 100)
        os.chmod(root / "added.txt", 0o640)
        (root / "added-dir" / "sub").mkdir(parents=True)
        (root / "added-dir" / "sub" / "h1").write_bytes(b"hardlinked pair\n")
        os.link(root / "added-dir" / "sub" / "h1", root / "added-dir" / "h2")
        os.symlink("../etc/config", root / "added-dir" / "cfg")
        os.setxattr(root / "added-dir" / "sub" / "h1", "user.lamina.commit", b"yes")
        # a capability on a file without hardlinks: Docker's extractor lchowns every
        # hardlink entry after linking it, and a chown makes the kernel drop
        # security.capability from the shared inode (lamina keeps it)
        (root / "added-dir" / "cap-bin").write_bytes(b"\x7fELF pretend\n")
        os.chmod(root / "added-dir" / "cap-bin", 0o755)
        os.setxattr(root / "added-dir" / "cap-bin", "security.capability", CAP)
        (root / "etc" / "config").write_bytes(b"version=3 from a lamina commit\n")
        os.chmod(root / "bin" / "sgid", 0o755)  # mode-only change
        (root / "etc" / "dangling").unlink()  # a deleted (relative, in-tree) symlink
        (root / "opt" / "données" / "été ☀.txt").unlink()
        (root / "opt" / "données").rmdir()  # a deleted directory
        (root / "srv" / "shared" / "new.txt").unlink()  # a deleted file of the upper layer
    finally:
        s.unmount(c)
    changes = {str(ch) for ch in s.changes(c)}
    for want in (
        "A /added.txt",
        "A /added-dir",
        "C /etc/config",
        "C /bin/sgid",
        "D /etc/dangling",
        "D /opt/données",
        "D /srv/shared/new.txt",
    ):
        assert want in changes, sorted(changes)

    new = s.commit(c, ref="lamina-test/committed:1", message="interop commit")
    assert new.config["rootfs"]["diff_ids"][:2] == di.diff_ids
    assert len(new.config["rootfs"]["diff_ids"]) == 3
    expected = lamina_tree(s, new)
    out = work / "committed.tar"
    s.save([new], out)

    dockerd.purge()
    dockerd("load", "-i", out)
    assert dockerd.image_id("lamina-test/committed:1") == new.id
    # docker save replays the layer bytes it loaded: lamina's commit layer, user xattr included
    resaved = work / "resaved.tar"
    dockerd("save", "-o", resaved, "lamina-test/committed:1")
    with s.layer_diff(new.layers[-1]) as f:
        last = docker_save_layer_names(resaved)[-1]
        with open_member(resaved, last) as saved:
            assert same_bytes(f, saved)
    tree = dockerd.export_tree("lamina-test/committed:1", work / "docker-export")
    assert (tree / "added.txt").read_bytes() == b"added by lamina\n"
    assert (tree / "added.txt").stat().st_uid == 1000
    assert (tree / "added-dir" / "sub" / "h1").samefile(tree / "added-dir" / "h2")
    assert (tree / "etc" / "config").read_bytes() == b"version=3 from a lamina commit\n"
    assert os.getxattr(tree / "added-dir" / "cap-bin", "security.capability") == CAP
    assert (tree / "bin" / "sgid").stat().st_mode & 0o7777 == 0o755
    for gone in ("etc/dangling", "opt/données", "srv/shared/new.txt"):
        assert not os.path.lexists(tree / gone), gone
    assert (tree / "etc" / "absolute").is_symlink()  # a neighbour that was not deleted

    res = compare_trees(
        expected,
        tree,
        lamina_label="lamina container of the commit",
        peer_label="docker export of lamina's commit",
        docker_init=True,
    )
    _log(interop_log, f"docker load lamina commit: {res.comparison.summary()}")
    assert res, res.report()
    # Docker's history shows the commit's message
    history = dockerd(
        "history", "--no-trunc", "--format", "{{.Comment}}", "lamina-test/committed:1"
    )
    assert "interop commit" in history
