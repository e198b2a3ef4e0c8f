"""Docker's graphtest suite against windowsfilter, where it applies.

The generic tests fill layers by writing into ``get()`` views.  On Windows
only read-write (sandbox) layers are written that way; image layers are
filled by ``apply_diff`` alone, and a sandbox is never a parent.  The tests
built on those two assumptions are skipped with the reason; their subject
(layer stacking, changes, diff and apply) is covered with Windows layers in
test_windowsfilter.py and test_windowsfilter_sandbox.py.
"""

from lamina.drivers.testsuite import make_conformance_tests

_IMAGE_VIEWS = (
    "writes files into get() of image layers made with create(); windowsfilter image layers "
    "are filled only by apply_diff (their view is a read-only merge of the chain)"
)

globals().update(
    make_conformance_tests(
        "windowsfilter",
        changes_runs=0,
        benchmark_smoke=False,
        exclude={
            "test_create_snap": (
                "Snap's parent is a read-write layer; on Windows a sandbox is never a parent "
                "(the seed leaves a parent without Files out of layerchain.json)"
            ),
            "test_deep_layer_read_128": _IMAGE_VIEWS,
            "test_diff_apply_10": _IMAGE_VIEWS,
            "test_changes": _IMAGE_VIEWS,
        },
    )
)
