"""The archive engine: layer tars in and out of directories (pure: no drivers, no store).

* :func:`apply_layer` extracts a layer tar stream (plain, gzip or zstd) into a
  directory, confined beneath it, applying OCI whiteouts;
* :func:`changes` compares two trees the way ``docker diff`` reports them;
* :func:`export_changes` / :func:`export_tree` write deterministic PAX tars;
* :func:`decompress` sniffs and streams gzip or zstd.
"""

from lamina._change import Change, ChangeKind
from lamina.archive._apply import ApplyOptions, apply_layer
from lamina.archive._changes import changes, changes_size
from lamina.archive._compression import Compression, decompress, detect_compression
from lamina.archive._export import export_changes, export_tree
from lamina.archive._idmap import IDMap, IDRange
from lamina.archive._overlay_changes import overlay_changes, upper_size
from lamina.archive._paths import clean_entry_name, open_beneath
from lamina.archive._whiteout import (
    OPAQUE_MARKER,
    OVERLAY_OPAQUE_XATTR,
    WHITEOUT_PREFIX,
    WhiteoutFormat,
)

__all__ = [
    "OPAQUE_MARKER",
    "OVERLAY_OPAQUE_XATTR",
    "WHITEOUT_PREFIX",
    "ApplyOptions",
    "Change",
    "ChangeKind",
    "Compression",
    "IDMap",
    "IDRange",
    "WhiteoutFormat",
    "apply_layer",
    "changes",
    "changes_size",
    "clean_entry_name",
    "decompress",
    "detect_compression",
    "export_changes",
    "export_tree",
    "open_beneath",
    "overlay_changes",
    "upper_size",
]
