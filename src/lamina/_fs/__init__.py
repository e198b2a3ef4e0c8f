"""Effects: the only code that makes writes atomic, takes locks, copies trees or mounts."""

from lamina._fs._atomic import (
    exchange_dirs,
    made_by_other_live_process,
    make_staging_dir,
    remove_tree,
    rename_noreplace,
    retire_dir,
    staging_name,
    sync_filesystem,
    write_file_atomic,
)
from lamina._fs._copy import CopyStats, copy_tree
from lamina._fs._mounter import Mount, Mounter

__all__ = [
    "CopyStats",
    "Mount",
    "Mounter",
    "copy_tree",
    "exchange_dirs",
    "made_by_other_live_process",
    "make_staging_dir",
    "remove_tree",
    "rename_noreplace",
    "retire_dir",
    "staging_name",
    "sync_filesystem",
    "write_file_atomic",
]
