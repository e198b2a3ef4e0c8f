"""Driving the real peers (dockerd, podman, skopeo, umoci) from the interop tests.

Every peer runs against private state under the test session's temp dir:
dockerd with its own config file, data-root on a loop-mounted ext4, socket,
exec-root and pidfile; podman with its own ``--root``/``--runroot`` and
config files; skopeo and podman with a private signature policy (``HOME``
points at a temp dir holding ``.config/containers/policy.json``), so nothing
on the host (``/etc/containers``, ``/var/lib/docker``, ``~/.docker``) is read
or written.  The network is never used: every image is made from files.

Trees are compared with ``tests/compat/_treecmp.py`` (loaded from there, not
copied), entry by entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

_COMPAT = str(Path(__file__).resolve().parent.parent / "compat")
if _COMPAT not in sys.path:
    sys.path.append(_COMPAT)

import _treecmp  # noqa: E402  (tests/compat/_treecmp.py)

__all__ = [
    "DOCKER_INIT_PATHS",
    "Docker",
    "Podman",
    "Skopeo",
    "compare_trees",
    "extract_tar",
    "run",
]


class PeerError(AssertionError):
    """A peer command failed; the message carries its command line and stderr."""


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
    stdout: int | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    argv = [os.fspath(c) for c in cmd]
    proc = subprocess.run(
        argv, env=dict(env) if env is not None else None, stdout=stdout,
        stderr=subprocess.PIPE, timeout=timeout, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise PeerError(f"{' '.join(argv)} exited {proc.returncode}: {err[-2000:]}")
    return proc


def extract_tar(source: Path | subprocess.Popen[bytes], dest: Path) -> Path:
    """Extract a tar with GNU tar as the reference extractor: owners, modes, xattrs
    (every namespace), hardlinks, devices, and directory times set after their contents."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        "tar", "-x", "-p", "--numeric-owner", "--same-owner", "--xattrs",
        "--xattrs-include=*", "--acls", "-C", str(dest),
    ]  # fmt: skip
    if isinstance(source, Path):
        run([*argv, "-f", str(source)])
    else:
        assert source.stdout is not None
        proc = subprocess.run(
            [*argv, "-f", "-"], stdin=source.stdout, capture_output=True, check=False
        )
        source.stdout.close()
        rc = source.wait()
        if rc != 0 or proc.returncode != 0:
            err = (source.stderr.read() if source.stderr else b"") + proc.stderr
            raise PeerError(f"export/extract failed ({rc}, {proc.returncode}): {err.decode()}")
    return dest


#: The real workload (scripts/ci-workload.sh), as tests/compat finds it.
BENCH_WORK = Path(os.environ.get("BENCH_DIR", "/var/tmp/lamina-bench")) / "work"


@dataclass
class DockerImage:
    """One image as Docker holds it, with what the tests compare lamina against."""

    name: str
    ref: str
    id: str  # what `docker inspect` says
    diff_ids: list[str]
    docker_save: Path  # `docker save` output
    skopeo_save: Path | None  # `skopeo copy docker-daemon:… docker-archive:…` output
    tree: Path  # `docker export` of a created container, extracted with GNU tar
    layer_members: dict[str, str]  # diff ID -> its layer tar's name in docker_save

    @contextlib.contextmanager
    def saved_layer(self, diff_id: str) -> Iterator[BinaryIO]:
        """The layer tar `docker save` wrote for ``diff_id``, as a stream."""
        with open_member(self.docker_save, self.layer_members[diff_id]) as f:
            yield f


def docker_save_layer_names(archive: Path) -> list[str]:
    """The layer members of a classic `docker save` archive, base first
    (in the order of the config's diff IDs)."""
    with tarfile.open(archive) as tf:
        f = tf.extractfile("manifest.json")
        assert f is not None
        return list(json.load(f)[0]["Layers"])


@contextlib.contextmanager
def open_member(archive: Path, name: str) -> Iterator[BinaryIO]:
    """One member of a tar archive as a stream (nothing held in memory)."""
    with tarfile.open(archive) as tf:
        f = tf.extractfile(name)
        assert f is not None, name
        yield f


def same_bytes(a: BinaryIO, b: BinaryIO, chunk: int = 1 << 20) -> bool:
    """Whether two streams hold exactly the same bytes (compared chunk by chunk)."""
    while True:
        x, y = a.read(chunk), b.read(chunk)
        while len(y) < len(x) and (more := b.read(len(x) - len(y))):
            y += more
        while len(x) < len(y) and (more := a.read(len(y) - len(x))):
            x += more
        if x != y:
            return False
        if not x:
            return True


# -- tree comparison ---------------------------------------------------------

#: What Docker's "-init" layer adds to every container (moby daemon/initlayer):
#: `docker export` shows these, an image does not hold them.  They are left out of
#: both trees; the directories it creates them in get the init layer's times.
DOCKER_INIT_PATHS = frozenset(
    {
        ".dockerenv",
        "dev/console",
        "dev/pts",
        "dev/shm",
        "etc/hostname",
        "etc/hosts",
        "etc/mtab",
        "etc/resolv.conf",
        "proc",
        "sys",
    }
)
_DOCKER_INIT_DIRS = frozenset({".", "dev", "etc"})


def _without(tree: _treecmp.Tree, drop: Iterable[str]) -> _treecmp.Tree:
    gone = set(drop)

    def dropped(path: str) -> bool:
        return any(path == d or path.startswith(d + "/") for d in gone)

    entries = {p: e for p, e in tree.entries.items() if not dropped(p)}
    links = {
        p: tuple(q for q in group if q in entries)
        for p, group in tree.links.items()
        if p in entries
    }
    return _treecmp.Tree(tree.root, entries, {p: g for p, g in links.items() if len(g) > 1})


@dataclass
class TreeResult:
    comparison: _treecmp.Comparison
    excused: list[_treecmp.Difference] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.comparison)

    def report(self) -> str:
        text = self.comparison.report()
        if self.excused:
            text += f"\n  excused ({len(self.excused)}): " + "; ".join(map(str, self.excused[:6]))
        return text


#: What `docker export` (moby pkg/archive) writes of a file's xattrs: only
#: security.capability; every other xattr stays in Docker's storage (and in
#: `docker save`, which replays the original layer bytes) but not in the export.
def docker_export_xattrs(path: str, name: str) -> bool:
    return name == "security.capability"


def compare_trees(
    lamina: Path | _treecmp.Tree,
    peer: Path | _treecmp.Tree,
    *,
    lamina_label: str = "lamina container",
    peer_label: str,
    docker_init: bool = False,
    peer_xattrs: _treecmp.XattrFilter | None = None,
    exclude: Iterable[str] = (),
) -> TreeResult:
    """Compare lamina's tree with a peer's, entry by entry (see _treecmp for what is
    compared); differences read "expected <lamina's>, got <the peer's>".

    ``docker_init``: the peer side is a Docker container (``docker export``):
    Docker's init-layer entries are left out of both trees, the times of the
    directories that layer writes into (the root, ``dev``, ``etc``) are not
    counted, and only the xattrs ``docker export`` writes are compared.
    ``peer_xattrs(path, name)``: whether the peer can show lamina's xattr
    ``name`` at all; those it cannot are left out and counted in the report.
    """
    e = lamina if isinstance(lamina, _treecmp.Tree) else _treecmp.scan(lamina)
    a = peer if isinstance(peer, _treecmp.Tree) else _treecmp.scan(peer)
    drop = set(exclude) | (DOCKER_INIT_PATHS if docker_init else set())
    if drop:
        e, a = _without(e, drop), _without(a, drop)
    if docker_init and peer_xattrs is None:
        peer_xattrs = docker_export_xattrs
    cmp = _treecmp.compare(
        e, a, expected_label=lamina_label, actual_label=peer_label, xattr_carried=peer_xattrs
    )
    excused: list[_treecmp.Difference] = []
    if docker_init:
        kept = []
        for d in cmp.differences:
            if d.kind == "mtime" and d.path in _DOCKER_INIT_DIRS:
                excused.append(d)
            else:
                kept.append(d)
        cmp.differences = kept
    return TreeResult(cmp, excused)


def scan(root: Path) -> _treecmp.Tree:
    return _treecmp.scan(root)


# -- dockerd -----------------------------------------------------------------


def docker_client() -> str | None:
    """The client from the same package as the daemon, else any ``docker`` on PATH."""
    dockerd = shutil.which("dockerd")
    if dockerd is not None:
        sibling = Path(dockerd).resolve().parent.parent / "bin" / "docker"
        if sibling.exists():
            return str(sibling)
    return shutil.which("docker")


@dataclass
class Docker:
    """A running private dockerd and the client bound to its socket."""

    client: str
    socket: Path
    env: dict[str, str]
    pid: int
    storage_driver: str
    version: str
    base: Path
    _n: int = 0

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def __call__(self, *args: str | os.PathLike[str], timeout: float = 300) -> str:
        proc = run([self.client, "-H", self.host, *args], env=self.env, timeout=timeout)
        return proc.stdout.decode()

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def image_id(self, ref: str) -> str:
        return self("image", "inspect", "--format", "{{.Id}}", ref).strip()

    def purge(self) -> None:
        """Remove every container and image, so a following load extracts afresh."""
        containers = self("ps", "-aq").split()
        if containers:
            self("rm", "-f", *containers)
        # prune, not rmi: rmi refuses a parent image (docker build's) with children
        self("image", "prune", "--all", "--force")
        left = self("images", "-aq")
        assert not left.split(), f"docker still holds images after a prune: {left}"

    def export_tree(self, ref: str, dest: Path) -> Path:
        """`docker create` (no run) a container of ``ref`` and extract its `docker export`."""
        cid = self("create", "--network", "none", ref).strip()
        try:
            exp = subprocess.Popen(
                [self.client, "-H", self.host, "export", cid],
                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            extract_tar(exp, dest)
        finally:
            self("rm", "-f", cid)
        return dest

    def tmp(self, name: str) -> Path:
        self._n += 1
        return self.base / f"{name}-{self._n}"


def _stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM ``pid`` (a process this session started), wait, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def dockerd_log_reason(log: Path) -> str:
    """The daemon's own last error lines, for a skip reason."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errs = [ln for ln in lines if "level=fatal" in ln or "level=error" in ln or "failed" in ln]
    return " | ".join((errs or lines)[-3:])[-800:]


def _dockerd_major() -> int:
    """dockerd's major version ("Docker version 20.10.24+dfsg1, build …" -> 20)."""
    out = run(["dockerd", "--version"], check=False).stdout.decode()
    words = out.replace(",", " ").split()
    try:
        return int(words[words.index("version") + 1].split(".")[0])
    except (ValueError, IndexError):
        return 0


def start_dockerd(
    base: Path, data_root: Path, storage_driver: str, env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.Popen[bytes], Path, str]:
    """Start dockerd with a private config; returns (process, socket, version) or raises
    RuntimeError with the daemon's own reason."""
    sock, exec_root = base / "docker.sock", base / "exec"
    exec_root.mkdir(exist_ok=True)
    config: dict[str, object] = {
        "data-root": str(data_root),
        "exec-root": str(exec_root),
        "pidfile": str(base / "docker.pid"),
        "hosts": [f"unix://{sock}"],
        "iptables": False,
        "ip6tables": False,
        "ip-forward": False,
        "ip-masq": False,
        "bridge": "none",
        "userland-proxy": False,
        "storage-driver": storage_driver,
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "features": {"buildkit": False},
        "log-level": "warn",
    }
    if _dockerd_major() < 23:
        # Docker < 23 writes a libtrust key to /etc/docker/key.json unless told where
        config["deprecated-key-path"] = str(base / "key.json")
    cfg = base / f"daemon-{storage_driver}.json"
    cfg.write_text(json.dumps(config, indent=1))
    log = base / f"dockerd-{storage_driver}.log"
    argv = ["dockerd", "--config-file", str(cfg)]
    if shutil.which("unshare") is not None:
        # A private mount namespace with its own /run: dockerd hard-codes
        # /run/docker/plugins, and would use a system containerd it finds at
        # /run/containerd/containerd.sock instead of starting its own. Its mounts
        # stay in that namespace too. (unshare and sh exec: the pid is dockerd's.)
        script = 'mount -t tmpfs -o mode=0755,size=16m lamina-interop-run /run && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
    client = docker_client()
    assert client is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"dockerd ({storage_driver}) exited {proc.returncode}: {dockerd_log_reason(log)}"
            )
        if sock.exists():
            ver = run(
                [client, "-H", f"unix://{sock}", "version", "--format", "{{.Server.Version}}"],
                env=env, check=False, timeout=20,
            )  # fmt: skip
            if ver.returncode == 0:
                return proc, sock, ver.stdout.decode().strip()
        time.sleep(0.25)
    stop_dockerd(proc, base)
    raise RuntimeError(
        f"dockerd ({storage_driver}) did not answer within {timeout:.0f}s: "
        f"{dockerd_log_reason(log)}"
    )


def stop_dockerd(proc: subprocess.Popen[bytes], base: Path) -> None:
    """Stop the daemon by its pid, then the containerd it started, if that outlived it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    pidfile = base / "exec" / "containerd" / "containerd.pid"
    try:
        child = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    _stop_pid(child, timeout=10)


# -- podman, skopeo ----------------------------------------------------------


def private_containers_env(base: Path) -> dict[str, str]:
    """Env for containers/image tools that reads no host configuration: a private
    HOME with an accept-anything policy (files only), empty registries.conf,
    containers.conf and storage.conf."""
    home = base / "home"
    conf = home / ".config" / "containers"
    conf.mkdir(parents=True, exist_ok=True)
    policy = conf / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (base / "registries.conf").write_text("unqualified-search-registries = []\n")
    (base / "containers.conf").write_text("")
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(base / "xdg-run"),
        CONTAINERS_REGISTRIES_CONF=str(base / "registries.conf"),
        CONTAINERS_CONF=str(base / "containers.conf"),
        TMPDIR=str(base / "tmp"),
    )
    (base / "xdg-run").mkdir(exist_ok=True, mode=0o700)
    (base / "tmp").mkdir(exist_ok=True)
    return env


def private_cache_prefix() -> list[str]:
    """A command prefix for containers/image tools run as root: a private mount
    namespace whose /var/lib/containers (or /var/lib, where that does not exist
    yet) is a tmpfs.  containers/image keeps a root user's blob-info cache in
    /var/lib/containers/cache and has no option to put it elsewhere, and the
    tests must not write host state."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    script = (
        "d=/var/lib/containers; [ -d $d ] || d=/var/lib; "
        'mount -t tmpfs -o size=64m,mode=0755 lamina-interop-cache "$d" && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@dataclass
class Skopeo:
    binary: str
    env: dict[str, str]
    policy: Path
    version: str

    def argv(self) -> list[str]:
        """skopeo with our policy, its blob-info cache kept off the host."""
        return [*private_cache_prefix(), self.binary, "--policy", str(self.policy)]

    def __call__(self, *args: str | os.PathLike[str], timeout: float = 300) -> bytes:
        return run([*self.argv(), *args], env=self.env, timeout=timeout).stdout

    def inspect(self, transport_ref: str) -> dict[str, object]:
        out: dict[str, object] = json.loads(self("inspect", transport_ref))
        return out

    def raw_config(self, transport_ref: str) -> bytes:
        return self("inspect", "--config", "--raw", transport_ref)

    def config_digest(self, transport_ref: str) -> str:
        """sha256 of the raw config bytes skopeo reads: the image ID."""
        return "sha256:" + hashlib.sha256(self.raw_config(transport_ref)).hexdigest()


@dataclass
class Podman:
    binary: str
    root: Path
    runroot: Path
    storage_driver: str
    env: dict[str, str]
    version: str

    def argv(self) -> list[str]:
        return [
            self.binary, "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", self.storage_driver, "--cgroup-manager", "cgroupfs",
            "--events-backend", "none", "--tmpdir", str(self.runroot / "libpod-tmp"),
        ]  # fmt: skip

    def __call__(
        self, *args: str | os.PathLike[str], timeout: float = 300, host_mounts: bool = False
    ) -> str:
        """Run podman; its blob-info cache is kept off the host (a private mount
        namespace, see private_cache_prefix) unless the command makes mounts the
        tests must see (``host_mounts``: image mount/unmount)."""
        prefix = [] if host_mounts else private_cache_prefix()
        proc = run([*prefix, *self.argv(), *args], env=self.env, timeout=timeout)
        return proc.stdout.decode()

    def image_id(self, ref: str) -> str:
        return "sha256:" + self("image", "inspect", "--format", "{{.Id}}", ref).strip()

    def mount_image(self, image: str) -> Path:
        return Path(self("image", "mount", image, host_mounts=True).strip())

    def unmount_image(self, image: str = "") -> None:
        self("image", "unmount", *([image] if image else ["--all"]), host_mounts=True)

    def purge(self) -> None:
        self.unmount_image()
        self("rmi", "-a", "-f")


def lamina_tree(store: object, image: object) -> _treecmp.Tree:
    """Scan the root filesystem of a fresh lamina container of ``image`` (then unmount)."""
    c = store.create_container(image)  # type: ignore[attr-defined]
    root = store.mount(c)  # type: ignore[attr-defined]
    try:
        return _treecmp.scan(root)
    finally:
        store.unmount(c)  # type: ignore[attr-defined]


def oci_ref_name(layout: Path) -> str:
    """The first ``org.opencontainers.image.ref.name`` in an OCI layout's index (umoci's tag)."""
    index = json.loads((layout / "index.json").read_text())
    for m in index.get("manifests", []):
        name = (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if name:
            return str(name)
    raise PeerError(f"{layout}/index.json names no manifest (org.opencontainers.image.ref.name)")
