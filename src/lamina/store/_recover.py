"""Finish or roll back what dead processes left in flight (run by every ``Store()`` open).

Each leftover intent of a dead pid is handled by its operation:

* ``store-layer``: the layer row was never written (it is written in the
  transaction that deletes the intent), so the driver layer is removed and
  the half-written tar-split file with it: rolled back.
* ``create-container``: no row either: the read-write layer is removed.
* ``remove-layers`` / ``remove-container``: the rows are gone already (rows
  first, files after), so the driver removals are finished.
* ``load`` (a lease holder): the intent goes, and with it its leases; the
  layers it stored that no image needs are released.

Recovery never raises: whatever fails is left for ``check`` to report and
``check(repair=True)`` or ``gc()`` to remove, and the store opens.
"""

from __future__ import annotations

import contextlib
import logging

from lamina.errors import NotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lamina.store._store import Store

__all__ = ["recover"]

_log = logging.getLogger("lamina.store")


def recover(store: Store) -> None:
    """Handle every intent of a dead process; never raises (a broken one is logged)."""
    try:
        dead = store._db.dead_intents()
    except Exception as exc:  # a damaged table: check() reports it
        _log.warning("cannot read the store's intents: %s", exc)
        return
    released_leases = False
    for intent in dead:
        try:
            if intent["operation"] == "store-layer":
                # a live process may be storing the same chain again right now: its lock
                # says so, and then this leftover is left for a later open
                from lamina._fs import file_lock
                from lamina.errors import InUseError

                (store.root / "locks").mkdir(mode=0o700, exist_ok=True)
                lock = store.root / "locks" / f"{str(intent['subject'])[7:]}.lock"
                try:
                    with file_lock(lock, timeout=0):
                        _recover_one(
                            store, "store-layer", str(intent["subject"]), str(intent["detail"])
                        )
                        store._db.end_intent(int(intent["id"]))
                except InUseError:
                    pass
                continue
            _recover_one(store, intent["operation"], str(intent["subject"]), str(intent["detail"]))
            if intent["operation"] == "load":
                released_leases = True
            store._db.end_intent(int(intent["id"]))
        except Exception as exc:
            _log.warning(
                "recovery of %s %s failed: %s", intent["operation"], intent["subject"], exc
            )
    if released_leases:
        with contextlib.suppress(Exception):
            _release_unreferenced(store)
    with contextlib.suppress(Exception):
        store._blobs.sweep_temp()


def _remove(store: Store, driver_name: str, driver_id: str) -> None:
    with contextlib.suppress(NotFoundError):
        store._driver_named(driver_name).remove(driver_id)


def _recover_one(store: Store, operation: str, subject: str, detail: str) -> None:
    if operation in ("store-layer", "create-container"):
        driver_name, driver_id = detail.split("/", 1)
        if operation == "store-layer" and store._db.layer(subject) is not None:
            return  # recorded after all (cannot happen: same transaction), keep it
        if operation == "create-container" and store._db.container_row(subject) is not None:
            return
        _remove(store, driver_name, driver_id)
        if operation == "store-layer":
            from lamina.store._layers import tar_split_path

            tar_split_path(store.root, subject).unlink(missing_ok=True)
    elif operation == "remove-layers":
        store._finish_layer_removal([e for e in detail.splitlines() if e])
    elif operation == "remove-container":
        driver_name, driver_id = detail.split("/", 1)
        _remove(store, driver_name, driver_id)


def _release_unreferenced(store: Store) -> None:
    """Release layers that no image, container, child or live lease needs (top first)."""
    while True:
        rows = store._db.unreferenced_layers()
        if not rows:
            return
        if not store._release_layers([str(r["chain_id"]) for r in rows]):
            return
