"""Read-only overlayfs views of an image layer chain, where overlayfs can be exact.

The merged view (:mod:`._merge`) is defined by the layers' metadata: a
layer's deletions are records, not overlay whiteouts, and Windows names
fold case while overlayfs matches names exactly.  An overlay mount of the
chain's ``Files/`` folders shows that view only with help, so each image
layer keeps a small generated tree, ``.lamina/overlay/whiteouts/``, that
is stacked just above its ``Files/``::

    whiteouts_n, Files_n, ..., whiteouts_1, Files_1, whiteouts_0, Files_0

It holds a whiteout (a 0:0 character device) for every name the lower
stack would show but the merged view up to this layer does not — spelled
exactly as the lower layer spells it on disk, which the plan finds in the
parent chain's index: a deletion recorded as ``EMPTY.TXT`` becomes a
whiteout of ``empty.txt``, and a name a newer layer re-adds in another
spelling gets the old spelling whited out.  Being above ``Files/`` of its
own layer, it also hides what the layer deletes of itself (deletions apply
after a layer's entries).  Its directories carry the attributes of the
directories they stand over, because overlayfs shows the attributes of
the topmost copy of a directory.

A plan is *exact* when every path of the merged view is, in the overlay,
backed by the very file the merge chose.  It cannot be when a directory is
spelled differently in two layers and the merge shows entries of the older
spelling inside the newer one (``Users/a`` from one layer and ``USERS/b``
from another are one directory ``USERS`` to Windows, two to overlayfs,
which could only join them with a redirect, a copy-up feature that a
read-only stack of foreign layers must not depend on); such a chain — and
every chain built on it — is materialised instead, with the reason kept in
``plan.json``.  Layers are immutable, so a plan is made once per layer
(at import when possible, else on first use) and checked against the
identity of the metadata of the chain it was made from.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina._fs import (
    Mount,
    made_by_other_live_process,
    make_staging_dir,
    new_mount_api_supported,
    overlay_max_lowers,
    remove_tree,
    rename_noreplace,
)
from lamina.drivers.windowsfilter._layout import (
    LAMINA_DIR,
    META,
    OVERLAY,
    OVERLAY_PLAN,
    OVERLAY_WHITEOUTS,
    LayerMeta,
)
from lamina.drivers.windowsfilter._merge import Node, merge_steps, shown_nodes

__all__ = [
    "Plan",
    "ensure_plans",
    "overlay_mount",
    "plan_layer",
    "sweep_plan_leftovers",
    "write_whiteouts",
]

_FILES = "Files/"
_PLAN_VERSION = 1
_OVERLAY_PARAMS = Path("/sys/module/overlay/parameters")
#: overlayfs's OVL_MAX_STACK, for kernels where it cannot be measured.
_KERNEL_MAX_LOWERS = 500


@dataclass(frozen=True)
class Plan:
    """What one layer's whiteout tree holds, or why the chain cannot be an overlay.

    ``dirs`` maps each directory of the tree (a path of the merged view)
    to the directory whose attributes the merged view shows there.
    """

    exact: bool
    reason: str = ""
    whiteouts: tuple[str, ...] = ()
    dirs: tuple[tuple[str, Path], ...] = ()


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def plan_layer(
    below: dict[str, Node], layer_dir: Path, meta: LayerMeta, merged: dict[str, Node]
) -> Plan:
    """Plan the whiteouts of one layer (pure: reads metadata only).

    ``below`` is the merged view of the chain under the layer and
    ``merged`` the view with it, both by shown path (:func:`shown_nodes`);
    the stack under the layer is assumed to show ``below`` exactly.
    """
    # What overlayfs shows with this layer's Files/ right over ``below``:
    # exact names; a directory merges only with a directory of the same
    # name; anything else hides what is under it.
    shown: dict[str, tuple[Path, str, str]] = {
        path: (node.layer_dir, node.path, node.kind) for path, node in below.items()
    }
    children: dict[str, set[str]] = {}
    for path in shown:
        children.setdefault(_parent(path), set()).add(path)
    for entry in meta.entries:
        kind = entry["kind"]
        disk = entry.get("path")
        if kind in ("whiteout", "stream") or not disk or not str(disk).startswith(_FILES):
            continue
        path = str(disk)[len(_FILES) :]
        old = shown.get(path)
        if old is not None and not (old[2] == "dir" and kind == "dir"):
            stack = list(children.pop(path, ()))
            while stack:
                gone = stack.pop()
                shown.pop(gone, None)
                stack.extend(children.pop(gone, ()))
        shown[path] = (layer_dir, str(disk), kind)
        children.setdefault(_parent(path), set()).add(path)
    for path, node in merged.items():
        got = shown.get(path)
        if got is None or (got[0], got[1]) != (node.layer_dir, node.path):
            owner = "this layer" if node.layer_dir == layer_dir else f"layer {node.layer_dir.name}"
            return Plan(
                exact=False,
                reason=(
                    f"the merged view shows {node.path!r} of {owner} as {path!r}, a spelling "
                    "of its directory that overlayfs cannot join to where it is on disk"
                ),
            )
    whiteouts = sorted(
        path
        for path in shown
        if path not in merged and (not _parent(path) or _parent(path) in merged)
    )
    dirs: set[str] = set()
    for path in whiteouts:
        parent = _parent(path)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = _parent(parent)
    return Plan(
        exact=True,
        whiteouts=tuple(whiteouts),
        dirs=tuple((d, merged[d].source) for d in sorted(dirs, key=lambda p: p.count("/"))),
    )


def _copy_attributes(source: Path, target: Path) -> None:
    st = os.lstat(source)
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def write_whiteouts(plan: Plan, target: Path, root_source: Path | None) -> None:
    """Create the whiteout tree of an exact plan in the new directory ``target``.

    Needs CAP_MKNOD (overlay whiteouts are character devices 0:0).
    """
    os.mkdir(target, 0o700)
    for path, _ in plan.dirs:
        os.mkdir(target / path, 0o700)
    for path in plan.whiteouts:
        os.mknod(target / path, stat.S_IFCHR, os.makedev(0, 0))
    for path, source in reversed(plan.dirs):
        _copy_attributes(source, target / path)
    if root_source is not None and root_source.is_dir():
        _copy_attributes(root_source, target)


# -- plans on disk ----------------------------------------------------------------------


def _fingerprint(layers: list[Path]) -> list[list[int]]:
    """Identity of the metadata a plan was made from (replaced atomically on change)."""
    out = []
    for layer in layers:
        st = os.stat(layer / LAMINA_DIR / META)
        out.append([st.st_ino, st.st_mtime_ns, st.st_size])
    return out


def _read_plan(layer: Path) -> dict[str, Any] | None:
    try:
        with open(layer / LAMINA_DIR / OVERLAY / OVERLAY_PLAN, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _PLAN_VERSION:
        return None
    return data


def _store_plan(layer: Path, plan: Plan, fingerprint: list[list[int]]) -> None:
    """Publish ``.lamina/overlay`` in one rename; a concurrent identical publish wins."""
    home = layer / LAMINA_DIR
    build = make_staging_dir(home, f"{OVERLAY}.new")
    try:
        if plan.exact:
            write_whiteouts(plan, build / OVERLAY_WHITEOUTS, layer / "Files")
        record = {
            "version": _PLAN_VERSION,
            "exact": plan.exact,
            "reason": plan.reason,
            "whiteouts": len(plan.whiteouts),
            "chain": fingerprint,
        }
        with open(build / OVERLAY_PLAN, "x", encoding="utf-8") as f:
            json.dump(record, f)
        final = home / OVERLAY
        if os.path.lexists(final):
            old = make_staging_dir(home, f"{OVERLAY}.old")
            with contextlib.suppress(FileNotFoundError):  # another writer retired it first
                os.rename(final, old / OVERLAY)
            remove_tree(old)
        try:
            rename_noreplace(build, final)
        except OSError as exc:
            if not isinstance(exc, FileExistsError) and exc.errno not in (
                errno.EEXIST,
                errno.ENOTEMPTY,
            ):
                raise
    finally:
        remove_tree(build)


def sweep_plan_leftovers(layer: Path) -> None:
    """Delete half-built or retired plans that a crashed process left in a layer."""
    try:
        names = os.listdir(layer / LAMINA_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        leftover = name.startswith((f"{OVERLAY}.new.", f"{OVERLAY}.old."))
        if leftover and not made_by_other_live_process(name):
            remove_tree(layer / LAMINA_DIR / name)


def ensure_plans(layers: list[tuple[Path, LayerMeta]]) -> tuple[bool, str, list[int]]:
    """Give every layer of a chain (oldest first) a current plan.

    Returns whether an overlay of the whole chain is exact, the reason if
    not, and each layer's count of whiteouts.  Plans are only computed
    (one merge of the chain) when some layer lacks a current one.
    """
    folders = [folder for folder, _ in layers]
    prints = _fingerprint(folders)
    stored = [_read_plan(folder) for folder in folders]
    fresh = all(
        rec is not None and rec.get("chain") == prints[: i + 1] for i, rec in enumerate(stored)
    )
    if not fresh:
        below: dict[str, Node] = {}
        lower_reason = ""
        for i, ((folder, meta), index) in enumerate(zip(layers, merge_steps(layers), strict=True)):
            merged = shown_nodes(index)
            rec = stored[i]
            if rec is None or rec.get("chain") != prints[: i + 1]:
                if lower_reason:
                    plan = Plan(exact=False, reason=lower_reason)
                else:
                    plan = plan_layer(below, folder, meta, merged)
                _store_plan(folder, plan, prints[: i + 1])
                stored[i] = _read_plan(folder)
                if stored[i] is None:
                    raise OSError(errno.EIO, "overlay plan vanished", str(folder))
            rec = stored[i]
            assert rec is not None
            if not rec["exact"] and not lower_reason:
                lower_reason = f"layer {folder.name}: {rec['reason']}"
            below = merged
    for folder, rec in zip(folders, stored, strict=True):
        assert rec is not None
        if not rec["exact"]:
            reason = str(rec["reason"])
            if not reason.startswith("layer "):
                reason = f"layer {folder.name}: {reason}"
            return False, reason, []
    return True, "", [int(rec["whiteouts"]) for rec in stored if rec is not None]


# -- the mount ---------------------------------------------------------------------------


def _escape(path: str) -> str:
    """overlayfs's lowerdir list syntax: ``:`` separates, ``\\`` escapes."""
    return path.replace("\\", "\\\\").replace(":", "\\:")


def overlay_mount(
    home: Path, layers: list[Path], whiteouts: list[int], target: Path
) -> Mount | None:
    """The read-only overlay of an exactly planned chain (oldest first), or None.

    None when this kernel cannot mount the stack: fewer than two
    directories (a lower-only overlay needs two), more than overlayfs
    stacks, or, without the new mount API, options that do not fit
    mount(2) (a path with a comma, more than a page).  Paths are relative
    to ``home`` when inside it, so a deep chain's options stay short.
    """
    lowers: list[str] = []
    for folder, count in reversed(list(zip(layers, whiteouts, strict=True))):
        tree = folder / LAMINA_DIR / OVERLAY / OVERLAY_WHITEOUTS
        if count:
            lowers.append(str(tree))
        if (folder / "Files").is_dir():
            lowers.append(str(folder / "Files"))
    if len(lowers) < 2:
        lowers.insert(0, str(layers[-1] / LAMINA_DIR / OVERLAY / OVERLAY_WHITEOUTS))
    if len(lowers) < 2:
        return None
    rel = []
    for path in lowers:
        inside = os.path.relpath(path, home)
        rel.append(path if inside.startswith("..") else inside)
    options = [
        f"{name}={value}"
        for name, value in (("redirect_dir", "nofollow"), ("metacopy", "off"))
        if (_OVERLAY_PARAMS / name).exists()
    ]
    options.append("lowerdir=" + ":".join(_escape(p) for p in rel))
    if new_mount_api_supported("overlay"):
        if len(rel) > (overlay_max_lowers() or _KERNEL_MAX_LOWERS):
            return None
    elif (
        len(rel) > _KERNEL_MAX_LOWERS
        or any("," in p for p in rel)
        or len(",".join(options).encode()) >= os.sysconf("SC_PAGESIZE")
    ):
        return None
    return Mount("overlay", "windowsfilter", target, tuple(options), cwd=home)
