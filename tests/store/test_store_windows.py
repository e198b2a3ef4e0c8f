"""A Windows image: its layers go to windowsfilter in the same root, byte-exact out again."""

from __future__ import annotations

import sys
from pathlib import Path

from _images import oci_layout

from lamina import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers"))
from test_windowsfilter_fixtures import base_layer, go_layer


def test_windows_image_lives_in_windowsfilter_beside_linux_images(tmp_path: Path) -> None:
    windows_tar = go_layer(base_layer())
    built = oci_layout(tmp_path / "win", [("win:ltsc", [windows_tar])], os_name="windows")
    from _images import layer_tar

    oci_layout(tmp_path / "lin", [("lin:1", [layer_tar({"a": b"1"})])])
    with Store(tmp_path / "s", driver="vfs") as s:
        (win,) = s.load(tmp_path / "win")
        (lin,) = s.load(tmp_path / "lin")
        assert win.id == built.ids[0] and win.os == "windows"
        drivers = {layer.chain_id: layer.driver for layer in s.layers()}
        assert drivers[win.layers[0]] == "windowsfilter"
        assert drivers[lin.layers[0]] == "vfs"
        with s.layer_diff(win.layers[0]) as f:
            assert f.read() == windows_tar
        assert not (tmp_path / "s" / "tar-split" / (win.layers[0][7:] + ".gz")).exists()
        c = s.create_container(win)
        assert s.container(c.id).image_id == win.id
        sandbox = s.mount(c)
        (sandbox / "Files" / "hello.txt").write_text("hi")  # the sandbox keeps Files/ as on Windows
        s.unmount(c)
        assert [str(ch) for ch in s.changes(c)] == ["A /hello.txt"]
        committed = s.commit(c, "win:2")
        assert committed.os == "windows" and len(committed.layers) == 2
        assert {layer.driver for layer in s.layers() if layer.chain_id in committed.layers} == {
            "windowsfilter"
        }
        s.save([win, lin], tmp_path / "both.tar")
        report = s.check()
        assert report.ok, report.problems
        s.remove_container(c)
    with Store(tmp_path / "t") as t:
        loaded = t.load(tmp_path / "both.tar")
        assert [i.id for i in loaded] == [win.id, lin.id]
        with t.layer_diff(loaded[0].layers[0]) as f:
            assert f.read() == windows_tar
