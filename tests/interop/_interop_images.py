"""A small two-layer test image built from bytes, with every feature a layer can carry.

The interop tests need images that Docker, Podman, skopeo and umoci all know,
made without a network.  The real workload (a debootstrap Debian) covers size
and ordinary files; this image covers the corners in a few kilobytes: setuid,
setgid and sticky bits, owners other than root, relative, absolute and
dangling symlinks, hardlinks (also across directories), a fifo and a character
device, ``user.*`` xattrs and a real ``security.capability``, long and
non-ASCII names, empty files and directories, fixed mtimes on every entry
(directories included), and in the second layer a changed file, a changed
mode, a deleted file, a deleted directory and an opaque directory.

:func:`write_docker_archive` writes it in ``docker save``'s classic form
(``manifest.json`` + ``<id>/layer.tar``), the form Docker 20.10 loads; the
tests then let Docker itself save it again, so what lamina reads is Docker's
own output, not ours.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: A base time for the fixture's mtimes: distinct whole seconds per entry.
T0 = 1_600_000_000

#: ``security.capability`` as ``setcap cap_net_raw+ep`` writes it (vfs_cap_data v2).
CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000000 | 0x1, 1 << 13, 0, 0, 0)


@dataclass(frozen=True)
class Built:
    """An image written as a docker-archive: its config digest and layer tars."""

    image_id: str  # "sha256:" + config digest, what `docker inspect` shows as Id
    diff_ids: tuple[str, ...]
    layers: tuple[bytes, ...]  # uncompressed layer tars, base first


class _Layer:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115  (closed by bytes())
        self.n = 0
        self.files: dict[str, tarfile.TarInfo] = {}

    def _info(self, name: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        self.n += 1
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = T0 + self.n * 1000
        return ti

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.tar.addfile(self._info(name + "/", tarfile.DIRTYPE, mode, uid, gid))

    def file(
        self,
        name: str,
        data: bytes,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        if xattrs:
            ti.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
        self.tar.addfile(ti, io.BytesIO(data))
        self.files[name] = ti

    def symlink(self, name: str, target: str) -> None:
        ti = self._info(name, tarfile.SYMTYPE, 0o777, 0, 0)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name: str, target: str) -> None:
        """A hardlink header carrying its target's mode, owner and time, as tar writers do
        (an extractor applies the header's metadata to the shared inode)."""
        t = self.files[target]
        ti = self._info(name, tarfile.LNKTYPE, t.mode, t.uid, t.gid)
        ti.mtime = t.mtime
        ti.linkname = target
        self.tar.addfile(ti)

    def fifo(self, name: str, mode: int = 0o644) -> None:
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, 0, 0))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> None:
        ti = self._info(name, tarfile.CHRTYPE, mode, 0, 0)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)

    def whiteout(self, name: str) -> None:
        """An AUFS whiteout: ``dir/.wh.name`` deletes ``dir/name`` from the layers below."""
        head, _, base = name.rpartition("/")
        self.file(f"{head}/.wh.{base}" if head else f".wh.{base}", b"", mode=0o600)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _payload(seed: str, size: int) -> bytes:
    """Deterministic incompressible-ish bytes (so gzip sizes are not trivial)."""
    out = bytearray()
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def layers() -> list[bytes]:
    """The fixture's two layer tars (uncompressed), base first."""
    a = _Layer()
    a.dir("bin")
    a.file("bin/tool", b"#!/bin/sh\necho tool\n", mode=0o4755)
    a.hardlink("bin/tool-hardlink", "bin/tool")
    a.file("bin/sgid", b"sgid\n", mode=0o2755, gid=50)
    a.file(
        "bin/ping",
        b"\x7fELF not really\n",
        mode=0o755,
        xattrs={"security.capability": CAP_NET_RAW_EP},
    )
    a.symlink("bin/sh", "tool")
    a.dir("dev")
    a.chardev("dev/null", 1, 3)
    a.dir("etc")
    a.file("etc/config", b"version=1\n")
    a.file("etc/gone", b"deleted in layer 2\n", mode=0o600)
    a.symlink("etc/absolute", "/etc/config")
    a.symlink("etc/dangling", "../nowhere/at/all")
    a.file("etc/empty", b"", mode=0o400)
    a.dir("tmp", mode=0o1777)
    a.fifo("tmp/fifo", mode=0o620)
    a.dir("home")
    a.dir("home/user", mode=0o750, uid=1000, gid=1000)
    a.file(
        "home/user/.profile",
        b"export PS1='$ '\n",
        mode=0o640,
        uid=1000,
        gid=1000,
        xattrs={"user.lamina.note": b"hello", "user.lamina.bin": b"\x00\x01\xfe\xff"},
    )
    a.dir("srv")
    a.dir("srv/shared", mode=0o2775, uid=1000, gid=100)
    a.dir("srv/empty-dir", mode=0o700)
    a.dir("opt")
    a.dir("opt/app")
    a.file("opt/app/data.bin", _payload("data", 300_000))
    a.hardlink("srv/shared/data-hardlink", "opt/app/data.bin")
    deep = "opt/app/" + "/".join(["a-rather-long-directory-name-to-pass-100-bytes"] * 3)
    for i in range(1, 4):
        a.dir("opt/app/" + "/".join(["a-rather-long-directory-name-to-pass-100-bytes"] * i))
    a.file(deep + "/a-file-whose-full-name-is-far-beyond-the-ustar-limit.txt", b"long\n")
    a.dir("opt/données")
    a.file("opt/données/été ☀.txt", "non-ASCII ✓\n".encode())
    a.dir("data")
    a.dir("data/gone-dir")
    a.file("data/gone-dir/inside", b"deleted with its directory\n")
    a.dir("data/opaque")
    a.file("data/opaque/old-a", b"hidden by the opaque dir\n")
    a.file("data/opaque/old-b", b"hidden by the opaque dir\n")

    b = _Layer()
    b.n = 500  # distinct mtimes from the base layer
    b.dir("bin")
    b.file("bin/tool", b"#!/bin/sh\necho tool v2\n", mode=0o4750)
    b.hardlink("bin/tool-hardlink", "bin/tool")
    b.dir("etc")
    b.file("etc/config", b"version=2\n")
    b.whiteout("etc/gone")
    b.dir("data")
    b.whiteout("data/gone-dir")
    b.dir("data/opaque", mode=0o755)
    b.file("data/opaque/.wh..wh..opq", b"", mode=0o600)
    b.file("data/opaque/new", b"only this survives\n")
    b.dir("srv")
    b.dir("srv/shared", mode=0o2775, uid=1000, gid=100)
    b.file("srv/shared/new.txt", _payload("new", 70_000), mode=0o664, uid=1000, gid=100)
    return [a.bytes(), b.bytes()]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_docker_archive(dest: Path, tag: str, tars: Sequence[bytes] | None = None) -> Built:
    """Write ``tars`` (default: :func:`layers`) as a classic docker-archive tagged ``tag``."""
    tars = list(layers() if tars is None else tars)
    diff_ids = [_sha(t) for t in tars]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2020-09-13T12:26:40Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2020-09-13T12:26:40Z", "created_by": f"lamina interop layer {i}"}
            for i in range(len(tars))
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    layer_names = [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids]
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": layer_names}]
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), T0, 0o644
            out.addfile(ti, io.BytesIO(data))

        add(f"{config_hex}.json", config_bytes)
        for name, data in zip(layer_names, tars, strict=True):
            add(name, data)
        add("manifest.json", json.dumps(manifest).encode())
    return Built("sha256:" + config_hex, tuple(diff_ids), tuple(tars))
