"""The overlay driver's own behaviour: layout, mounts, depth, options, quota, crash safety."""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina._fs._loopimage import _attach_loop
from lamina._fs._mount import is_mountpoint, mount, mounts_below, umount
from lamina.drivers import new_driver
from lamina.drivers.overlay import OverlayDriver
from lamina.errors import (
    AlreadyExistsError,
    IncompatibleFilesystemError,
    InUseError,
    InvalidArchiveError,
    InvalidArgumentError,
    LaminaError,
    MaxDepthError,
    NotFoundError,
    PrerequisitesError,
    QuotaNotSupportedError,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")

MIB = 1 << 20


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[OverlayDriver]:
    d = new_driver("overlay", tmp_path / "root")
    assert isinstance(d, OverlayDriver)
    yield d
    d.cleanup()
    assert mounts_below(tmp_path) == []


def _write(root: Path, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _fill(path: Path, size: int) -> None:
    """Write ``size`` bytes and fsync (delayed allocation may only fail there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MIB):
            os.write(fd, b"t" * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)


def _tar(entries: list[tuple[str, bytes | None]]) -> io.BytesIO:
    """A layer tar: (name, content) with None for a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


# -- layout ------------------------------------------------------------------------


def test_layout_is_overlay2s(driver: OverlayDriver) -> None:
    home = driver.home
    driver.create("base")
    driver.create("mid", "base")
    driver.create_read_write("top", "mid")
    links = {}
    for layer in ("base", "mid", "top"):
        link = (home / layer / "link").read_text()
        assert len(link) == 26 and set(link) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        assert os.readlink(home / "l" / link) == f"../{layer}/diff"
        assert stat.S_IMODE(os.stat(home / layer / "diff").st_mode) == 0o755
        links[layer] = link
    assert not (home / "base" / "lower").exists()
    assert not (home / "base" / "work").exists()
    assert (home / "mid" / "lower").read_text() == f"l/{links['base']}"
    assert (home / "top" / "lower").read_text() == f"l/{links['mid']}:l/{links['base']}"
    assert stat.S_IMODE(os.stat(home / "top" / "work").st_mode) == 0o700
    assert (home / "base" / "committed").exists() and (home / "mid" / "committed").exists()
    assert not (home / "top" / "committed").exists()
    assert sorted(os.listdir(home / "l")) == sorted(links.values())
    meta = driver.get_metadata("top")
    assert meta == {
        "WorkDir": str(home / "top" / "work"),
        "MergedDir": str(home / "top" / "merged"),
        "UpperDir": str(home / "top" / "diff"),
        "LowerDir": f"{home / 'mid' / 'diff'}:{home / 'base' / 'diff'}",
    }
    assert "LowerDir" not in driver.get_metadata("base")


def test_reserved_and_invalid_ids(driver: OverlayDriver) -> None:
    for bad in ("l", ".staging", ".run", "a/b", "", ".."):
        with pytest.raises(InvalidArgumentError):
            driver.create(bad)
        assert not driver.exists(bad)
    driver.create("ok")
    with pytest.raises(AlreadyExistsError):
        driver.create("ok")
    with pytest.raises(NotFoundError):
        driver.create("child", "missing-parent")
    assert not driver.exists("child")
    assert os.listdir(driver.home / ".staging") == []


def test_longest_id(driver: OverlayDriver) -> None:
    long_id = "f" * 255
    driver.create(long_id)
    driver.create_read_write("e" * 255, long_id)
    with driver.mounted("e" * 255) as root:
        (root / "x").write_bytes(b"x")
    assert [str(c) for c in driver.changes("e" * 255, long_id)] == ["A /x"]


def test_status_reports_the_probes(driver: OverlayDriver) -> None:
    driver.create("a")
    status = dict(driver.status())
    assert status["Backing Filesystem"]
    assert status["Supports d_type"] == "true"
    assert status["Native Overlay Diff"] in ("true", "false")
    assert status["Layers"] == "1"
    assert int(status["Max Depth"]) == driver.max_lowers
    assert status["Runtime Directory"] == str(driver.runroot)
    assert "index=off" in status["Mount Options"]


def test_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        new_driver("overlay", tmp_path, {"overlay.nonsense": "1"})
    with pytest.raises(InvalidArgumentError):
        new_driver("overlay", tmp_path, {"size": "lots"})
    with pytest.raises(InvalidArgumentError):
        new_driver("overlay", tmp_path, {"mount_api": "maybe"})
    with pytest.raises(InvalidArgumentError):
        new_driver("overlay", tmp_path, {"detached_views": "yes"})
    with pytest.raises(InvalidArgumentError):
        new_driver("overlay", tmp_path, {"mountopt": "no_such_overlay_option=1"})
    d = new_driver("overlay", tmp_path, {"overlay2.size": "10M", "Overlay.Native_Diff": "false"})
    assert isinstance(d, OverlayDriver)
    assert dict(d.status())["Native Overlay Diff"] == "false"


def test_size_only_for_read_write_layers(driver: OverlayDriver) -> None:
    with pytest.raises(InvalidArgumentError):
        driver.create("ro", storage_opt={"size": "10M"})
    with pytest.raises(InvalidArgumentError):
        driver.create_read_write("rw", storage_opt={"inodes": "10"})
    with pytest.raises(InvalidArgumentError):
        driver.create_read_write("rw", storage_opt={"size": "ten"})
    assert not driver.exists("ro") and not driver.exists("rw")


# -- views ---------------------------------------------------------------------------


def test_base_layer_is_served_without_a_mount(driver: OverlayDriver) -> None:
    driver.create("base")
    root = driver.get("base")
    assert root == driver.home / "base" / "diff"
    assert mounts_below(driver.home) == []
    driver.put("base")
    with pytest.raises(InUseError):
        driver.put("base")


def test_get_mounts_once_and_put_unmounts_at_zero(driver: OverlayDriver) -> None:
    driver.create("base")
    with driver.mounted("base") as root:
        _write(root, "etc/hostname", b"base\n")
    driver.create_read_write("c", "base")
    first = driver.get("c")
    second = driver.get("c")
    assert first == second == driver.home / "c" / "merged"
    assert is_mountpoint(first)
    assert (first / "etc" / "hostname").read_bytes() == b"base\n"
    (first / "etc" / "hostname").write_bytes(b"container\n")
    assert (driver.home / "c" / "diff" / "etc" / "hostname").read_bytes() == b"container\n"
    assert (driver.home / "base" / "diff" / "etc" / "hostname").read_bytes() == b"base\n"
    assert driver.views() == {str(first): 1}
    driver.put("c")
    assert is_mountpoint(first)
    driver.put("c")
    assert not is_mountpoint(first)
    assert not first.exists()  # merged/ is removed at the last put
    assert driver.views() == {}


def test_parent_with_a_child_mounts_read_only(driver: OverlayDriver) -> None:
    driver.create("base")
    driver.create("mid", "base")
    with driver.mounted("mid") as root:
        _write(root, "f", b"mid")
    driver.create("top", "mid")  # mid is committed now
    with driver.mounted("mid") as root:
        assert (root / "f").read_bytes() == b"mid"
        with pytest.raises(OSError) as info:
            (root / "g").write_bytes(b"nope")
        assert info.value.errno == errno.EROFS
    with driver.mounted("top") as root:
        assert (root / "f").read_bytes() == b"mid"


def test_remove_refuses_a_mounted_layer_and_removes_its_link(driver: OverlayDriver) -> None:
    driver.create("base")
    driver.create_read_write("c", "base")
    link = (driver.home / "c" / "link").read_text()
    driver.get("c")
    with pytest.raises(InUseError):
        driver.remove("c")
    driver.put("c")
    driver.remove("c")
    assert not driver.exists("c")
    assert not os.path.lexists(driver.home / "l" / link)
    assert os.listdir(driver.home / ".removing") == []
    driver.remove("c")  # missing is fine


def _chain(driver: OverlayDriver, count: int, base: str = "base") -> str:
    driver.create(base)
    with driver.mounted(base) as root:
        _write(root, "bottom", b"base")
    parent = base
    for i in range(count):
        layer = f"{base}-{i}"
        driver.create(layer, parent)
        parent = layer
    return parent


def test_depth_limit_is_the_kernels(driver: OverlayDriver) -> None:
    if dict(driver.status())["Mount API"] != "fsconfig lowerdir+":
        pytest.skip("kernel without lowerdir+: the depth limit is the page size's (128)")
    assert driver.max_lowers == 500  # measured: the kernel's OVL_MAX_STACK
    top = _chain(driver, 500)
    assert len((driver.home / top / "lower").read_text().split(":")) == 500
    with pytest.raises(MaxDepthError):
        driver.create("too-deep", top)
    assert not driver.exists("too-deep")
    assert not (driver.home / top / "committed").exists()
    with driver.mounted(top) as root:
        assert (root / "bottom").read_bytes() == b"base"
    # the parent of the top mounts read-only with itself as a 500th lower
    with driver.mounted("base-498") as root:
        assert (root / "bottom").read_bytes() == b"base"


def test_classic_mount_uses_short_relative_paths(tmp_path: Path) -> None:
    driver = new_driver("overlay", tmp_path / "root", {"mount_api": "legacy"})
    assert isinstance(driver, OverlayDriver)
    try:
        assert driver.max_lowers == 128
        top = _chain(driver, 128)
        # absolute lower paths alone would not fit in a page of mount options
        absolute = sum(len(str(driver.home / f"base-{i}" / "diff")) + 1 for i in range(127))
        assert absolute > os.sysconf("SC_PAGESIZE")
        with driver.mounted(top) as root:
            assert (root / "bottom").read_bytes() == b"base"
            options = next(m for m in mounts_below(driver.home) if m.fstype == "overlay")
            assert "lowerdir=l/" in options.super_options
        with pytest.raises(MaxDepthError):
            driver.create("too-deep", top)
    finally:
        driver.cleanup()


# -- apply and diff --------------------------------------------------------------------


def test_apply_diff_writes_overlay_whiteouts_without_mounting(driver: OverlayDriver) -> None:
    driver.create("base")
    size = driver.apply_diff("base", None, _tar([("d", None), ("d/a", b"aa"), ("d/b", b"b")]))
    assert size == 3
    driver.create("child", "base")
    tar = _tar([("d", None), ("d/.wh.a", b""), ("e", None), ("e/.wh..wh..opq", b"")])
    assert driver.apply_diff("child", "base", tar) == 0
    assert mounts_below(driver.home) == []
    diff = driver.home / "child" / "diff"
    st = os.lstat(diff / "d" / "a")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(diff / "e", "trusted.overlay.opaque") == b"y"
    with driver.mounted("child") as root:
        assert sorted(os.listdir(root / "d")) == ["b"]
    # a second layer tar into the same (no longer empty) layer goes in place
    assert driver.apply_diff("child", "base", _tar([("d", None), ("d/c", b"cc")])) == 2
    with driver.mounted("child") as root:
        assert sorted(os.listdir(root / "d")) == ["b", "c"]
    getter = driver.diff_getter("child")
    try:
        with pytest.raises(NotFoundError):
            getter.get("d/a")  # whited out here, although the parent has it
    finally:
        getter.close()


def test_child_inherits_the_parents_root(driver: OverlayDriver) -> None:
    driver.create("base")
    with driver.mounted("base") as view:  # the archive engine skips "./" entries
        os.chown(view, 7, 8)
        os.chmod(view, 0o750)
    driver.create("child", "base")
    driver.create_read_write("grandchild", "child")
    for layer in ("base", "child", "grandchild"):
        with driver.mounted(layer) as view:
            st = os.stat(view)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 7, 8), layer
    driver.create("fresh")
    with driver.mounted("fresh") as view:
        st = os.stat(view)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)


def test_failed_apply_leaves_the_layer_untouched(driver: OverlayDriver) -> None:
    driver.create("base")
    good = _tar([("a", b"1" * 5000), ("b", b"2" * 5000)]).getvalue()
    with pytest.raises(LaminaError):
        driver.apply_diff("base", None, io.BytesIO(good[: 512 + 2048]))
    assert os.listdir(driver.home / "base" / "diff") == []
    assert [n for n in os.listdir(driver.home / "base") if n.startswith(".apply")] == []
    assert driver.apply_diff("base", None, io.BytesIO(good)) == 10000


def test_truncated_tar_is_an_archive_error(driver: OverlayDriver) -> None:
    driver.create("base")
    with pytest.raises(InvalidArchiveError):
        driver.apply_diff("base", None, io.BytesIO(b"\x01" * 700))


def test_native_and_naive_paths_agree(tmp_path: Path) -> None:
    results = []
    for native in ("auto", "false"):
        d = new_driver("overlay", tmp_path / native, {"native_diff": native})
        try:
            d.create("base")
            with d.mounted("base") as root:
                _write(root, "keep", b"k")
                _write(root, "dir/old", b"o")
                _write(root, "dir/sub/deep", b"d")
            d.create("c", "base")
            with d.mounted("c") as root:
                os.unlink(root / "dir" / "old")
                _write(root, "keep", b"kk")
                _write(root, "new/file", b"n")
            changes = [str(c) for c in d.changes("c", "base")]
            with d.diff("c", "base") as stream:
                data = io.BytesIO(stream.read())
            with tarfile.open(fileobj=data) as tar:
                names = sorted(m.name.rstrip("/") for m in tar)
            results.append((changes, names, d.diff_size("c", "base")))
        finally:
            d.cleanup()
    assert results[0] == results[1]
    changes, names, size = results[0]
    assert changes == ["C /dir", "D /dir/old", "C /keep", "A /new", "A /new/file"]
    assert names == ["dir", "dir/.wh.old", "keep", "new", "new/file"]
    assert size == 3


def test_diff_getter_reads_without_mounting(driver: OverlayDriver) -> None:
    driver.create("base")
    driver.apply_diff("base", None, _tar([("etc", None), ("etc/os-release", b"ID=x\n")]))
    driver.create("c", "base")
    driver.apply_diff("c", "base", _tar([("etc", None), ("etc/motd", b"hi\n")]))
    getter = driver.diff_getter("c")
    try:
        assert mounts_below(driver.home) == []
        with getter.get("etc/motd") as f:
            assert f.read() == b"hi\n"
        with getter.get("./etc/os-release") as f:
            assert f.read() == b"ID=x\n"
        with pytest.raises(NotFoundError):
            getter.get("etc/nothing")
        with pytest.raises(InvalidArgumentError):
            getter.get("../escape")
    finally:
        getter.close()


def test_diff_getter_hides_what_the_view_hides(driver: OverlayDriver) -> None:
    """Lowers are searched as overlayfs does: an opaque or replaced directory stops the search."""
    driver.create("base")
    driver.apply_diff(
        "base",
        None,
        _tar([("d", None), ("d/x", b"x"), ("e", None), ("e/y", b"y"), ("f", None), ("f/z", b"z")]),
    )
    driver.create("child", "base")
    driver.apply_diff(
        "child",
        "base",
        _tar([("d", None), ("d/.wh..wh..opq", b""), ("d/new", b"n"), ("e", b"now a file")]),
    )
    with driver.mounted("child") as root:
        assert sorted(os.listdir(root / "d")) == ["new"]
        assert (root / "e").is_file()
        assert (root / "f" / "z").read_bytes() == b"z"
    getter = driver.diff_getter("child")
    try:
        for hidden in ("d/x", "e/y"):
            with pytest.raises(NotFoundError):
                getter.get(hidden)
        for name, data in (("d/new", b"n"), ("e", b"now a file"), ("f/z", b"z")):
            with getter.get(name) as f:
                assert f.read() == data
    finally:
        getter.close()


# -- quota ---------------------------------------------------------------------------


def _loop_backing_files() -> list[str]:
    return [p.read_text().strip() for p in Path("/sys/block").glob("loop*/loop/backing_file")]


def test_size_limit_with_a_loop_image(driver: OverlayDriver) -> None:
    if dict(driver.status())["Quota"].startswith("unsupported"):
        pytest.skip(dict(driver.status())["Quota"])
    driver.create("base")
    with driver.mounted("base") as root:
        _write(root, "big-in-image", b"i" * (4 * MIB))  # the image does not count
    driver.create_read_write("c", "base", storage_opt={"size": "20M"})
    home = driver.home
    if (home / "c" / "quota.img").exists():
        assert os.readlink(home / "c" / "diff") == "quota/diff"
        assert str(home / "c" / "quota.img") in _loop_backing_files()
    with driver.mounted("c") as root:
        assert (root / "big-in-image").stat().st_size == 4 * MIB
        _write(root, "fits", b"f" * (10 * MIB))
        with pytest.raises(OSError) as info:
            _fill(root / "too-big", 20 * MIB)
        assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
    driver.cleanup()  # unmounts the image: nothing is held
    assert mounts_below(home) == []
    with driver.mounted("c") as root:  # mounted again on demand, data kept
        assert (root / "fits").stat().st_size == 10 * MIB
    assert [c.path for c in driver.changes("c", "base")] == ["/fits", "/too-big"]
    driver.remove("c")
    assert mounts_below(home) == []
    assert str(home / "c" / "quota.img") not in _loop_backing_files()
    assert not any(".removing" in f for f in _loop_backing_files())


def test_cleanup_leaves_an_image_in_use_mounted_once(driver: OverlayDriver) -> None:
    """A file open in a limited layer (no view held) keeps its image mounted, and only once.

    Detaching it lazily would let the next use mount the same image a second
    time beside the detached one: two ext4 instances writing one file.
    """
    if dict(driver.status())["Quota"].startswith("unsupported"):
        pytest.skip(dict(driver.status())["Quota"])
    driver.create("base")
    driver.create_read_write("c", "base", storage_opt={"size": "8M"})
    image, quota = driver.home / "c" / "quota.img", driver.home / "c" / "quota"
    if not image.exists():
        pytest.skip("the size limit here is a project quota, not an image")
    upper = Path(driver.get_metadata("c")["UpperDir"])
    with open(upper / "being-written", "wb") as f:  # say, an apply_diff in another process
        driver.cleanup()
        assert is_mountpoint(quota)
        f.write(b"data")
        assert driver.diff_size("c", "base") == 0  # not flushed yet; the layer still works
        assert _loop_backing_files().count(str(image)) == 1
    driver.cleanup()
    assert not is_mountpoint(quota)
    with driver.mounted("c") as root:
        assert (root / "being-written").read_bytes() == b"data"


def test_default_size_option_applies_to_read_write_layers(tmp_path: Path) -> None:
    driver = new_driver("overlay", tmp_path / "root", {"size": "8M", "quota": "loop"})
    try:
        driver.create("image-layer")
        driver.create_read_write("container", "image-layer")
        assert (driver.home / "container" / "quota.img").stat().st_size == 8 * MIB
        assert not (driver.home / "image-layer" / "quota.img").exists()
    finally:
        driver.cleanup()


def test_project_quota_is_refused_off_xfs(tmp_path: Path) -> None:
    driver = new_driver("overlay", tmp_path / "root", {"quota": "project"})
    assert isinstance(driver, OverlayDriver)
    try:
        if driver.backing_fs == "xfs":
            pytest.skip("the test directory is on XFS")
        driver.create("base")
        with pytest.raises(QuotaNotSupportedError):
            driver.create_read_write("c", "base", storage_opt={"size": "10M"})
        assert not driver.exists("c")
        assert os.listdir(driver.home / ".staging") == []
    finally:
        driver.cleanup()


# -- start-up checks -------------------------------------------------------------------


def _loop_fs(tmp_path: Path, mkfs: list[str], size: int = 64 * MIB) -> Iterator[Path]:
    image, mnt = tmp_path / "fs.img", tmp_path / "fs"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    loop, device = _attach_loop(image)
    try:
        mount(device, mnt, mkfs[0].split(".")[-1], 0, "")
    finally:
        os.close(loop)
    try:
        yield mnt
    finally:
        while is_mountpoint(mnt):
            umount(mnt)


def test_refuses_a_filesystem_without_d_type(tmp_path: Path) -> None:
    for mnt in _loop_fs(tmp_path, ["mkfs.ext4", "-q", "-F", "-O", "^filetype"]):
        with pytest.raises(IncompatibleFilesystemError) as info:
            new_driver("overlay", mnt / "root")
        assert "d_type" in str(info.value)


def test_refuses_overlay_on_overlay_and_selection_falls_back(tmp_path: Path) -> None:
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    mount(
        "overlay",
        tmp_path / "merged",
        "overlay",
        0,
        f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}",
    )
    try:
        with pytest.raises(IncompatibleFilesystemError):
            new_driver("overlay", tmp_path / "merged" / "root")
        try:
            chosen = new_driver(None, tmp_path / "merged" / "root")
        except LaminaError as exc:
            pytest.skip(f"no fallback driver here: {exc}")
        assert chosen.name != "overlay"
    finally:
        umount(tmp_path / "merged")


def test_not_root_is_a_prerequisites_error(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    code = textwrap.dedent(
        f"""
        import os, sys
        # import first: the interpreter's own files may be unreadable for nobody
        import lamina.drivers.overlay
        from lamina.drivers import new_driver
        from lamina.errors import PrerequisitesError
        os.setgid(65534); os.setuid(65534)
        try:
            new_driver("overlay", {str(tmp_path / "root")!r})
        except PrerequisitesError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(1)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "root" in proc.stdout
    assert issubclass(PrerequisitesError, LaminaError)


# -- crash safety ---------------------------------------------------------------------------


def test_cleanup_sweeps_crash_leftovers(driver: OverlayDriver) -> None:
    home = driver.home
    driver.create("base")
    driver.create("keep", "base")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # a create that died before its rename, with its short link already made
    half = home / ".staging" / f"new.{dead}.abcdef012345"
    (half / "diff").mkdir(parents=True)
    os.symlink("../new/diff", home / "l" / ("A" + "B" * 25))
    # a remove that died after its rename
    gone = home / ".removing" / f"old.{dead}.abcdef012345"
    (gone / "diff" / "x").mkdir(parents=True)
    # an apply that died midway
    (home / "keep" / f".apply.{dead}.abcdef012345" / "partial").mkdir(parents=True)
    # a create that died between its rename and... its link (simulated)
    keep_link = (home / "keep" / "link").read_text()
    os.unlink(home / "l" / keep_link)
    driver.cleanup()
    assert os.listdir(home / ".staging") == []
    assert os.listdir(home / ".removing") == []
    assert not os.path.lexists(home / "l" / ("A" + "B" * 25))
    assert os.readlink(home / "l" / keep_link) == "../keep/diff"
    assert sorted(os.listdir(home / "keep")) == ["diff", "link", "lower", "work"]
    with driver.mounted("keep") as root:
        assert os.listdir(root) == []


_CRASHER = textwrap.dedent(
    """
    import sys
    from lamina.drivers import new_driver
    d = new_driver("overlay", sys.argv[1])
    parent = None
    i = 0
    print("ready", flush=True)
    while True:
        layer = f"layer-{i}"
        if i % 3 == 2:
            d.create_read_write(layer, parent, storage_opt={"size": "4M"})
            d.remove(layer)
        else:
            d.create(layer, parent)
            parent = layer
        i += 1
    """
)


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.7])
def test_kill_during_create_and_remove_leaves_a_clean_store(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.kill()
    proc.wait()
    driver = new_driver("overlay", root)
    assert isinstance(driver, OverlayDriver)
    driver.cleanup()
    home = driver.home
    assert os.listdir(home / ".staging") == []
    if (home / ".removing").exists():
        assert os.listdir(home / ".removing") == []
    layers = [n for n in os.listdir(home) if not n.startswith(".") and n != "l"]
    links = {os.readlink(home / "l" / n) for n in os.listdir(home / "l")}
    assert links == {f"../{n}/diff" for n in layers}
    for layer in layers:
        assert (home / layer / "diff").is_dir()
        with driver.mounted(layer) as view:
            assert view.is_dir()
    driver.cleanup()
    assert mounts_below(tmp_path) == []


def test_set_quota_with_xfs_project_quota(xfs_pquota: Path) -> None:
    """On XFS mounted with pquota the size limit is a project quota, not an image."""
    from lamina.drivers.testsuite import run_set_quota

    mnt = xfs_pquota
    driver = new_driver("overlay", mnt / "root", {"quota": "project"})
    assert isinstance(driver, OverlayDriver)
    try:
        assert dict(driver.status())["Quota"] == "xfs project quota"
        run_set_quota(driver, "overlay", required=True)
        assert not (driver.home / "overlayTest" / "quota.img").exists()
        assert (driver.home / "overlayTest" / "quota").read_text().startswith("project ")
    finally:
        driver.cleanup()


def test_probe_verdicts_are_kept_for_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second driver on the store trusts the probe file instead of mounting scratch overlays."""
    from lamina._fs import _probe
    from lamina.drivers.overlay import _driver

    first = new_driver("overlay", tmp_path / "root")
    assert isinstance(first, OverlayDriver)
    depth = first.max_lowers
    first.create("base")
    text = (first.runroot / "probes").read_text()
    assert "mount ok" in text and "d_type 1" in text

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("probed again")

    monkeypatch.setattr(_probe, "_cache", {})  # as in a fresh process
    for name in ("probe_overlay_mount", "supports_d_type", "overlay_max_lowers"):
        monkeypatch.setattr(_driver, name, refuse)
    second = new_driver("overlay", tmp_path / "root")
    assert isinstance(second, OverlayDriver)
    assert second.max_lowers == depth
    with second.mounted("base") as root:
        assert root.is_dir()
    # another kernel, boot or filesystem: the key differs and the probes run again
    (first.runroot / "probes").write_text(text.replace("key ", "key other-boot ", 1))
    with pytest.raises(AssertionError, match="probed again"):
        new_driver("overlay", tmp_path / "root")
    first.cleanup()
    second.cleanup()


def test_view_over_a_size_limited_parent_mounts_its_image_on_demand(
    driver: OverlayDriver,
) -> None:
    """After a reboot (here: cleanup) a limited parent's image is mounted by the child's get."""
    if dict(driver.status())["Quota"].startswith("unsupported"):
        pytest.skip(dict(driver.status())["Quota"])
    driver.create("base")
    driver.create_read_write("limited", "base", storage_opt={"size": "8M"})
    if not (driver.home / "limited" / "quota.img").exists():
        pytest.skip("the size limit here is a project quota, not an image")
    with driver.mounted("limited") as root:
        _write(root, "from-limited", b"kept")
    driver.create("child", "limited")
    driver.cleanup()  # unmounts the image: the parent's diff/ dangles
    assert not is_mountpoint(driver.home / "limited" / "quota")
    with driver.mounted("child") as root:
        assert (root / "from-limited").read_bytes() == b"kept"
    assert is_mountpoint(driver.home / "limited" / "quota")


def test_detached_unmount_from_another_driver_needs_no_chain_walk(tmp_path: Path) -> None:
    """``lamina mount`` / ``lamina unmount`` as two processes; too many unmounts refused."""
    options = {"detached_views": "true"}
    a = new_driver("overlay", tmp_path / "root", options)
    a.create("base")
    a.create("top", "base")
    view = a.mount("top")
    assert is_mountpoint(view)
    b = new_driver("overlay", tmp_path / "root", options)
    b.unmount("top")
    assert not is_mountpoint(view)
    with pytest.raises(InUseError):
        b.unmount("top")
    direct = a.mount("base")  # a layer without parent is served as its diff/
    assert direct == Path(a.get_metadata("base")["UpperDir"])
    b.unmount("base")
    with pytest.raises(InUseError):
        b.unmount("base")
    a.cleanup()
    assert mounts_below(tmp_path) == []
