"""Differential test: lamina applies real layers exactly as the source trees and peers say.

Two layer sets, each applied by lamina's vfs driver, by ``containers-storage``
(vfs driver, its own root) and by GNU tar, then compared entry by entry with
tests/compat/_treecmp.py:

* the **debootstrap layers** from scripts/ci-workload.sh: ``layer0.tar`` (a
  Debian 12 minbase root filesystem) and ``layer1.tar`` (packages installed,
  docs and locales deleted: 128 whiteouts and one opaque directory) made by
  ../shared/bench/mklayer.py from the trees ``rootfs0`` and ``rootfs1``.  The
  result of layer0 must equal rootfs0 and layer0+layer1 must equal rootfs1
  (dev, proc and sys contents excluded, as mklayer excludes them).  GNU tar
  ignores whiteouts, so it is compared on layer0 only.
* a **fidelity layer** made here by GNU tar from a small tree holding what the
  Debian layers lack: xattrs (user, trusted, security.capability, on files,
  directories and a symlink; binary values), device nodes and a fifo, ids past
  the ustar limits, long names and link targets, extreme times, a setgid
  directory whose children must not inherit its group, hardlinks across
  directories.

A difference against a peer counts only where that peer agrees with the
source tree; where the peer itself differs from the source the difference is
excused and listed (a peer that cannot carry something).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _treecmp import Comparison, Tree, compare, excuse, scan

pytestmark = [pytest.mark.differential, pytest.mark.root]

EXCLUDE_CONTENTS = ("dev", "proc", "sys")  # what mklayer.py leaves out of the layers


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: real layers carry owners, setuid bits and device nodes")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (scripts/ci-apt.sh installs it)")
    return path


def require_gnu_tar() -> str:
    tar = require_tool("tar")
    out = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
    if "GNU tar" not in out:
        pytest.skip(f"{tar} is not GNU tar")
    return tar


def run(cmd: list[str | os.PathLike[str]]) -> str:
    """Run a peer tool; on failure the test fails showing its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shown = " ".join(map(str, cmd))
        raise AssertionError(
            f"{shown} exited {proc.returncode}:\n{proc.stderr.strip()}\n{proc.stdout.strip()}"
        )
    return proc.stdout


def check(result: Comparison, log: list[str]) -> None:
    """Zero differences, or fail listing them per kind with example paths."""
    excused = f" ({len(result.excused)} excused)" if result.excused else ""
    log.append(result.summary() + excused)
    assert not result.differences, "\n" + result.report()


# -- the workload ---------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    work: Path

    @property
    def layer0(self) -> Path:
        return self.work / "layers" / "layer0.tar"

    @property
    def layer1(self) -> Path:
        return self.work / "layers" / "layer1.tar"

    @property
    def rootfs0(self) -> Path:
        return self.work / "rootfs0"

    @property
    def rootfs1(self) -> Path:
        return self.work / "rootfs1"


@pytest.fixture(scope="module")
def workload() -> Workload:
    """The cached workload of scripts/ci-workload.sh, or a skip saying why it is absent."""
    w = Workload(Path(os.environ.get("BENCH_DIR") or "/var/tmp/lamina-bench") / "work")
    needed = (w.layer0, w.layer1, w.rootfs0, w.rootfs1, w.work / "workload.json")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        marker = w.work / "UNAVAILABLE"
        why = marker.read_text().strip() if marker.exists() else "not built"
        pytest.skip(
            f"real workload unavailable ({why}); missing {', '.join(missing)}; "
            f"build it as root with scripts/ci-workload.sh"
        )
    return w


def layer_xattrs(*tars: Path) -> dict[str, set[str]]:
    """xattr names each path gets from the layers (the last layer naming a path wins)."""
    out: dict[str, set[str]] = {}
    for tar in tars:
        with tarfile.open(tar) as tf:
            for m in tf:
                name = m.name.removeprefix("./").rstrip("/") or "."
                out[name] = {
                    k.removeprefix("SCHILY.xattr.")
                    for k in m.pax_headers
                    if k.startswith("SCHILY.xattr.")
                }
    return out


def docker_layer_size(tar: Path) -> int:
    """Docker's UnpackLayer size: the sum of every header's size field."""
    with tarfile.open(tar) as tf:
        return sum(m.size for m in tf)


# -- lamina -------------------------------------------------------------------


@dataclass
class Applied:
    """Trees scanned after applying layers, by layer id, with apply_diff's sizes."""

    trees: dict[str, Tree] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def lamina_apply(root: Path, chain: list[tuple[str, Path]]) -> Applied:
    """Apply ``chain`` as a stack of vfs layers, each the child of the previous one."""
    from lamina import drivers

    d = drivers.new_driver("vfs", root)
    out = Applied()
    parent: str | None = None
    try:
        for layer_id, tar in chain:
            d.create(layer_id, parent)
            with open(tar, "rb") as f:
                out.sizes[layer_id] = d.apply_diff(layer_id, parent, f)
            parent = layer_id
        # scanned only after the whole chain is applied: a child must not change its parent
        for layer_id, _ in chain:
            with d.mounted(layer_id) as view:
                out.trees[layer_id] = scan(view)
    finally:
        d.cleanup()
    return out


def containers_storage_apply(root: Path, chain: list[tuple[str, Path]]) -> Applied:
    """The same with ``containers-storage`` (vfs driver, its own graph and run roots)."""
    cs = require_tool("containers-storage")
    base: list[str | os.PathLike[str]] = [
        cs, "--storage-driver", "vfs", "--graph", root / "graph", "--run", root / "run",
    ]  # fmt: skip
    out = Applied()
    parent: list[str] = []
    try:
        for layer_id, tar in chain:
            run([*base, "import-layer", "--id", layer_id, "--file", tar, *parent])
            parent = [layer_id]
        for layer_id, _ in chain:
            view = run([*base, "mount", layer_id]).strip()
            try:
                out.trees[layer_id] = scan(view)
            finally:
                run([*base, "unmount", layer_id])
    finally:
        # releases its private bind mounts; the scratch teardown sweeps anything left
        subprocess.run([*base, "shutdown", "--force"], capture_output=True, check=False)
    return out


def gnu_tar_extract(tar: Path, dest: Path) -> Tree:
    gnu = require_gnu_tar()
    dest.mkdir()
    run([gnu, "-x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-p",
         "-f", tar, "-C", dest])  # fmt: skip
    return scan(dest)


# -- the debootstrap layers ---------------------------------------------------


@pytest.fixture(scope="module")
def sources(workload: Workload) -> dict[str, Tree]:
    require_root()
    return {
        "rootfs0": scan(workload.rootfs0, EXCLUDE_CONTENTS),
        "rootfs1": scan(workload.rootfs1, EXCLUDE_CONTENTS),
    }


def _chain(w: Workload) -> list[tuple[str, Path]]:
    return [("layer0", w.layer0), ("layer1", w.layer1)]


@pytest.fixture(scope="module")
def lamina_debian(workload: Workload, scratch: Path) -> Applied:
    return lamina_apply(scratch / "lamina-debian", _chain(workload))


@pytest.fixture(scope="module")
def cs_debian(workload: Workload, scratch: Path) -> Applied:
    return containers_storage_apply(scratch / "cs-debian", _chain(workload))


@pytest.fixture(scope="module")
def tar_debian0(workload: Workload, scratch: Path) -> Tree:
    return gnu_tar_extract(workload.layer0, scratch / "tar-debian0")


@pytest.mark.workload
def test_layer0_equals_its_source_tree(
    workload: Workload,
    sources: dict[str, Tree],
    lamina_debian: Applied,
    differential_log: list[str],
) -> None:
    carried = layer_xattrs(workload.layer0)
    check(
        compare(
            sources["rootfs0"],
            lamina_debian.trees["layer0"],
            expected_label="rootfs0",
            actual_label="lamina vfs layer0",
            xattr_carried=lambda p, n: n in carried.get(p, ()),
        ),
        differential_log,
    )


@pytest.mark.workload
def test_layer0_plus_layer1_equals_its_source_tree(
    workload: Workload,
    sources: dict[str, Tree],
    lamina_debian: Applied,
    differential_log: list[str],
) -> None:
    carried = layer_xattrs(workload.layer0, workload.layer1)
    check(
        compare(
            sources["rootfs1"],
            lamina_debian.trees["layer1"],
            expected_label="rootfs1",
            actual_label="lamina vfs layer0+layer1",
            xattr_carried=lambda p, n: n in carried.get(p, ()),
        ),
        differential_log,
    )


@pytest.mark.workload
@pytest.mark.parametrize("layer_id, source", [("layer0", "rootfs0"), ("layer1", "rootfs1")])
def test_layers_equal_containers_storage(
    layer_id: str,
    source: str,
    sources: dict[str, Tree],
    lamina_debian: Applied,
    cs_debian: Applied,
    differential_log: list[str],
) -> None:
    peer = cs_debian.trees[layer_id]
    peer_faults = compare(
        sources[source], peer, expected_label=source, actual_label="containers-storage"
    )
    differential_log.append(f"(peer) {peer_faults.summary()}")
    check(
        excuse(
            compare(
                peer,
                lamina_debian.trees[layer_id],
                expected_label=f"containers-storage vfs {layer_id}",
                actual_label=f"lamina vfs {layer_id}",
            ),
            peer_faults,
        ),
        differential_log,
    )


@pytest.mark.workload
def test_layer0_equals_gnu_tar(
    sources: dict[str, Tree],
    lamina_debian: Applied,
    tar_debian0: Tree,
    differential_log: list[str],
) -> None:
    peer_faults = compare(
        sources["rootfs0"], tar_debian0, expected_label="rootfs0", actual_label="GNU tar"
    )
    differential_log.append(f"(peer) {peer_faults.summary()}")
    check(
        excuse(
            compare(
                tar_debian0,
                lamina_debian.trees["layer0"],
                expected_label="GNU tar -x layer0",
                actual_label="lamina vfs layer0",
            ),
            peer_faults,
        ),
        differential_log,
    )


@pytest.mark.workload
def test_compressed_layers_give_the_same_trees(
    workload: Workload,
    scratch: Path,
    lamina_debian: Applied,
    differential_log: list[str],
) -> None:
    """gzip and zstd streams (sniffed by apply_diff) extract to the same trees and sizes."""
    sources = {
        "layer0": workload.layer0.with_suffix(".tar.gz"),
        "layer1": workload.layer1.with_suffix(".tar.zst"),
    }
    applied = lamina_apply(scratch / "lamina-compressed", list(sources.items()))
    assert applied.sizes == lamina_debian.sizes
    for layer_id, compressed in sources.items():
        check(
            compare(
                lamina_debian.trees[layer_id],
                applied.trees[layer_id],
                expected_label=f"lamina vfs {layer_id} from .tar",
                actual_label=f"lamina vfs {layer_id} from {compressed.name}",
            ),
            differential_log,
        )


@pytest.mark.workload
def test_apply_diff_returns_docker_layer_size(workload: Workload, lamina_debian: Applied) -> None:
    assert lamina_debian.sizes == {
        "layer0": docker_layer_size(workload.layer0),
        "layer1": docker_layer_size(workload.layer1),
    }


# -- the fidelity layer -----------------------------------------------------

# a valid VFS_CAP_REVISION_2 capability with the effective flag: cap_net_raw (13) permitted
CAP_NET_RAW = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)
LONG_DIR = "long-" + "d" * 120
LONG_FILE = "f" * 200
LONG_TARGET = "/".join(["segment"] * 16)  # 127 characters, past ustar's 100-byte linkname


def _set(
    path: Path,
    uid: int,
    gid: int,
    mode: int | None,
    mtime: int,
    xattrs: dict[str, bytes] | None = None,
) -> None:
    """Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities), time."""
    os.lchown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(path, name, value, follow_symlinks=False)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9), follow_symlinks=False)


def make_fidelity_tree(src: Path) -> None:
    """A tree with the metadata the Debian layers do not exercise."""
    t = 1_700_000_000
    rnd = random.Random(7)
    src.mkdir()
    dirs: list[tuple[Path, int, int, int, int, dict[str, bytes] | None]] = []

    def mkdir(
        rel: str, uid: int, gid: int, mode: int, mtime: int, xattrs: dict[str, bytes] | None = None
    ) -> Path:
        p = src / rel
        p.mkdir()
        dirs.append((p, uid, gid, mode, mtime, xattrs))
        return p

    def write(
        rel: str,
        data: bytes,
        uid: int,
        gid: int,
        mode: int,
        mtime: int,
        xattrs: dict[str, bytes] | None = None,
    ) -> Path:
        p = src / rel
        p.write_bytes(data)
        _set(p, uid, gid, mode, mtime, xattrs)
        return p

    def symlink(
        rel: str,
        target: str,
        uid: int,
        gid: int,
        mtime: int,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        p = src / rel
        p.symlink_to(target)
        _set(p, uid, gid, None, mtime, xattrs)

    def node(rel: str, kind: int, dev: int, uid: int, gid: int, mode: int, mtime: int) -> None:
        p = src / rel
        os.mknod(p, kind | mode, dev)
        _set(p, uid, gid, mode, mtime)

    mkdir("bin", 0, 0, 0o755, t + 1, {"user.lamina.dir": b"a directory xattr"})
    write(
        "bin/ping",
        rnd.randbytes(1 << 20),
        0,
        0,
        0o755,
        t + 2,
        {"security.capability": CAP_NET_RAW, "user.lamina.origin": b"iputils"},
    )
    su = write("bin/su", b"#!/bin/sh\nexit 0\n", 0, 0, 0o4755, t + 3)
    os.link(su, src / "bin/su-link")
    write("bin/wall", b"wall\n", 0, 5, 0o2755, t + 4)
    write("bin/all-bits", b"x", 1000, 1000, 0o7777, t + 5)
    write("bin/world", b"#!/bin/sh\n", 0, 0, 0o777, t + 6)
    mkdir("etc", 0, 0, 0o755, t + 7, {"trusted.lamina.dir": b"\x00\x01\xff"})
    write(
        "etc/config",
        b"hello\n",
        0,
        0,
        0o644,
        t + 8,
        {"user.a": b"", "user.b": b"\x00binary\xff\xfe", "trusted.lamina.file": b"t" * 300},
    )
    write("etc/secret", b"no permissions at all\n", 0, 42, 0o000, t + 9)
    write("etc/empty", b"", 0, 0, 0o644, t + 10)
    mkdir("tmp", 0, 0, 0o1777, t + 11)
    # extractors create shared/ (setgid, gid 50) before sub/: sub must not inherit either
    mkdir("shared", 0, 50, 0o2775, t + 12)
    mkdir("shared/sub", 1000, 1000, 0o755, t + 13)
    write("shared/sub/file", b"file\n", 1000, 1000, 0o640, t + 14)
    write("shared/file", b"shared\n", 7, 7, 0o664, t + 15)
    mkdir("home", 0, 0, 0o755, t + 16)
    mkdir("home/user", 1000, 1000, 0o700, t + 17)
    write("home/user/.profile", b"PS1='$ '\n", 1000, 1000, 0o600, t + 18)
    mkdir("data", 0, 0, 0o755, t + 19)
    write("data/big-ids", b"ids past ustar's 7 octal digits\n", 123456789, 987654321, 0o644, t + 20)
    a = write("data/a", b"linked three times\n", 33, 33, 0o640, t + 21)
    os.link(a, src / "data/b")
    mkdir("data/other", 0, 0, 0o755, t + 22)
    os.link(a, src / "data/other/c")
    write("data/épée ünïcødé 名前.txt", "ünïcødé\n".encode(), 0, 0, 0o644, t + 23)
    write("data/epoch", b"1970\n", 0, 0, 0o644, 0)
    write("data/far-future", b"2242\n", 0, 0, 0o644, 2**33 + 5)
    write("data/y2k38", b"2038\n", 0, 0, 0o644, 2**31 + 5)
    mkdir(LONG_DIR, 0, 0, 0o755, t + 24)
    write(f"{LONG_DIR}/{LONG_FILE}", b"long name\n", 0, 0, 0o644, t + 25)
    mkdir("links", 0, 0, 0o755, t + 26)
    symlink("links/absolute", "/etc/config", 0, 0, t + 27)
    symlink(
        "links/relative",
        "../etc/config",
        1000,
        1000,
        t + 28,
        {"trusted.lamina.symlink": b"on the link itself"},
    )
    symlink("links/dangling", "does/not/exist", 0, 0, t + 29)
    symlink("links/long-target", LONG_TARGET, 0, 0, t + 30)
    symlink("links/to-dir", "../data", 0, 0, t + 31)
    mkdir("dev", 0, 0, 0o755, t + 32)
    node("dev/null", stat.S_IFCHR, os.makedev(1, 3), 0, 0, 0o666, t + 33)
    node("dev/loop200", stat.S_IFBLK, os.makedev(7, 200), 0, 6, 0o660, t + 34)
    node("dev/big-minor", stat.S_IFCHR, os.makedev(259, 300000), 0, 0, 0o600, t + 35)
    node("dev/fifo", stat.S_IFIFO, 0, 1000, 1000, 0o620, t + 36)
    # directories last, deepest first, so their times survive their contents
    for p, uid, gid, mode, mtime, xattrs in sorted(dirs, key=lambda d: -len(d[0].parts)):
        _set(p, uid, gid, mode, mtime, xattrs)
    _set(src, 0, 0, 0o755, t)


@dataclass
class Fidelity:
    source: Tree
    tar: Path


@pytest.fixture(scope="module")
def fidelity(scratch: Path) -> Fidelity:
    gnu = require_gnu_tar()
    base = scratch / "fidelity"
    base.mkdir()
    src = base / "src"
    make_fidelity_tree(src)
    tar = base / "fidelity.tar"
    names = sorted(os.listdir(src))
    run([gnu, "-c", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner",
         "--sort=name", "-f", tar, "-C", src, *names])  # fmt: skip
    return Fidelity(scan(src), tar)


@pytest.fixture(scope="module")
def lamina_fidelity(fidelity: Fidelity, scratch: Path) -> Tree:
    return lamina_apply(scratch / "lamina-fidelity", [("fid", fidelity.tar)]).trees["fid"]


def test_fidelity_tar_carries_the_metadata(fidelity: Fidelity) -> None:
    """The layer under test really holds xattrs, devices, big ids and long names."""
    carried = layer_xattrs(fidelity.tar)
    assert carried["bin/ping"] == {"security.capability", "user.lamina.origin"}
    assert carried["links/relative"] == {"trusted.lamina.symlink"}
    with tarfile.open(fidelity.tar) as tf:
        members = {m.name: m for m in tf}
    assert members["dev/big-minor"].devminor == 300000
    assert members["data/big-ids"].uid == 123456789
    assert members[f"{LONG_DIR}/{LONG_FILE}"].isreg()
    assert members["data/b"].islnk() or members["data/a"].islnk()


def test_fidelity_layer_equals_its_source_tree(
    fidelity: Fidelity, lamina_fidelity: Tree, differential_log: list[str]
) -> None:
    carried = layer_xattrs(fidelity.tar)
    check(
        compare(
            fidelity.source,
            lamina_fidelity,
            expected_label="fidelity source tree",
            actual_label="lamina vfs fidelity layer",
            xattr_carried=lambda p, n: n in carried.get(p, ()),
        ),
        differential_log,
    )


@pytest.mark.parametrize("peer", ["containers-storage", "GNU tar"])
def test_fidelity_layer_equals_peer(
    peer: str,
    fidelity: Fidelity,
    lamina_fidelity: Tree,
    scratch: Path,
    differential_log: list[str],
) -> None:
    if peer == "GNU tar":
        peer_tree = gnu_tar_extract(fidelity.tar, scratch / "tar-fidelity")
    else:
        applied = containers_storage_apply(scratch / "cs-fidelity", [("fid", fidelity.tar)])
        peer_tree = applied.trees["fid"]
    peer_faults = compare(
        fidelity.source, peer_tree, expected_label="fidelity source", actual_label=peer
    )
    differential_log.append(f"(peer) {peer_faults.summary()}")
    check(
        excuse(
            compare(
                peer_tree,
                lamina_fidelity,
                expected_label=f"{peer} fidelity layer",
                actual_label="lamina vfs fidelity layer",
            ),
            peer_faults,
        ),
        differential_log,
    )


# -- the comparator itself ------------------------------------------------------


def test_comparator_reports_every_kind(tmp_path: Path) -> None:
    """Each kind of difference is found, so a zero above means equal trees."""
    require_root()
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        r.mkdir()
        (r / "d").mkdir()
        (r / "same").write_bytes(b"same")
        (r / "f").write_bytes(b"1234")
        (r / "g").write_bytes(b"g")
        (r / "l").symlink_to("x")
        (r / "t").write_bytes(b"t")
    (a / "only-a").write_bytes(b"")
    (b / "only-b").write_bytes(b"")
    (b / "f").write_bytes(b"12345")  # size
    (b / "g").write_bytes(b"h")  # content
    (b / "l").unlink()
    (b / "l").symlink_to("y")  # target
    os.chmod(a / "t", 0o644)
    os.chmod(b / "t", 0o4644)  # mode (setuid only)
    os.chown(b / "same", 1, 2)  # owner
    os.setxattr(b / "d", "user.x", b"1")  # xattrs
    os.link(a / "t", a / "t2")
    (b / "t2").write_bytes(b"t")
    os.chmod(b / "t2", 0o644)  # hardlinks: a has t==t2, b does not
    (a / "t2").chmod(0o644)
    os.chmod(a / "t", 0o644)
    os.mknod(a / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(b / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # rdev
    (a / "kind").mkdir()
    (b / "kind").write_bytes(b"")  # type
    for r in (a, b):
        for p in [*r.iterdir(), r / "d"]:
            os.utime(p, (1000, 1000), follow_symlinks=False)
    os.utime(b / "d", (1000, 2000))  # mtime on a directory
    result = compare(scan(a), scan(b))
    found = {(d.path, d.kind) for d in result.differences}
    assert found == {
        ("only-a", "missing"),
        ("only-b", "extra"),
        ("f", "size"),
        ("g", "content"),
        ("l", "target"),
        ("t", "mode"),
        ("t", "hardlinks"),
        ("t2", "hardlinks"),
        ("same", "owner"),
        ("d", "xattrs"),
        ("d", "mtime"),
        ("dev", "rdev"),
        ("kind", "type"),
    }, result.report()
    assert hashlib.sha256(b"g").hexdigest() in str(result.report())
