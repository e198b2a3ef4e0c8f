"""The ``lamina.oci`` face: lazy like every lamina package, complete, and pure.

Like ``tests/test_lazy_imports.py``: each check runs a fresh interpreter and
asserts what ended up in ``sys.modules``, not how long it took.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lamina.oci

_SRC = Path(lamina.oci.__file__).parent


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_import_oci_loads_only_its_face() -> None:
    loaded = _modules_after("import lamina.oci")
    assert {m for m in loaded if m.startswith("lamina")} == {"lamina", "lamina._lazy", "lamina.oci"}
    assert "typing" not in loaded and "dataclasses" not in loaded


def test_parsing_a_reference_loads_only_what_it_needs() -> None:
    loaded = _modules_after(
        "from lamina import oci\nassert str(oci.parse_reference('debian')).endswith(':latest')"
    )
    assert "lamina.oci._reference" in loaded
    for unused in (
        "lamina.oci._documents",
        "lamina.oci._layout",
        "lamina.oci._docker_archive",
        "lamina.oci._platform",
        "typing",
        "lamina.archive",
        "lamina.drivers",
        "lamina._fs",
    ):
        assert unused not in loaded, unused


def test_every_public_name_resolves() -> None:
    for name in lamina.oci.__all__:
        assert getattr(lamina.oci, name) is not None, name
    assert set(lamina.oci.__all__) <= set(dir(lamina.oci))
    with pytest.raises(AttributeError):
        lamina.oci.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_every_module_s_public_names_are_on_the_face() -> None:
    for path in [*_SRC.glob("_*.py"), _SRC.parent / "_ids.py"]:
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
                assert isinstance(node.value, ast.List)
                names = {elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)}
                if path.name == "_json.py":  # the face shows the limits and the writer only
                    names = {n for n in names if n.isupper() or n == "canonical_json"}
                assert names <= set(lamina.oci.__all__) | {"ALGORITHMS"}, path.name


def test_the_package_is_pure() -> None:
    """No disk or network access of its own: none of these modules is imported."""
    forbidden = {"os", "pathlib", "shutil", "socket", "http", "urllib", "subprocess", "sqlite3"}
    for path in [*_SRC.glob("*.py"), _SRC.parent / "_ids.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & forbidden, (path.name, roots & forbidden)
        assert "open(" not in path.read_text().replace("def open(", ""), path.name
