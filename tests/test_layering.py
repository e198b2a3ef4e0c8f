"""The layering rules of ``house.md``, checked by reading ``src/lamina``.

Three rules, each cheap to break by accident and expensive to find later:

1. **A private module is private to its package.**  ``lamina.<pkg>._x`` (and
   ``lamina.<pkg>.<sub>._x``) is imported only from inside ``<pkg>``; every
   other package goes through the package's face (``lamina.archive``,
   ``lamina._fs``), whose lazy tables decide what is public.  Top-level
   underscored modules (``lamina._fs``, ``lamina._units``) are private to
   ``lamina`` itself, so any lamina module may use them.
2. **One owner for renames, fsync and locks.**  Only ``lamina._fs`` (and a
   floor-1 ``lamina._tree``, once it exists) calls ``os.rename``,
   ``os.replace``, ``renameat2``, ``os.fsync``/``fdatasync``/``sync``,
   ``fcntl.flock`` or ``fcntl.lockf``: crash safety is argued once, there.
   (``Path.rename`` counts too; ``x.replace(...)`` cannot be told from
   ``str.replace`` by reading, so only ``os.replace`` is checked.)
3. **No package imports one above it** in the layout (errors < the other
   floor-1 modules < ``_fs``, ``oci`` < ``archive`` < ``drivers`` <
   ``store`` < ``registry`` < ``cli``).  Imports under ``TYPE_CHECKING``
   count too: a type-level cycle is still a cycle in the design.

Tests are exempt: they may reach any module.  The allow-lists below name
today's known exceptions, each with the change that removes it; a new
violation fails, and so does an entry that is no longer needed, so the lists
only shrink.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lamina"

# Rank of each top-level unit of lamina (house.md, "The layout to grow into").
# A module may import units of a lower rank, its own unit, and floor-1 units
# of its own rank (tiny leaf modules); nothing above it.
FLOORS: dict[str, int] = {
    "errors": 0,
    "_frozen": 1,
    "_lazy": 1,
    "_units": 1,
    "_change": 1,
    "_ids": 1,
    "_sys": 1,
    "_tree": 1,
    "_fs": 2,
    "oci": 2,
    "archive": 3,
    "drivers": 4,
    "store": 5,
    "registry": 6,
    "_demo": 7,  # the tour behind `lamina demo`: drivers and archive, below the commands
    "cli": 8,
    "__main__": 9,
}
LEAF_FLOOR = 1

# Modules that may call the rename/fsync/lock primitives (rule 2).
EFFECT_OWNERS = ("lamina._fs", "lamina._tree")

# (importer, imported private module): known crossings of rule 1.
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str]] = {
    # windowsfilter's byte-exact export is the only user of tar-split today
    # (the store gives it a face, issue 12)
    ("lamina.drivers.windowsfilter._driver", "lamina.archive._tarsplit"),
    ("lamina.drivers.windowsfilter._import", "lamina.archive._tarsplit"),
}

# (module, call): known crossings of rule 2.
EFFECTS_ALLOWED: set[tuple[str, str]] = {
    # to be removed by the _fs staging area (issue 11, "What to build" 1:
    # new -> fill -> publish by rename/exchange -> sweep, used by every driver)
    ("lamina.drivers.overlay._driver", "os.rename"),
    ("lamina.drivers.windowsfilter._driver", "os.rename"),
    ("lamina.drivers.windowsfilter._overlay", "os.rename"),
    # the iterative tree remover's renames, to move with it to lamina._tree
    # (issue 11, "one iterative tree remover")
    ("lamina.archive._apply", "os.rename"),
    # a test write of the graphtest port (forces delayed allocation to meet the
    # quota): the testsuite's own file, not a store effect
    ("lamina.drivers.testsuite._graphtest", "os.fsync"),
}

_OS_EFFECTS = {"rename", "renames", "replace", "fsync", "fdatasync", "sync", "syncfs"}
_FCNTL_EFFECTS = {"flock", "lockf"}
_ANY_RECEIVER = {"rename", "renameat2"}  # Path.rename, libc.renameat2


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _sources() -> list[tuple[str, Path, ast.Module]]:
    return [
        (_module_name(path), path, ast.parse(path.read_bytes(), str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


@functools.cache
def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


@functools.cache
def _lazy_target(package: str, name: str) -> str | None:
    """Where a package face's lazy table sends ``name`` (read from its source, not imported)."""
    init = SRC / Path(*package.split(".")) / "__init__.py"
    if not init.is_file():
        return None
    for node in ast.walk(ast.parse(init.read_bytes())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            table = ast.literal_eval(node.value)
            target = table.get(name)
            return str(target) if target is not None else None
    return None


def _imports(module: str, tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, module as written, module it loads) for every lamina import in ``tree``.

    ``from P import X`` loads ``P.X`` when that is a module, else P itself;
    for the root face ``lamina`` it is what ``lamina._LAZY`` maps X to.
    """
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lamina":
                    yield node.lineno, alias.name, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "lamina":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if _is_module(sub):
                    yield node.lineno, sub, sub
                elif base == "lamina":
                    yield node.lineno, base, _lazy_target("lamina", alias.name) or base
                else:
                    yield node.lineno, base, base


def _is_package(module: str) -> bool:
    return (SRC / Path(*module.split(".")) / "__init__.py").is_file()


def _private_owner(imported: str) -> str | None:
    """The package a private module belongs to (the deepest private component's parent)."""
    parts = imported.split(".")
    owner = None
    for i in range(2, len(parts)):  # lamina._x itself is private to lamina: anyone inside
        if parts[i].startswith("_") and not parts[i].startswith("__"):
            owner = ".".join(parts[:i])
            break
    return owner


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_sources_are_found() -> None:
    names = {name for name, _, _ in _sources()}
    assert {"lamina.cli._app", "lamina.drivers.vfs", "lamina._fs._atomic"} <= names


def test_private_modules_are_imported_only_inside_their_package() -> None:
    found: set[tuple[str, str]] = set()
    where: dict[tuple[str, str], str] = {}
    for module, path, tree in _sources():
        for line, written, _ in _imports(module, tree):
            owner = _private_owner(written)
            if owner is not None and not _inside(module, owner):
                found.add((module, written))
                where.setdefault((module, written), f"{path.relative_to(SRC)}:{line}")
    new = found - PRIVATE_IMPORTS_ALLOWED
    assert not new, "import through the package face instead:\n" + "\n".join(
        f"  {where[k]}: {k[0]} imports {k[1]}" for k in sorted(new)
    )
    stale = PRIVATE_IMPORTS_ALLOWED - found
    assert not stale, f"fixed, remove from PRIVATE_IMPORTS_ALLOWED: {sorted(stale)}"


def _effect_calls(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "fcntl"):
            wanted = _OS_EFFECTS if node.module == "os" else _FCNTL_EFFECTS
            for alias in node.names:
                if alias.name in wanted:
                    yield node.lineno, f"{node.module}.{alias.name}"
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = func.value.id if isinstance(func.value, ast.Name) else None
            if receiver == "os" and func.attr in _OS_EFFECTS:
                yield node.lineno, f"os.{func.attr}"
            elif receiver == "fcntl" and func.attr in _FCNTL_EFFECTS:
                yield node.lineno, f"fcntl.{func.attr}"
            elif func.attr in _ANY_RECEIVER:
                yield node.lineno, f"<{receiver or 'expr'}>.{func.attr}"
        elif isinstance(func, ast.Name) and func.id == "renameat2":
            yield node.lineno, "renameat2"


def test_only_fs_renames_syncs_and_locks() -> None:
    found: set[tuple[str, str]] = set()
    where: dict[tuple[str, str], str] = {}
    for module, path, tree in _sources():
        if any(_inside(module, owner) for owner in EFFECT_OWNERS):
            continue
        for line, call in _effect_calls(tree):
            found.add((module, call))
            where.setdefault((module, call), f"{path.relative_to(SRC)}:{line}")
    new = found - EFFECTS_ALLOWED
    assert not new, "use lamina._fs (atomic writes, staging, locks) instead:\n" + "\n".join(
        f"  {where[k]}: {k[0]} calls {k[1]}" for k in sorted(new)
    )
    stale = EFFECTS_ALLOWED - found
    assert not stale, f"fixed, remove from EFFECTS_ALLOWED: {sorted(stale)}"


def _floor_problems(module: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, imported module) for each import of ``module`` from a floor above its own."""
    unit = _unit(module)
    assert unit in FLOORS, f"{module}: place the new unit {unit!r} in FLOORS (house.md)"
    for line, _, loaded in _imports(module, tree):
        target = _unit(loaded)
        if loaded == "lamina" or target == unit:
            continue  # the root face loads nothing; a unit may use itself
        assert target in FLOORS, f"{module}:{line}: unknown unit {target!r}"
        mine, theirs = FLOORS[unit], FLOORS[target]
        if theirs < mine or theirs == mine == LEAF_FLOOR:
            continue
        yield line, loaded


def test_no_package_imports_one_above_it() -> None:
    problems = [
        f"  {path.relative_to(SRC)}:{line}: {module} imports {loaded}"
        for module, path, tree in _sources()
        if module != "lamina"  # the root face names everything, lazily (it imports only _lazy)
        for line, loaded in _floor_problems(module, tree)
    ]
    assert not problems, "an import from a floor above:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "bad"),
    [
        ("lamina.archive._apply", "from lamina import drivers\n", True),
        ("lamina.archive._apply", "from lamina.drivers import Driver\n", True),
        ("lamina._fs._atomic", "import lamina.archive\n", True),
        ("lamina.drivers.vfs", "from lamina.cli import cli\n", True),
        ("lamina.errors", "from lamina._units import ram_in_bytes\n", True),
        ("lamina.drivers.vfs", "from lamina import archive, errors\n", False),
        ("lamina.drivers.vfs", "from lamina import Change\n", False),
        ("lamina._change", "from lamina._frozen import Frozen\n", False),
        ("lamina.cli._app", "import lamina\n", False),
    ],
)
def test_the_floor_check_sees_an_import_from_above(module: str, source: str, bad: bool) -> None:
    assert bool(list(_floor_problems(module, ast.parse(source)))) is bad


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("from lamina._fs._probe import ProbeFile\n", "private"),
        ("from lamina.archive import _tarreader\n", "private"),
        ("import lamina.archive._apply\n", "private"),
        ("import os\nos.replace('a', 'b')\n", "effect"),
        ("from pathlib import Path\nPath('a').rename('b')\n", "effect"),
        ("import fcntl\nfcntl.flock(3, fcntl.LOCK_EX)\n", "effect"),
        ("from os import fsync\n", "effect"),
    ],
)
def test_the_checks_see_each_kind_of_violation(source: str, rule: str) -> None:
    """The scanners themselves: each form of a violation is caught (for a driver module)."""
    tree = ast.parse(source)
    module = "lamina.drivers.example"
    if rule == "private":
        owners = [_private_owner(written) for _, written, _ in _imports(module, tree)]
        assert any(o is not None and not _inside(module, o) for o in owners), owners
    else:
        assert list(_effect_calls(tree))


def test_faces_are_not_private_and_top_level_private_modules_are_lamina_wide() -> None:
    assert _private_owner("lamina._fs") is None
    assert _private_owner("lamina.archive") is None
    assert _private_owner("lamina._fs._probe") == "lamina._fs"
    assert _private_owner("lamina.drivers.overlay._layout") == "lamina.drivers.overlay"
    assert _private_owner("lamina.drivers._base") == "lamina.drivers"
