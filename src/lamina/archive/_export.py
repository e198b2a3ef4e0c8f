"""Deterministic PAX export of changes or whole trees (placeholder; being written)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import BinaryIO

from lamina._change import Change
from lamina.archive._idmap import IDMap
from lamina.archive._whiteout import WhiteoutFormat

__all__ = ["export_changes", "export_tree"]


def export_changes(
    root: str | os.PathLike[str], changes: Iterable[Change], *, id_map: IDMap | None = None
) -> BinaryIO:
    """A tar stream of ``changes`` read from ``root``; deletions become whiteouts."""
    raise NotImplementedError


def export_tree(
    root: str | os.PathLike[str],
    *,
    whiteouts: WhiteoutFormat = WhiteoutFormat.OCI,
    id_map: IDMap | None = None,
) -> BinaryIO:
    """A tar stream of the whole tree under ``root`` (root entry omitted)."""
    raise NotImplementedError
