"""The overlay driver's on-disk layout (overlay2's), as names and small files.

Under ``home``:

* ``<id>/diff/`` — the layer's own content (overlayfs upper directory);
* ``<id>/link`` — the layer's short link id (26 characters of base32);
* ``<id>/lower`` — its parent chain as ``l/<LID>:l/<LID>...``, nearest first
  (absent for a layer without parent);
* ``<id>/work/``, ``<id>/merged/`` — overlayfs work dir and mount point;
* ``<id>/committed`` — present once a child exists: mount read-only;
* ``<id>/quota.img`` + ``<id>/quota/`` — a size-limited layer's filesystem
  image and its mount point; ``diff`` and ``work`` are then symlinks into it;
* ``<id>/quota`` as a file (XFS project quota) — the limit in bytes;
* ``l/<LID>`` → ``../<id>/diff`` — short relative links, so that a chain of
  lower directories is a list of 28-byte names;
* ``.staging/`` and ``.removing/`` — layers being built or deleted;
* ``.run/`` — the default runtime directory (shared mount counts, probe cache).

Layer ids ``l`` and ids starting with ``.`` are reserved.
"""

from __future__ import annotations

import os
from pathlib import Path

from lamina.drivers._base import validate_id
from lamina.errors import InvalidArgumentError, StateError

__all__ = [
    "LINK_DIR",
    "LINK_ID_LENGTH",
    "REMOVING_DIR",
    "STAGING_DIR",
    "check_layer_id",
    "is_layer_name",
    "new_link_id",
    "read_link",
    "read_lower",
]

LINK_DIR = "l"
STAGING_DIR = ".staging"
REMOVING_DIR = ".removing"
#: 26 base32 characters (130 bits): "l/" + 26 + ":" keeps 128 lowers within
#: one page for kernels without ``lowerdir+``, as in overlay2.
LINK_ID_LENGTH = 26
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def check_layer_id(layer_id: str) -> str:
    """Refuse ids that would collide with the driver's own entries in ``home``."""
    validate_id(layer_id)
    if layer_id == LINK_DIR or layer_id.startswith("."):
        raise InvalidArgumentError(f"layer id {layer_id!r} is reserved by the overlay driver")
    return layer_id


def is_layer_name(name: str) -> bool:
    """Whether an entry of ``home`` names a layer."""
    return name != LINK_DIR and not name.startswith(".")


def new_link_id() -> str:
    """A fresh short link id: 17 random bytes, base32, cut to 26 characters.

    The first 26 characters of ``base64.b32encode`` of the bytes, computed
    here (130 bits, 5 per character) so creating a layer imports nothing.
    """
    bits = int.from_bytes(os.urandom(17), "big") >> (17 * 8 - 5 * LINK_ID_LENGTH)
    return "".join(
        _B32[(bits >> (5 * (LINK_ID_LENGTH - 1 - i))) & 31] for i in range(LINK_ID_LENGTH)
    )


def _read_small(path: str) -> str:
    """A small ASCII file in one read (FileNotFoundError if it is missing)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("ascii")
    except UnicodeDecodeError:
        raise StateError(f"{path}: not ASCII") from None


def read_link(layer_dir: Path) -> str:
    """The layer's short link id."""
    try:
        link = _read_small(f"{layer_dir}/link").strip()
    except FileNotFoundError:
        raise StateError(f"{layer_dir}: missing link file (run cleanup)") from None
    if len(link) != LINK_ID_LENGTH or not link.isalnum():
        raise StateError(f"{layer_dir}/link: malformed short link {link!r}")
    return link


def read_lower(layer_dir: Path) -> list[str] | None:
    """The lower chain entries (``l/<LID>``, nearest first), or None for a base layer."""
    try:
        text = _read_small(f"{layer_dir}/lower").strip()
    except FileNotFoundError:
        return None
    entries = text.split(":") if text else []
    for entry in entries:
        name = entry[len(LINK_DIR) + 1 :]
        if not entry.startswith(LINK_DIR + "/") or len(name) != LINK_ID_LENGTH:
            raise StateError(f"{layer_dir}/lower: malformed entry {entry!r}")
    return entries


def write_small_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a small file in a directory that is not yet visible (staging)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
