"""Fixtures for the interop tests: real peers on private state, images made from files.

* ``dockerd``: a private Docker daemon for the session (see ``_interop_peers``): a fresh
  ext4 image on its own loop device as ``data-root``, a private ``daemon.json``
  (``"iptables": false``, ``"ip6tables": false``, ``"bridge": "none"``, a
  storage driver that works here: overlay2, else vfs), its own unix socket,
  exec-root and pidfile.  Teardown stops it by its pid, waits, unmounts and
  detaches the loop device.  Skips, with the daemon's own reason, where it
  cannot run.
* ``podman``: ``podman --root/--runroot`` of its own on the scratch ext4.
* ``skopeo``, ``umoci``: the tools with a private signature policy.
* ``docker_images(name)``: an image Docker holds, with its ``docker save`` and
  ``skopeo copy docker-daemon: docker-archive:`` archives and its ``docker
  export`` tree, made once per session: ``crafted`` (two layers built from bytes
  by ``_interop_images``), ``built`` (``crafted`` plus a layer Docker's own builder
  made with COPY, no network) and ``debian`` (the real workload's two Debian
  layers, via ``skopeo copy oci:``; needs ``scripts/ci-workload.sh``).
* ``new_store()``: a fresh ``lamina.Store`` on the scratch ext4.

Nothing here pulls from a registry: every image is made from files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import _interop_images
import _interop_peers
import pytest
from _interop_peers import BENCH_WORK, Docker, DockerImage, Podman, Skopeo, run

if TYPE_CHECKING:
    from lamina.store import Store


_RESULTS = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the peers' versions and every comparison's one-line result, for the CI log."""
    lines = terminalreporter.config.stash.get(_RESULTS, [])
    if lines:
        terminalreporter.section("lamina interop results")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def interop_log(pytestconfig: pytest.Config) -> list[str]:
    """Lines for the end-of-run summary: peer versions, one line per comparison."""
    return pytestconfig.stash.setdefault(_RESULTS, [])


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a private dockerd, loop mounts and real owners")


# -- loop-mounted ext4 -----------------------------------------------------


@dataclass
class LoopFs:
    image: Path
    mnt: Path
    device: str

    def close(self) -> None:
        _unmount_below(self.mnt)
        subprocess.run(["losetup", "-d", self.device], capture_output=True, check=False)
        self.image.unlink(missing_ok=True)


def _mounts_below(path: Path) -> list[str]:
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == base or mp.startswith(base + "/"):
                found.append(mp)
    return sorted(found, key=len, reverse=True)


def _unmount_below(path: Path) -> None:
    for _ in range(3):
        mps = _mounts_below(path)
        if not mps:
            return
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)


def _loop_ext4(base: Path, name: str, size_gb: int) -> LoopFs:
    for tool in ("mkfs.ext4", "losetup", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (e2fsprogs, mount)")
    image, mnt = base / f"{name}.ext4", base / name
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_gb << 30)
    run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-I", "256", image])
    att = run(["losetup", "--find", "--show", image], check=False)
    if att.returncode != 0:
        image.unlink()
        pytest.skip(f"no loop device here: {att.stderr.decode().strip()}")
    device = att.stdout.decode().strip()
    mounted = run(["mount", device, mnt], check=False)
    if mounted.returncode != 0:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        image.unlink()
        pytest.skip(f"cannot mount ext4 on {device}: {mounted.stderr.decode().strip()}")
    return LoopFs(image, mnt, device)


@pytest.fixture(scope="session")
def interop_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="session")
def scratch(interop_base: Path) -> Iterator[Path]:
    """A fresh ext4 (sparse, 6 GiB) for lamina stores, extracted trees and podman."""
    _require_root()
    fs = _loop_ext4(interop_base, "scratch", 6)
    try:
        yield fs.mnt
    finally:
        fs.close()


# -- peers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def dockerd(interop_base: Path) -> Iterator[Docker]:
    _require_root()
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (Debian package docker.io; scripts/ci-apt.sh)")
    client = _interop_peers.docker_client()
    if client is None:
        pytest.skip("no docker client (Debian package docker.io)")
    base = interop_base / "dockerd"
    base.mkdir()
    fs = _loop_ext4(base, "data", 6)
    env = dict(os.environ)
    env.update(DOCKER_CONFIG=str(base / "client-config"), DOCKER_BUILDKIT="0")
    env.pop("DOCKER_HOST", None)
    env.pop("DOCKER_CONTEXT", None)
    reasons = []
    started = None
    for driver in ("overlay2", "vfs"):
        try:
            proc, sock, version = _interop_peers.start_dockerd(
                base, fs.mnt / f"docker-{driver}", driver, env
            )
        except RuntimeError as exc:
            reasons.append(str(exc))
            continue
        started = (proc, sock, version, driver)
        break
    if started is None:
        _unmount_below(base / "exec")
        fs.close()
        pytest.skip("dockerd cannot start here: " + " / ".join(reasons))
    proc, sock, version, driver = started
    work = fs.mnt / "work"  # archives and trees: thrown away with the loop fs
    work.mkdir()
    try:
        yield Docker(client, sock, env, proc.pid, driver, version, work)
    finally:
        _interop_peers.stop_dockerd(proc, base)
        _unmount_below(base / "exec")
        fs.close()


@pytest.fixture(scope="session")
def containers_env(interop_base: Path) -> dict[str, str]:
    base = interop_base / "containers-conf"
    base.mkdir()
    return _interop_peers.private_containers_env(base)


@pytest.fixture(scope="session")
def skopeo(containers_env: dict[str, str]) -> Skopeo:
    binary = shutil.which("skopeo")
    if binary is None:
        pytest.skip("skopeo is not installed (Debian package skopeo)")
    policy = Path(containers_env["HOME"]) / ".config" / "containers" / "policy.json"
    ver = run([binary, "--version"], env=containers_env).stdout.decode().split()[-1]
    return Skopeo(binary, containers_env, policy, ver)


@pytest.fixture(scope="session")
def umoci() -> str:
    binary = shutil.which("umoci")
    if binary is None:
        pytest.skip("umoci is not installed (Debian package umoci)")
    return binary


@pytest.fixture(scope="session")
def podman(
    scratch: Path, containers_env: dict[str, str], interop_log: list[str]
) -> Iterator[Podman]:
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip("podman is not installed (Debian package podman; scripts/ci-apt.sh)")
    base = scratch / "podman"
    # overlay refuses a runroot longer than 50 characters: a short one of our own
    short = Path(tempfile.mkdtemp(prefix="lamina-pm-", dir="/tmp"))
    reasons = []
    for driver in ("overlay", "vfs"):
        root, runroot = base / driver / "root", short / driver
        (runroot / "libpod-tmp").mkdir(parents=True)
        (base / driver).mkdir(parents=True, exist_ok=True)
        storage_conf = base / driver / "storage.conf"
        storage_conf.write_text(
            f'[storage]\ndriver = "{driver}"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n'
        )
        env = dict(containers_env, CONTAINERS_STORAGE_CONF=str(storage_conf))
        p = Podman(binary, root, runroot, driver, env, "")
        try:
            got = p("info", "--format", "{{.Store.GraphDriverName}} {{.Version.Version}}").split()
        except _interop_peers.PeerError as exc:
            reasons.append(f"{driver}: {exc}")
            continue
        p.version = got[-1]
        break
    else:
        _unmount_below(short)
        shutil.rmtree(short)
        pytest.skip("podman cannot run here: " + " / ".join(reasons))
    interop_log.extend(f"note: podman {r[:600]}" for r in reasons)
    try:
        yield p
    finally:
        subprocess.run([*p.argv(), "image", "unmount", "--all"], env=p.env, capture_output=True)
        _unmount_below(base)
        _unmount_below(short)
        shutil.rmtree(short)  # runroot state only (our mkdtemp), nothing mounted below it now


# -- images Docker holds -----------------------------------------------------


def _build_context(base: Path) -> Path:
    ctx = base / "build-context"
    (ctx / "added" / "sub").mkdir(parents=True)
    (ctx / "added" / "sub" / "file.txt").write_text("added by docker build COPY\n")
    (ctx / "added" / "exec.sh").write_text("#!/bin/sh\n")
    os.chmod(ctx / "added" / "exec.sh", 0o750)
    os.symlink("sub/file.txt", ctx / "added" / "link")
    (ctx / "owned.txt").write_text("chowned\n")
    for i, p in enumerate(sorted(ctx.rglob("*"))):
        os.utime(p, (_interop_images.T0 + 7 * i, _interop_images.T0 + 7 * i), follow_symlinks=False)
    (ctx / "Dockerfile").write_text(
        "FROM lamina-test/crafted:1\n"
        "COPY added/ /added/\n"
        "COPY --chown=1000:100 owned.txt /srv/shared/owned.txt\n"
    )
    return ctx


@pytest.fixture(scope="session")
def docker_images(
    dockerd: Docker, scratch: Path, request: pytest.FixtureRequest
) -> Callable[[str], DockerImage]:
    cache: dict[str, DockerImage] = {}
    base = dockerd.base / "images"
    base.mkdir()
    ours = base / "crafted-ours.tar"
    built = _interop_images.write_docker_archive(ours, "lamina-test/crafted:1")

    def skopeo_or_none() -> Skopeo | None:
        try:
            return request.getfixturevalue("skopeo")  # type: ignore[no-any-return]
        except pytest.skip.Exception:
            return None

    def make(name: str) -> DockerImage:
        if name in cache:
            return cache[name]
        if name == "crafted":
            ref = "lamina-test/crafted:1"
            dockerd("load", "-i", ours)
            assert dockerd.image_id(ref) == built.image_id
        elif name == "built":
            ref = "lamina-test/built:1"
            dockerd("load", "-i", ours)
            dockerd("build", "--network", "none", "-t", ref, _build_context(base))
        elif name == "debian":
            ref = "lamina-test/debian:full"
            layout = BENCH_WORK / "oci-tar"
            if not (layout / "index.json").exists():
                pytest.skip(f"no real workload at {layout} (scripts/ci-workload.sh builds it)")
            sk = skopeo_or_none()
            if sk is None:
                pytest.skip("the Debian image goes to Docker through skopeo, which is missing")
            arch = base / "debian-from-oci.tar"
            sk("copy", "-q", f"oci:{layout}:full", f"docker-archive:{arch}:{ref}")
            dockerd("load", "-i", arch)
            arch.unlink()
        else:
            raise KeyError(name)
        image_id = dockerd.image_id(ref)
        diff_ids = dockerd("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref)
        saved = base / f"{name}-docker-save.tar"
        dockerd("save", "-o", saved, ref)
        sk = skopeo_or_none()
        sk_saved = None
        if sk is not None:
            sk_saved = base / f"{name}-skopeo.tar"
            sk(
                "copy", "-q", "--src-daemon-host", dockerd.host,
                f"docker-daemon:{ref}", f"docker-archive:{sk_saved}:{ref}",
            )  # fmt: skip
        tree = dockerd.export_tree(ref, scratch / "trees" / f"{name}-docker-export")
        diff_id_list = json.loads(diff_ids)
        members = _interop_peers.docker_save_layer_names(saved)
        cache[name] = DockerImage(
            name, ref, image_id, diff_id_list, saved, sk_saved, tree,
            dict(zip(diff_id_list, members, strict=True)),
        )  # fmt: skip
        return cache[name]

    return make


# -- lamina stores -----------------------------------------------------------


@pytest.fixture
def new_store(scratch: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """Open fresh stores on the scratch ext4 (``new_store(driver=None)``: the default
    driver, overlay as root); all are closed and unmounted at teardown."""
    from lamina.store import Store  # here, so the peer fixtures work without it

    opened: list[tuple[Store, Path]] = []
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]

    def make(driver: str | None = None) -> Store:
        root = scratch / "stores" / f"{safe}-{len(opened)}"
        root.mkdir(parents=True)
        s = Store(root, driver=driver)
        opened.append((s, root))
        return s

    yield make
    for s, root in reversed(opened):
        try:
            s.close()
        finally:
            _unmount_below(root)  # the scratch fs is thrown away whole at the end
