"""The benchmark's jobs (issue 6, item 2), each a function from a Context to Groups.

Order matters only for reading the table: apply first, then the store
operations.  ``selftest`` needs no workload and is what the harness's own
test runs.
"""

from __future__ import annotations

from collections.abc import Callable

from _harness import Group

from jobs import apply, chain, ops, selftest
from jobs._ctx import Context

JobFn = Callable[[Context], list[Group]]

#: name -> (groups, needs the workload)
JOBS: dict[str, tuple[JobFn, bool]] = {
    "apply": (apply.base_groups, True),
    "apply-layer1": (apply.layer1_groups, True),
    "diff": (ops.diff_groups, True),
    "changes": (ops.changes_groups, True),
    "chain": (chain.groups, True),
    "create-rw": (ops.create_rw_groups, True),
    "remove": (ops.remove_groups, True),
    "selftest": (selftest.groups, False),
}

DEFAULT = [name for name in JOBS if name != "selftest"]

__all__ = ["DEFAULT", "JOBS", "Context", "JobFn"]
