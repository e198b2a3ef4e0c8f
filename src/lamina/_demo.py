"""The quick-start demo: one round trip through the driver contract on real files.

It makes a layer tar from files on this machine, applies it to a base layer,
changes a read-write layer on top, exports those changes as a tar, applies
that tar to a fresh layer on the same base and checks that both layers now
look the same, entry by entry.  It is a function returning a
:class:`DemoResult` so tests run exactly what ``lamina demo`` runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lamina import archive, drivers
from lamina._change import Change
from lamina._tree import remove_tree

__all__ = ["DemoResult", "Entry", "compare_trees", "run_demo", "snapshot_tree"]

Echo = Callable[[str], None]

# Small, world-readable files a fresh Debian 12 has; whatever is missing is skipped.
# os-release is a relative symlink and common-licenses holds symlinks too, so
# the layer has links as well as files, directories and executables.
_SOURCES: tuple[str, ...] = (
    "etc/debian_version",
    "etc/os-release",
    "usr/lib/os-release",
    "etc/issue",
    "etc/issue.net",
    "etc/shells",
    "etc/host.conf",
    "etc/nsswitch.conf",
    "etc/login.defs",
    "etc/profile",
    "etc/bash.bashrc",
    "etc/skel",
    "etc/update-motd.d",
    "usr/share/common-licenses",
)
_MIN_FILES = 5  # below this (not Debian?) lamina's own sources are added to the layer
_HARDLINK = "etc/lamina-demo.hardlink"


@dataclass(frozen=True)
class Entry:
    """What the demo compares for each path of a layer's view."""

    mode: int  # st_mode: file type and permission bits
    uid: int
    gid: int
    size: int | None  # regular files only; directory sizes depend on their history
    sha256: str | None  # regular files only
    target: str | None  # symlinks only
    links: tuple[str, ...] = ()  # other names of the same inode (hardlinks)

    def describe(self) -> str:
        kind = stat.filemode(self.mode)
        text = f"{kind} {self.uid}:{self.gid}"
        if self.size is not None:
            text += f" {self.size}B sha256:{(self.sha256 or '')[:12]}"
        if self.target is not None:
            text += f" -> {self.target}"
        if self.links:
            text += f" links={','.join(self.links)}"
        return text


@dataclass
class DemoResult:
    """What the demo did and found; ``match`` is the verdict."""

    driver: str
    root: Path
    layers: list[str] = field(default_factory=list)  # the ids the demo created
    files: int = 0  # non-directory entries in the layer made from this machine
    layer_tar_bytes: int = 0
    layer_digest: str = ""
    base_size: int = 0  # apply_diff's answer for the base layer
    changes: list[Change] = field(default_factory=list)
    diff_tar_bytes: int = 0
    diff_entries: list[str] = field(default_factory=list)
    copy_size: int = 0  # apply_diff's answer for the copy
    compared: int = 0  # entries compared in step 7
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def match(self) -> bool:
        return self.compared > 0 and not self.differences


def _remove_quietly(path: Path) -> None:
    """Delete the demo's scratch directory; a failure leaves it for the user to see."""
    with contextlib.suppress(OSError):
        remove_tree(path)


def _copy_entry(src: Path, dst: Path) -> int:
    """Copy one file, symlink or directory tree; unreadable parts are skipped.

    Returns the number of non-directory entries copied.
    """
    try:
        st = os.lstat(src)
    except OSError:
        return 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return 1
    if stat.S_ISREG(st.st_mode):
        try:
            shutil.copy2(src, dst, follow_symlinks=False)
        except OSError:
            return 0
        return 1
    if stat.S_ISDIR(st.st_mode):
        copied = 0
        dst.mkdir(exist_ok=True)
        try:
            names = sorted(os.listdir(src))
        except OSError:
            names = []
        for name in names:
            copied += _copy_entry(src / name, dst / name)
        with contextlib.suppress(OSError):
            shutil.copystat(src, dst, follow_symlinks=False)
        return copied
    return 0  # devices, sockets, fifos: not what a demo should copy from /etc


def _stage(staging: Path) -> tuple[int, list[str]]:
    """Fill ``staging`` with a small root filesystem copied from this machine.

    Returns the number of non-directory entries and the sources used.
    """
    count, used = 0, []
    for rel in _SOURCES:
        copied = _copy_entry(Path("/", rel), staging / rel)
        if copied:
            count += copied
            used.append("/" + rel)
    if count < _MIN_FILES:
        count += _copy_entry(Path(__file__).parent, staging / "opt/lamina-src")
        used.append(str(Path(__file__).parent))
    first = next(iter(_regular_files(staging)), None)
    if first is not None:
        os.link(first, staging / _HARDLINK)
        count += 1
        used.append(f"/{_HARDLINK} (a hardlink to /{first.relative_to(staging)})")
    # Parent directories were made by mkdir; give them the host's modes and times.
    parents = {parent for source in _SOURCES for parent in Path(source).parents}
    for parent in sorted(parents - {Path()}, reverse=True):
        if (staging / parent).is_dir():
            with contextlib.suppress(OSError):
                shutil.copystat(Path("/", parent), staging / parent, follow_symlinks=False)
    return count, used


def _regular_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mode & stat.S_IWUSR:
                yield path


def _hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def snapshot_tree(root: Path) -> dict[str, Entry]:
    """Every entry below ``root`` (the root itself excluded), keyed by ``/relative/path``."""
    raw: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            raw["/" + os.path.relpath(path, root)] = os.lstat(path)
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel, st in raw.items():
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    result: dict[str, Entry] = {}
    for rel, st in raw.items():
        regular = stat.S_ISREG(st.st_mode)
        path = os.path.join(root, rel.lstrip("/"))
        same = inodes.get((st.st_dev, st.st_ino), []) if regular else []
        result[rel] = Entry(
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if regular else None,
            sha256=_hash(Path(path)) if regular else None,
            target=os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
            links=tuple(sorted(p for p in same if p != rel)),
        )
    return result


def compare_trees(left: Path, right: Path) -> tuple[int, list[str]]:
    """Entries compared and the differences (type, mode, owner, size, content, target, links)."""
    a, b = snapshot_tree(left), snapshot_tree(right)
    differences = []
    for rel in sorted(a.keys() | b.keys()):
        ea, eb = a.get(rel), b.get(rel)
        if ea is None:
            differences.append(f"{rel}: only in the copy")
        elif eb is None:
            differences.append(f"{rel}: missing from the copy")
        elif ea != eb:
            differences.append(f"{rel}: {ea.describe()}  vs  {eb.describe()}")
    return len(a.keys() | b.keys()), differences


def _tar_listing(path: Path) -> list[str]:
    """``tar tv``-style lines naming whiteouts for what they are."""
    lines = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            base = os.path.basename(member.name.rstrip("/"))
            if base == archive.OPAQUE_MARKER:
                lines.append(f"{member.name}  (opaque directory marker)")
            elif base.startswith(archive.WHITEOUT_PREFIX):
                deleted = os.path.join(
                    os.path.dirname(member.name), base[len(archive.WHITEOUT_PREFIX) :]
                )
                lines.append(f"{member.name}  (whiteout: deletes /{deleted})")
            elif member.issym():
                lines.append(f"{member.name} -> {member.linkname}")
            elif member.islnk():
                lines.append(f"{member.name} link to {member.linkname}")
            else:
                lines.append(member.name + ("/" if member.isdir() else ""))
    return lines


def _write_stream(stream: BinaryIO, dest: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, "sha256:" + digest.hexdigest()


def _change_rw_layer(view: Path, staging: Path, echo: Echo) -> None:
    """Modify one file, add one, delete one and add a directory, as a container would."""
    candidates = [p.relative_to(staging) for p in _regular_files(staging)]
    etc = [p for p in candidates if p.parts[0] == "etc"]
    modify = (etc or candidates)[0]
    delete = next(p for p in reversed(candidates) if p != modify)
    with open(view / modify, "a") as f:
        f.write("# changed by the lamina demo\n")
    echo(f"      modified /{modify}")
    (view / "etc").mkdir(exist_ok=True)
    (view / "etc/lamina-demo.conf").write_text("greeting = hello from a container layer\n")
    echo("      added    /etc/lamina-demo.conf")
    os.unlink(view / delete)
    echo(f"      deleted  /{delete}")
    app = view / "opt/lamina-demo"
    app.mkdir(parents=True)
    (app / "hello.txt").write_text("hello\n")
    os.chmod(app / "hello.txt", 0o640)
    os.symlink("hello.txt", app / "latest")
    echo("      added    /opt/lamina-demo/ with hello.txt and a symlink latest -> hello.txt")


class _Steps:
    """Numbered, timed progress lines."""

    def __init__(self, echo: Echo, total: int) -> None:
        self._echo = echo
        self._total = total
        self._n = 0
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        """Print the title, run the block, then print the block's summary lines and time."""
        self._n += 1
        self._echo(f"[{self._n}/{self._total}] {title}")
        t0 = time.perf_counter()
        notes: list[str] = []
        yield notes
        for note in notes:
            self._echo(f"      {note}")
        self._echo(f"      ({time.perf_counter() - t0:.2f} s)")

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def run_demo(
    root: str | os.PathLike[str] | None = None,
    driver: str | None = None,
    *,
    options: Mapping[str, str] | None = None,
    keep: bool = False,
    echo: Echo = print,
) -> DemoResult:
    """Run the demo and print each step with ``echo``.

    ``root`` None uses a fresh temporary store, removed afterwards unless
    ``keep``; with a given root the demo's layers get unique ids and are
    removed afterwards unless ``keep``.  ``driver`` None selects automatically.
    Library errors propagate as :mod:`lamina.errors` exceptions.
    """
    temp = Path(tempfile.mkdtemp(prefix="lamina-demo-"))
    store = Path(root) if root is not None else temp / "store"
    work = temp / "work"
    work.mkdir()
    prefix = "" if root is None else f"demo-{secrets.token_hex(3)}-"
    base, rw, copy = prefix + "base", prefix + "container", prefix + "copy"
    result = DemoResult(driver="", root=store)
    created = result.layers
    try:
        d = drivers.new_driver(driver, store, options)
    except BaseException:
        _remove_quietly(temp)
        raise
    result.driver = d.name
    echo(f"lamina demo: driver {d.name}, store {store}")
    steps = _Steps(echo, 7)
    try:
        staging = work / "rootfs"
        with steps.step("make a layer tar from files on this machine") as notes:
            result.files, sources = _stage(staging)
            with archive.export_tree(staging) as stream:
                result.layer_tar_bytes, result.layer_digest = _write_stream(
                    stream, work / "layer.tar"
                )
            notes.extend(textwrap.wrap("copied " + ", ".join(sources), 88))
            notes.append(
                f"exported {result.files} files and links as layer.tar: "
                f"{result.layer_tar_bytes:,} bytes, {result.layer_digest}"
            )

        with steps.step(f"create layer {base!r} and apply layer.tar to it") as notes:
            d.create(base)
            created.append(base)
            with open(work / "layer.tar", "rb") as f:
                result.base_size = d.apply_diff(base, None, f)
            notes.append(f"apply_diff -> layer size {result.base_size:,} bytes")

        with steps.step(f"create read-write layer {rw!r} on {base!r} and change files"):
            d.create_read_write(rw, base)
            created.append(rw)
            with d.mounted(rw) as view:
                _change_rw_layer(view, staging, echo)

        with steps.step(f"changes of {rw!r} against {base!r} (docker diff format)") as notes:
            result.changes = sorted(d.changes(rw, base))
            notes.extend(str(c) for c in result.changes)

        with steps.step(f"export the diff of {rw!r} against {base!r} as a tar") as notes:
            with d.diff(rw, base) as stream:
                result.diff_tar_bytes, digest = _write_stream(stream, work / "diff.tar")
            result.diff_entries = _tar_listing(work / "diff.tar")
            notes.append(f"diff.tar, {result.diff_tar_bytes:,} bytes, {digest}:")
            notes.extend("  " + line for line in result.diff_entries)

        with steps.step(f"create layer {copy!r} on {base!r} and apply diff.tar") as notes:
            d.create(copy, base)
            created.append(copy)
            with open(work / "diff.tar", "rb") as f:
                result.copy_size = d.apply_diff(copy, base, f)
            notes.append(f"apply_diff -> layer size {result.copy_size:,} bytes")

        with steps.step(f"compare {rw!r} and {copy!r} entry by entry") as notes:
            with d.mounted(rw) as left, d.mounted(copy) as right:
                result.compared, result.differences = compare_trees(left, right)
            notes.append(
                f"{result.compared} entries compared "
                "(type, mode, owner, size, sha256, link target, hardlinks)"
            )
            notes.extend(result.differences)
    finally:
        result.seconds = steps.elapsed()
        if not keep:
            for layer in reversed(created):
                with contextlib.suppress(Exception):
                    d.remove(layer)
        with contextlib.suppress(Exception):
            d.cleanup()
        if keep:
            echo(f"kept: store {store} (layers {', '.join(created)}), files in {work}")
        else:
            _remove_quietly(temp)
    if result.match:
        echo(f"MATCH: the copy equals the read-write layer ({result.seconds:.2f} s in all)")
    else:
        echo(f"DIFFERENT: {len(result.differences)} differences ({result.seconds:.2f} s in all)")
    return result
