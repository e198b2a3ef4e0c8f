"""The layer writer: a Windows layer tar into a fresh staging folder.

This is the seed's ``writeLayer``.  It runs in a helper process by default
(``python -m lamina.drivers.windowsfilter._import``, the tar on standard
input, like the seed's ``docker-windows-write-layer`` re-exec).  The helper
dies with the driver's process, first opens the parent layers it may link
from and then changes root into the staging folder and drops its
privileges (:mod:`._confine`), so a bug in this code cannot write anywhere
else.  ``LAMINA_WINDOWSFILTER_NOREEXEC=1`` runs it inline for debugging.

Per entry, in tar order: validate (:mod:`lamina.archive.windows`), record
the raw framing as tar-split records, and materialise it:

* a file or directory under its on-disk name (the first spelling of each
  directory wins, since Windows matches names case-insensitively);
* a symlink or junction as a Linux symlink to the target with ``\\`` turned
  into ``/`` and a drive prefix dropped (the exact target stays in the
  metadata);
* a hard link to a file of this layer or, searching nearest first, of a
  parent layer (a link across layers is legal in Windows layers); a copy
  when the parent is on another filesystem;
* an alternate data stream into ``.lamina/streams/``;
* a deletion under ``Files/`` as a record only: the merged view hides what
  it names.

A layer with parents that touches ``UtilityVM`` does what hcsshim's
importer does: Windows Server 2016 could not stack utility VMs, so the
first ``UtilityVM`` entry (or deletion) clones the nearest parent's
``UtilityVM/Files`` into the new layer — directories, symlinks and the BCD
files as copies, other files as hard links — and the layer's own
``UtilityVM`` entries then replace, or are added to, the clone; its
deletions there remove from the clone at once (the path must exist), and
its hard links to ``UtilityVM/Files/`` point into the clone.

The original bytes of the UtilityVM BCD files are also written to
``bcd.bak`` & co., which ``diff_getter`` serves.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import posixpath
import shutil
import stat
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lamina.archive._tarsplit import Checksum, Crc64, Packer, Record, dump_record
from lamina.archive.windows import (
    FILE_ATTRIBUTE_DIRECTORY,
    MUTATED_FILES,
    EntryKind,
    LayerValidator,
    RawTarReader,
    WinEntry,
    classify,
    fold,
    linux_symlink_target,
)
from lamina.drivers.windowsfilter import _layout
from lamina.drivers.windowsfilter._confine import PARENT_PID_ENV, confine, die_with_parent
from lamina.errors import InvalidArchiveError, LaminaError

__all__ = ["ParentLayer", "load_parent", "main", "write_layer"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_UVM = "UtilityVM"
_UVM_FILES = "UtilityVM/Files"


def _in_utility_vm(name: str) -> bool:
    return name == _UVM or name.startswith(_UVM + "/")


@dataclass
class ParentLayer:
    """What the writer needs of a parent layer: its folder and its file names."""

    fd: int
    path: str = ""
    files: dict[str, str] = field(default_factory=dict)  # folded name -> on-disk path
    deleted: set[str] = field(default_factory=set)  # folded deletion targets


def load_parent(path: str) -> ParentLayer:
    """Open a parent layer folder and index its files (before any chroot)."""
    fd = os.open(path, _DIR_FLAGS)
    parent = ParentLayer(fd, path)
    try:
        meta = _layout.read_meta(Path(path))
    except LaminaError:
        return parent
    for entry in meta.entries:
        kind = entry.get("kind")
        if kind in ("file", "link") and entry.get("path"):
            parent.files[fold(entry["name"])] = entry["path"]
        elif kind == "whiteout":
            parent.deleted.add(fold(entry["target"]))
    return parent


def _open_dirs(root_fd: int, rel: str) -> int:
    """A descriptor of directory ``rel`` under ``root_fd``, never following symlinks."""
    fd = os.dup(root_fd)
    try:
        for part in [p for p in rel.split("/") if p]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Writer:
    def __init__(self, root_fd: int, parents: list[ParentLayer], checksum: Checksum) -> None:
        self.root_fd = root_fd
        self.parents = parents
        self.checksum = checksum
        self.validator = LayerValidator(base_layer=not parents)
        self.paths: dict[str, str] = {}  # folded name -> on-disk path
        self.entries: list[dict[str, Any]] = []
        self.dir_times: list[tuple[str, int, int]] = []
        self.size = 0
        self.streams = 0
        self.uvm_clone: str | None = None  # the parent whose utility VM was cloned
        os.mkdir(_layout.LAMINA_DIR, 0o700, dir_fd=root_fd)
        self.meta_fd = _open_dirs(root_fd, _layout.LAMINA_DIR)
        os.mkdir(_layout.STREAMS, 0o700, dir_fd=self.meta_fd)
        self.streams_fd = _open_dirs(self.meta_fd, _layout.STREAMS)
        tfd = os.open(
            _layout.TAR_SPLIT,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            0o600,
            dir_fd=self.meta_fd,
        )
        self._split_raw = os.fdopen(tfd, "wb")
        self._split = gzip.GzipFile(fileobj=self._split_raw, mode="wb", compresslevel=1, mtime=0)
        self.packer = Packer(self._emit)

    def _emit(self, record: Record) -> None:
        self._split.write(dump_record(record))

    def close(self) -> None:
        self._split.close()
        self._split_raw.close()
        os.close(self.streams_fd)
        os.close(self.meta_fd)

    def _hasher(self) -> Any:
        return Crc64() if self.checksum is Checksum.CRC64 else hashlib.sha256()

    def disk_path(self, name: str) -> str:
        parent, leaf = posixpath.split(name)
        if not parent:
            return leaf
        base = self.paths.get(fold(parent))
        if base is None:
            raise InvalidArchiveError(f"{name}: its directory was not created by this layer")
        return f"{base}/{leaf}"

    def run(self, stream: BinaryIO) -> int:
        reader = RawTarReader(stream)
        saw_any = False
        while (hdr := reader.next()) is not None:
            saw_any = True
            self.packer.segment(hdr.raw)
            entry = classify(hdr)
            self.validator.check(entry)
            hasher = self._hasher()
            self._apply(entry, reader, hasher)
            self.packer.file(hdr.name, hdr.data_size, hasher.digest())
        if saw_any and not reader.saw_end_marker:
            raise InvalidArchiveError("truncated layer tar: no end-of-archive blocks")
        trailer = reader.trailer
        for i in range(0, len(trailer), 1 << 20):
            self.packer.segment(trailer[i : i + (1 << 20)])
        for path, atime, mtime in reversed(self.dir_times):
            os.utime(path, ns=(atime, mtime), dir_fd=self.root_fd, follow_symlinks=False)
        return self.size

    def _record(self, entry: WinEntry, **extra: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": entry.name,
            "kind": entry.kind.value,
            "size": entry.size,
            "mode": entry.mode,
            "typeflag": entry.typeflag,
            "linkname": entry.linkname,
            "mtime": entry.mtime_ns,
            "atime": entry.atime_ns,
            "ctime": entry.ctime_ns,
            "creation": entry.creation_ns,
            "attributes": entry.attributes,
            "pax": [list(p) for p in entry.pax],
        }
        record.update(extra)
        self.entries.append(record)
        return record

    def _body(self, reader: RawTarReader, hasher: Any, fds: list[int]) -> None:
        while chunk := reader.read(1 << 20):
            hasher.update(chunk)
            for fd in fds:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]

    def _create_file(self, path: str) -> int:
        return os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=self.root_fd,
        )

    def _apply(self, entry: WinEntry, reader: RawTarReader, hasher: Any) -> None:
        kind = entry.kind
        atime = entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns
        if kind is EntryKind.WHITEOUT:
            if self.parents and _in_utility_vm(entry.target):
                self._clone_utility_vm()
                self._remove_from_clone(entry)
            self._record(entry, target=entry.target)
            return
        if kind is EntryKind.STREAM:
            store = f"{self.streams:06d}"
            self.streams += 1
            fd = os.open(
                store,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                0o600,
                dir_fd=self.streams_fd,
            )
            try:
                self._body(reader, hasher, [fd])
            finally:
                os.close(fd)
            self._record(entry, owner=entry.stream_owner, stream=entry.stream_name, store=store)
            return
        kept = None
        if self.parents and _in_utility_vm(entry.name):
            self._clone_utility_vm()
            kept = self._make_room(entry)
        path = kept or self.disk_path(entry.name)
        if kind is EntryKind.DIR:
            if kept is None:
                os.mkdir(path, 0o755, dir_fd=self.root_fd)
            if not (self.parents and entry.name == _UVM):  # hcsshim only clones for this one
                self.dir_times.append((path, atime, entry.mtime_ns))
        elif kind is EntryKind.FILE:
            fd = self._create_file(path)
            backup = None
            try:
                fds = [fd]
                if entry.name in MUTATED_FILES:
                    backup = os.open(
                        MUTATED_FILES[entry.name],
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o644,
                        dir_fd=self.root_fd,
                    )
                    fds.append(backup)
                self._body(reader, hasher, fds)
                os.utime(fd, ns=(atime, entry.mtime_ns))
            finally:
                os.close(fd)
                if backup is not None:
                    os.close(backup)
            self.size += entry.size
        elif kind is EntryKind.SYMLINK:
            os.symlink(linux_symlink_target(entry.linkname), path, dir_fd=self.root_fd)
            os.utime(path, ns=(atime, entry.mtime_ns), dir_fd=self.root_fd, follow_symlinks=False)
        elif kind is EntryKind.LINK:
            self._link(entry, path)
        self.paths[fold(entry.name)] = path
        self._record(entry, path=path)

    # -- the utility VM of a layer with parents ------------------------------------------

    def _clone_utility_vm(self) -> None:
        """hcsshim's ``initUtilityVM``: start from a clone of the nearest parent's UVM."""
        if self.uvm_clone is not None:
            return
        parent = self.parents[0]
        try:
            src = _open_dirs(parent.fd, _UVM_FILES)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            raise InvalidArchiveError(
                "the layer changes the utility VM, but its parent layer has none to clone"
            ) from None
        try:
            os.mkdir(_UVM, 0o755, dir_fd=self.root_fd)
            self._inherit(_UVM, EntryKind.DIR)
            times: list[tuple[str, int, int]] = []
            self._clone_dir(src, _UVM_FILES, os.fstat(src), times)
            for rel, atime, mtime in reversed(times):
                os.utime(rel, ns=(atime, mtime), dir_fd=self.root_fd, follow_symlinks=False)
        finally:
            os.close(src)
        self.uvm_clone = parent.path

    def _inherit(self, rel: str, kind: EntryKind) -> None:
        self.paths[fold(rel)] = rel
        self.validator.inherit(rel, kind)

    def _clone_dir(
        self, src: int, rel: str, st: os.stat_result, times: list[tuple[str, int, int]]
    ) -> None:
        os.mkdir(rel, 0o700, dir_fd=self.root_fd)
        os.chmod(rel, stat.S_IMODE(st.st_mode), dir_fd=self.root_fd)
        times.append((rel, st.st_atime_ns, st.st_mtime_ns))
        self._inherit(rel, EntryKind.DIR)
        with os.scandir(src) as it:
            items = sorted(it, key=lambda i: i.name)
        for item in items:
            child = f"{rel}/{item.name}"
            cst = item.stat(follow_symlinks=False)
            if stat.S_ISDIR(cst.st_mode):
                sub = os.open(item.name, _DIR_FLAGS, dir_fd=src)
                try:
                    self._clone_dir(sub, child, cst, times)
                finally:
                    os.close(sub)
            elif stat.S_ISLNK(cst.st_mode):
                os.symlink(os.readlink(item.name, dir_fd=src), child, dir_fd=self.root_fd)
                os.utime(
                    child,
                    ns=(cst.st_atime_ns, cst.st_mtime_ns),
                    dir_fd=self.root_fd,
                    follow_symlinks=False,
                )
                self._inherit(child, EntryKind.SYMLINK)
            elif stat.S_ISREG(cst.st_mode):
                # the files Windows rewrites after import are copies, never links
                self._copy_or_link(src, item.name, child, copy=child in MUTATED_FILES)
                self._inherit(child, EntryKind.FILE)

    def _copy_or_link(self, src_dir: int, leaf: str, dst: str, *, copy: bool) -> None:
        if not copy:
            try:
                os.link(
                    leaf, dst, src_dir_fd=src_dir, dst_dir_fd=self.root_fd, follow_symlinks=False
                )
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
        sfd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        try:
            dfd = self._create_file(dst)
            try:
                with (
                    os.fdopen(sfd, "rb", closefd=False) as s,
                    os.fdopen(dfd, "wb", closefd=False) as d,
                ):
                    shutil.copyfileobj(s, d, 1 << 20)
                st = os.fstat(sfd)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def _forget(self, name: str) -> None:
        key = fold(name)
        prefix = key + "/"
        for known in [k for k in self.paths if k == key or k.startswith(prefix)]:
            del self.paths[known]
        self.validator.forget(name)

    def _remove(self, rel: str, *, tree: bool) -> None:
        st = os.lstat(rel, dir_fd=self.root_fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(rel, dir_fd=self.root_fd)
        elif tree:
            shutil.rmtree(rel, dir_fd=self.root_fd)
        else:
            os.rmdir(rel, dir_fd=self.root_fd)

    def _make_room(self, entry: WinEntry) -> str | None:
        """Clear what the clone has at ``entry``'s name; the path kept, if it is kept.

        As hcsshim does: a directory entry keeps a directory (and replaces
        anything else, with its contents); any other entry replaces a file
        or symlink, or an empty directory.
        """
        existing = self.paths.get(fold(entry.name))
        if existing is None:
            return None
        is_dir = stat.S_ISDIR(os.lstat(existing, dir_fd=self.root_fd).st_mode)
        if entry.kind is EntryKind.DIR and is_dir:
            return existing
        directory_like = entry.kind is EntryKind.DIR or (
            entry.kind is EntryKind.SYMLINK and bool(entry.attributes & FILE_ATTRIBUTE_DIRECTORY)
        )
        try:
            self._remove(existing, tree=directory_like)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise InvalidArchiveError(
                f"{entry.name}: cannot replace the non-empty utility VM directory {existing!r}"
            ) from None
        self._forget(entry.name)
        return None

    def _remove_from_clone(self, entry: WinEntry) -> None:
        """A deletion in the utility VM removes from the clone now; it must exist."""
        target = entry.target
        existing = self.paths.get(fold(target))
        if existing is None:
            raise InvalidArchiveError(
                f"{entry.name}: deletes {target!r}, which the utility VM does not have"
            )
        self._remove(existing, tree=True)
        self._forget(target)

    def _link(self, entry: WinEntry, path: str) -> None:
        target = entry.linkname.strip("/")
        key = fold(target)
        if self.parents and _in_utility_vm(target):
            # the clone holds the parent's utility VM: look there, never in the parents
            found = self.paths.get(key)
            if found is None or not stat.S_ISREG(os.lstat(found, dir_fd=self.root_fd).st_mode):
                raise InvalidArchiveError(
                    f"{entry.name}: hard link target {entry.linkname!r} not found"
                )
            os.link(
                found, path, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd, follow_symlinks=False
            )
            return
        own = self.validator.seen(target)
        if own is not None:
            if own not in (EntryKind.FILE, EntryKind.LINK):
                raise InvalidArchiveError(f"{entry.name}: hard link to a {own.value}")
            os.link(
                self.paths[key],
                path,
                src_dir_fd=self.root_fd,
                dst_dir_fd=self.root_fd,
                follow_symlinks=False,
            )
            return
        parts = key.split("/")
        for parent in self.parents:
            if any("/".join(parts[:i]) in parent.deleted for i in range(1, len(parts) + 1)):
                break
            src = parent.files.get(key)
            if src is None:
                continue
            head, leaf = posixpath.split(src)
            dfd = _open_dirs(parent.fd, head)
            try:
                try:
                    os.link(
                        leaf, path, src_dir_fd=dfd, dst_dir_fd=self.root_fd, follow_symlinks=False
                    )
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    sfd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                    dst = self._create_file(path)
                    try:
                        with (
                            os.fdopen(sfd, "rb", closefd=False) as s,
                            os.fdopen(dst, "wb", closefd=False) as d,
                        ):
                            shutil.copyfileobj(s, d, 1 << 20)
                    finally:
                        os.close(sfd)
                        os.close(dst)
            finally:
                os.close(dfd)
            return
        raise InvalidArchiveError(f"{entry.name}: hard link target {entry.linkname!r} not found")


def write_layer(
    stream: BinaryIO,
    root_fd: int,
    parents: list[ParentLayer],
    *,
    parent_id: str | None,
    checksum: Checksum = Checksum.SHA256,
) -> int:
    """Import a Windows layer tar into the empty folder ``root_fd``; returns its size."""
    writer = _Writer(root_fd, parents, checksum)
    try:
        size = writer.run(stream)
    finally:
        writer.close()
    meta = _layout.LayerMeta(
        kind=_layout.KIND_IMAGE,
        parent=parent_id,
        imported=True,
        size=size,
        entries=writer.entries,
        utility_vm_clone=writer.uvm_clone or "",
    )
    fd = os.open(
        f"{_layout.LAMINA_DIR}/{_layout.META}",
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
        0o600,
        dir_fd=root_fd,
    )
    with os.fdopen(fd, "w") as f:
        json.dump(meta.to_json(), f, separators=(",", ":"))
    return size


# -- helper process -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m lamina.drivers.windowsfilter._import STAGING PARENT_ID [PARENT_DIR...]``.

    Reads the tar on stdin; prints ``{"size": N, "confinement": how}`` or
    ``{"error": class, "message": text, "errno": n}`` as one JSON line on
    stdout.  ``LAMINA_WINDOWSFILTER_PARENT_PID`` names the process that must
    be its parent (it exits at once if that one is gone).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    staging, parent_id, parent_dirs = args[0], args[1] or None, args[2:]
    out = sys.stdout
    try:
        parent_pid = os.environ.get(PARENT_PID_ENV)
        die_with_parent(int(parent_pid) if parent_pid else None)
        parents = [load_parent(p) for p in parent_dirs]
        confinement = confine(staging)
        # again: a change of credentials may have cleared the request
        die_with_parent(int(parent_pid) if parent_pid else None)
        root = staging if confinement.startswith("none") else "/"
        root_fd = os.open(root, _DIR_FLAGS)
        size = write_layer(sys.stdin.buffer, root_fd, parents, parent_id=parent_id)
        os.close(root_fd)
        out.write(json.dumps({"size": size, "confinement": confinement}) + "\n")
        return 0
    except LaminaError as exc:
        out.write(
            json.dumps({"error": type(exc).__name__, "message": str(exc), "errno": exc.errno})
            + "\n"
        )
        return 1
    except OSError as exc:
        out.write(json.dumps({"error": "OSError", "message": str(exc), "errno": exc.errno}) + "\n")
        return 1
    except BaseException as exc:  # report anything else with its traceback
        traceback.print_exc()
        out.write(json.dumps({"error": "internal", "message": repr(exc), "errno": None}) + "\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
