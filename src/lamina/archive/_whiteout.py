"""Whiteout names and their two on-disk forms (pure).

A layer tar marks deletions the AUFS/OCI way: an empty file ``dir/.wh.name``
deletes ``dir/name``, and ``dir/.wh..wh..opq`` makes ``dir`` opaque (hides all
lower content).  overlayfs stores the same facts as a 0:0 character device
named ``name`` and the ``trusted.overlay.opaque=y`` xattr on ``dir``.
"""

from __future__ import annotations

import enum

__all__ = [
    "OPAQUE_MARKER",
    "OVERLAY_OPAQUE_XATTR",
    "WHITEOUT_LINK_DIR",
    "WHITEOUT_META_PREFIX",
    "WHITEOUT_PREFIX",
    "WhiteoutFormat",
    "is_whiteout_name",
    "whiteout_name",
    "whiteout_target",
]

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
WHITEOUT_LINK_DIR = ".wh..wh.plnk"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"


class WhiteoutFormat(enum.Enum):
    """How deletions are represented in the directory being written or read."""

    OCI = "oci"  # .wh. files in the tar are applied as deletions in a full tree
    OVERLAY = "overlay"  # kept as 0:0 char devices and opaque xattrs in an upper dir


def is_whiteout_name(basename: str) -> bool:
    """Whether a file name is a whiteout (including the opaque marker)."""
    return basename.startswith(WHITEOUT_PREFIX)


def whiteout_target(basename: str) -> str:
    """The name a ``.wh.<name>`` entry deletes."""
    return basename[len(WHITEOUT_PREFIX) :]


def whiteout_name(basename: str) -> str:
    """The whiteout entry name that deletes ``basename``."""
    return WHITEOUT_PREFIX + basename
