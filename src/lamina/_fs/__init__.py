"""Effects: the only code that makes writes atomic, takes locks, copies trees or mounts.

Names load on first use (PEP 562): the vfs driver never imports the mount,
quota and probe code, and a command that only creates a layer never loads
the tree copier.
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from lamina._fs._atomic import (
        exchange_dirs,
        made_by_other_live_process,
        make_staging_dir,
        remove_tree,
        rename_noreplace,
        retire_dir,
        staging_name,
        sweep_atomic_writes,
        sync_filesystem,
        write_file_atomic,
    )
    from lamina._fs._child import die_with_parent, run_tool
    from lamina._fs._copy import CopyStats, copy_tree
    from lamina._fs._loopimage import (
        create_image,
        grow_image,
        grow_mounted_image,
        image_is_mounted,
        loop_supported,
        mount_image,
        unmount_image,
    )
    from lamina._fs._mount import (
        MNT_DETACH,
        MountInfo,
        fs_type,
        is_mountpoint,
        mount_spec,
        mountinfo,
        mounts_below,
        new_mount_api_supported,
        read_only,
        umount,
        unmount_below,
    )
    from lamina._fs._mounter import HoldingMounter, Mount, Mounter
    from lamina._fs._probe import (
        NativeDiffProbe,
        ProbeFile,
        backing_fs,
        fs_identity,
        fs_name,
        overlay_max_lowers,
        probe_native_diff,
        probe_overlay_mount,
        statfs_magic,
        supports_d_type,
    )
    from lamina._fs._quota import ProjectQuota, QuotaUsage
    from lamina._fs._refstore import DETACHED, RefStore, SharedMounter
    from lamina._fs._staging import (
        DEFAULT_LOCK_TIMEOUT,
        StagingArea,
        layer_lock,
        lock_is_free,
        owner_alive,
        owner_token,
        unlink_lock,
    )

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "CopyStats",
    "HoldingMounter",
    "Mount",
    "Mounter",
    "StagingArea",
    "copy_tree",
    "die_with_parent",
    "exchange_dirs",
    "grow_image",
    "grow_mounted_image",
    "layer_lock",
    "lock_is_free",
    "made_by_other_live_process",
    "make_staging_dir",
    "owner_alive",
    "owner_token",
    "remove_tree",
    "rename_noreplace",
    "retire_dir",
    "staging_name",
    "sweep_atomic_writes",
    "sync_filesystem",
    "unlink_lock",
    "write_file_atomic",
]
__all__ += [  # mounts, kernel probes, quotas, shared mount counts (overlay driver)
    "DETACHED",
    "MNT_DETACH",
    "MountInfo",
    "NativeDiffProbe",
    "ProbeFile",
    "ProjectQuota",
    "QuotaUsage",
    "RefStore",
    "SharedMounter",
    "backing_fs",
    "create_image",
    "fs_identity",
    "fs_name",
    "fs_type",
    "image_is_mounted",
    "is_mountpoint",
    "loop_supported",
    "mount_image",
    "mount_spec",
    "mountinfo",
    "mounts_below",
    "new_mount_api_supported",
    "overlay_max_lowers",
    "probe_native_diff",
    "probe_overlay_mount",
    "read_only",
    "run_tool",
    "statfs_magic",
    "supports_d_type",
    "umount",
    "unmount_below",
    "unmount_image",
]

# public name -> the module that defines it
_LAZY = {
    "exchange_dirs": "lamina._fs._atomic",
    "made_by_other_live_process": "lamina._fs._atomic",
    "make_staging_dir": "lamina._fs._atomic",
    "remove_tree": "lamina._fs._atomic",
    "rename_noreplace": "lamina._fs._atomic",
    "retire_dir": "lamina._fs._atomic",
    "staging_name": "lamina._fs._atomic",
    "sweep_atomic_writes": "lamina._fs._atomic",
    "sync_filesystem": "lamina._fs._atomic",
    "write_file_atomic": "lamina._fs._atomic",
    "die_with_parent": "lamina._fs._child",
    "run_tool": "lamina._fs._child",
    "CopyStats": "lamina._fs._copy",
    "copy_tree": "lamina._fs._copy",
    "MNT_DETACH": "lamina._fs._mount",
    "MountInfo": "lamina._fs._mount",
    "fs_type": "lamina._fs._mount",
    "is_mountpoint": "lamina._fs._mount",
    "mount_spec": "lamina._fs._mount",
    "mountinfo": "lamina._fs._mount",
    "mounts_below": "lamina._fs._mount",
    "new_mount_api_supported": "lamina._fs._mount",
    "read_only": "lamina._fs._mount",
    "umount": "lamina._fs._mount",
    "unmount_below": "lamina._fs._mount",
    "HoldingMounter": "lamina._fs._mounter",
    "Mount": "lamina._fs._mounter",
    "Mounter": "lamina._fs._mounter",
    "NativeDiffProbe": "lamina._fs._probe",
    "ProbeFile": "lamina._fs._probe",
    "fs_identity": "lamina._fs._probe",
    "fs_name": "lamina._fs._probe",
    "backing_fs": "lamina._fs._probe",
    "overlay_max_lowers": "lamina._fs._probe",
    "probe_native_diff": "lamina._fs._probe",
    "probe_overlay_mount": "lamina._fs._probe",
    "statfs_magic": "lamina._fs._probe",
    "supports_d_type": "lamina._fs._probe",
    "ProjectQuota": "lamina._fs._quota",
    "QuotaUsage": "lamina._fs._quota",
    "create_image": "lamina._fs._loopimage",
    "grow_image": "lamina._fs._loopimage",
    "grow_mounted_image": "lamina._fs._loopimage",
    "image_is_mounted": "lamina._fs._loopimage",
    "loop_supported": "lamina._fs._loopimage",
    "mount_image": "lamina._fs._loopimage",
    "unmount_image": "lamina._fs._loopimage",
    "DETACHED": "lamina._fs._refstore",
    "RefStore": "lamina._fs._refstore",
    "SharedMounter": "lamina._fs._refstore",
    "DEFAULT_LOCK_TIMEOUT": "lamina._fs._staging",
    "StagingArea": "lamina._fs._staging",
    "layer_lock": "lamina._fs._staging",
    "lock_is_free": "lamina._fs._staging",
    "owner_alive": "lamina._fs._staging",
    "owner_token": "lamina._fs._staging",
    "unlink_lock": "lamina._fs._staging",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
