"""The image-level commands on a real store: output formats, errors and exit statuses.

Every test loads an archive built with tarfile and json (conftest's
``docker_archive``), so what lamina reads was not written by lamina, and then
looks at what the commands print and at what the store holds afterwards.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from lamina.cli._progress import CountingReader, Progress

Run = Callable[..., Result]
Ok = Callable[[Result], str]
OneLineError = Callable[[Result, int], str]
Archive = Callable[..., tuple[bytes, str]]

BASE = {
    "etc": None,
    "etc/hostname": b"busy\n",
    "etc/motd": b"welcome\n",
    "bin": None,
    "bin/sh": b"#!/bin/true\n",
    "bin/ash": "->sh",
}
TOP = {"usr": None, "usr/share": None, "usr/share/doc.txt": b"docs\n"}


@pytest.fixture
def busy(tmp_path: Path, docker_archive: Archive) -> tuple[Path, str]:
    """``busy:latest``, two layers, as a docker-archive file; and its image id."""
    data, image_id = docker_archive([BASE, TOP], ["busy:latest"])
    path = tmp_path / "busy.tar"
    path.write_bytes(data)
    return path, image_id


@pytest.fixture
def loaded(lamina: Run, ok: Ok, busy: tuple[Path, str]) -> str:
    ok(lamina("load", "-q", "-i", str(busy[0])))
    return busy[1]


def _hex(image_id: str) -> str:
    return image_id.removeprefix("sha256:")


# --- load, images ---------------------------------------------------------------------------


def test_load_from_a_file_prints_the_names_like_docker(
    lamina: Run, ok: Ok, busy: tuple[Path, str]
) -> None:
    result = lamina("load", "-i", str(busy[0]))
    assert ok(result) == "Loaded image: busy:latest\n"
    # not a terminal: one progress line on stderr, nothing on stdout but the result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Loading {busy[0]}: 1 image (")


def test_load_quiet_prints_no_progress(lamina: Run, ok: Ok, busy: tuple[Path, str]) -> None:
    result = lamina("load", "-q", "-i", str(busy[0]))
    assert ok(result) == "Loaded image: busy:latest\n"
    assert result.stderr == ""


def test_load_from_standard_input(lamina: Run, ok: Ok, busy: tuple[Path, str]) -> None:
    result = lamina("load", input=busy[0].read_bytes())
    assert ok(result) == "Loaded image: busy:latest\n"
    assert ok(lamina("images", "-q", "--no-trunc")) == busy[1] + "\n"


def test_load_of_an_unnamed_image_prints_its_id(
    lamina: Run, ok: Ok, docker_archive: Archive
) -> None:
    data, image_id = docker_archive([BASE], [])
    assert ok(lamina("load", "-q", input=data)) == f"Loaded image ID: {image_id}\n"
    table = ok(lamina("images")).splitlines()
    assert table[1].split()[:3] == ["<none>", "<none>", _hex(image_id)[:12]]


def test_images_table(lamina: Run, ok: Ok, loaded: str) -> None:
    lines = ok(lamina("images")).splitlines()
    assert re.split(r"\s{3,}", lines[0]) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert len(lines) == 2
    cells = re.split(r"\s{3,}", lines[1])
    assert cells[:3] == ["busy", "latest", _hex(loaded)[:12]]
    assert cells[3].endswith(" ago")  # created 2024-01-02
    assert re.fullmatch(r"[0-9.]+(B|kB|MB)", cells[4]), cells[4]
    # the columns line up: each header starts where its cells start
    assert lines[1].index(_hex(loaded)[:12]) == lines[0].index("IMAGE ID")


def test_images_quiet_no_trunc_digests_and_json(lamina: Run, ok: Ok, loaded: str) -> None:
    assert ok(lamina("images", "-q")) == _hex(loaded)[:12] + "\n"
    assert ok(lamina("images", "-q", "--no-trunc")) == loaded + "\n"
    lines = ok(lamina("images", "--digests")).splitlines()
    assert re.split(r"\s{3,}", lines[0])[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    document = json.loads(ok(lamina("images", "--format", "json")))
    assert isinstance(document, list) and len(document) == 1
    assert document[0]["Id"] == loaded
    assert document[0]["RepoTags"] == ["busy:latest"]
    assert document[0]["Names"] == ["docker.io/library/busy:latest"]
    assert document[0]["Os"] == "linux" and document[0]["Architecture"] == "amd64"
    assert len(document[0]["Layers"]) == 2


def test_images_of_a_repository(lamina: Run, ok: Ok, loaded: str) -> None:
    ok(lamina("tag", "busy", "other/app:1"))
    rows = ok(lamina("images", "other/app")).splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["other/app", "1"]]
    assert ok(lamina("images", "busy:nope")).splitlines()[1:] == []


def test_images_of_an_empty_store(lamina: Run, ok: Ok) -> None:
    assert ok(lamina("images")).splitlines() == ["REPOSITORY   TAG   IMAGE ID   CREATED   SIZE"]
    assert ok(lamina("images", "-q")) == ""
    assert json.loads(ok(lamina("images", "--format", "json"))) == []


def test_load_of_garbage_is_exit_5_and_adds_nothing(
    lamina: Run, ok: Ok, one_line_error: OneLineError
) -> None:
    one_line_error(lamina("load", "-q", input=b"\xff\xd8\xff\xe0 a JPEG, not an archive" * 50), 5)
    assert ok(lamina("images", "-q")) == ""


def test_load_with_a_layer_that_does_not_match_its_digest_is_exit_10(
    lamina: Run, ok: Ok, one_line_error: OneLineError, docker_archive: Archive
) -> None:
    data, _ = docker_archive([BASE, TOP], ["liar:1"], lie_about_layer=1)
    one_line_error(lamina("load", "-q", input=data), 10)
    assert ok(lamina("images", "-q")) == ""


def test_load_of_a_missing_file_is_a_usage_error(lamina: Run, tmp_path: Path) -> None:
    result = lamina("load", "-i", str(tmp_path / "nope.tar"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


# --- tag, rmi, inspect ----------------------------------------------------------------------


def test_tag_and_rmi_of_one_name_untags_only(lamina: Run, ok: Ok, loaded: str) -> None:
    ok(lamina("tag", _hex(loaded)[:8], "localhost:5000/copy:2"))
    repos = {tuple(row.split()[:2]) for row in ok(lamina("images")).splitlines()[1:]}
    assert repos == {("busy", "latest"), ("localhost:5000/copy", "2")}
    assert ok(lamina("rmi", "localhost:5000/copy:2")) == "Untagged: localhost:5000/copy:2\n"
    assert ok(lamina("images", "-q", "--no-trunc")) == loaded + "\n"


def test_rmi_by_id_of_an_image_with_several_names_needs_force(
    lamina: Run, ok: Ok, one_line_error: OneLineError, loaded: str
) -> None:
    ok(lamina("tag", "busy", "busy:2"))
    one_line_error(lamina("rmi", _hex(loaded)[:12]), 2)
    out = ok(lamina("rmi", "-f", _hex(loaded)[:12]))
    assert sorted(out.splitlines()) == sorted(
        ["Untagged: busy:latest", "Untagged: busy:2", f"Deleted: {loaded}"]
    )
    assert ok(lamina("images", "-q")) == ""


def test_rmi_of_the_last_name_deletes_the_image(lamina: Run, ok: Ok, loaded: str) -> None:
    assert ok(lamina("rmi", "busy")) == f"Untagged: busy:latest\nDeleted: {loaded}\n"
    assert ok(lamina("images", "-q")) == ""
    assert json.loads(ok(lamina("system", "df", "--format", "json")))["Layers"]["Total"] == 0


def test_rmi_goes_on_after_a_failure_and_exits_with_its_status(lamina: Run, loaded: str) -> None:
    result = lamina("rmi", "nosuch:1", "busy")
    assert result.exit_code == 3
    assert result.stdout == f"Untagged: busy:latest\nDeleted: {loaded}\n"
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("lamina: error: ")


def test_rmi_of_an_image_a_container_uses(
    lamina: Run, ok: Ok, one_line_error: OneLineError, loaded: str
) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    one_line_error(lamina("rmi", "busy"), 7)
    assert ok(lamina("images", "-q", "--no-trunc")) == loaded + "\n"
    out = ok(lamina("rmi", "-f", "busy"))
    assert out.splitlines()[0] == "Untagged: busy:latest"
    # the container keeps its layers and still mounts
    path = Path(ok(lamina("mount", "web")).strip())
    assert (path / "etc" / "hostname").read_bytes() == b"busy\n"
    ok(lamina("unmount", "web"))


def test_tag_errors(lamina: Run, one_line_error: OneLineError, loaded: str) -> None:
    one_line_error(lamina("tag", "nosuch", "x:1"), 3)
    one_line_error(lamina("tag", "busy", "Bad Name"), 2)
    assert loaded


def test_an_ambiguous_id_prefix_is_refused(
    lamina: Run, ok: Ok, one_line_error: OneLineError, docker_archive: Archive
) -> None:
    ids = []
    for n in range(40):  # enough images that two ids share a first hex digit
        data, image_id = docker_archive([{f"f{n}": b"%d\n" % n}], [f"img{n}:1"])
        ok(lamina("load", "-q", input=data))
        ids.append(_hex(image_id))
    first = sorted(ids)[0][0]
    assert sum(i.startswith(first) for i in ids) >= 2 or pytest.skip("no shared prefix")
    one_line_error(lamina("inspect", "--type", "image", first), 2)


def test_inspect_an_image(lamina: Run, ok: Ok, loaded: str) -> None:
    document = json.loads(ok(lamina("inspect", "busy")))
    assert isinstance(document, list) and len(document) == 1
    image = document[0]
    assert image["Id"] == loaded
    assert image["RepoTags"] == ["busy:latest"]
    assert image["Config"]["Cmd"] == ["/bin/sh"]
    assert image["RootFS"]["Type"] == "layers" and len(image["RootFS"]["Layers"]) == 2
    assert image["Created"].startswith("2024-01-02T03:04:05")
    assert json.loads(ok(lamina("inspect", _hex(loaded)[:5])))[0]["Id"] == loaded


def test_inspect_a_container_and_a_missing_name(lamina: Run, ok: Ok, loaded: str) -> None:
    cid = ok(lamina("create", "busy", "--name", "web")).strip()
    document = json.loads(ok(lamina("inspect", "web", "busy")))
    assert [d["Id"] for d in document] == [cid, loaded]
    assert document[0]["Name"] == "web" and document[0]["Image"] == loaded
    result = lamina("inspect", "nosuch", "web")
    assert result.exit_code == 3
    assert [d["Id"] for d in json.loads(result.stdout)] == [cid]
    assert result.stderr == "lamina: error: no such object: nosuch\n"
    assert json.loads(ok(lamina("inspect", "--type", "image", "busy")))[0]["Id"] == loaded


# --- containers -----------------------------------------------------------------------------


def test_create_ps_and_rm(lamina: Run, ok: Ok, one_line_error: OneLineError, loaded: str) -> None:
    cid = ok(lamina("create", "busy", "--name", "web")).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid.removeprefix("sha256:")), cid
    one_line_error(lamina("create", "busy", "--name", "web"), 6)
    lines = ok(lamina("ps")).splitlines()
    assert re.split(r"\s{3,}", lines[0]) == ["CONTAINER ID", "IMAGE", "CREATED", "NAMES"]
    cells = re.split(r"\s{3,}", lines[1])
    assert cells[0] == cid.removeprefix("sha256:")[:12]
    assert cells[1] == "busy:latest" and cells[3] == "web"
    assert ok(lamina("ps", "-a", "-q", "--no-trunc")) == cid + "\n"
    document = json.loads(ok(lamina("ps", "--format", "json")))
    assert [(d["Id"], d["Name"], d["Image"]) for d in document] == [(cid, "web", loaded)]
    assert ok(lamina("rm", "web")) == "web\n"
    assert ok(lamina("ps", "-q")) == ""
    one_line_error(lamina("rm", "web"), 3)


def test_create_errors(lamina: Run, one_line_error: OneLineError, loaded: str) -> None:
    one_line_error(lamina("create", "nosuch"), 3)
    result = lamina("create", "busy", "--storage-opt", "size")
    assert result.exit_code == 2  # not key=value: click's usage error
    one_line_error(lamina("create", "busy", "--storage-opt", "size=1G"), 4)  # vfs: no quota
    assert loaded


def test_mount_change_diff_commit(lamina: Run, ok: Ok, loaded: str) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    path = Path(ok(lamina("mount", "web")).strip())
    assert (path / "usr" / "share" / "doc.txt").read_bytes() == b"docs\n"
    (path / "etc" / "motd").unlink()
    (path / "etc" / "hostname").write_bytes(b"web\n")
    (path / "new").write_bytes(b"new\n")
    (path / "two\nlines").write_bytes(b"x")
    ok(lamina("unmount", "web"))
    assert ok(lamina("diff", "web")).splitlines() == [
        "C /etc",
        "C /etc/hostname",
        "D /etc/motd",
        "A /new",
        'A "/two\\nlines"',
    ]
    new_id = ok(lamina("commit", "web", "busy:2", "-m", "changed", "-a", "Ann", "-q")).strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", new_id)
    image = json.loads(ok(lamina("inspect", "busy:2")))[0]
    assert image["Id"] == new_id
    assert len(image["Layers"]) == 3
    assert image["History"][-1]["comment"] == "changed"
    assert image["Author"] == "Ann"
    # the committed image shows the container's tree
    ok(lamina("create", "busy:2", "--name", "copy"))
    copy = Path(ok(lamina("mount", "copy")).strip())
    assert (copy / "etc" / "hostname").read_bytes() == b"web\n"
    assert not (copy / "etc" / "motd").exists()
    assert (copy / "two\nlines").read_bytes() == b"x"
    ok(lamina("unmount", "copy"))


def test_commit_progress_line_and_compression(lamina: Run, ok: Ok, loaded: str) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    result = lamina("commit", "--compression", "zstd", "web")
    ok(result)
    assert result.stderr.startswith("Committing web: ")
    assert len(result.stderr.splitlines()) == 1
    assert loaded


def test_unmount_more_than_mounted_is_exit_7(
    lamina: Run, ok: Ok, one_line_error: OneLineError, loaded: str
) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    one_line_error(lamina("unmount", "web"), 7)
    one_line_error(lamina("mount", "nosuch"), 3)
    one_line_error(lamina("diff", "nosuch"), 3)
    assert loaded


def test_export_writes_the_flattened_tree(lamina: Run, ok: Ok, loaded: str, tmp_path: Path) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    path = Path(ok(lamina("mount", "web")).strip())
    (path / "etc" / "motd").unlink()
    (path / "added").write_bytes(b"added\n")
    ok(lamina("unmount", "web"))
    out = tmp_path / "web.tar"
    ok(lamina("export", "web", "-o", str(out)))
    with tarfile.open(out) as tar:
        names = {m.name.strip("/").removeprefix("./") for m in tar}
    assert {"etc/hostname", "bin/sh", "usr/share/doc.txt", "added"} <= names
    assert "etc/motd" not in names
    assert not any(".wh." in n for n in names)
    streamed = lamina("export", "web")
    assert streamed.exit_code == 0
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout_bytes)) as tar:
        assert "added" in {m.name.strip("/").removeprefix("./") for m in tar}


def test_rm_of_a_mounted_container_needs_force(
    lamina: Run, ok: Ok, one_line_error: OneLineError, loaded: str
) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    ok(lamina("mount", "web"))
    one_line_error(lamina("rm", "web"), 7)
    assert ok(lamina("rm", "-f", "web")) == "web\n"
    assert loaded


# --- save -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive", "oci-dir"])
def test_save_and_load_in_another_store_keeps_the_id(
    lamina: Run, ok: Ok, loaded: str, tmp_path: Path, fmt: str
) -> None:
    from click.testing import CliRunner

    from lamina.cli import cli

    out = tmp_path / f"saved-{fmt}"
    result = lamina("save", "--format", fmt, "-o", str(out), "busy")
    ok(result)
    assert result.stdout == ""
    assert result.stderr.startswith(f"Saving busy to {out} ({fmt})")
    assert out.is_dir() if fmt == "oci-dir" else tarfile.is_tarfile(out)
    other = tmp_path / "other"
    loaded_again = CliRunner().invoke(
        cli, ["--root", str(other), "--driver", "vfs", "load", "-q", "-i", str(out)]
    )
    assert loaded_again.exit_code == 0, loaded_again.stderr
    assert loaded_again.stdout == "Loaded image: busy:latest\n"
    ids = CliRunner().invoke(cli, ["--root", str(other), "--driver", "vfs", "images", "-q"])
    assert ids.stdout == _hex(loaded)[:12] + "\n"


def test_save_to_standard_output(lamina: Run, loaded: str) -> None:
    result = lamina("save", "-q", "busy")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes)) as tar:
        assert "manifest.json" in tar.getnames()
    assert loaded


def test_save_errors(
    lamina: Run, one_line_error: OneLineError, loaded: str, tmp_path: Path
) -> None:
    out = tmp_path / "never.tar"
    one_line_error(lamina("save", "-o", str(out), "busy", "nosuch"), 3)
    assert not out.exists()  # nothing written for a bad name
    one_line_error(lamina("save", "--format", "oci-dir", "busy"), 2)
    assert lamina("save", "--format", "zip", "busy").exit_code == 2
    assert loaded


# --- system ---------------------------------------------------------------------------------


def test_system_df(lamina: Run, ok: Ok, loaded: str) -> None:
    ok(lamina("create", "busy", "--name", "web"))
    lines = ok(lamina("system", "df")).splitlines()
    assert re.split(r"\s{3,}", lines[0]) == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["Images"][1:3] == ["1", "1"]
    assert rows["Containers"][1] == "1"
    assert rows["Layers"][1] == "2"
    document = json.loads(ok(lamina("system", "df", "--format", "json")))
    assert document["Images"] == {"Total": 1, "Active": 1}
    assert set(document["Size"]) == {"images", "containers", "layers", "reclaimable"}
    assert document["Size"]["images"] > 0
    assert loaded


def test_system_prune(lamina: Run, ok: Ok, one_line_error: OneLineError, loaded: str) -> None:
    one_line_error(lamina("system", "prune"), 2)  # no terminal to ask on, no -f
    ok(lamina("tag", "busy", "keep:1"))
    out = ok(lamina("system", "prune", "-f"))
    assert out.splitlines()[-1].startswith("Total reclaimed space: ")
    assert ok(lamina("images", "-q", "--no-trunc")) == loaded + "\n"  # named: kept
    ok(lamina("rmi", "busy"))
    ok(lamina("rmi", "keep:1"))
    ok(lamina("system", "prune", "-f"))  # whatever the removal left for gc
    assert ok(lamina("system", "prune", "-f")).splitlines() == ["Total reclaimed space: 0B"]
    usage = json.loads(ok(lamina("system", "df", "--format", "json")))["Size"]
    assert usage == {"images": 0, "containers": 0, "layers": 0, "reclaimable": 0}


def test_system_prune_removes_unnamed_unused_images(
    lamina: Run, ok: Ok, docker_archive: Archive
) -> None:
    data, image_id = docker_archive([BASE], [])
    ok(lamina("load", "-q", input=data))
    out = ok(lamina("system", "prune", "-f"))
    assert f"deleted: {image_id}" in out.splitlines()
    assert ok(lamina("images", "-q")) == ""


def test_system_check_healthy_and_damaged(lamina: Run, ok: Ok, loaded: str, root: Path) -> None:
    result = lamina("system", "check")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert json.loads(ok(lamina("system", "check", "--format", "json")))["Problems"] == []
    # damage one layer's file in place: same size, one byte different
    damaged = [
        Path(dirpath, name)
        for dirpath, _dirs, files in os.walk(root)
        for name in files
        if name == "doc.txt"
    ]
    assert damaged, "the layer file was not found under the store root"
    for path in damaged:
        path.write_bytes(b"DOCS\n")
    result = lamina("system", "check")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout.strip(), "no problem printed"
    for line in result.stdout.splitlines():
        assert re.fullmatch(r"\S+ \S+: .+", line), line
    repaired = lamina("system", "check", "--repair")
    assert repaired.exit_code == 0, (repaired.stdout, repaired.stderr)
    assert ok(lamina("system", "check")) == ""


def test_system_info(lamina: Run, ok: Ok, loaded: str, root: Path) -> None:
    lines = ok(lamina("system", "info")).splitlines()
    assert f"Root: {root}" in lines
    assert "Images: 1" in lines and "Containers: 0" in lines and "Layers: 2" in lines
    facts = json.loads(ok(lamina("system", "info", "--format", "json")))
    assert facts["Images"] == 1 and facts["LayerDrivers"] == ["vfs"]
    assert loaded


# --- progress renderers ---------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_counts_the_bytes_read(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    screen = _Terminal()
    progress = Progress(quiet=False, stream=screen)
    assert progress.mode == "bar"
    with open(tmp_path / "f", "rb") as raw, progress.step("Loading f", len(data)) as step:
        reader = CountingReader(raw, step)
        assert reader.seekable()
        assert reader.read(1000) == data[:1000]
        reader.seek(200_000)
        assert reader.tell() == 200_000
        assert reader.read() == data[200_000:]
        step.note = "1 image"
    assert step.done == len(data)
    assert "Loading f: 1 image" in screen.getvalue()


def test_progress_lines_and_quiet() -> None:
    log = io.StringIO()
    progress = Progress(quiet=False, stream=log)
    assert progress.mode == "lines"
    with progress.step("Saving x") as step:
        step.advance_to(2_500_000)
    assert re.fullmatch(r"Saving x \(\d+\.\d\d s, 2\.5MB\)\n", log.getvalue())
    silent = io.StringIO()
    with Progress(quiet=True, stream=_Terminal()).step("Saving x") as step:
        step.advance_to(10)
    assert silent.getvalue() == ""
    failed = io.StringIO()
    with pytest.raises(RuntimeError), Progress(quiet=False, stream=failed).step("boom"):
        raise RuntimeError("x")
    assert failed.getvalue() == ""  # a failed step prints no line: the error says it


@pytest.mark.root
def test_save_to_a_full_disk_is_exit_8_and_leaves_no_partial_archive(
    lamina: Run,
    ok: Ok,
    one_line_error: OneLineError,
    docker_archive: Archive,
    mount_fs: Callable[..., Path],
) -> None:
    data, _ = docker_archive([{"big": os.urandom(3 << 20)}], ["big:1"])
    ok(lamina("load", "-q", input=data))
    small = mount_fs("tmpfs", size_mb=1)
    out = small / "big.tar"
    one_line_error(lamina("save", "-q", "-o", str(out), "big:1"), 8)
    assert not out.exists()
    ok(lamina("save", "-q", "-o", "/dev/null", "big:1"))
    assert Path("/dev/null").exists()


def _tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_load_of_an_archive_that_climbs_out_is_exit_5_and_writes_nothing_outside(
    lamina: Run, ok: Ok, one_line_error: OneLineError, tmp_path: Path
) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "passwd").write_bytes(b"untouched\n")
    manifest = [{"Config": "../../sentinel/passwd", "RepoTags": ["evil:1"], "Layers": []}]
    data = _tar_of([("manifest.json", json.dumps(manifest).encode())])
    one_line_error(lamina("load", "-q", input=data), 5)
    assert (sentinel / "passwd").read_bytes() == b"untouched\n"
    assert sorted(p.name for p in sentinel.iterdir()) == ["passwd"]
    assert ok(lamina("images", "-q")) == ""


def test_load_of_a_truncated_archive_adds_nothing(
    lamina: Run, ok: Ok, busy: tuple[Path, str]
) -> None:
    data = busy[0].read_bytes()
    result = lamina("load", "-q", input=data[: len(data) // 2])
    assert result.exit_code in (5, 10), (result.exit_code, result.stderr)
    assert len(result.stderr.splitlines()) == 1
    assert ok(lamina("images", "-q")) == ""


def test_system_check_json_lists_problems_with_kind_and_subject(
    lamina: Run, ok: Ok, loaded: str, root: Path
) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name == "sh":
                Path(dirpath, name).write_bytes(b"#!/bin/fals\n")  # same size, other bytes
    result = lamina("system", "check", "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["Problems"] and report["Remaining"] == report["Problems"]
    for problem in report["Problems"]:
        assert set(problem) == {"kind", "subject", "detail"}
        assert problem["kind"] and problem["subject"]
    assert loaded


def test_load_of_a_gzipped_archive_from_a_file_and_a_pipe(
    lamina: Run, ok: Ok, busy: tuple[Path, str], tmp_path: Path
) -> None:
    import gzip

    packed = gzip.compress(busy[0].read_bytes())
    assert ok(lamina("load", "-q", input=packed)) == "Loaded image: busy:latest\n"
    (tmp_path / "busy.tar.gz").write_bytes(packed)
    assert ok(lamina("load", "-q", "-i", str(tmp_path / "busy.tar.gz"))) == (
        "Loaded image: busy:latest\n"
    )
    assert ok(lamina("images", "-q", "--no-trunc")) == busy[1] + "\n"
