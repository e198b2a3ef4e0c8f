"""lamina against Podman 4 (containers/storage and containers/image), issue 12 item 4.

* lamina's ``save`` in each format (docker-archive, oci-archive, oci-dir) is
  accepted by ``podman load`` with the same image ID, and ``podman image
  mount`` of it shows the tree of a lamina container, entry by entry.
* What ``podman save`` writes (docker-archive, oci-archive, oci-dir) loads in
  lamina with the ID Podman reports and the same tree.

Podman runs with its own ``--root``/``--runroot`` (``conftest.podman``);
images come from Docker's ``docker save`` of images made from files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _interop_peers import DockerImage, Podman, Skopeo, compare_trees, lamina_tree

from lamina.store import Store

pytestmark = [pytest.mark.differential, pytest.mark.interop, pytest.mark.root]

Images = Callable[[str], DockerImage]
NewStore = Callable[..., Store]
FORMATS = ["docker-archive", "oci-archive", "oci-dir"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["crafted", "built"])
def test_lamina_save_loads_in_podman(
    podman: Podman,
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
    ref = f"localhost/lamina-test/from-lamina-{name}:{fmt}"
    s.tag(img, ref)
    # one name only: Podman 4.3 refuses an OCI index with more than one descriptor
    # ("more than one image in oci, choose an image"), even when all name one manifest
    s.untag(di.ref)
    assert list(s.image(img.id).names) == [ref]
    expected = lamina_tree(s, img)
    out = tmp_path / (f"{name}-oci" if fmt == "oci-dir" else f"{name}.{fmt}.tar")
    s.save([img], out, format=fmt)

    podman.purge()  # podman must build the image from lamina's bytes
    podman("load", "-q", "-i", out)
    assert podman.image_id(img.id) == img.id
    if fmt != "oci-dir":  # podman names an oci-dir image by its directory, not its ref
        assert podman.image_id(ref) == img.id
    root = podman.mount_image(img.id)
    try:
        # the root itself is left out: a layer tar has no entry for it, and
        # containers/storage makes an image mount's root 0555 (lamina's and Docker's: 0755)
        res = compare_trees(
            expected, root, peer_label=f"podman image mount after load of {fmt}", exclude=(".",)
        )
    finally:
        podman.unmount_image(img.id)
    interop_log.append(f"podman load lamina {fmt} {name}: {res.comparison.summary()}")
    assert res, res.report()


@pytest.mark.parametrize("fmt", FORMATS)
def test_podman_save_loads_in_lamina(
    podman: Podman,
    skopeo: Skopeo,
    docker_images: Images,
    new_store: NewStore,
    interop_log: list[str],
    tmp_path: Path,
    fmt: str,
) -> None:
    di = docker_images("built")
    podman.purge()
    podman("load", "-q", "-i", di.docker_save)
    pid = podman.image_id(di.ref)
    assert pid == di.id  # podman and Docker agree on the ID
    out = tmp_path / ("podman-oci" if fmt == "oci-dir" else f"podman.{fmt}.tar")
    podman("save", "-q", "--format", fmt, "-o", out, di.ref)

    s = new_store()
    loaded = s.load(out)
    if fmt == "docker-archive":
        assert [i.id for i in loaded] == [pid]
    else:
        # converting to OCI, containers/image writes a new config (OCI media types),
        # so the archive's image ID is not the one podman shows for its own copy:
        # lamina must report the archive's, as skopeo (containers/image) reads it
        transport = f"oci-archive:{out}" if fmt == "oci-archive" else f"oci:{out}"
        assert [i.id for i in loaded] == [skopeo.config_digest(transport)]
        assert loaded[0].config["rootfs"]["diff_ids"] == di.diff_ids
    res = compare_trees(
        lamina_tree(s, loaded[0]),
        di.tree,
        lamina_label=f"lamina container of podman's {fmt}",
        peer_label="docker export",
        docker_init=True,
    )
    interop_log.append(f"lamina load podman {fmt}: {res.comparison.summary()}")
    assert res, res.report()
