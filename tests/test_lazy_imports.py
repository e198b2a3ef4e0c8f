"""Every lamina command is a short process: it must import only what it uses.

Each check runs a fresh interpreter and looks at ``sys.modules`` afterwards,
so it asserts what was loaded, not how long it took (speed lives in the
benchmarks).  The public names must still all be there, loaded on first use.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import lamina
import lamina._fs
import lamina.archive
import lamina.drivers

# A script prints the lamina modules and the heavy stdlib modules it ended up with.
_REPORT = """
import json, sys
print(json.dumps(sorted(sys.modules)))
"""

# Loaded by none of the library-only paths below.
_NEVER_FOR_ARCHIVE = {
    "click",
    "lamina.cli",
    "lamina.drivers",
    "lamina.drivers.windowsfilter",
    "lamina.drivers.overlay",
    "lamina._fs",
    "lamina._demo",
    "lamina.archive.windows",
    "lamina.archive.windows._sddl",
    "lamina.archive._tarsplit",
    "subprocess",
    "secrets",
}


def _modules_after(code: str, cwd: Path) -> set[str]:
    env = dict(os.environ)
    env.pop("LAMINA_ROOT", None)
    env.pop("LAMINA_DRIVER", None)
    proc = subprocess.run(
        [sys.executable, "-c", code + _REPORT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def _cli_modules(args: list[str], cwd: Path) -> set[str]:
    """Run ``python -m lamina ARGS`` in-process under runpy and report its modules."""
    code = f"""
import runpy, sys
sys.argv = ["lamina", *{args!r}]
try:
    runpy.run_module("lamina", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
"""
    return _modules_after(code, cwd)


def _layer(path: Path) -> Path:
    src = path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello").write_text("hi\n")
    tar = path / "layer.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src / "etc", "etc")
    return tar


def test_import_lamina_loads_nothing_else(tmp_path: Path) -> None:
    loaded = _modules_after("import lamina", tmp_path)
    # only the package and its lazy-name helper
    assert {m for m in loaded if m.startswith("lamina")} == {"lamina", "lamina._lazy"}
    assert "dataclasses" not in loaded
    assert "typing" not in loaded


def test_apply_layer_loads_only_the_apply_engine(tmp_path: Path) -> None:
    tar = _layer(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    loaded = _modules_after(
        "from lamina import archive\n"
        f"with open({str(tar)!r}, 'rb') as f:\n"
        f"    archive.apply_layer(f, {str(dest)!r})\n",
        tmp_path,
    )
    assert (dest / "etc" / "hello").read_text() == "hi\n"
    assert "lamina.archive._apply" in loaded
    assert not loaded & _NEVER_FOR_ARCHIVE, loaded & _NEVER_FOR_ARCHIVE
    # the exporter and the tree comparison are other jobs
    assert "lamina.archive._export" not in loaded
    assert "lamina.archive._changes" not in loaded
    assert "logging" not in loaded


def test_export_tree_loads_only_the_exporter(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "file").write_bytes(b"data")
    loaded = _modules_after(
        "from lamina import archive\n"
        f"stream = archive.export_tree({str(tmp_path / 'root')!r})\n"
        "data = stream.read()\n"
        "stream.close()\n"
        "assert b'file' in data\n",
        tmp_path,
    )
    assert "lamina.archive._export" in loaded
    assert not loaded & _NEVER_FOR_ARCHIVE, loaded & _NEVER_FOR_ARCHIVE
    assert "lamina.archive._apply" not in loaded


@pytest.mark.parametrize("command", ["create", "rm"])
def test_vfs_commands_load_only_their_own_code(tmp_path: Path, command: str) -> None:
    root = tmp_path / "store"
    args = ["--root", str(root), "--driver", "vfs", "layer", command, "base"]
    loaded = _cli_modules(args, tmp_path)
    if command == "create":
        assert (root / "vfs" / "dir" / "base").is_dir()
    for unused in (
        "lamina.cli._windows",
        "lamina.cli._demo_cmd",
        "lamina.cli._diff",
        "lamina.cli._store",
        "lamina._demo",
        "lamina.archive.windows",
        "lamina.archive.windows._sddl",
        "lamina.archive._apply",
        "lamina.archive._export",
        "lamina.drivers.windowsfilter",
        "lamina.drivers.overlay",
        "lamina._fs._copy",  # a layer without parent is not copied
        "lamina._fs._quota",
        "lamina._fs._loopimage",
        "lamina._fs._probe",
        "lamina._fs._refstore",
        "subprocess",
        "secrets",
        "tarfile",
    ):
        assert unused not in loaded, unused
    assert "lamina.cli._layers" in loaded
    assert "lamina.drivers.vfs" in loaded


def test_vfs_apply_diff_loads_the_apply_engine_but_not_the_exporter(tmp_path: Path) -> None:
    tar = _layer(tmp_path)
    root = tmp_path / "store"
    _cli_modules(["--root", str(root), "--driver", "vfs", "layer", "create", "base"], tmp_path)
    loaded = _cli_modules(
        ["--root", str(root), "--driver", "vfs", "layer", "apply-diff", "base", str(tar)], tmp_path
    )
    assert (root / "vfs" / "dir" / "base" / "etc" / "hello").read_text() == "hi\n"
    assert "lamina.archive._apply" in loaded
    for unused in ("lamina.archive._export", "lamina.cli._windows", "lamina._demo", "subprocess"):
        assert unused not in loaded, unused


@pytest.mark.parametrize("module", [lamina, lamina.archive, lamina.drivers, lamina._fs])
def test_every_public_name_resolves(module: object) -> None:
    names: list[str] = module.__all__  # type: ignore[attr-defined]
    for name in names:
        assert getattr(module, name) is not None, name
    assert set(names) <= set(dir(module))
    with pytest.raises(AttributeError):
        module.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_lazy_names_are_the_defining_modules_objects() -> None:
    from lamina._change import Change
    from lamina.archive._apply import apply_layer
    from lamina.drivers._base import Driver

    assert lamina.Change is Change
    assert lamina.archive.Change is Change
    assert lamina.archive.apply_layer is apply_layer
    assert lamina.drivers.Driver is Driver
    assert lamina.archive is sys.modules["lamina.archive"]


# The value classes below were dataclasses; they are written out so that no hot
# path imports ``dataclasses``.  Their behaviour must not have changed.


def test_change_is_an_ordered_immutable_value() -> None:
    import copy
    import pickle

    from lamina import Change, ChangeKind

    add = Change("/etc", ChangeKind.ADD)
    mod = Change(path="/etc", kind=ChangeKind.MODIFY)
    assert sorted([add, Change("/a", ChangeKind.DELETE), mod]) == [
        Change("/a", ChangeKind.DELETE),
        mod,
        add,
    ]
    assert add == Change("/etc", ChangeKind.ADD) and add != mod
    assert hash(add) == hash(Change("/etc", ChangeKind.ADD))
    assert len({add, mod, Change("/etc", ChangeKind.ADD)}) == 2
    assert repr(add) == "Change(path='/etc', kind=<ChangeKind.ADD: 1>)"
    assert str(add) == "A /etc" and str(mod) == "C /etc"
    assert pickle.loads(pickle.dumps(add)) == add
    assert copy.deepcopy(add) == add
    with pytest.raises(AttributeError):
        add.path = "/other"
    with pytest.raises(TypeError):
        _ = add < ("/etc", ChangeKind.ADD)  # type: ignore[operator]
    assert (add == ("/etc", ChangeKind.ADD)) is False


def test_idmap_is_an_immutable_value() -> None:
    import pickle

    from lamina.archive import IDMap, IDRange

    parsed = IDMap.parse("0:100000:65536")
    built = IDMap((IDRange(0, 100000, 65536),), (IDRange(0, 100000, 65536),))
    assert parsed == built and hash(parsed) == hash(built)
    assert parsed != IDMap()
    assert IDMap().is_identity and not built.is_identity
    assert built.to_host(5, 6) == (100005, 100006)
    assert repr(IDRange(1, 2, 3)) == "IDRange(container_id=1, host_id=2, size=3)"
    assert repr(IDMap()) == "IDMap(uids=(), gids=())"
    assert pickle.loads(pickle.dumps(built)) == built
    with pytest.raises(AttributeError):
        built.uids = ()


# What only other commands need: a `lamina images` process must load none of it.
_NOT_FOR_IMAGES = (
    "lamina.cli._containers",
    "lamina.cli._system",
    "lamina.cli._progress",
    "lamina.cli._layers",
    "lamina.cli._diff",
    "lamina.cli._mount",
    "lamina.cli._windows",
    "lamina.cli._demo_cmd",
    "lamina._demo",
    "lamina.archive._export",
    "lamina.archive._apply",
    "lamina.archive._changes",
    "lamina.archive._wintar",
    "lamina.archive._sddl",
    "lamina.drivers.windowsfilter",
    "lamina.drivers.overlay",
    "rich",
    "secrets",
)


def test_images_loads_the_store_but_not_the_archive_engine(tmp_path: Path) -> None:
    root = tmp_path / "store"
    loaded = _cli_modules(["--root", str(root), "--driver", "vfs", "images"], tmp_path)
    assert "lamina.cli._images" in loaded
    assert "lamina.store" in loaded
    for unused in _NOT_FOR_IMAGES:
        assert unused not in loaded, unused


@pytest.mark.parametrize(
    ("args", "own"),
    [(["ps"], "lamina.cli._containers"), (["system", "df"], "lamina.cli._system")],
)
def test_listing_commands_load_neither_the_exporter_nor_rich(
    tmp_path: Path, args: list[str], own: str
) -> None:
    root = tmp_path / "store"
    loaded = _cli_modules(["--root", str(root), "--driver", "vfs", *args], tmp_path)
    assert own in loaded
    others = {"lamina.cli._containers", "lamina.cli._system", "lamina.cli._images"} - {own}
    if own == "lamina.cli._containers":
        others.discard("lamina.cli._images")  # shares the per-argument error reporting
    for unused in (
        *others,
        "lamina.cli._progress",
        "lamina.archive._export",
        "lamina.archive._apply",
        "lamina.cli._windows",
        "lamina._demo",
        "rich",
    ):
        assert unused not in loaded, unused


def test_load_without_a_terminal_does_not_load_rich(tmp_path: Path) -> None:
    """Progress bars only on a terminal: a piped or logged `lamina load` never imports rich."""
    tar = tmp_path / "empty.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("manifest.json")
        data = b"[]"
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    root = tmp_path / "store"
    code = f"""
import runpy, sys
sys.argv = ["lamina", "--root", {str(root)!r}, "--driver", "vfs", "load", "-i", {str(tar)!r}]
try:
    runpy.run_module("lamina", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
"""
    loaded = _modules_after(code, tmp_path)
    assert "lamina.cli._progress" in loaded
    assert "rich" not in loaded
    assert "lamina.cli._containers" not in loaded
