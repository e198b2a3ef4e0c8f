"""The store's public face: lazy, the value classes' fields exactly as DESIGN.md names them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lamina
import lamina.store
from lamina.store import CheckReport, Container, DiskUsage, GcReport, Image, Layer, Problem

SRC = str(Path(__file__).resolve().parents[2] / "src")


def modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC},
    ).stdout
    return set(json.loads(out))


def test_import_lamina_and_the_store_face_do_not_load_sqlite() -> None:
    for code in ("import lamina", "import lamina.store", "from lamina import store"):
        assert "sqlite3" not in modules_after(code), code
    assert "sqlite3" in modules_after("from lamina import Store")


def test_top_level_face() -> None:
    assert lamina.Store is lamina.store.Store
    assert "Store" in lamina.__all__


def test_value_class_fields() -> None:
    assert Image._fields == (
        "id",
        "digest",
        "names",
        "os",
        "architecture",
        "variant",
        "os_version",
        "created",
        "config",
        "layers",
        "size",
    )
    assert Layer._fields == (
        "chain_id",
        "diff_id",
        "digest",
        "media_type",
        "compressed_size",
        "size",
        "parent",
        "driver",
    )
    assert Container._fields == ("id", "name", "image_id", "layer_id", "created")
    assert CheckReport._fields == ("ok", "problems")
    assert Problem._fields == ("kind", "subject", "detail")
    assert GcReport._fields == ("removed", "reclaimed_bytes")
    assert DiskUsage._fields == ("images", "containers", "layers", "reclaimable")


def test_only_the_database_module_imports_sqlite3() -> None:
    """house.md: only store/_db imports sqlite3 (a grep over src/ is enough)."""
    import ast

    found = []
    for path in Path(SRC, "lamina").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "sqlite3" or n.startswith("sqlite3.") for n in names):
                found.append(str(path.relative_to(SRC)))
    assert found == ["lamina/store/_db.py"]
