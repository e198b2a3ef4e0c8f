"""windowsfilter views of image layers: a read-only overlay where it can be exact.

Every test compares the overlay view with the materialised view of the same
layer, entry by entry, and checks that the overlay really is a kernel mount
(or, for chains an overlay cannot show exactly, really is not one).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_windowsfilter_fixtures import E, base_layer, diff_layer_1, diff_layer_2, go_layer

from lamina import drivers
from lamina._fs import is_mountpoint, mounts_below, new_mount_api_supported
from lamina.drivers.windowsfilter import WindowsFilterDriver
from lamina.errors import InUseError


def _overlay_missing() -> str:
    if os.geteuid() != 0:
        return "overlay views need root (mount, whiteout device nodes)"
    with open("/proc/filesystems", encoding="ascii") as f:
        if not any(line.split()[-1:] == ["overlay"] for line in f):
            return "the kernel has no overlayfs"
    return ""


pytestmark = pytest.mark.skipif(bool(_overlay_missing()), reason=_overlay_missing() or "-")

Layers = list[tuple[str, Callable[[], list[E]], str | None]]

FIXTURES: Layers = [
    ("L0", base_layer, None),
    ("L1", diff_layer_1, "L0"),
    ("L2", diff_layer_2, "L1"),
]


def case_base() -> list[E]:
    return [
        E("dir", "Files", top=True),
        E("dir", "Files/Data"),
        E("file", "Files/Data/a.txt", b"a from the base"),
        E("file", "Files/old.txt", b"old spelling"),
        E("dir", "Files/Keep"),
        E("file", "Files/Keep/k.txt", b"kept"),
        E("dir", "Files/Keep/sub"),
        E("file", "Files/Keep/sub/s.txt", b"deep"),
        E("dir", "Files/Empty"),
    ]


def case_respelled() -> list[E]:
    """Overlay-exact: new spellings of lower names, case-folded deletions, own deletions."""
    t = 1_600_000_000_000_000_000
    return [
        E("dir", "Files", top=True, t=t),
        E("file", "Files/OLD.TXT", b"new spelling", t=t),  # replaces old.txt
        E("whiteout", "Files/KEEP/SUB/.wh.S.TXT"),  # deletes Keep/sub/s.txt
        E("dir", "Files/EMPTY", t=t),  # a new spelling of an empty lower directory
        E("file", "Files/EMPTY/e.txt", b"e", t=t),
        E("file", "Files/scratch.txt", b"deleted by its own layer", t=t),
        E("whiteout", "Files/.wh.SCRATCH.TXT"),
    ]


def case_replaced() -> list[E]:
    """Overlay-exact: a file replaces a directory spelled differently below it."""
    return [
        E("dir", "Files", top=True),
        E("file", "Files/keep", b"a file now"),
    ]


def case_split() -> list[E]:
    """Not overlay-exact: the merge shows Data/a.txt inside the newer spelling DATA."""
    return [
        E("dir", "Files", top=True),
        E("dir", "Files/DATA"),
        E("file", "Files/DATA/b.txt", b"b"),
    ]


def case_on_split() -> list[E]:
    return [E("dir", "Files", top=True), E("file", "Files/top.txt", b"top")]


CASES: Layers = [
    ("C0", case_base, None),
    ("C1", case_respelled, "C0"),
    ("C2", case_replaced, "C1"),
    ("S1", case_split, "C0"),
    ("S2", case_on_split, "S1"),
]
EXACT = {"L0", "L1", "L2", "C0", "C1", "C2"}


def open_driver(home: Path, view: str) -> WindowsFilterDriver:
    d = drivers.new_driver("windowsfilter", home, {"windowsfilter.view": view})
    assert isinstance(d, WindowsFilterDriver)
    return d


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    d = open_driver(tmp_path, "overlay")
    for name, make, parent in FIXTURES + CASES:
        d.create(name, parent)
        d.apply_diff(name, parent, io.BytesIO(go_layer(make())))
    yield tmp_path
    open_driver(tmp_path, "auto").cleanup()
    assert mounts_below(tmp_path) == []


def listing(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a reader of the view can see of each entry, bar inode numbers and atimes."""
    out: dict[str, tuple[object, ...]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for item in it:
                path = f"{rel}/{item.name}" if rel else item.name
                st = os.lstat(item.path)
                if stat.S_ISDIR(st.st_mode):
                    content: object = None
                    stack.append(path)
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(item.path)
                else:
                    content = hashlib.sha256(Path(item.path).read_bytes()).hexdigest()
                size = None if stat.S_ISDIR(st.st_mode) else st.st_size
                out[path] = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, content)
    return out


def view_of(d: WindowsFilterDriver, layer: str) -> tuple[dict[str, tuple[object, ...]], bool]:
    root = d.get(layer)
    try:
        return listing(root), is_mountpoint(root)
    finally:
        d.put(layer)


@pytest.mark.parametrize("layer", [name for name, _, _ in FIXTURES + CASES])
def test_overlay_view_equals_materialised_view(home: Path, layer: str) -> None:
    overlay, mounted = view_of(open_driver(home, "overlay"), layer)
    materialised, was_mounted = view_of(open_driver(home, "materialise"), layer)
    assert not was_mounted
    assert mounted == (layer in EXACT)
    assert overlay == materialised
    assert overlay  # every fixture layer shows something


def test_views_show_the_windows_merge(home: Path) -> None:
    d = open_driver(home, "overlay")
    c1, _ = view_of(d, "C1")
    assert "OLD.TXT" in c1 and "old.txt" not in c1
    assert "Keep/sub" in c1 and "Keep/sub/s.txt" not in c1 and "Keep/k.txt" in c1
    assert "EMPTY/e.txt" in c1 and "Empty" not in c1
    assert "scratch.txt" not in c1 and "SCRATCH.TXT" not in c1
    c2, _ = view_of(d, "C2")
    assert "keep" in c2 and stat.S_ISREG(c2["keep"][0])  # type: ignore[arg-type]
    assert not any(p.lower().startswith("keep/") for p in c2)
    s2, _ = view_of(d, "S2")
    assert {"DATA/a.txt", "DATA/b.txt", "top.txt"} <= set(s2) and "Data" not in s2


def test_case_folded_deletion_becomes_a_whiteout_of_the_lower_spelling(home: Path) -> None:
    tree = home / "windowsfilter/L1/.lamina/overlay/whiteouts"
    found = {str(p.relative_to(tree)) for p in tree.rglob("*") if stat.S_ISCHR(p.lstat().st_mode)}
    # the tar deletes Files/EMPTY.TXT; the base layer spells it empty.txt
    assert found == {"empty.txt", "Users/Public/readme.txt"}
    for name in found:
        assert os.lstat(tree / name).st_rdev == os.makedev(0, 0)
    # the directories of the tree stand in for the real ones: same attributes
    base_public = os.lstat(home / "windowsfilter/L1/Files/Users/Public")
    mine = os.lstat(tree / "Users/Public")
    assert (mine.st_mode, mine.st_mtime_ns) == (base_public.st_mode, base_public.st_mtime_ns)


def test_plans_are_made_at_import_and_say_why_not(home: Path) -> None:
    def plan(layer: str) -> dict[str, object]:
        path = home / "windowsfilter" / layer / ".lamina/overlay/plan.json"
        data: dict[str, object] = json.loads(path.read_text())
        return data

    assert plan("C1")["exact"] is True and plan("C1")["whiteouts"] == 4
    assert plan("S1")["exact"] is False and "DATA/a.txt" in str(plan("S1")["reason"])
    assert plan("S2")["exact"] is False and str(plan("S2")["reason"]).startswith("layer S1:")


def test_get_put_count_and_unmount_at_zero(home: Path) -> None:
    d = open_driver(home, "overlay")
    root = d.get("L2")
    assert d.get("L2") == root
    assert [m.fstype for m in mounts_below(home)] == ["overlay"]
    assert [m.mountpoint for m in mounts_below(home)] == [str(root)]
    assert "ro" in mounts_below(home)[0].options.split(",")
    with pytest.raises(OSError):
        (root / "new.txt").write_bytes(b"x")  # read-only: image layers never change
    d.put("L2")
    assert is_mountpoint(root) and d._mounter.count("L2") == 1
    with pytest.raises(InUseError):
        d.remove("L2")
    d.put("L2")
    assert mounts_below(home) == [] and not root.exists()
    with pytest.raises(InUseError):
        d.put("L2")
    d.remove("L2")
    assert mounts_below(home) == []


def test_a_crashed_holders_view_is_unmounted_by_cleanup_and_remove(home: Path) -> None:
    script = (
        "import os, sys\n"
        "from lamina import drivers\n"
        "opts = {'windowsfilter.view': 'overlay'}\n"
        f"d = drivers.new_driver('windowsfilter', {str(home)!r}, opts)\n"
        "d.get('L2')\n"
        "d.get('C1')\n"
        "os.kill(os.getpid(), 9)  # never put: its process dies\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    crashed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert crashed.returncode == -9, crashed.stderr
    assert len(mounts_below(home)) == 2
    # a plan half built when its process died
    half_built = home / "windowsfilter/L1/.lamina/overlay.new.999999999.0123456789ab"
    (half_built / "whiteouts").mkdir(parents=True)
    survivor = open_driver(home, "overlay")
    with pytest.raises(InUseError):
        survivor.remove("C1")  # C2 stands on it
    survivor.remove("C2")
    survivor.remove("C1")  # its dead holder's view goes with it
    assert len(mounts_below(home)) == 1
    survivor.cleanup()
    assert mounts_below(home) == []
    assert not half_built.exists()
    assert (home / "windowsfilter/L1/.lamina/overlay/plan.json").is_file()
    root = survivor.get("L2")  # a fresh view after the stale one
    try:
        assert (root / "Users/Public/new.txt").read_bytes() == b"new file\r\n"
    finally:
        survivor.put("L2")
    assert mounts_below(home) == []


def test_a_plan_follows_a_parent_filled_after_its_child_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    d = open_driver(tmp_path, "overlay")
    d.create("P")
    d.create("C", "P")
    before, mounted = view_of(d, "C")
    assert before == {} and mounted
    d.apply_diff("P", None, io.BytesIO(go_layer(base_layer())))
    after, mounted = view_of(d, "C")
    assert mounted and "Users/Public/readme.txt" in after
    assert after == view_of(open_driver(tmp_path, "materialise"), "C")[0]
    d.cleanup()
    assert mounts_below(tmp_path) == []


def test_status_tells_which_views_are_served(home: Path) -> None:
    assert ("Views", "overlay") in open_driver(home, "auto").status()
    assert dict(open_driver(home, "materialise").status())["Views"].startswith("materialised")


def test_layer_ids_that_overlay_option_syntax_would_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_WINDOWSFILTER_NOREEXEC", "1")
    d = open_driver(tmp_path, "overlay")
    names = ["base:1,x", "child\\2", "top 3"]
    for name, make, parent in zip(
        names, [base_layer, diff_layer_1, diff_layer_2], [None, *names[:2]], strict=True
    ):
        d.create(name, parent)
        d.apply_diff(name, parent, io.BytesIO(go_layer(make())))
    overlay, mounted = view_of(d, "top 3")
    # with the new mount API every path is its own lowerdir+; mount(2) cannot take a comma
    assert mounted == new_mount_api_supported("overlay")
    assert overlay == view_of(open_driver(tmp_path, "materialise"), "top 3")[0]
    d.cleanup()
    assert mounts_below(tmp_path) == []
