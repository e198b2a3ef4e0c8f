"""The driver testsuite: every check a lamina driver must pass, for any driver.

Three parts, each usable by a third-party driver (as containerd ships
``snapshots/testsuite`` for snapshotters):

* the **graphtest** port (:func:`make_conformance_tests`, the benchmarks in
  :data:`STANDARD_BENCHMARKS`): Docker's own conformance suite;
* the **contract** checks (:func:`make_contract_tests`): the promises under
  races, damage and concurrency that Docker's suite does not test;
* the **crash loop** (:func:`crash_loop`): ``kill -9`` at random moments
  during create, apply and remove, then ``cleanup`` must make the store whole.

A driver's test module is a few lines::

    from lamina.drivers.testsuite import make_conformance_tests, make_contract_tests

    globals().update(make_conformance_tests("vfs"))
    globals().update(make_contract_tests("vfs"))

The module needs pytest only when it runs under pytest (skips are pytest's
own there, :class:`unittest.SkipTest` elsewhere).
"""

from __future__ import annotations

from lamina._lazy import lazy_names

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from lamina.drivers.testsuite._contract import (
        PROFILES,
        DriverProfile,
        linux_layer_tar,
        make_contract_tests,
        windows_layer_tar,
    )
    from lamina.drivers.testsuite._crash import (
        LEFTOVER_CHECKS,
        LeftoverCheck,
        Snapshot,
        crash_loop,
        snapshot,
    )
    from lamina.drivers.testsuite._graphtest import (
        STANDARD_BENCHMARKS,
        Benchmark,
        BenchResult,
        DriverMaker,
        DriverSource,
        driver_session,
        driver_source,
        make_conformance_tests,
        mounts_under,
        run_changes,
        run_diff_apply,
        run_set_quota,
    )

__all__ = [
    "LEFTOVER_CHECKS",
    "PROFILES",
    "STANDARD_BENCHMARKS",
    "BenchResult",
    "Benchmark",
    "DriverMaker",
    "DriverProfile",
    "DriverSource",
    "LeftoverCheck",
    "Snapshot",
    "crash_loop",
    "driver_session",
    "driver_source",
    "linux_layer_tar",
    "make_conformance_tests",
    "make_contract_tests",
    "mounts_under",
    "run_changes",
    "run_diff_apply",
    "run_set_quota",
    "snapshot",
    "windows_layer_tar",
]

_LAZY = {
    **dict.fromkeys(
        [
            "PROFILES",
            "DriverProfile",
            "linux_layer_tar",
            "make_contract_tests",
            "windows_layer_tar",
        ],
        "lamina.drivers.testsuite._contract",
    ),
    **dict.fromkeys(
        ["LEFTOVER_CHECKS", "LeftoverCheck", "Snapshot", "crash_loop", "snapshot"],
        "lamina.drivers.testsuite._crash",
    ),
    **dict.fromkeys(
        [
            "STANDARD_BENCHMARKS",
            "BenchResult",
            "Benchmark",
            "DriverMaker",
            "DriverSource",
            "driver_session",
            "driver_source",
            "make_conformance_tests",
            "mounts_under",
            "run_changes",
            "run_diff_apply",
            "run_set_quota",
        ],
        "lamina.drivers.testsuite._graphtest",
    ),
}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
