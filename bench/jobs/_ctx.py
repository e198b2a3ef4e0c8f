"""What every job needs: paths of the workload and the scratch, and command builders."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _harness import BENCH, sh


class Raw(str):
    """An argument passed to the shell unquoted (``"$m"`` from an earlier command)."""


def q(arg: str) -> str:
    return arg if isinstance(arg, Raw) else shlex.quote(arg)


@dataclass
class Context:
    workload: Path  # $BENCH_DIR/work, built by make-workload.sh / scripts/ci-workload.sh
    scratch: Path  # the fresh loop-mounted ext4
    shared: Path  # the shared folder (bench/ scripts)
    python: str  # the Python that has lamina installed
    quick: bool
    log: Path

    # -- paths ---------------------------------------------------------------

    @property
    def layers(self) -> Path:
        return self.workload / "layers"

    def layer(self, name: str, fmt: str = "tar") -> Path:
        return self.layers / f"{name}.{fmt}"

    def layer_facts(self, name: str) -> dict[str, int]:
        facts = json.loads((self.layers / f"{name}.json").read_text())
        return {k: int(v) for k, v in facts.items() if isinstance(v, int)}

    @property
    def out(self) -> Path:
        return self.scratch / "out"

    # -- commands ------------------------------------------------------------

    def fresh(self, d: Path | None = None) -> str:
        d = d or self.out
        return f"rm -rf {q(str(d))} && mkdir -p {q(str(d))}"

    def rm(self, d: Path | None = None) -> str:
        return f"rm -rf {q(str(d or self.out))}"

    def clean(self, d: Path) -> str:
        """Unmount whatever is below ``d`` and delete it (shared cs-clean.sh)."""
        return f"{q(str(self.shared / 'bench' / 'cs-clean.sh'))} {q(str(d))}"

    def entry(self, *args: str) -> str:
        """A whole lamina process running one library call (bench/jobs/entry.py)."""
        script = BENCH / "jobs" / "entry.py"
        return " ".join([q(self.python), q(str(script)), *(q(a) for a in args)])

    def lamina(self, root: Path, driver: str, *args: str, opts: tuple[str, ...] = ()) -> str:
        """The ``lamina`` command line (python -m lamina), one process per command;
        ``opts`` are driver options (``-o KEY=VALUE``)."""
        options = [f"-o {q(o)}" for o in opts]
        return " ".join(
            [q(self.python), "-m", "lamina", "--root", q(str(root)), "--driver", driver]
            + options
            + [q(a) for a in args]
        )

    def cs(self, driver: str, d: Path) -> str:
        """containers-storage on a private graph and run root under ``d``."""
        return (
            f"containers-storage --storage-driver {driver} "
            f"--graph {q(str(d / 'g'))} --run {q(str(d / 'r'))}"
        )

    @property
    def py_extract(self) -> str:
        return f"{q(self.python)} {q(str(self.shared / 'bench' / 'py_extract.py'))}"

    def treecmp(self, expected: Path, actual: Path, *, content: bool = True) -> str:
        flags = "--content " if content else ""
        return (
            f"{q(self.python)} {q(str(self.shared / 'bench' / 'treecmp.py'))} {flags}"
            f"--exclude-contents dev --exclude-contents proc --exclude-contents sys "
            f"{q(str(expected))} {q(str(actual))}"
        )

    # primes: make each tool's binary and libraries resident after caches are dropped
    P_TAR = "tar --version"
    P_UMOCI = "umoci --version"

    @property
    def p_py(self) -> str:
        return f"{q(self.python)} -c 'import tarfile, gzip'"

    @property
    def p_lamina(self) -> str:
        """Every module a timed lamina command may load (the CLI's commands load lazily),
        as running ``version`` makes all of containers-storage's binary resident."""
        modules = ", ".join(
            [
                "click",
                "signal",  # loaded by apply's helper processes
                "lamina.archive._apply",
                "lamina.archive._export",
                "lamina.archive._changes",
                "lamina.archive._overlay_changes",
                "lamina._tree",
                "lamina._fs._staging",
                "lamina.drivers.vfs",
                "lamina.drivers.overlay",
                "lamina.cli._app",
                "lamina.cli._layers",
                "lamina.cli._mount",
                "lamina.cli._diff",
                "lamina.cli._store",
            ]
        )
        return f"{q(self.python)} -c 'import {modules}'"

    @property
    def p_cs(self) -> str:
        d = self.scratch / "prime"
        return f"{self.cs('vfs', d)} version"

    def try_build(self, name: str, cmd: str) -> bool:
        """Untimed fixture that lamina builds: a failure is remembered, not raised, so
        the lamina variants that need it are skipped with its reason (see :meth:`require`)
        while the peers still run."""
        marker = self.scratch / f"unavailable-{name}"
        marker.unlink(missing_ok=True)
        p = sh(cmd, log=self.log)
        if p.returncode == 0:
            return True
        tail = (p.stderr or p.stdout).strip().splitlines()
        marker.write_text(f"{name} could not be built: {tail[-1] if tail else p.returncode}\n")
        return False

    def require(self, name: str) -> str:
        """Shell snippet for a variant's setup: fail with the reason if ``name`` is missing."""
        marker = q(str(self.scratch / f"unavailable-{name}"))
        return f"if [ -e {marker} ]; then cat {marker} >&2; exit 1; fi"

    def cleaner(self, *dirs: Path) -> Callable[[], None]:
        """A group's ``finish``: unmount and delete its directories."""

        def finish() -> None:
            for d in dirs:
                self.run(self.clean(d))

        return finish

    def run(self, cmd: str) -> None:
        """Untimed preparation step; raises with the command's last output line on failure."""
        p = sh(cmd, log=self.log)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()
            raise RuntimeError(f"{cmd[:120]}: exit {p.returncode}: {tail[-1] if tail else ''}")
