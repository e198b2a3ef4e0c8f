"""check / repair, gc and disk usage.

``check`` re-reads everything it can verify and reports each finding as a
:class:`Problem` with a ``kind`` and the full id or digest of its subject:

=====================  =====================================================
kind                   meaning (what ``repair=True`` does)
=====================  =====================================================
``database``           the metadata database was unreadable and replaced, or
                       SQLite's integrity check failed (the mark is cleared;
                       what it lost shows up as orphans below)
``blob-missing``       a blob row without its file (row removed)
``blob-corrupt``       a blob whose bytes do not match its digest (removed)
``layer-missing``      a layer row whose driver layer is gone (the layer,
                       its descendants, and the images and containers on it
                       are removed)
``layer-unmountable``  the driver cannot give the layer's view (as ``layer-missing``)
``layer-corrupt``      a layer whose rebuilt tar does not hash to its diff ID,
                       or cannot be rebuilt (as ``layer-missing``)
``image-incomplete``   an image naming a layer the store does not have
                       (image removed)
``container-missing``  a container whose read-write layer is gone (removed)
``orphan-layer``       a driver layer no row knows (driver layer removed)
=====================  =====================================================

The layer check is content against the recorded tar-split: bodies are
compared by checksum and size, headers come from the record, so a changed
directory mtime (which container creation causes) is never damage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from lamina._ids import Digest, digest_stream
from lamina.errors import LaminaError, NotFoundError
from lamina.store._db import pid_alive
from lamina.store._layers import WINDOWS_DRIVER
from lamina.store._values import CheckReport, DiskUsage, GcReport, Problem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lamina.drivers import Driver
    from lamina.store._store import Store

__all__ = ["check", "disk_usage", "gc"]


def _driver_layer_ids(driver: Driver) -> set[str] | None:
    """The layer ids a Linux driver holds on disk (None: this driver's layout is not known)."""
    home = Path(driver.home)
    try:
        if driver.name == "vfs":
            return {e.name for e in os.scandir(home / "dir") if e.is_dir(follow_symlinks=False)}
        if driver.name == "overlay":
            return {
                e.name
                for e in os.scandir(home)
                if e.is_dir(follow_symlinks=False)
                and (Path(e.path) / "diff").is_dir()
                and len(e.name) == 64
            }
    except FileNotFoundError:
        return set()
    return None


def _in_flight_ids(store: Store) -> set[str]:
    ids = set()
    for intent in store._db.intents():
        if pid_alive(int(intent["pid"])):
            for line in str(intent["detail"]).splitlines():
                parts = line.split("/")
                if len(parts) >= 2:
                    ids.add(parts[1])
    return ids


def _orphan_driver_layers(store: Store) -> list[tuple[Driver, str]]:
    known = {str(r["driver_id"]) for r in store._db.layers()}
    known |= {str(r["layer_id"]) for r in store._db.containers()}
    known |= _in_flight_ids(store)
    found = []
    for driver in list(store._drivers.values()):
        ids = _driver_layer_ids(driver)
        for layer_id in sorted(ids or ()):
            if layer_id not in known:
                found.append((driver, layer_id))
    return found


def check(store: Store, repair: bool) -> CheckReport:
    problems: list[Problem] = []
    db = store._db
    damaged = db.meta("damaged_db")
    if damaged:
        problems.append(
            Problem("database", str(db.path), f"unreadable database moved aside: {damaged}")
        )
    with contextlib.suppress(Exception):
        for finding in db.integrity_problems():
            problems.append(Problem("database", str(db.path), finding))
    bad_blobs: list[str] = []
    for row in db.blobs():
        digest = str(row["digest"])
        path = store._blobs.path(digest)
        try:
            with open(path, "rb") as f:
                actual, size = digest_stream(f, Digest(digest).algorithm)
        except FileNotFoundError:
            problems.append(Problem("blob-missing", digest, f"{path} is missing"))
            bad_blobs.append(digest)
            continue
        if actual != digest or size != int(row["size"]):
            problems.append(
                Problem("blob-corrupt", digest, f"{path} hashes to {actual}, {size} bytes")
            )
            bad_blobs.append(digest)
    bad_layers: list[str] = []
    for row in db.layers():
        chain = str(row["chain_id"])
        driver = store._driver_named(str(row["driver"]))
        if not driver.exists(str(row["driver_id"])):
            problems.append(
                Problem("layer-missing", chain, f"{driver.name} layer {row['driver_id']} is gone")
            )
            bad_layers.append(chain)
            continue
        try:
            with driver.mounted(str(row["driver_id"])):
                pass
        except (LaminaError, OSError) as exc:
            problems.append(Problem("layer-unmountable", chain, f"cannot mount it: {exc}"))
            bad_layers.append(chain)
            continue
        try:
            hasher = hashlib.sha256()
            with store.layer_diff(chain) as tar:
                while chunk := tar.read(1 << 20):
                    hasher.update(chunk)
            rebuilt = f"sha256:{hasher.hexdigest()}"
        except (LaminaError, OSError) as exc:
            problems.append(Problem("layer-corrupt", chain, f"cannot rebuild its tar: {exc}"))
            bad_layers.append(chain)
            continue
        if rebuilt != row["diff_id"]:
            problems.append(
                Problem(
                    "layer-corrupt", chain, f"rebuilt tar hashes to {rebuilt}, not {row['diff_id']}"
                )
            )
            bad_layers.append(chain)
    have = {str(r["chain_id"]) for r in db.layers()}
    bad_images: list[str] = []
    for image_id, chains in db.all_image_layers().items():
        missing = [c for c in chains if c not in have]
        if missing:
            problems.append(Problem("image-incomplete", image_id, f"layer {missing[0]} is missing"))
            bad_images.append(image_id)
    bad_containers: list[str] = []
    for row in db.containers():
        driver = store._driver_named(str(row["driver"]))
        if not driver.exists(str(row["layer_id"])):
            problems.append(
                Problem("container-missing", str(row["id"]), "its read-write layer is gone")
            )
            bad_containers.append(str(row["id"]))
    orphans = _orphan_driver_layers(store)
    for driver, layer_id in orphans:
        problems.append(Problem("orphan-layer", layer_id, f"{driver.name} layer without a record"))
    if repair and problems:
        _repair(store, bad_blobs, bad_layers, bad_images, bad_containers, orphans, damaged)
    return CheckReport(not problems, problems)


def _descendants(store: Store, chains: list[str]) -> set[str]:
    children: dict[str, list[str]] = {}
    for row in store._db.layers():
        if row["parent"] is not None:
            children.setdefault(str(row["parent"]), []).append(str(row["chain_id"]))
    result: set[str] = set()
    todo = list(chains)
    while todo:
        chain = todo.pop()
        if chain in result:
            continue
        result.add(chain)
        todo.extend(children.get(chain, []))
    return result


def _repair(
    store: Store,
    bad_blobs: list[str],
    bad_layers: list[str],
    bad_images: list[str],
    bad_containers: list[str],
    orphans: list[tuple[Driver, str]],
    damaged: str | None,
) -> None:
    db = store._db
    for digest in bad_blobs:
        db.remove_blobs([digest])
        store._blobs.remove(digest)
    doomed = _descendants(store, bad_layers)
    images = set(bad_images)
    containers = set(bad_containers)
    for image_id, chains in db.all_image_layers().items():
        if doomed & set(chains):
            images.add(image_id)
    for row in db.containers():
        if row["parent"] in doomed or row["image_id"] in images:
            containers.add(str(row["id"]))
    for container_id in containers:
        with contextlib.suppress(LaminaError):
            store.remove_container(container_id, force=True)
    for image_id in images:
        with db.tx() as c:
            c.execute("DELETE FROM images WHERE id = ?", (image_id,))
    if doomed:
        rows = [r for r in db.layers() if str(r["chain_id"]) in doomed]
        entries = [f"{r['driver']}/{r['driver_id']}/{r['chain_id']}" for r in rows]
        with db.tx() as c:
            # children before parents: newest first
            c.executemany("DELETE FROM leases WHERE chain_id = ?", [(x,) for x in doomed])
            for r in sorted(rows, key=lambda r: -float(r["created"])):
                c.execute("DELETE FROM layers WHERE chain_id = ?", (r["chain_id"],))
        store._finish_layer_removal(entries)
    for driver, layer_id in orphans:
        with contextlib.suppress(NotFoundError):
            driver.remove(layer_id)
    if damaged:
        with db.tx() as c:
            c.execute("DELETE FROM meta WHERE key = 'damaged_db'")


def gc(store: Store) -> GcReport:
    """Remove what nothing refers to: layers, blobs, tar-split and driver leftovers."""
    from lamina.store._recover import recover

    recover(store)
    db = store._db
    removed: list[str] = []
    reclaimed = 0
    while True:
        rows = db.unreferenced_layers()
        if not rows:
            break
        sizes = {str(r["chain_id"]): int(r["size"]) for r in rows}
        gone = store._release_layers(list(sizes))
        if not gone:
            break
        removed.extend(gone)
        reclaimed += sum(sizes.get(c, 0) for c in gone)
    stale = [str(r["digest"]) for r in db.unreferenced_blobs()]
    if stale:
        db.remove_blobs(stale)
        for digest in stale:
            reclaimed += store._blobs.remove(digest)
            removed.append(digest)
    # files without rows: blobs spooled by a dead load, tar-split of removed layers
    live = [float(r["started"]) for r in db.intents() if pid_alive(int(r["pid"]))]
    horizon = min(live) if live else time.time() + 1
    known = {str(r["digest"]) for r in db.blobs()}
    blob_dir = store._blobs.dir / "sha256"
    for entry in _scan(blob_dir):
        digest = "sha256:" + entry.name
        if digest not in known and entry.stat().st_mtime < horizon:
            reclaimed += store._blobs.remove(digest)
            removed.append(digest)
    chains = {Digest(str(r["chain_id"])).encoded for r in db.layers()}
    for entry in _scan(store.root / "tar-split"):
        if entry.name.removesuffix(".gz") not in chains and entry.stat().st_mtime < horizon:
            reclaimed += entry.stat().st_size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    for driver, layer_id in _orphan_driver_layers(store):
        with contextlib.suppress(NotFoundError):
            driver.remove(layer_id)
            removed.append(layer_id)
    store._blobs.sweep_temp()
    return GcReport(removed, reclaimed)


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def disk_usage(store: Store) -> DiskUsage:
    db = store._db
    layer_size = {str(r["chain_id"]): int(r["size"]) for r in db.layers()}
    used: set[str] = set()
    for chains in db.all_image_layers().values():
        used.update(chains)
    blob_bytes = sum(int(r["size"]) for r in db.blobs())
    images = sum(layer_size.get(c, 0) for c in used)
    containers = 0
    for row in db.containers():
        with contextlib.suppress(LaminaError, OSError):
            driver, layer_id, parent = store._container_driver(row)
            containers += driver.diff_size(layer_id, parent)
    needed = set(used) | {str(r["parent"]) for r in db.containers() if r["parent"]}
    reclaimable = sum(s for c, s in layer_size.items() if c not in needed)
    reclaimable += sum(int(r["size"]) for r in db.unreferenced_blobs())
    return DiskUsage(images, containers, sum(layer_size.values()) + blob_bytes, reclaimable)


_ = WINDOWS_DRIVER
