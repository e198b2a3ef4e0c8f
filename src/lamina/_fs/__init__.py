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
from lamina._fs._mount import (
    MNT_DETACH,
    MountInfo,
    is_mountpoint,
    mount_spec,
    mountinfo,
    mounts_below,
    new_mount_api_supported,
    umount,
    unmount_below,
)
from lamina._fs._mounter import Mount, Mounter
from lamina._fs._probe import (
    NativeDiffProbe,
    backing_fs,
    overlay_max_lowers,
    probe_native_diff,
    probe_overlay_mount,
    statfs_magic,
    supports_d_type,
)
from lamina._fs._quota import (
    ProjectQuota,
    QuotaUsage,
    create_image,
    grow_image,
    grow_mounted_image,
    image_is_mounted,
    mount_image,
    unmount_image,
)
from lamina._fs._refstore import DETACHED, RefStore, SharedMounter

__all__ = [
    "CopyStats",
    "Mount",
    "Mounter",
    "copy_tree",
    "exchange_dirs",
    "grow_image",
    "grow_mounted_image",
    "made_by_other_live_process",
    "make_staging_dir",
    "remove_tree",
    "rename_noreplace",
    "retire_dir",
    "staging_name",
    "sync_filesystem",
    "write_file_atomic",
]
__all__ += [  # mounts, kernel probes, quotas, shared mount counts (overlay driver)
    "DETACHED",
    "MNT_DETACH",
    "MountInfo",
    "NativeDiffProbe",
    "ProjectQuota",
    "QuotaUsage",
    "RefStore",
    "SharedMounter",
    "backing_fs",
    "create_image",
    "image_is_mounted",
    "is_mountpoint",
    "mount_image",
    "mount_spec",
    "mountinfo",
    "mounts_below",
    "new_mount_api_supported",
    "overlay_max_lowers",
    "probe_native_diff",
    "probe_overlay_mount",
    "statfs_magic",
    "supports_d_type",
    "umount",
    "unmount_below",
    "unmount_image",
]
