"""The archive engine: layer tars in and out of directories (pure: no drivers, no store).

* :func:`apply_layer` extracts a layer tar stream (plain, gzip or zstd) into a
  directory, confined beneath it, applying OCI whiteouts;
* :func:`changes` compares two trees the way ``docker diff`` reports them;
* :func:`export_changes` / :func:`export_tree` write deterministic PAX tars;
* :func:`decompress` sniffs and streams gzip or zstd.

Names load on first use (PEP 562), so a process that only applies a layer
never imports the exporter or the tree comparison, and the other way round.
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from lamina._change import Change, ChangeKind
    from lamina.archive._apply import ApplyOptions, apply_layer
    from lamina.archive._changes import changes, changes_size
    from lamina.archive._compression import Compression, decompress, detect_compression
    from lamina.archive._export import export_changes, export_tree
    from lamina.archive._idmap import IDMap, IDRange
    from lamina.archive._overlay_changes import overlay_changes, upper_size
    from lamina.archive._paths import clean_entry_name, open_beneath
    from lamina.archive._tarsplit import TarSplitChecksum, join_tar, split_tar
    from lamina.archive._whiteout import (
        OPAQUE_MARKER,
        OVERLAY_OPAQUE_XATTR,
        WHITEOUT_PREFIX,
        WhiteoutFormat,
    )
    from lamina.archive._wintar_reader import RawHeader, RawTarReader

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
    "RawHeader",
    "RawTarReader",
    "TarSplitChecksum",
    "WhiteoutFormat",
    "apply_layer",
    "changes",
    "changes_size",
    "clean_entry_name",
    "decompress",
    "detect_compression",
    "export_changes",
    "export_tree",
    "join_tar",
    "open_beneath",
    "overlay_changes",
    "split_tar",
    "upper_size",
]

# public name -> the module that defines it
_LAZY = {
    "Change": "lamina._change",
    "ChangeKind": "lamina._change",
    "ApplyOptions": "lamina.archive._apply",
    "apply_layer": "lamina.archive._apply",
    "changes": "lamina.archive._changes",
    "changes_size": "lamina.archive._changes",
    "Compression": "lamina.archive._compression",
    "decompress": "lamina.archive._compression",
    "detect_compression": "lamina.archive._compression",
    "export_changes": "lamina.archive._export",
    "export_tree": "lamina.archive._export",
    "IDMap": "lamina.archive._idmap",
    "IDRange": "lamina.archive._idmap",
    "overlay_changes": "lamina.archive._overlay_changes",
    "upper_size": "lamina.archive._overlay_changes",
    "clean_entry_name": "lamina.archive._paths",
    "open_beneath": "lamina.archive._paths",
    "TarSplitChecksum": "lamina.archive._tarsplit",
    "join_tar": "lamina.archive._tarsplit",
    "split_tar": "lamina.archive._tarsplit",
    "RawHeader": "lamina.archive._wintar_reader",
    "RawTarReader": "lamina.archive._wintar_reader",
    "OPAQUE_MARKER": "lamina.archive._whiteout",
    "OVERLAY_OPAQUE_XATTR": "lamina.archive._whiteout",
    "WHITEOUT_PREFIX": "lamina.archive._whiteout",
    "WhiteoutFormat": "lamina.archive._whiteout",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
