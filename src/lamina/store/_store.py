"""The image store: :class:`Store` (images, containers, layers on any driver).

See :mod:`lamina.store._db` for the on-disk layout and the crash-safety
scheme, :mod:`lamina.store._layers` for how a layer is stored and rebuilt,
:mod:`lamina.store._transfer` for load and save, :mod:`lamina.store._check`
for check, repair, gc and disk usage.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from pathlib import Path

from lamina._ids import Digest, digest_of
from lamina.errors import (
    AlreadyExistsError,
    InUseError,
    InvalidArgumentError,
    LaminaError,
    NotFoundError,
    StateError,
)
from lamina.store._blobs import BlobStore
from lamina.store._db import Database, DatabaseDamaged, Row
from lamina.store._layers import (
    WINDOWS_DRIVER,
    LayerSource,
    child_chain,
    layer_diff,
    store_layer,
)
from lamina.store._values import Container, Image, Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO, Self

    from lamina._change import Change
    from lamina.drivers import Driver
    from lamina.store._values import CheckReport, DiskUsage, GcReport

__all__ = ["Store"]

ImageArg = "Image | str"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """Images, containers and layers under one root, on one Linux driver (+ windowsfilter).

    A context manager; several processes may open one root at once.
    Opening finishes or rolls back what dead processes left in flight and
    never raises on those leftovers.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        driver: str | None = None,
        options: Mapping[str, str] | None = None,
        keep_blobs: bool = True,
        registries_conf: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.keep_blobs = bool(keep_blobs)
        self.registries_conf = None if registries_conf is None else Path(registries_conf)
        self._options = dict(options or {})
        self._lock_timeout = 600.0
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._damaged_db: str | None = None
        try:
            self._db = Database(self.root)
        except DatabaseDamaged as exc:
            self._db = self._reopen_damaged(exc)
        self._blobs = BlobStore(self.root)
        self._drivers: dict[str, Driver] = {}
        try:
            name = driver or self._db.meta("driver")
            self.driver = self._pick_driver(name)
            if self._db.meta("driver") != self.driver.name:
                self._db.set_meta("driver", self.driver.name)
        except BaseException:
            self._db.close()
            raise
        from lamina.store._recover import recover

        recover(self)

    def _reopen_damaged(self, exc: Exception) -> Database:
        """Move a database SQLite cannot read aside and start a fresh one (check reports it)."""
        from lamina._fs import rename_noreplace, staging_name

        aside = self.root / staging_name("store.db.damaged")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                rename_noreplace(self.root / f"store.db{suffix}", Path(f"{aside}{suffix}"))
        db = Database(self.root)
        db.set_meta("damaged_db", f"{aside.name}: {exc}")
        return db

    def _pick_driver(self, name: str | None) -> Driver:
        from lamina import drivers

        if name:
            chosen = drivers.new_driver(name, self.root, self._options)
        else:
            linux = [n for n in drivers.available() if n != WINDOWS_DRIVER]
            prior = [
                n for n in linux if (self.root / n).is_dir() and any((self.root / n).iterdir())
            ]
            if len(prior) == 1:
                chosen = drivers.new_driver(prior[0], self.root, self._options)
            else:
                chosen = drivers.new_driver(None, self.root, self._options)
        self._drivers[chosen.name] = chosen
        return chosen

    def _driver_named(self, name: str) -> Driver:
        driver = self._drivers.get(name)
        if driver is None:
            from lamina import drivers

            driver = drivers.new_driver(name, self.root, {})
            self._drivers[name] = driver
        return driver

    def _driver_for(self, windows: bool) -> Driver:
        return self._driver_named(WINDOWS_DRIVER) if windows else self.driver

    # -- context manager ------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection.

        The drivers are left alone: ``driver.cleanup()`` would also take down
        ``mount()`` views, which outlive this process by design (another
        process, or a later ``unmount``, releases them).
        """
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {str(self.root)!r} driver={self.driver.name}>"

    # -- images ----------------------------------------------------------------------

    def _image_from_row(self, row: Row, names: list[str], layers: list[str]) -> Image:
        return Image(
            str(row["id"]),
            None if row["digest"] is None else str(row["digest"]),
            sorted(names),
            str(row["os"]),
            str(row["architecture"]),
            row["variant"],
            row["os_version"],
            row["created"],
            json.loads(row["config"]),
            layers,
            int(row["size"]),
        )

    def images(self) -> list[Image]:
        """Every image, oldest first."""
        names = self._db.all_names()
        layers = self._db.all_image_layers()
        return [
            self._image_from_row(r, names.get(r["id"], []), layers.get(r["id"], []))
            for r in self._db.image_rows()
        ]

    def _image_id(self, ref_or_id: Image | str) -> str:
        if isinstance(ref_or_id, Image):
            if self._db.image_row(ref_or_id.id) is None:
                raise NotFoundError(f"image {ref_or_id.id} is not in the store")
            return ref_or_id.id
        if not isinstance(ref_or_id, str) or not ref_or_id:
            raise InvalidArgumentError(f"not an image reference or id: {ref_or_id!r}")
        text = ref_or_id
        candidates: list[str] = []
        hexpart = text[7:] if text.startswith("sha256:") else text
        if 0 < len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart):
            candidates = self._db.image_ids_with_prefix("sha256:" + hexpart)
            if len(candidates) > 1:
                raise InvalidArgumentError(f"image id prefix {text!r} is ambiguous")
            if candidates and (len(hexpart) == 64 or text.startswith("sha256:")):
                return candidates[0]
        name = self._normalise(text)
        if name is not None:
            found = self._db.image_by_name(name)
            if found is not None:
                return found
            if "@" in name:  # name@sha256:… names the image with that manifest digest
                rows = self._db.query(
                    "SELECT id FROM images WHERE digest = ?", (name.rpartition("@")[2],)
                )
                if rows:
                    return str(rows[0][0])
        if candidates:
            return candidates[0]
        raise NotFoundError(f"no image {text!r} in the store")

    @staticmethod
    def _normalise(text: str) -> str | None:
        from lamina.oci import parse_reference

        try:
            return str(parse_reference(text))
        except InvalidArgumentError:
            return None

    def image(self, ref_or_id: Image | str) -> Image:
        """The image a name, full id or unique id prefix names."""
        image_id = self._image_id(ref_or_id)
        row = self._db.image_row(image_id)
        if row is None:
            raise NotFoundError(f"no image {ref_or_id!r} in the store")
        return self._image_from_row(
            row, self._db.names_of(image_id), self._db.image_layers(image_id)
        )

    def tag(self, image: Image | str, ref: str) -> None:
        """Give ``image`` the name ``ref`` (moved from another image that had it)."""
        image_id = self._image_id(image)
        name = self._normalise(ref)
        if name is None or "@" in name:
            raise InvalidArgumentError(f"{ref!r} is not a name:tag reference")
        self._db.tag(name, image_id)

    def untag(self, ref: str) -> None:
        """Remove the name ``ref`` (the image stays)."""
        name = self._normalise(ref)
        if name is None or not self._db.untag(name):
            raise NotFoundError(f"no image is named {ref!r}")

    def remove_image(self, image: Image | str, force: bool = False) -> None:
        """Remove an image and the layers nothing else needs (see DESIGN.md)."""
        image_id = self._image_id(image)
        removed, layers = self._db.remove_image(image_id, force)
        if removed:
            self._release_layers(list(reversed(layers)))

    def _release_layers(self, chains: list[str]) -> list[str]:
        """Drop unneeded layer rows (give them top first), then their driver layers.

        One transaction drops the rows (a parent goes in the same one once its
        last child went) and records the driver removals as an intent; the
        removals run after the commit.  Returns the chain IDs dropped.
        """
        intent = self._db.drop_layers_intent(chains)
        if intent is None:
            return []
        row = self._db.one("SELECT detail FROM intents WHERE id = ?", (intent,))
        entries = [] if row is None else str(row[0]).splitlines()
        self._finish_layer_removal(entries)
        self._db.end_intent(intent)
        return [e.split("/", 2)[2] for e in entries if not e.startswith("blob/")]

    def _finish_layer_removal(self, entries: list[str]) -> None:
        from lamina.store._layers import tar_split_path

        for entry in entries:
            driver_name, driver_id, chain = entry.split("/", 2)
            if driver_name == "blob":
                self._blobs.remove(chain)
                continue
            with contextlib.suppress(NotFoundError):
                self._driver_named(driver_name).remove(driver_id)
            tar_split_path(self.root, chain).unlink(missing_ok=True)

    # -- layers ----------------------------------------------------------------------------

    @staticmethod
    def _layer_from_row(row: Row) -> Layer:
        return Layer(
            str(row["chain_id"]),
            str(row["diff_id"]),
            row["digest"],
            row["media_type"],
            row["compressed_size"],
            int(row["size"]),
            row["parent"],
            str(row["driver"]),
        )

    def layers(self) -> list[Layer]:
        """Every stored layer."""
        return [self._layer_from_row(r) for r in self._db.layers()]

    def _layer_row(self, chain_or_diff_id: str) -> Row:
        try:
            key = Digest(chain_or_diff_id)
        except InvalidArgumentError:
            raise NotFoundError(f"no layer {chain_or_diff_id!r}") from None
        row = self._db.layer(key)
        if row is None:
            rows = self._db.layers_by_diff_id(key)
            if not rows:
                raise NotFoundError(f"no layer {chain_or_diff_id} in the store")
            row = rows[0]
        return row

    def layer_diff(self, chain_or_diff_id: str) -> BinaryIO:
        """The layer's original tar, byte for byte; close it (a context manager)."""
        return layer_diff(self, chain_or_diff_id)

    # -- containers ------------------------------------------------------------------------------

    @staticmethod
    def _container_from_row(row: Row) -> Container:
        return Container(
            str(row["id"]),
            str(row["name"]),
            str(row["image_id"]),
            str(row["layer_id"]),
            str(row["created"]),
        )

    def containers(self) -> list[Container]:
        return [self._container_from_row(r) for r in self._db.containers()]

    def _container_row(self, c: Container | str) -> Row:
        key = c.id if isinstance(c, Container) else c
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"not a container: {c!r}")
        row = self._db.container_row(key)
        if row is None:
            raise NotFoundError(f"no container {key!r}")
        return row

    def container(self, name_or_id: Container | str) -> Container:
        return self._container_from_row(self._container_row(name_or_id))

    def create_container(
        self,
        image: Image | str,
        name: str | None = None,
        storage_opt: Mapping[str, str] | None = None,
    ) -> Container:
        """A read-write layer on the image's top layer, recorded as a container."""
        image_id = self._image_id(image)
        row = self._db.image_row(image_id)
        assert row is not None
        layers = self._db.image_layers(image_id)
        top = layers[-1] if layers else None
        top_row = self._db.layer(top) if top else None
        windows = row["os"] == "windows"
        driver = self._driver_for(windows)
        container_id = hashlib.sha256(os.urandom(32)).hexdigest()
        if name is None:
            name = "lamina-" + container_id[:12]
        elif not name or "/" in name or len(name) > 255:
            raise InvalidArgumentError(f"invalid container name {name!r}")
        if self._db.container_row(name) is not None and self.container(name).name == name:
            raise AlreadyExistsError(f"a container named {name!r} exists")
        intent = self._db.begin_intent(
            "create-container", container_id, f"{driver.name}/{container_id}"
        )
        try:
            driver.create_read_write(
                container_id,
                None if top_row is None else str(top_row["driver_id"]),
                storage_opt=dict(storage_opt) if storage_opt else None,
            )
            record: dict[str, object] = {
                "id": container_id,
                "name": name,
                "image_id": image_id,
                "layer_id": container_id,
                "driver": driver.name,
                "parent": top,
                "created": _now(),
            }
            self._db.add_container(record, intent)
        except BaseException:
            with contextlib.suppress(Exception):
                driver.remove(container_id)
            with contextlib.suppress(Exception):
                self._db.end_intent(intent)
            raise
        return self.container(container_id)

    def _container_driver(self, row: Row) -> tuple[Driver, str, str | None]:
        driver = self._driver_named(str(row["driver"]))
        parent = None
        if row["parent"] is not None:
            prow = self._db.layer(row["parent"])
            if prow is None:
                raise StateError(f"container {row['id']} lost its image layer {row['parent']}")
            parent = str(prow["driver_id"])
        return driver, str(row["layer_id"]), parent

    def mount(self, c: Container | str) -> Path:
        """The container's root filesystem; counted across processes (see ``unmount``)."""
        row = self._container_row(c)
        driver, layer_id, _ = self._container_driver(row)
        path = driver.mount(layer_id)
        self._db.count_mount(str(row["id"]), +1)
        return path

    def unmount(self, c: Container | str) -> None:
        """Release one ``mount`` (from any process); the view goes at the last one."""
        row = self._container_row(c)
        driver, layer_id, _ = self._container_driver(row)
        driver.unmount(layer_id)
        self._db.count_mount(str(row["id"]), -1)

    def changes(self, c: Container | str) -> list[Change]:
        driver, layer_id, parent = self._container_driver(self._container_row(c))
        return driver.changes(layer_id, parent)

    def export(self, c: Container | str, dest: str | os.PathLike[str] | BinaryIO) -> None:
        """The container's flattened root filesystem as a tar, to a path or a stream."""
        from lamina import archive

        driver, layer_id, _ = self._container_driver(self._container_row(c))
        with driver.mounted(layer_id) as rootfs, archive.export_tree(rootfs) as tar:
            if isinstance(dest, str | os.PathLike):
                with open(dest, "wb") as out:
                    _copy(tar, out)
            else:
                _copy(tar, dest)

    def remove_container(self, c: Container | str, force: bool = False) -> None:
        """Remove a container and its read-write layer.

        A mounted container is :class:`InUseError` unless ``force``, which
        releases its mounts first.
        """
        row = self._container_row(c)
        driver, layer_id, _ = self._container_driver(row)
        mounts = int(row["mounts"])
        if mounts and not force:
            raise InUseError(f"container {row['name']} is mounted ({mounts}); unmount it first")
        for _ in range(mounts):
            with contextlib.suppress(LaminaError):
                driver.unmount(layer_id)
        intent = self._db.remove_container(str(row["id"]))
        try:
            driver.remove(layer_id)
        except InUseError:
            self._db.restore_container(row, intent)
            raise
        self._db.end_intent(intent)

    def commit(
        self,
        c: Container | str,
        ref: str | None = None,
        compression: str = "gzip",
        message: str | None = None,
        author: str | None = None,
    ) -> Image:
        """A new image: the container's image plus one layer made of its changes."""
        from lamina.store._commit import commit

        return commit(self, self._container_row(c), ref, compression, message, author)

    # -- transfer ----------------------------------------------------------------------------------

    def load(self, source: str | os.PathLike[str] | BinaryIO) -> list[Image]:
        """Load a docker-archive, OCI archive (tar) or OCI layout (directory)."""
        from lamina.store._transfer import load

        return load(self, source)

    def save(
        self,
        images: list[Image | str] | Image | str,
        dest: str | os.PathLike[str] | BinaryIO,
        format: str = "docker-archive",
    ) -> None:
        """Write images as ``docker-archive``, ``oci-archive`` or ``oci-dir``."""
        from lamina.store._transfer import save

        if isinstance(images, Image | str):
            images = [images]
        chosen = {image.id: image for image in (self.image(i) for i in images)}
        save(self, list(chosen.values()), dest, format)

    # -- registry (issue 13) ---------------------------------------------------------

    def pull(
        self,
        ref: str,
        platform: str | None = None,
        tls_verify: bool = True,
        cert_dir: str | None = None,
        authfile: str | None = None,
        progress: Any = None,
    ) -> Image:
        from lamina.errors import NotSupportedError

        raise NotSupportedError("pull is not implemented yet (issue 13)")

    def push(
        self,
        image: Image | str,
        ref: str,
        tls_verify: bool = True,
        cert_dir: str | None = None,
        authfile: str | None = None,
        progress: Any = None,
    ) -> str:
        from lamina.errors import NotSupportedError

        raise NotSupportedError("push is not implemented yet (issue 13)")

    # -- maintenance -------------------------------------------------------------------------------

    def check(self, repair: bool = False) -> CheckReport:
        from lamina.store._check import check

        return check(self, repair)

    def gc(self) -> GcReport:
        from lamina.store._check import gc

        return gc(self)

    def disk_usage(self) -> DiskUsage:
        from lamina.store._check import disk_usage

        return disk_usage(self)

    # -- internal: adding images ------------------------------------------------------------------

    def _add_image(
        self,
        config_bytes: bytes,
        manifest_bytes: bytes | None,
        chains: list[str],
        names: list[str],
        intent: int | None,
    ) -> str:
        config = json.loads(config_bytes)
        image_id = digest_of(config_bytes)
        size = 0
        for chain in chains:
            lrow = self._db.layer(chain)
            if lrow is not None:
                size += int(lrow["size"])
        row: dict[str, object] = {
            "id": str(image_id),
            "digest": None if manifest_bytes is None else str(digest_of(manifest_bytes)),
            "config": config_bytes,
            "manifest": manifest_bytes,
            "os": str(config.get("os", "")),
            "architecture": str(config.get("architecture", "")),
            "variant": config.get("variant"),
            "os_version": config.get("os.version"),
            "created": config.get("created"),
            "size": size,
            "added": datetime.datetime.now(datetime.UTC).timestamp(),
        }
        self._db.add_image(row, chains, names, intent)
        return str(image_id)


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(1 << 20):
        dst.write(chunk)


__all__ += ["LayerSource", "child_chain", "store_layer"]
