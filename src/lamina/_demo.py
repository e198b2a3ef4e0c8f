"""The quick-start demo: round trips through the driver contract and the image store.

Part one, layers: it makes a layer tar from files on this machine, applies it
to a base layer, changes a read-write layer on top, exports those changes as
a tar, applies that tar to a fresh layer on the same base and checks that
both layers now look the same, entry by entry.

Part two, images: it wraps the same layer tar in a ``docker save`` archive,
loads it into a :class:`lamina.store.Store`, creates a container, changes it,
lists the changes, commits them as a new image, saves that image, loads the
saved archive into a fresh store and checks that the image id is the same
and that a container of it shows the same tree as the original container.

It is a function returning a :class:`DemoResult` so tests run exactly what
``lamina demo`` runs.  Whatever this machine lacks among the source files is
skipped (a host may have lost ``/etc``); the demo brings its own files when
too few are left.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lamina.store import Store

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
    # part two, the image store
    image_id: str = ""  # the image loaded from the archive made here
    image_changes: list[Change] = field(default_factory=list)
    committed_id: str = ""
    saved_bytes: int = 0
    reloaded_id: str = ""  # the committed image as the fresh store loaded it
    image_compared: int = 0
    image_differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def layers_match(self) -> bool:
        return self.compared > 0 and not self.differences

    @property
    def images_match(self) -> bool:
        return (
            self.image_compared > 0
            and not self.image_differences
            and bool(self.committed_id)
            and self.reloaded_id == self.committed_id
        )

    @property
    def match(self) -> bool:
        return self.layers_match and self.images_match


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
    if sum(1 for _ in _regular_files(staging)) < 3:
        # too few plain writable files were copied: bring some the demo may change
        own = staging / "etc/lamina-demo"
        own.mkdir(parents=True, exist_ok=True)
        for name in ("motd", "notes", "greeting"):
            (own / name).write_text(f"{name} of the lamina demo\n")
            count += 1
        used.append("/etc/lamina-demo (the demo's own files)")
    first = next(iter(_regular_files(staging)), None)
    if first is not None:
        (staging / _HARDLINK).parent.mkdir(parents=True, exist_ok=True)  # a host without /etc
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
    except BaseException:
        _remove_layers(d, created, keep)
        if not keep:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    _remove_layers(d, created, keep)
    if result.layers_match:
        echo(f"MATCH: the copy equals the read-write layer ({steps.elapsed():.2f} s)")
    else:
        echo(f"DIFFERENT: {len(result.differences)} differences between the layers")
    try:
        _image_tour(result, store, temp, work, d.name, options, prefix, keep, echo)
    finally:
        result.seconds = steps.elapsed()
        if keep:
            echo(
                f"kept: store {store} (layers {', '.join(created)}; images and containers "
                f"named {prefix or ''}lamina-demo…), fresh store {temp / 'fresh-store'}, "
                f"files in {work}"
            )
        else:
            _remove_quietly(temp)
    if result.match:
        echo(f"MATCH: the layers and the images came back equal ({result.seconds:.2f} s in all)")
    else:
        problems = len(result.differences) + len(result.image_differences)
        echo(f"DIFFERENT: {problems} differences ({result.seconds:.2f} s in all)")
    return result


def _remove_layers(d: drivers.Driver, created: list[str], keep: bool) -> None:
    if not keep:
        for layer in reversed(created):
            with contextlib.suppress(Exception):
                d.remove(layer)
    with contextlib.suppress(Exception):
        d.cleanup()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _make_image_archive(layer_tar: Path, layer_digest: str, dest: Path, name: str) -> str:
    """A ``docker save`` archive (Docker 25's blobs/ form) of one layer; returns the image id.

    Built from lamina.oci's documents and Python's tarfile, as any tool
    that writes the format would: the config names the layer's diff ID,
    ``manifest.json`` names the config and the layer as blob paths.
    """
    from lamina import oci

    created = _now()
    config = oci.ImageConfig(
        architecture=oci.host_platform().architecture,
        os="linux",
        diff_ids=[layer_digest],
        created=created,
        config={"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        history=[oci.History(created, "lamina demo: files copied from this machine")],
    )
    config_bytes = config.to_bytes()
    config_digest = oci.digest_of(config_bytes)
    entry = oci.docker_archive_image(config_digest, [layer_digest], [oci.parse_reference(name)])
    manifest = oci.docker_archive_manifest([entry])

    def add(tar: tarfile.TarFile, member: str, data: bytes | None, source: Path | None) -> None:
        info = tarfile.TarInfo(member)
        info.mode = 0o644
        info.mtime = int(time.time())
        if source is not None:
            info.size = source.stat().st_size
            with open(source, "rb") as f:
                tar.addfile(info, f)
        else:
            assert data is not None
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, oci.blob_path(config_digest), config_bytes, None)
        add(tar, oci.blob_path(layer_digest), None, layer_tar)
        add(tar, oci.MANIFEST_FILE, manifest, None)
    return str(config_digest)


def _image_tour(
    result: DemoResult,
    root: Path,
    temp: Path,
    work: Path,
    driver: str,
    options: Mapping[str, str] | None,
    prefix: str,
    keep: bool,
    echo: Echo,
) -> None:
    """Part two: the same files as an image, through the store and back."""
    from lamina.store import Store

    name, committed = f"{prefix}lamina-demo:1", f"{prefix}lamina-demo:2"
    container = f"{prefix}lamina-demo"
    fresh_root = temp / "fresh-store"
    echo(f"lamina demo, images: store {root}, then a fresh store {fresh_root}")
    steps = _Steps(echo, 7)
    with Store(root, driver=driver, options=options) as store:
        made: list[str] = []  # images to remove afterwards, newest first
        created_container = False
        try:
            with steps.step(f"make a `docker save` archive {name!r} of layer.tar") as notes:
                made_id = _make_image_archive(
                    work / "layer.tar", result.layer_digest, work / "image.tar", name
                )
                notes.append(
                    f"image.tar: {(work / 'image.tar').stat().st_size:,} bytes, image id {made_id}"
                )

            with steps.step("load image.tar into the store") as notes:
                loaded = store.load(work / "image.tar")
                result.image_id = loaded[0].id
                made.insert(0, result.image_id)
                notes.append(f"Loaded image: {name} ({result.image_id})")
                if result.image_id != made_id:
                    result.image_differences.append(
                        f"loaded image id {result.image_id} is not the config digest {made_id}"
                    )

            with steps.step(f"create container {container!r} from {name!r} and change it"):
                store.create_container(name, name=container)
                created_container = True
                view = store.mount(container)
                try:
                    _change_rw_layer(view, work / "rootfs", echo)
                finally:
                    store.unmount(container)

            with steps.step(f"diff {container!r} (docker diff format)") as notes:
                result.image_changes = sorted(store.changes(container))
                notes.extend(str(c) for c in result.image_changes)

            with steps.step(f"commit {container!r} as {committed!r}") as notes:
                image = store.commit(container, committed, message="changed by the lamina demo")
                result.committed_id = image.id
                made.insert(0, image.id)
                notes.append(f"{image.id}: {len(image.layers)} layers, {image.size:,} bytes")

            with steps.step(f"save {committed!r} as a docker-archive") as notes:
                store.save([committed], work / "saved.tar")
                with open(work / "saved.tar", "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                result.saved_bytes = (work / "saved.tar").stat().st_size
                notes.append(f"saved.tar: {result.saved_bytes:,} bytes, sha256:{digest}")

            with steps.step("load saved.tar into a fresh store and compare") as notes:
                _compare_in_fresh_store(
                    result, store, container, work / "saved.tar", fresh_root, driver, options, keep
                )
                notes.append(f"image id in the fresh store: {result.reloaded_id}")
                notes.append(
                    f"{result.image_compared} entries compared between {container!r} and a "
                    "container of the reloaded image"
                )
                notes.extend(result.image_differences)
        finally:
            if not keep:
                if created_container:
                    with contextlib.suppress(Exception):
                        store.remove_container(container, force=True)
                for image_id in made:
                    with contextlib.suppress(Exception):
                        store.remove_image(image_id, force=True)


def _compare_in_fresh_store(
    result: DemoResult,
    store: Store,
    container: str,
    saved: Path,
    fresh_root: Path,
    driver: str,
    options: Mapping[str, str] | None,
    keep: bool,
) -> None:
    """Load ``saved`` into a new store; compare its image id and a container's tree."""
    from lamina.store import Store

    with Store(fresh_root, driver=driver, options=options) as fresh:
        reloaded = fresh.load(saved)
        result.reloaded_id = reloaded[0].id
        if result.reloaded_id != result.committed_id:
            result.image_differences.append(
                f"the fresh store's image id {result.reloaded_id} is not {result.committed_id}"
            )
        twin = fresh.create_container(reloaded[0], name="reloaded")
        left = store.mount(container)
        try:
            right = fresh.mount(twin)
            try:
                result.image_compared, differences = compare_trees(left, right)
                result.image_differences.extend(differences)
            finally:
                fresh.unmount(twin)
        finally:
            store.unmount(container)
            if not keep:
                with contextlib.suppress(Exception):
                    fresh.remove_container(twin, force=True)
                with contextlib.suppress(Exception):
                    fresh.remove_image(reloaded[0], force=True)
