"""Windows layer tars out of a layer: replayed byte for byte, or generated.

An imported layer is exported by replaying its tar-split records with the
bodies read back through the layer's file getter, which gives the applied
tar byte for byte (what registries address by digest).  Anything else — a
sandbox layer, or a diff against another parent — is generated the way a
Windows host writes it: Go's ``archive/tar`` with go-winio's backuptar
entries (``Files`` first, each changed path in ``filepath.Walk`` order,
deletions as bare whiteout headers right after their directory, alternate
data streams after their file, ``Hives`` last), with the Windows metadata
of the path kept from the layer it came from and defaults otherwise.

A sandbox is a running container's tree.  Every path is read through
:class:`lamina.archive.TreeReader` beneath its root (the sandbox's
``Files``, or the image layer folder a path comes from): no symlink is
followed on the way or at the end, a body is read only from a descriptor
``fstat`` shows to be the regular file just stat'ed, and a body must have
exactly the size in its header.  A path that changed kind since the view
was listed (a file or directory turned into a symlink, say), a body
replaced or resized while it is written, ends the tar with
:class:`~lamina.errors.LayerChangedError`; a path that vanished is left
out.  A device node or FIFO listed as a file has no body (size 0), as
before, and is never opened.
"""

from __future__ import annotations

import base64
import io
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from lamina import archive
from lamina._change import Change, ChangeKind
from lamina.archive.windows import (
    C_ISLNK,
    C_ISREG,
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    PAX_MOUNTPOINT,
    PAX_RAWSD,
    PAX_XATTR_PREFIX,
    GoHeader,
    GoTarWriter,
    basic_info_header,
    linux_symlink_target,
    stream_header,
    whiteout_header,
    windows_link_target,
)
from lamina.drivers.windowsfilter._merge import ViewItem, stream_source, walk_order
from lamina.errors import LayerChangedError, NotFoundError

__all__ = ["DEFAULT_SECURITY_DESCRIPTOR", "PipeReader", "generate_diff"]

#: go-containerregistry's default for converted layers: owner and group
#: BUILTIN\\Users, no DACL (``O:BUG:BU``).
DEFAULT_SECURITY_DESCRIPTOR = (
    "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="
)


def _ft(ns: int) -> int:
    """Truncate to FILETIME's 100 ns resolution, as NTFS would store it."""
    return ns - ns % 100


def _pax_of(entry: dict[str, Any] | None) -> dict[str, str]:
    if entry is None:
        return {}
    return {str(k): str(v) for k, v in entry.get("pax", [])}


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    return "dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"


def _header(path: str, item: ViewItem, st: os.stat_result, target: str) -> GoHeader:
    """The header of ``path`` from its ``lstat`` (and ``target`` when it is a symlink)."""
    entry = item.entry
    pax = _pax_of(entry)
    kind = _kind(st)
    same_kind = entry is not None and (
        entry["kind"] == kind or {entry["kind"], kind} <= {"file", "link"}
    )
    if same_kind and entry is not None:
        attributes = int(entry["attributes"])
        creation = int(entry["creation"])
    else:
        attributes = {"dir": FILE_ATTRIBUTE_DIRECTORY, "symlink": FILE_ATTRIBUTE_REPARSE_POINT}.get(
            kind, FILE_ATTRIBUTE_ARCHIVE
        )
        creation = st.st_mtime_ns
    if kind == "dir":
        attributes |= FILE_ATTRIBUTE_DIRECTORY
    elif kind == "file":
        attributes &= ~FILE_ATTRIBUTE_DIRECTORY
    size = st.st_size if kind == "file" and stat.S_ISREG(st.st_mode) else 0
    hdr = basic_info_header(
        "Files/" + path,
        size,
        attributes=attributes,
        creation=_ft(creation),
        last_write=_ft(st.st_mtime_ns),
        last_access=_ft(st.st_atime_ns),
        change=_ft(st.st_ctime_ns),
    )
    hdr.pax_records[PAX_RAWSD] = pax.get(PAX_RAWSD, DEFAULT_SECURITY_DESCRIPTOR)
    for key, value in pax.items():
        if key.startswith(PAX_XATTR_PREFIX):
            hdr.pax_records[key] = value
    if kind == "file" and size:
        hdr.mode |= C_ISREG
    elif kind == "symlink":
        hdr.typeflag = "2"
        hdr.mode |= C_ISLNK
        hdr.size = 0
        if same_kind and entry is not None and entry["kind"] == "symlink":
            original = str(entry["linkname"])
            hdr.linkname = (
                original
                if linux_symlink_target(original) == target
                else windows_link_target(target)
            )
            if PAX_MOUNTPOINT in pax:
                hdr.pax_records[PAX_MOUNTPOINT] = pax[PAX_MOUNTPOINT]
        else:
            hdr.linkname = windows_link_target(target)
    return hdr


def _copy_body(w: GoTarWriter, body: BinaryIO, size: int, name: str) -> None:
    """Write exactly ``size`` bytes of ``body``; one that has more or fewer changed meanwhile."""
    with body:
        left = size
        while left:
            chunk = body.read(min(left, 1 << 20))
            if not chunk:
                raise LayerChangedError(f"{name}: shrank while it was exported", path=name)
            w.write(chunk)
            left -= len(chunk)
        if body.read(1):
            raise LayerChangedError(f"{name}: grew while it was exported", path=name)


class _Sources:
    """The trees a view's paths are read from, each opened once and read beneath its root."""

    def __init__(self, files_dir: Path) -> None:
        self._files_dir = files_dir
        self._trees: dict[Path, archive.TreeReader] = {}

    def tree(self, root: Path) -> archive.TreeReader:
        tree = self._trees.get(root)
        if tree is None:
            tree = self._trees[root] = archive.TreeReader(root)
        return tree

    def of(self, path: str, item: ViewItem) -> tuple[archive.TreeReader, str]:
        """Where ``item`` (shown at ``path``) is read: an image layer's folder, or the sandbox."""
        if item.node is not None:
            return self.tree(item.node.layer_dir), item.node.path
        return self.tree(self._files_dir), path  # a sandbox view: its paths are the tree's

    def close(self) -> None:
        for tree in self._trees.values():
            tree.close()
        self._trees.clear()


def _listed_kind(item: ViewItem) -> str:
    return "file" if item.kind == "link" else item.kind


def generate_diff(
    out: BinaryIO,
    new: dict[str, ViewItem],
    changes: list[Change],
    *,
    files_dir: Path,
    hives_dir: Path,
) -> None:
    """Write the Windows tar of ``changes`` (paths of the view ``new``)."""
    w = GoTarWriter(out)
    changed = {c.path[1:] for c in changes if c.kind is not ChangeKind.DELETE}
    deleted: dict[str, list[str]] = {}
    for c in changes:
        if c.kind is ChangeKind.DELETE:
            parent, _, leaf = c.path[1:].rpartition("/")
            deleted.setdefault(parent, []).append(leaf)

    def top(name: str, source: Path) -> None:
        st = os.lstat(source)
        w.write_header(
            basic_info_header(
                name,
                0,
                attributes=FILE_ATTRIBUTE_DIRECTORY,
                creation=_ft(st.st_mtime_ns),
                last_write=_ft(st.st_mtime_ns),
                last_access=_ft(st.st_atime_ns),
                change=_ft(st.st_ctime_ns),
            )
        )

    def whiteouts(parent: str) -> None:
        for leaf in sorted(
            deleted.get(parent, []), key=lambda s: s.encode("utf-8", "surrogateescape")
        ):
            w.write_header(whiteout_header("Files/" + (f"{parent}/{leaf}" if parent else leaf)))

    # The transport folder Windows exports from holds every ancestor of a
    # changed path, so each ancestor directory is an entry of its own.
    emit = set(changed) | (set(deleted) - {""})
    for path in list(emit):
        while "/" in path:
            path = path.rpartition("/")[0]
            emit.add(path)
    top("Files", files_dir)
    whiteouts("")
    sources = _Sources(files_dir)
    try:
        for path in walk_order(list(emit)):
            item = new.get(path)
            if item is not None:
                _write_item(w, sources, path, item)
            whiteouts(path)
    finally:
        sources.close()
    top("Hives", hives_dir)
    w.close()


def _write_item(w: GoTarWriter, sources: _Sources, path: str, item: ViewItem) -> None:
    """The entries of one path: its header, its body, its alternate data streams."""
    name = "Files/" + path
    tree, rel = sources.of(path, item)
    try:
        st = tree.lstat(rel)
    except NotFoundError:
        return  # removed since the view was listed
    if _kind(st) != _listed_kind(item):
        raise LayerChangedError(
            f"{name}: listed as a {item.kind}, now a {_kind(st)}, while it was exported", path=name
        )
    target = tree.readlink(rel) if stat.S_ISLNK(st.st_mode) else ""
    body = tree.open(rel, st) if stat.S_ISREG(st.st_mode) and st.st_size else None
    try:
        hdr = _header(path, item, st, target)
        w.write_header(hdr)
    except BaseException:
        if body is not None:
            body.close()
        raise
    if body is not None:
        _copy_body(w, body, hdr.size, name)
    if hdr.typeflag in ("0", "5"):
        for layer_dir, sentry in item.streams:
            stree = sources.tree(layer_dir)
            srel = stream_source(layer_dir, sentry).relative_to(layer_dir).as_posix()
            sst = stree.lstat(srel)
            w.write_header(stream_header(hdr, str(sentry["stream"]), sst.st_size))
            if sst.st_size:
                _copy_body(w, stree.open(srel, sst), sst.st_size, name)


class PipeReader(io.RawIOBase):
    """Reads what a producer thread writes; the producer's error surfaces at EOF.

    A tar generated on the fly must never look complete when its producer
    failed half way, so a failure is raised from ``read`` instead of an EOF.
    """

    def __init__(self, produce: Callable[[BinaryIO], None], on_close: Callable[[], None]) -> None:
        super().__init__()
        rfd, wfd = os.pipe()
        self._r = os.fdopen(rfd, "rb", buffering=0)
        self._error: BaseException | None = None
        self._on_close = on_close

        def run() -> None:
            try:
                with os.fdopen(wfd, "wb", buffering=1 << 20) as w:
                    produce(w)
            except BrokenPipeError:
                pass
            except BaseException as exc:  # handed to the reader
                self._error = exc

        self._thread = threading.Thread(target=run, name="windowsfilter-export", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._r.readinto(buffer)
        if not n:
            self._thread.join()
            if self._error is not None:
                raise self._error
            return 0
        return n or 0

    def close(self) -> None:
        if not self.closed:
            try:
                self._r.close()
                self._thread.join()
            finally:
                self._on_close()
        super().close()


def b64_default_sd() -> bytes:
    """The default descriptor's binary form."""
    return base64.b64decode(DEFAULT_SECURITY_DESCRIPTOR)
