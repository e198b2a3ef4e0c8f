"""The merged ``Files`` tree of a layer chain, and comparisons of such trees.

Windows layers stack the way WCIFS shows them to a container: the newest
layer wins; a deletion hides the path and everything below it in older
layers; a file replacing a directory hides the directory's contents; and
paths match case-insensitively (NTFS), the newest spelling being shown.
A layer's deletions apply after its own entries, as hcsshim's writer
removes whiteout targets from the new layer folder after importing it.

The merge reads only the layers' metadata, never their trees.  A
*view* maps each path of the merged tree (``a/b``, relative to ``Files``,
as shown) to where its bytes live and the metadata record that describes
it; views of image chains and of sandbox trees are compared the same way.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina._change import Change, ChangeKind
from lamina.archive.windows import fold
from lamina.drivers.windowsfilter._layout import LAMINA_DIR, STREAMS, LayerMeta

__all__ = [
    "Node",
    "ViewItem",
    "changes_between",
    "materialise",
    "merge_chain",
    "merge_steps",
    "shown_nodes",
    "view_of_index",
    "view_of_tree",
    "walk_order",
]

_FILES = "Files/"


@dataclass
class Node:
    """One path of a merged tree and the layer entry that provides it."""

    key: str
    leaf: str
    parent: str
    kind: str
    layer_dir: Path
    path: str
    entry: dict[str, Any]
    streams: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    @property
    def source(self) -> Path:
        return self.layer_dir / self.path


def _delete(index: dict[str, Node], children: dict[str, set[str]], key: str) -> None:
    stack = [key]
    while stack:
        k = stack.pop()
        node = index.pop(k, None)
        if node is not None:
            children.get(node.parent, set()).discard(k)
        stack.extend(children.pop(k, ()))


def merge_chain(chain: list[tuple[Path, LayerMeta]]) -> dict[str, Node]:
    """Merge image layers, oldest first, into an index keyed by folded path."""
    index: dict[str, Node] = {}
    for step in merge_steps(chain):
        index = step
    return index


def merge_steps(chain: list[tuple[Path, LayerMeta]]) -> Iterator[dict[str, Node]]:
    """The index after each layer of the chain, oldest first.

    The same dictionary is updated in place and yielded once per layer, so
    a caller that needs the view of every prefix of a chain (the overlay
    whiteout plans) merges the chain once instead of once per prefix.
    """
    index: dict[str, Node] = {}
    children: dict[str, set[str]] = {}
    for layer_dir, meta in chain:
        deletions: list[str] = []
        last: Node | None = None
        for entry in meta.entries:
            name: str = entry["name"]
            if not name.startswith(_FILES):
                continue
            kind = entry["kind"]
            rel = name[len(_FILES) :]
            if kind == "whiteout":
                target = str(entry["target"])
                if target.startswith(_FILES):
                    deletions.append(fold(target[len(_FILES) :]))
                continue
            if kind == "stream":
                owner = fold(str(entry["owner"])[len(_FILES) :])
                if last is not None and last.key == owner:
                    last.streams.append((layer_dir, entry))
                continue
            key = fold(rel)
            parent_key = key.rpartition("/")[0]
            existing = index.get(key)
            if existing is not None and (existing.kind != "dir" or kind != "dir"):
                for child in list(children.get(key, ())):
                    _delete(index, children, child)
            node = Node(
                key, rel.rpartition("/")[2], parent_key, kind, layer_dir, entry["path"], entry
            )
            index[key] = node
            children.setdefault(parent_key, set()).add(key)
            last = node
        for key in deletions:
            _delete(index, children, key)
        yield index


@dataclass
class ViewItem:
    """A path of a view: its bytes on disk and the record of its Windows metadata."""

    source: Path
    kind: str
    entry: dict[str, Any] | None
    streams: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    node: Node | None = None


def _shown_paths(index: dict[str, Node]) -> dict[str, str]:
    shown: dict[str, str] = {}
    for key in sorted(index, key=lambda k: k.count("/")):
        node = index[key]
        parent = shown.get(node.parent, "") if node.parent else ""
        if node.parent and node.parent not in shown:
            continue  # its directory is not part of the view
        shown[key] = f"{parent}/{node.leaf}" if parent else node.leaf
    return shown


def shown_nodes(index: dict[str, Node]) -> dict[str, Node]:
    """The nodes of a merged index by the path the view shows them at."""
    return {path: index[key] for key, path in _shown_paths(index).items()}


def view_of_index(index: dict[str, Node]) -> dict[str, ViewItem]:
    """The shown paths of a merged index."""
    return {
        path: ViewItem(
            index[key].source, index[key].kind, index[key].entry, index[key].streams, index[key]
        )
        for key, path in _shown_paths(index).items()
    }


def view_of_tree(root: Path, base: dict[str, ViewItem]) -> dict[str, ViewItem]:
    """A directory tree as a view; metadata is inherited from ``base`` by path."""
    view: dict[str, ViewItem] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for item in it:
                path = f"{rel}/{item.name}" if rel else item.name
                if item.is_symlink():
                    kind = "symlink"
                elif item.is_dir(follow_symlinks=False):
                    kind = "dir"
                    stack.append(path)
                else:
                    kind = "file"
                inherited = base.get(path)
                view[path] = ViewItem(
                    Path(item.path),
                    kind,
                    inherited.entry if inherited else None,
                    inherited.streams if inherited else [],
                )
    return view


def _differs(new: ViewItem, old: ViewItem) -> bool:
    if new.node is not None and old.node is not None:
        return (new.node.layer_dir, new.node.path) != (old.node.layer_dir, old.node.path)
    if new.kind != old.kind and not {new.kind, old.kind} <= {"file", "link"}:
        return True
    a, b = os.lstat(new.source), os.lstat(old.source)
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mtime_ns != b.st_mtime_ns:
        return True
    if stat.S_ISDIR(a.st_mode):
        return False
    if a.st_size != b.st_size:
        return True
    return stat.S_ISLNK(a.st_mode) and os.readlink(new.source) != os.readlink(old.source)


def changes_between(new: dict[str, ViewItem], old: dict[str, ViewItem]) -> list[Change]:
    """Docker-style changes: Add, Modify, and Delete of the topmost deleted path."""
    found: list[Change] = []
    for path, item in new.items():
        before = old.get(path)
        if before is None:
            found.append(Change("/" + path, ChangeKind.ADD))
        elif _differs(item, before):
            found.append(Change("/" + path, ChangeKind.MODIFY))
    for path in old:
        if path not in new:
            parent = path.rpartition("/")[0]
            if not parent or parent in new:
                found.append(Change("/" + path, ChangeKind.DELETE))
    found.sort()
    return found


def walk_order(paths: Iterator[str] | list[str]) -> list[str]:
    """Depth-first pre-order with names sorted bytewise per directory (Go's Walk)."""
    return sorted(paths, key=lambda p: [c.encode("utf-8", "surrogateescape") for c in p.split("/")])


def _copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst, follow_symlinks=False)
    st = os.lstat(src)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def materialise(index: dict[str, Node], target: Path, *, copy: bool) -> None:
    """Build the merged tree in the empty directory ``target``.

    Files are hard links to the layers' files (a read-only view costs no
    data) or, with ``copy``, copies (a writable sandbox must not write
    through to its parents).  Copies keep the layers' hard-link groups:
    names that are one file in the layers (``bin/ash`` = ``bin/sh``) are
    one copied file in the sandbox, linked as they were.
    """
    view = view_of_index(index)
    dirs: list[tuple[Path, Path]] = []
    copied: dict[tuple[int, int], Path] = {}
    for path in walk_order(list(view)):
        item = view[path]
        out = target / path
        if item.kind == "dir":
            os.mkdir(out, 0o755)
            dirs.append((item.source, out))
        elif item.kind == "symlink":
            os.symlink(os.readlink(item.source), out)
            st = os.lstat(item.source)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        elif copy:
            st = os.lstat(item.source)
            first = copied.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if first is not None:
                os.link(first, out, follow_symlinks=False)
            else:
                _copy_file(item.source, out)
                if st.st_nlink > 1:
                    copied[(st.st_dev, st.st_ino)] = out
        else:
            try:
                os.link(item.source, out, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                _copy_file(item.source, out)
    for source, out in reversed(dirs):
        st = os.lstat(source)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def stream_source(layer_dir: Path, entry: dict[str, Any]) -> Path:
    """Where the body of an alternate data stream entry is kept."""
    return layer_dir / LAMINA_DIR / STREAMS / str(entry["store"])
