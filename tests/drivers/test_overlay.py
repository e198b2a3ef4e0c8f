"""The overlay driver against Docker's conformance suite (graphtest), as root.

Beyond what Docker runs for overlay2: DeepLayerRead at 500 (the kernel's
own stack limit, reached through ``lowerdir+``), Changes on the native path
(Docker skips it) and SetQuota as required (Docker runs it for zfs only).
Not root, or no overlayfs: every test skips with the driver's reason.
"""

from __future__ import annotations

from lamina.drivers.testsuite import make_conformance_tests

globals().update(
    make_conformance_tests(
        "overlay",
        deep_layers=(128, 500),
        diff_apply=(10,),
        changes_runs=20,
        quota_required=True,
    )
)
