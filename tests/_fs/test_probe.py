"""Kernel and backing-filesystem probes: what they find and how they are cached."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lamina._fs import _probe
from lamina._fs._probe import (
    ProbeFile,
    backing_fs,
    boot_id,
    overlay_max_lowers,
    probe_native_diff,
    probe_overlay_mount,
    supports_d_type,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts")
_PARAMS = Path("/sys/module/overlay/parameters")


def _off_options() -> tuple[str, ...]:
    return tuple(
        f"{p}=off" for p in ("index", "redirect_dir", "metacopy") if (_PARAMS / p).exists()
    )


def test_backing_fs_names_the_filesystem(tmp_path: Path) -> None:
    assert backing_fs("/proc") == "proc"
    assert backing_fs(tmp_path)  # some name, never empty
    assert len(boot_id()) >= 16


def test_d_type_on_the_test_filesystem(tmp_path: Path) -> None:
    if backing_fs(tmp_path) in ("extfs", "xfs", "btrfs", "tmpfs"):
        assert supports_d_type(tmp_path)
    assert os.listdir(tmp_path) == []  # the scratch directory is gone


@root_only
def test_overlay_mount_probe_leaves_nothing(tmp_path: Path) -> None:
    probe_overlay_mount(tmp_path, _off_options())
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError):
        probe_overlay_mount(tmp_path, ("no_such_option=1",))
    assert os.listdir(tmp_path) == []


@root_only
def test_max_lowers_is_measured() -> None:
    found = overlay_max_lowers()
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) >= (6, 8):
        assert found == 500  # OVL_MAX_STACK since Linux 3.19
    else:
        assert found is None or found >= 128


@root_only
def test_native_diff_probe_sees_redirects_and_metacopy(tmp_path: Path) -> None:
    plain = probe_native_diff(tmp_path, _off_options())
    assert plain.native, plain.reason
    if (_PARAMS / "redirect_dir").exists():
        redirect = probe_native_diff(tmp_path, ("index=off", "redirect_dir=on"))
        assert not redirect.native and "redirect" in redirect.reason
    if (_PARAMS / "metacopy").exists():
        meta = probe_native_diff(tmp_path, ("index=off", "redirect_dir=on", "metacopy=on"))
        assert not meta.native and meta.metacopy
    assert os.listdir(tmp_path) == []


@root_only
def test_native_diff_verdict_is_cached_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "native-diff.json"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setattr(_probe, "_cache", {})  # as in a fresh process
    first = probe_native_diff(data_dir, _off_options(), cache)
    stored = json.loads(cache.read_text())
    assert stored["key"]["kernel"] == os.uname().release
    assert stored["key"]["boot_id"] == boot_id()
    assert stored["result"]["native"] == first.native
    # a new process (empty in-memory cache) trusts the file while the key matches
    monkeypatch.setattr(_probe, "_cache", {})
    stored["result"] = {"native": False, "reason": "from the cache file", "metacopy": False}
    cache.write_text(json.dumps(stored))
    assert probe_native_diff(data_dir, _off_options(), cache).reason == "from the cache file"
    # another kernel or boot: probed again
    monkeypatch.setattr(_probe, "_cache", {})
    stored["key"]["boot_id"] = "another boot"
    cache.write_text(json.dumps(stored))
    assert probe_native_diff(data_dir, _off_options(), cache) == first


@root_only
def test_cache_tells_reformatted_filesystems_apart(tmp_path: Path) -> None:
    """Loop device numbers are reused; a new filesystem on the same device is probed anew."""
    import subprocess

    from lamina._fs._loopimage import _attach_loop
    from lamina._fs._mount import mount, umount

    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    results = []
    for features in (["-O", "^filetype"], []):
        with open(image, "wb") as f:
            f.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", *features, str(image)], check=True)
        loop, device = _attach_loop(image)
        try:
            mount(device, mnt, "ext4", 0, "")
        finally:
            os.close(loop)
        try:
            results.append((os.stat(mnt).st_dev, supports_d_type(mnt)))
        finally:
            umount(mnt)
    assert [ok for _, ok in results] == [False, True]


def test_probe_file_keeps_values_for_its_key_only(tmp_path: Path) -> None:
    path = tmp_path / "probes"
    probes = ProbeFile(path, "fs-1", "index=off")
    assert probes.get("max_lowers") is None
    probes.put("max_lowers", "500")
    probes.put("mount", "ok")
    probes.save()
    again = ProbeFile(path, "fs-1", "index=off")  # another process, same key
    assert again.get("max_lowers") == "500" and again.get("mount") == "ok"
    assert ProbeFile(path, "fs-2", "index=off").get("max_lowers") is None
    assert ProbeFile(path, "fs-1", "index=on").get("mount") is None
    assert path.read_text().splitlines()[0].startswith(f"key {boot_id()} {os.uname().release} ")
    assert [p.name for p in tmp_path.iterdir()] == ["probes"]  # no temporary file left


def test_probe_file_survives_garbage_and_unwritable_places(tmp_path: Path) -> None:
    path = tmp_path / "probes"
    path.write_bytes(b"\xff\xfe not a probe file\n")
    probes = ProbeFile(path, "fs")
    assert probes.get("mount") is None
    probes.put("mount", "ok")
    probes.save()
    assert ProbeFile(path, "fs").get("mount") == "ok"
    lost = ProbeFile(tmp_path / "missing-dir" / "probes", "fs")
    lost.put("mount", "ok")
    lost.save()  # only means probing again next time
    assert not (tmp_path / "missing-dir").exists()


def test_boot_id_is_read_once() -> None:
    assert boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert boot_id() is boot_id()
