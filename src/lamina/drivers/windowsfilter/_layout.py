"""Where a windowsfilter layer keeps what, and the small files that describe it.

``<home>/<id>/`` holds what the seed's layer folder holds — ``Files/``,
``Hives/``, ``UtilityVM/``, ``layerchain.json``, the ``bcd*.bak`` backups —
plus our own ``.lamina/`` folder, which a Windows tar can never name
(its top level is only ``Files``, ``Hives`` and ``UtilityVM``):

* ``.lamina/meta.json`` — the layer kind (image or sandbox), its parent,
  its size, and one record per tar entry in tar order with every PAX record
  verbatim (attributes, security descriptor, creation time, junction flag,
  extended attributes), alternate data streams and deletions included;
* ``.lamina/tar-split.json.gz`` — the tar-split records of the imported tar;
* ``.lamina/streams/<n>`` — the bodies of alternate data streams;
* ``.lamina/view/`` — the merged view while a ``get`` holds it: a read-only
  overlay mount or a materialised directory;
* ``.lamina/overlay/`` — what an overlay view needs of this layer, derived
  from the deletion records and the chain below: ``plan.json`` (whether an
  overlay can show the chain up to this layer exactly, and why not) and
  ``whiteouts/``, the overlay whiteouts that sit just above ``Files/``;

and, for a sandbox (read-write) layer, ``sandbox/Files/`` (the writable
tree) and, when its size is enforced, ``sandbox.img`` (a sparse ext4 image
mounted at ``sandbox/``).  A sandbox has no top-level ``Files/``, so, as in
the seed, a layer created on top of it leaves it out of its chain.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina._fs import write_file_atomic
from lamina.errors import StateError

__all__ = [
    "LAMINA_DIR",
    "LayerMeta",
    "find_layer_id_file",
    "read_layer_chain",
    "read_meta",
    "write_json_file",
    "write_layer_chain",
    "write_meta",
]

LAMINA_DIR = ".lamina"
META = "meta.json"
TAR_SPLIT = "tar-split.json.gz"
STREAMS = "streams"
VIEW = "view"
OVERLAY = "overlay"
OVERLAY_PLAN = "plan.json"
OVERLAY_WHITEOUTS = "whiteouts"
SANDBOX_DIR = "sandbox"
SANDBOX_IMAGE = "sandbox.img"
LAYER_CHAIN = "layerchain.json"
KIND_IMAGE = "image"
KIND_SANDBOX = "sandbox"


@dataclass
class LayerMeta:
    """The sidecar record of one layer (``.lamina/meta.json``)."""

    kind: str = KIND_IMAGE
    parent: str | None = None
    imported: bool = False
    size: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)
    sandbox_size: int = 0
    sandbox_backing: str = ""
    #: The parent folder whose ``UtilityVM/Files`` this layer started from ("" if none).
    utility_vm_clone: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "kind": self.kind,
            "parent": self.parent,
            "imported": self.imported,
            "size": self.size,
            "sandbox": {"size": self.sandbox_size, "backing": self.sandbox_backing},
            "utility_vm_clone": self.utility_vm_clone,
            "entries": self.entries,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerMeta:
        if data.get("version") != 1 or data.get("kind") not in (KIND_IMAGE, KIND_SANDBOX):
            raise StateError("unknown windowsfilter layer metadata version")
        sandbox = data.get("sandbox") or {}
        return cls(
            kind=data["kind"],
            parent=data.get("parent"),
            imported=bool(data.get("imported")),
            size=int(data.get("size", 0)),
            entries=list(data.get("entries", [])),
            sandbox_size=int(sandbox.get("size", 0)),
            sandbox_backing=str(sandbox.get("backing", "")),
            utility_vm_clone=str(data.get("utility_vm_clone") or ""),
        )


def write_json_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` atomically (readers never see a partial file)."""
    write_file_atomic(path, text.encode(), mode)


def write_meta(layer_dir: Path, meta: LayerMeta) -> None:
    """Write the sidecar atomically."""
    os.makedirs(layer_dir / LAMINA_DIR, mode=0o700, exist_ok=True)
    write_json_file(
        layer_dir / LAMINA_DIR / META, json.dumps(meta.to_json(), separators=(",", ":"))
    )


def read_meta(layer_dir: Path) -> LayerMeta:
    """Read the sidecar; a layer folder without one is not ours (StateError)."""
    try:
        with open(layer_dir / LAMINA_DIR / META, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise StateError(f"{layer_dir}: no windowsfilter metadata") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"{layer_dir}: unreadable windowsfilter metadata: {exc}") from exc
    return LayerMeta.from_json(data)


def write_layer_chain(layer_dir: Path, chain: list[str]) -> None:
    """``layerchain.json`` as the seed writes it: Go's ``json.Marshal`` of the
    slice, mode 0600, no newline; an empty chain is ``null`` (a nil slice)."""
    text = json.dumps(chain or None, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    write_json_file(layer_dir / LAYER_CHAIN, text)


def read_layer_chain(layer_dir: Path) -> list[str]:
    """The parent folders, nearest first; a missing file means no parents."""
    try:
        with open(layer_dir / LAYER_CHAIN, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise StateError(f"Unable to read layerchain file - {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise StateError(f"{layer_dir}: layerchain.json is not a list of paths")
    return data


def find_layer_id_file(layer_dir: Path) -> Path | None:
    """The ``layerID`` file, matched case-insensitively (the seed reads ``layerID``
    but writes ``layerId``; on NTFS both name one file)."""
    try:
        with os.scandir(layer_dir) as it:
            for item in it:
                if item.name.lower() == "layerid" and item.is_file(follow_symlinks=False):
                    return Path(item.path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return None
