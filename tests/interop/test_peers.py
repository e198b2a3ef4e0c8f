"""The interop fixtures themselves: the peers run on private state, and the test
image really carries the corners the comparisons are meant to cover (so an
"equal trees" result is not an empty claim)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

import _interop_images
import pytest
from _interop_peers import Docker, DockerImage, Podman

pytestmark = [pytest.mark.interop, pytest.mark.root]


def test_dockerd_runs_on_private_state(dockerd: Docker, interop_log: list[str]) -> None:
    info = json.loads(dockerd("info", "--format", "{{json .}}"))
    assert info["DockerRootDir"].startswith(str(dockerd.base.parent))
    assert info["Driver"] == dockerd.storage_driver
    interop_log.append(
        f"peer: dockerd {dockerd.version} storage-driver {dockerd.storage_driver} "
        f"data-root {info['DockerRootDir']}"
    )


def test_podman_runs_on_private_state(podman: Podman, interop_log: list[str]) -> None:
    info = json.loads(podman("info", "--format", "json"))
    assert info["store"]["graphRoot"] == str(podman.root)
    assert info["store"]["graphDriverName"] == podman.storage_driver
    interop_log.append(f"peer: podman {podman.version} storage-driver {podman.storage_driver}")


def test_crafted_image_carries_every_corner(docker_images: Callable[[str], DockerImage]) -> None:
    di = docker_images("crafted")
    t = di.tree
    mode = lambda p: stat.S_IMODE(os.lstat(t / p).st_mode)  # noqa: E731
    assert mode("bin/tool") == 0o4750  # changed in layer 2
    assert mode("bin/sgid") == 0o2755
    assert mode("tmp") == 0o1777
    assert mode("srv/shared") == 0o2775
    assert (t / "bin/tool").samefile(t / "bin/tool-hardlink")
    assert (t / "opt/app/data.bin").samefile(t / "srv/shared/data-hardlink")
    assert os.getxattr(t / "bin/ping", "security.capability") == _interop_images.CAP_NET_RAW_EP
    # user.* xattrs are in Docker's layers (docker save replays them byte for byte,
    # test_docker checks) but `docker export` writes only security.capability
    assert os.lstat(t / "home/user/.profile").st_uid == 1000
    assert stat.S_ISFIFO(os.lstat(t / "tmp/fifo").st_mode)
    assert os.lstat(t / "dev/null").st_rdev == os.makedev(1, 3)
    assert os.readlink(t / "etc/absolute") == "/etc/config"
    assert not os.path.lexists(t / "etc/gone")
    assert not os.path.lexists(t / "data/gone-dir")
    assert sorted(os.listdir(t / "data/opaque")) == ["new"]
    assert (t / "etc/config").read_bytes() == b"version=2\n"
    assert os.lstat(t / "opt/app").st_mtime < _interop_images.T0 + 10**6  # the tar's time, not now
    long = [p for p in t.joinpath("opt/app").rglob("*.txt")]
    assert len(long) == 1 and len(str(long[0].relative_to(t))) > 100


def test_built_image_has_a_layer_from_dockers_builder(
    docker_images: Callable[[str], DockerImage],
) -> None:
    di = docker_images("built")
    assert len(di.diff_ids) == 4  # crafted's two, one per COPY
    assert (di.tree / "added/sub/file.txt").read_text() == "added by docker build COPY\n"
    assert os.lstat(di.tree / "srv/shared/owned.txt").st_uid == 1000
