"""Builders for image archives in the formats people hand a store, from real tar bytes.

Everything is built here from the format specs with the standard library
(tarfile, gzip, hashlib, json), independently of lamina.oci, so a test
compares lamina against a second implementation rather than against itself.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# a file spec: bytes -> regular file; None -> directory; ("link", target) -> symlink;
# ("whiteout",) -> .wh. marker for the name
Spec = dict[str, Any]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: Spec, *, mtime: int = 1_700_000_000) -> bytes:
    """A layer tar, entries in the given order (PAX, like Go's archive/tar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, spec in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            if spec is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(spec, tuple) and spec[0] == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = spec[1]
                info.mode = 0o777
                tar.addfile(info)
            elif isinstance(spec, tuple) and spec[0] == "whiteout":
                head, _, base = name.rpartition("/")
                info.name = (head + "/" if head else "") + ".wh." + base
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(b""))
            else:
                info.size = len(spec)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(spec))
    return buf.getvalue()


class Built:
    """What a builder wrote: per image its id (config digest), diff IDs and names."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []

    @property
    def ids(self) -> list[str]:
        return [i["id"] for i in self.images]


def _config(diff_ids: list[str], os_name: str = "linux", created: str | None = None) -> bytes:
    cfg: dict[str, Any] = {
        "architecture": "amd64",
        "os": os_name,
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))],
    }
    if created:
        cfg["created"] = created
    return json.dumps(cfg, sort_keys=True).encode()


def oci_layout(
    root: Path,
    images: list[tuple[str | None, list[bytes]]],
    *,
    compress: bool = True,
    os_name: str = "linux",
) -> Built:
    """An OCI image layout directory; each image is (ref.name or None, layer tars)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    built = Built()

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    entries = []
    for name, tars in images:
        layers = []
        for tar in tars:
            blob = gzip.compress(tar, mtime=0) if compress else tar
            layers.append(
                {
                    "mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER,
                    "digest": put(blob),
                    "size": len(blob),
                }
            )
        diff_ids = [sha256(t) for t in tars]
        config = _config(diff_ids, os_name)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": put(config), "size": len(config)},
                "layers": layers,
            }
        ).encode()
        entry: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": put(manifest),
            "size": len(manifest),
        }
        if name:
            entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        entries.append(entry)
        built.images.append(
            {
                "id": sha256(config),
                "diff_ids": diff_ids,
                "name": name,
                "tars": tars,
                "manifest_digest": sha256(manifest),
            }
        )
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return built


def tar_of_dir(root: Path, *, first: tuple[str, ...] = ()) -> bytes:
    """A tar of a directory's files (an OCI archive), ``first`` members first, the rest sorted."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    order = [n for n in first if n in names] + [n for n in names if n not in first]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in order:
            tar.add(root / name, arcname=name, recursive=False)
    return buf.getvalue()


def docker_archive_legacy(images: list[tuple[list[str], list[bytes]]]) -> tuple[bytes, Built]:
    """``docker save`` before Docker 25: ``<id>/layer.tar``, ``<hex>.json``, manifest.json last.

    Layers shared between images appear once, and a layer repeated by a
    second image is a symlink ``<id>/layer.tar -> ../<first id>/layer.tar``,
    as Docker writes it.
    """
    buf = io.BytesIO()
    built = Built()
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    first_dir: dict[str, str] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        for number, (tags, tars) in enumerate(images):
            diff_ids = [sha256(t) for t in tars]
            layer_paths = []
            for position, data in enumerate(tars):
                v1 = hashlib.sha256(
                    f"{number}/{position}/{diff_ids[position]}".encode()
                ).hexdigest()
                info = tarfile.TarInfo(v1)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                if diff_ids[position] in first_dir:
                    link = tarfile.TarInfo(f"{v1}/layer.tar")
                    link.type = tarfile.SYMTYPE
                    link.linkname = f"../{first_dir[diff_ids[position]]}/layer.tar"
                    tar.addfile(link)
                else:
                    add(f"{v1}/layer.tar", data)
                    first_dir[diff_ids[position]] = v1
                add(f"{v1}/VERSION", b"1.0")
                add(f"{v1}/json", json.dumps({"id": v1}).encode())
                layer_paths.append(f"{v1}/layer.tar")
            config = _config(diff_ids)
            add(f"{sha256(config)[7:]}.json", config)
            manifest.append(
                {"Config": f"{sha256(config)[7:]}.json", "RepoTags": tags, "Layers": layer_paths}
            )
            for tag in tags:
                repo, _, t = tag.rpartition(":")
                repositories.setdefault(repo, {})[t] = layer_paths[-1].split("/")[0]
            built.images.append(
                {"id": sha256(config), "diff_ids": diff_ids, "names": tags, "tars": tars}
            )
        add("manifest.json", json.dumps(manifest).encode())
        add("repositories", json.dumps(repositories).encode())
    return buf.getvalue(), built


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, permission bits, content or link target."""
    result: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                result[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                result[rel] = ("dir", st.st_mode & 0o7777)
            elif path.is_file():
                result[rel] = ("file", st.st_mode & 0o7777, path.read_bytes())
            else:
                result[rel] = ("other", st.st_mode)
    return result


def image_tree(store: Any, image: Any) -> dict[str, tuple[Any, ...]]:
    """The root filesystem of ``image``: a container's mounted tree (container removed after)."""
    c = store.create_container(image)
    try:
        return tree(store.mount(c))
    finally:
        store.unmount(c)
        store.remove_container(c)
