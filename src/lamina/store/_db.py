"""The store's metadata in SQLite: the only module that imports :mod:`sqlite3`.

On-disk layout of a store root (what every other store module writes where)::

    <root>/
      store.db            this database (WAL: store.db-wal, store.db-shm beside it)
      blobs/sha256/<hex>  content-addressed blobs: layer blobs as received or committed
      tar-split/<hex>.gz  per layer (chain ID hex): the tar-split records that rebuild
                          its original tar byte for byte (not for windowsfilter layers,
                          whose driver keeps its own)
      tmp/                blobs and tar-split files being written (<name>.<pid>.<rand>)
      locks/<hex>.lock    one flock per chain ID being stored (never deleted)
      <driver>/           each driver's home (vfs/, overlay/, windowsfilter/)

Why SQLite: every operation is one small transaction (``BEGIN IMMEDIATE`` …
``COMMIT``), so removing one image out of 10,000 writes a few pages, not the
whole store (containers/storage rewrites ``layers.json``); WAL lets readers
list while a writer commits; SQLite's own locking serialises writers of
several processes, with a busy timeout instead of an error.

Crash safety: every multi-step operation (storing a layer, creating a
container, removing layers) first writes an *intent* row (operation,
subject, pid, start time) in its own transaction, touches the driver and the
files, then deletes the intent in the transaction that records the result.
Opening the store finds the intents of dead processes and finishes or rolls
back their work (:mod:`lamina.store._recover`).  A *lease* ties a layer to
an intent (a load in progress) so that a concurrent ``gc`` or recovery does
not take a layer that a live process is about to reference.

Schema changes are a list of migrations; ``schema_version`` holds how many
ran.  Foreign keys are on, so an image cannot name a layer that is not there.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

from lamina.errors import AlreadyExistsError, InUseError, StateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path

__all__ = ["DB_FILE", "ConstraintError", "Database", "DatabaseDamaged", "Row"]

DB_FILE = "store.db"
_BUSY_TIMEOUT_MS = 60_000

Row = sqlite3.Row
DatabaseDamaged = sqlite3.DatabaseError  # SQLite cannot read the file
ConstraintError = sqlite3.IntegrityError  # a UNIQUE or foreign key constraint refused a write

_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE layers (
        chain_id TEXT PRIMARY KEY,
        diff_id TEXT NOT NULL,
        parent TEXT REFERENCES layers(chain_id),
        driver TEXT NOT NULL,
        driver_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        tar_size INTEGER NOT NULL,
        digest TEXT,
        media_type TEXT,
        compressed_size INTEGER,
        created REAL NOT NULL
    );
    CREATE INDEX layers_diff_id ON layers(diff_id);
    CREATE INDEX layers_parent ON layers(parent);
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        digest TEXT,
        config BLOB NOT NULL,
        manifest BLOB,
        os TEXT NOT NULL,
        architecture TEXT NOT NULL,
        variant TEXT,
        os_version TEXT,
        created TEXT,
        size INTEGER NOT NULL,
        added REAL NOT NULL
    );
    CREATE TABLE image_layers (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        chain_id TEXT NOT NULL REFERENCES layers(chain_id),
        PRIMARY KEY (image_id, position)
    );
    CREATE INDEX image_layers_chain ON image_layers(chain_id);
    CREATE TABLE names (
        name TEXT PRIMARY KEY,
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX names_image ON names(image_id);
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        image_id TEXT NOT NULL REFERENCES images(id),
        layer_id TEXT NOT NULL,
        driver TEXT NOT NULL,
        parent TEXT REFERENCES layers(chain_id),
        created TEXT NOT NULL
    );
    CREATE INDEX containers_image ON containers(image_id);
    CREATE INDEX containers_parent ON containers(parent);
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        media_type TEXT,
        added REAL NOT NULL
    );
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        operation TEXT NOT NULL,
        subject TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE leases (
        intent_id INTEGER NOT NULL REFERENCES intents(id) ON DELETE CASCADE,
        chain_id TEXT NOT NULL,
        PRIMARY KEY (intent_id, chain_id)
    );
    CREATE INDEX leases_chain ON leases(chain_id);
    """,
    # 2: how many mount() holds a container has (remove_container refuses while > 0)
    """
    ALTER TABLE containers ADD COLUMN mounts INTEGER NOT NULL DEFAULT 0;
    """,
]


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn SQLite's exceptions into lamina's (callers translate the constraints they expect)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise InUseError(f"the store database stayed locked: {exc}") from exc
        raise StateError(f"the store database failed: {exc}") from exc
    except sqlite3.Error as exc:
        raise StateError(f"the store database failed: {exc}") from exc


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Database:
    """One connection to ``<root>/store.db``; every method is one transaction."""

    def __init__(self, root: Path) -> None:
        self.path = root / DB_FILE
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(_MIGRATIONS):
                raise StateError(
                    f"store schema version {version} is newer than this lamina knows "
                    f"({len(_MIGRATIONS)}); upgrade lamina"
                )
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (len(_MIGRATIONS),))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (len(_MIGRATIONS),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    def integrity_problems(self) -> list[str]:
        """``PRAGMA integrity_check`` and ``foreign_key_check`` findings (empty when sound)."""
        found = [str(r[0]) for r in self._conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for r in self._conn.execute("PRAGMA foreign_key_check"):
            found.append(f"{r[0]} row {r[1]} names a missing {r[2]}")
        return found

    # -- transactions ---------------------------------------------------------

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock up front).

        SQLite's errors leave as lamina's: a lock held past the busy timeout
        is :class:`InUseError`, anything else :class:`StateError`.
        """
        conn = self._conn
        with _translated():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        """Rows of one read (a consistent snapshot)."""
        with _translated():
            return self._conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Row | None:
        with _translated():
            row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
        return row

    # -- meta -------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def schema_version(self) -> int:
        row = self.one("SELECT version FROM schema_version")
        return 0 if row is None else int(row[0])

    # -- intents and leases ------------------------------------------------------

    def begin_intent(self, operation: str, subject: str, detail: str = "") -> int:
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO intents (operation, subject, pid, started, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (operation, subject, os.getpid(), time.time(), detail),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def end_intent(self, intent: int) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM intents WHERE id = ?", (intent,))

    def intents(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM intents ORDER BY id")

    def dead_intents(self) -> list[sqlite3.Row]:
        return [r for r in self.intents() if not pid_alive(int(r["pid"]))]

    def lease(self, intent: int, chain_ids: Iterable[str]) -> None:
        with self.tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO leases VALUES (?, ?)", [(intent, x) for x in chain_ids]
            )

    def live_leased(self) -> set[str]:
        """Chain IDs that an intent of a live process holds."""
        rows = self.query(
            "SELECT leases.chain_id, intents.pid FROM leases JOIN intents"
            " ON leases.intent_id = intents.id"
        )
        return {str(r[0]) for r in rows if pid_alive(int(r[1]))}

    # -- layers -------------------------------------------------------------------

    def layer(self, chain_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM layers WHERE chain_id = ?", (chain_id,))

    def layers(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM layers ORDER BY created, chain_id")

    def layers_by_diff_id(self, diff_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM layers WHERE diff_id = ?", (diff_id,))

    def add_layer(
        self,
        row: dict[str, object],
        intent: int | None,
        blob: tuple[str, int, str | None] | None,
        lease: int | None = None,
    ) -> None:
        """Record a stored layer (and its kept blob), ending its intent, in one transaction."""
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO layers (chain_id, diff_id, parent, driver, driver_id, size,"
                " tar_size, digest, media_type, compressed_size, created) VALUES (:chain_id,"
                " :diff_id, :parent, :driver, :driver_id, :size, :tar_size, :digest, :media_type,"
                " :compressed_size, :created)",
                row,
            )
            if lease is not None:
                c.execute("INSERT OR IGNORE INTO leases VALUES (?, ?)", (lease, row["chain_id"]))
            if blob is not None:
                c.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", (*blob, time.time()))
            if intent is not None:
                c.execute("DELETE FROM intents WHERE id = ?", (intent,))

    def unreferenced_layers(self) -> list[sqlite3.Row]:
        """Layers no image, container, child layer or live lease needs."""
        rows = self.query(
            "SELECT * FROM layers WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)"
            " AND chain_id NOT IN (SELECT parent FROM containers WHERE parent IS NOT NULL)"
            " AND chain_id NOT IN (SELECT parent FROM layers WHERE parent IS NOT NULL)"
        )
        leased = self.live_leased()
        return [r for r in rows if r["chain_id"] not in leased]

    def drop_layers_intent(self, chain_ids: Sequence[str]) -> int | None:
        """Delete layer rows (if still unneeded) and record the driver removals still to do.

        Rows first, files after the commit (as containerd's GC does): the
        intent lists the driver ids, so a crash between the commit and the
        removals is finished by the next open.
        """
        with self.tx() as c:
            dropped: list[str] = []
            for chain in chain_ids:
                row = c.execute("SELECT * FROM layers WHERE chain_id = ?", (chain,)).fetchone()
                if row is None:
                    continue
                needed = c.execute(
                    "SELECT 1 FROM image_layers WHERE chain_id = ?1 UNION ALL"
                    " SELECT 1 FROM containers WHERE parent = ?1 UNION ALL"
                    " SELECT 1 FROM layers WHERE parent = ?1 LIMIT 1",
                    (chain,),
                ).fetchone()
                if needed is not None:
                    continue
                c.execute("DELETE FROM layers WHERE chain_id = ?", (chain,))
                dropped.append(f"{row['driver']}/{row['driver_id']}/{chain}")
                digest = row["digest"]
                shared = (
                    digest is None
                    or c.execute(
                        "SELECT 1 FROM layers WHERE digest = ? LIMIT 1", (digest,)
                    ).fetchone()
                    is not None
                )
                if (
                    not shared
                    and c.execute("DELETE FROM blobs WHERE digest = ?", (digest,)).rowcount
                ):
                    dropped.append(f"blob//{digest}")
            if not dropped:
                return None
            cur = c.execute(
                "INSERT INTO intents (operation, subject, pid, started, detail)"
                " VALUES ('remove-layers', ?, ?, ?, ?)",
                (dropped[0], os.getpid(), time.time(), "\n".join(dropped)),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    # -- blobs ---------------------------------------------------------------------

    def blob(self, digest: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM blobs WHERE digest = ?", (digest,))

    def blobs(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM blobs ORDER BY digest")

    def add_blob(self, digest: str, size: int, media_type: str | None) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                (digest, size, media_type, time.time()),
            )

    def remove_blobs(self, digests: Iterable[str]) -> None:
        with self.tx() as c:
            c.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in digests])

    def unreferenced_blobs(self) -> list[sqlite3.Row]:
        """Blobs that no layer names as its compressed form."""
        return self.query(
            "SELECT * FROM blobs WHERE digest NOT IN"
            " (SELECT digest FROM layers WHERE digest IS NOT NULL)"
        )

    # -- images ------------------------------------------------------------------------

    def add_image(
        self,
        row: dict[str, object],
        chain_ids: Sequence[str],
        names: Sequence[str],
        intent: int | None,
    ) -> None:
        """Record an image, its layers and names (each name moves to it), ending ``intent``."""
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO images (id, digest, config, manifest, os, architecture,"
                " variant, os_version, created, size, added) VALUES (:id, :digest, :config,"
                " :manifest, :os, :architecture, :variant, :os_version, :created, :size, :added)",
                row,
            )
            if row.get("digest") is not None:
                c.execute(
                    "UPDATE images SET digest = :digest, manifest = :manifest"
                    " WHERE id = :id AND digest IS NULL",
                    row,
                )
            if (
                c.execute("SELECT 1 FROM image_layers WHERE image_id = ?", (row["id"],)).fetchone()
                is None
            ):
                c.executemany(
                    "INSERT INTO image_layers VALUES (?, ?, ?)",
                    [(row["id"], i, chain) for i, chain in enumerate(chain_ids)],
                )
            c.executemany(
                "INSERT OR REPLACE INTO names VALUES (?, ?)", [(n, row["id"]) for n in names]
            )
            if intent is not None:
                c.execute("DELETE FROM intents WHERE id = ?", (intent,))

    def image_rows(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM images ORDER BY added, id")

    def image_row(self, image_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM images WHERE id = ?", (image_id,))

    def image_ids_with_prefix(self, prefix: str) -> list[str]:
        hi = prefix + "\uffff"
        return [
            str(r[0])
            for r in self.query(
                "SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 2", (prefix, hi)
            )
        ]

    def all_names(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for r in self.query("SELECT name, image_id FROM names ORDER BY name"):
            result.setdefault(str(r[1]), []).append(str(r[0]))
        return result

    def all_image_layers(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for r in self.query(
            "SELECT image_id, chain_id FROM image_layers ORDER BY image_id, position"
        ):
            result.setdefault(str(r[0]), []).append(str(r[1]))
        return result

    def names_of(self, image_id: str) -> list[str]:
        return [
            str(r[0])
            for r in self.query(
                "SELECT name FROM names WHERE image_id = ? ORDER BY name", (image_id,)
            )
        ]

    def image_layers(self, image_id: str) -> list[str]:
        return [
            str(r[0])
            for r in self.query(
                "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position",
                (image_id,),
            )
        ]

    def image_by_name(self, name: str) -> str | None:
        row = self.one("SELECT image_id FROM names WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def tag(self, name: str, image_id: str) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name, image_id))

    def untag(self, name: str) -> bool:
        with self.tx() as c:
            return c.execute("DELETE FROM names WHERE name = ?", (name,)).rowcount > 0

    def remove_image(self, image_id: str, force: bool) -> tuple[bool, list[str]]:
        """Delete an image (or, forced while a container uses it, only its names).

        Returns (whether the image row went, its layers) in one transaction.
        """
        with self.tx() as c:
            users = c.execute(
                "SELECT id FROM containers WHERE image_id = ?", (image_id,)
            ).fetchall()
            if users and not force:
                raise InUseError(
                    f"image {image_id} is used by container {users[0][0]}; remove it first"
                )
            layers = [
                str(r[0])
                for r in c.execute(
                    "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position",
                    (image_id,),
                )
            ]
            if users:
                c.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
                return False, layers
            c.execute("DELETE FROM images WHERE id = ?", (image_id,))
            return True, layers

    # -- containers ------------------------------------------------------------------------

    def add_container(self, row: dict[str, object], intent: int) -> None:
        with self.tx() as c:
            try:
                c.execute(
                    "INSERT INTO containers (id, name, image_id, layer_id, driver, parent, created)"
                    " VALUES (:id, :name, :image_id, :layer_id, :driver, :parent, :created)",
                    row,
                )
            except ConstraintError:
                raise AlreadyExistsError(f"a container named {row['name']!r} exists") from None
            c.execute("DELETE FROM intents WHERE id = ?", (intent,))

    def containers(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM containers ORDER BY created, id")

    def container_row(self, key: str) -> sqlite3.Row | None:
        row = self.one("SELECT * FROM containers WHERE id = ? OR name = ?", (key, key))
        if row is None and key:
            rows = self.query(
                "SELECT * FROM containers WHERE id >= ? AND id < ? LIMIT 2", (key, key + "\uffff")
            )
            if len(rows) == 1:
                return rows[0]
        return row

    def count_mount(self, container_id: str, delta: int) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE containers SET mounts = max(0, mounts + ?) WHERE id = ?",
                (delta, container_id),
            )

    def restore_container(self, row: sqlite3.Row, intent: int) -> None:
        """Undo :meth:`remove_container` (the driver refused to remove the layer)."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO containers (id, name, image_id, layer_id, driver, parent, created,"
                " mounts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(row),
            )
            c.execute("DELETE FROM intents WHERE id = ?", (intent,))

    def remove_container(self, container_id: str) -> int:
        """Delete the row and record the driver removal still to do; returns the intent."""
        with self.tx() as c:
            row = c.execute("SELECT * FROM containers WHERE id = ?", (container_id,)).fetchone()
            if row is None:
                raise StateError(f"container {container_id} vanished")
            c.execute("DELETE FROM containers WHERE id = ?", (container_id,))
            cur = c.execute(
                "INSERT INTO intents (operation, subject, pid, started, detail)"
                " VALUES ('remove-container', ?, ?, ?, ?)",
                (container_id, os.getpid(), time.time(), f"{row['driver']}/{row['layer_id']}"),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid
