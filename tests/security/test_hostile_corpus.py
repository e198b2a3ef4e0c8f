"""The hostile corpus: every tar a layer source could send to escape, crash or confuse apply.

Each case builds its tar here, byte by byte where the format has to be
broken on purpose, and applies it into a jail (``conftest.py``): the layer
root sits next to a sentinel tree, and after every case the jail asserts
that the sentinel and ``/etc/passwd`` are unchanged, that nothing appeared
next to the root, that no file in the root is a hardlink to a host file,
and that no descriptor or thread was left behind.  The case itself states
the outcome: success (with a check of what landed inside the root) or one
precise :mod:`lamina.errors` class.  Any other exception fails the test.
"""

from __future__ import annotations

import gc
import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lamina.archive import (
    ApplyOptions,
    IDMap,
    IDRange,
    WhiteoutFormat,
    _apply,
    _openat2,
    apply_layer,
)
from lamina.errors import (
    ArchiveTooLargeError,
    InvalidArchiveError,
    LaminaError,
    UnsafeArchiveError,
)

BLOCK = 512
MTIME = 1_600_000_000
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")

# -- a raw tar writer: every field under the test's control ----------------------


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _base256(value: int, width: int) -> bytes:
    """GNU base-256: a 0x80 (or 0xff for negatives) marker, then big-endian two's complement."""
    if value < 0:
        return b"\xff" + (value % (1 << (8 * (width - 1)))).to_bytes(width - 1, "big")
    return b"\x80" + value.to_bytes(width - 1, "big")


def header(
    name: str | bytes,
    *,
    kind: str = "0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    linkname: str | bytes = "",
    devmajor: int = 0,
    devminor: int = 0,
    size_field: bytes | None = None,
    uid_field: bytes | None = None,
    mtime_field: bytes | None = None,
    devmajor_field: bytes | None = None,
    checksum_delta: int = 0,
) -> bytes:
    """One ustar header block; the ``*_field`` overrides write raw (hostile) field bytes."""
    raw_name = name.encode() if isinstance(name, str) else name
    raw_link = linkname.encode() if isinstance(linkname, str) else linkname
    block = bytearray(BLOCK)
    block[0:100] = raw_name[:100].ljust(100, b"\x00")
    block[100:108] = _octal(mode, 8)
    block[108:116] = uid_field if uid_field is not None else _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = size_field if size_field is not None else _octal(size, 12)
    block[136:148] = mtime_field if mtime_field is not None else _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = kind.encode()
    block[157:257] = raw_link[:100].ljust(100, b"\x00")
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[329:337] = devmajor_field if devmajor_field is not None else _octal(devmajor, 8)
    block[337:345] = _octal(devminor, 8)
    assert len(block) == BLOCK, "a field overflowed its slot"
    checksum = sum(block) + checksum_delta
    block[148:156] = b"%06o\x00 " % checksum
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax(records: dict[str, bytes | str], *, kind: str = "x") -> bytes:
    """A PAX extended (or global, ``kind="g"``) header with its records."""
    out = b""
    for key, value in records.items():
        raw = value.encode() if isinstance(value, str) else value
        body = b" " + key.encode() + b"=" + raw + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out += str(length).encode() + body
    return header("PaxHeader", kind=kind, size=len(out)) + pad(out)


def gnu_long(kind: str, value: str) -> bytes:
    """A GNU ``L`` (long name) or ``K`` (long link name) record."""
    data = value.encode() + b"\x00"
    return header("././@LongLink", kind=kind, size=len(data)) + pad(data)


def reg(name: str | bytes, data: bytes = b"", **kw: Any) -> bytes:
    return header(name, kind="0", size=len(data), **kw) + pad(data)


def dir_(name: str, mode: int = 0o755, **kw: Any) -> bytes:
    return header(name.rstrip("/") + "/", kind="5", mode=mode, **kw)


def sym(name: str, target: str, **kw: Any) -> bytes:
    return header(name, kind="2", linkname=target, mode=0o777, **kw)


def link(name: str, target: str, **kw: Any) -> bytes:
    return header(name, kind="1", linkname=target, **kw)


def fifo(name: str) -> bytes:
    return header(name, kind="6")


def chr_(name: str, major: int = 1, minor: int = 3, **kw: Any) -> bytes:
    return header(name, kind="3", mode=0o666, devmajor=major, devminor=minor, **kw)


END = bytes(2 * BLOCK)


def tar(*parts: bytes) -> bytes:
    return b"".join(parts) + END


def bomb_gzip(expanded: int) -> bytes:
    """A gzip stream of one tar entry whose body is ``expanded`` zero bytes."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(header("bomb", size=expanded))]
    zeros = bytes(1 << 20)
    for _ in range(expanded >> 20):
        out.append(z.compress(zeros))
    out.append(z.compress(END))
    out.append(z.flush())
    return b"".join(out)


def bomb_zstd(expanded: int) -> bytes:
    c = zstandard.ZstdCompressor(level=19).compressobj()
    out = [c.compress(header("bomb", size=expanded))]
    zeros = bytes(1 << 20)
    for _ in range(expanded >> 20):
        out.append(c.compress(zeros))
    out.append(c.compress(END))
    out.append(c.flush())
    return b"".join(out)


# -- the cases ------------------------------------------------------------------------

Check = Callable[[Any], None]  # receives the jail


@dataclass(frozen=True)
class Case:
    """``make(sentinel_dir)`` builds the tar; ``expect`` is "ok" or an error class."""

    make: Callable[[Path], bytes]
    expect: type[LaminaError] | str
    check: Check | None = None
    opts: tuple[tuple[str, Any], ...] = ()
    before: Callable[[Path], bytes] | None = None  # a first, benign layer


def _reads(rel: str, data: bytes) -> Check:
    def check(jail: Any) -> None:
        p = jail.dest / rel
        assert not p.is_symlink() and p.read_bytes() == data

    return check


def _is_symlink(rel: str) -> Check:
    def check(jail: Any) -> None:
        assert (jail.dest / rel).is_symlink()

    return check


def _is_dir(rel: str) -> Check:
    def check(jail: Any) -> None:
        p = jail.dest / rel
        assert p.is_dir() and not p.is_symlink()

    return check


def _absent(*rels: str) -> Check:
    def check(jail: Any) -> None:
        for rel in rels:
            assert not os.path.lexists(jail.dest / rel), rel

    return check


def _listing(*names: str) -> Check:
    def check(jail: Any) -> None:
        assert sorted(os.listdir(jail.dest)) == sorted(names)

    return check


def _mtime(rel: str, mtime: int) -> Check:
    def check(jail: Any) -> None:
        assert (jail.dest / rel).lstat().st_mtime == mtime

    return check


def _inside_copy_of_sentinel(jail: Any) -> None:
    p = jail.dest / str(jail.sentinel).lstrip("/") / "hello"
    assert p.read_bytes() == X


def _all(*checks: Check) -> Check:
    def check(jail: Any) -> None:
        for c in checks:
            c(jail)

    return check


def _chain(n: int) -> bytes:
    return b"".join(dir_("/".join(["d"] * (i + 1))) for i in range(n))


S = "../sentinel"
X = b"pwned\n"

CASES: dict[str, Case] = {
    # ---- names that climb out or start at /
    "dotdot-file": Case(lambda s: tar(reg(f"{S}/hello", X)), UnsafeArchiveError),
    "slash-dotdot-file": Case(lambda s: tar(reg(f"/{S}/hello", X)), UnsafeArchiveError),
    "inner-dotdot-file": Case(lambda s: tar(reg(f"a/../{S}/hello", X)), UnsafeArchiveError),
    "dotdot-dir-chmod": Case(lambda s: tar(dir_(f"{S}/sub", 0o777)), UnsafeArchiveError),
    "dotdot-only": Case(lambda s: tar(dir_("..", 0o777)), UnsafeArchiveError),
    "absolute-sentinel-path-stays-inside": Case(
        lambda s: tar(pax({"path": f"{s}/hello"}), reg("x", X)), "ok", _inside_copy_of_sentinel
    ),
    "absolute-etc-passwd-stays-inside": Case(
        lambda s: tar(reg("/etc/passwd", X)), "ok", _reads("etc/passwd", X)
    ),
    "root-entry-is-skipped": Case(
        lambda s: tar(dir_("./", 0o777, mtime=0), reg("./f", b"f")), "ok", _listing("f")
    ),
    # ---- symlinks on disk are never followed
    "symlink-to-root-then-write": Case(
        lambda s: tar(sym("escape", "/"), reg(f"escape{s}/hello", X)), UnsafeArchiveError
    ),
    "symlink-dotdot-then-write": Case(
        lambda s: tar(sym("escape", S), reg("escape/hello", X)), UnsafeArchiveError
    ),
    "symlink-to-file-then-file": Case(
        lambda s: tar(sym("f", f"{S}/hello"), reg("f", X)), "ok", _reads("f", X)
    ),
    "dangling-symlink-then-file": Case(
        lambda s: tar(sym("f", f"{S}/new"), reg("f", X)), "ok", _reads("f", X)
    ),
    "symlink-then-dir-entry": Case(
        lambda s: tar(sym("s", S), dir_("s", 0o777)),
        "ok",
        _is_dir("s"),
    ),
    "symlink-chain-then-write": Case(
        lambda s: tar(sym("a", "b"), sym("b", "c"), sym("c", S), reg("a/hello", X)),
        UnsafeArchiveError,
    ),
    "symlink-loop-then-write": Case(
        lambda s: tar(sym("a", "b"), sym("b", "a"), reg("a/x", X)), UnsafeArchiveError
    ),
    "symlink-self-loop-then-write": Case(
        lambda s: tar(sym("s", "s"), reg("s/x", X)), UnsafeArchiveError
    ),
    "symlink-replaced-by-dir": Case(
        lambda s: tar(sym("x", S), dir_("x"), reg("x/hello", X)), "ok", _reads("x/hello", X)
    ),
    "dir-replaced-by-symlink-then-write": Case(
        lambda s: tar(dir_("x"), reg("x/a", b"a"), sym("x", S), reg("x/hello", X)),
        UnsafeArchiveError,
    ),
    "dir-symlink-dir-symlink": Case(
        lambda s: tar(dir_("x"), sym("x", S), dir_("x"), reg("x/a", b"a"), sym("x", S)),
        "ok",
        _is_symlink("x"),
    ),
    "fifo-through-symlink": Case(lambda s: tar(sym("s", S), fifo("s/fifo")), UnsafeArchiveError),
    "device-through-symlink": Case(lambda s: tar(sym("s", S), chr_("s/null")), UnsafeArchiveError),
    "symlink-through-symlink": Case(
        lambda s: tar(sym("s", S), sym("s/hello", "/etc/passwd")), UnsafeArchiveError
    ),
    "symlink-in-earlier-layer-then-write": Case(
        lambda s: tar(reg("lib/x", X)),
        UnsafeArchiveError,
        before=lambda s: tar(sym("lib", S)),
    ),
    # ---- hardlinks
    "hardlink-etc-passwd-then-write": Case(
        lambda s: tar(link("h", "/etc/passwd"), reg("h", X)), InvalidArchiveError
    ),
    "hardlink-absolute-sentinel": Case(lambda s: tar(link("h", f"{s}/hello")), InvalidArchiveError),
    "hardlink-dotdot": Case(lambda s: tar(link("h", f"{S}/hello")), UnsafeArchiveError),
    "hardlink-gnu-longlink-dotdot": Case(
        lambda s: tar(gnu_long("K", f"{S}/hello"), link("h", "x")), UnsafeArchiveError
    ),
    "hardlink-to-symlink": Case(
        lambda s: tar(sym("s", f"{S}/hello"), link("h", "s")), "ok", _is_symlink("h")
    ),
    "hardlink-to-symlink-then-write": Case(
        lambda s: tar(sym("s", f"{S}/hello"), link("h", "s"), reg("h", X)),
        "ok",
        _all(_reads("h", X), _is_symlink("s")),
    ),
    "hardlink-through-symlink-dir": Case(
        lambda s: tar(sym("s", S), link("h", "s/hello")), UnsafeArchiveError
    ),
    "hardlink-to-later-entry": Case(
        lambda s: tar(link("h", "later"), reg("later", b"l")), InvalidArchiveError
    ),
    "hardlink-to-missing-entry": Case(lambda s: tar(link("h", "nope")), InvalidArchiveError),
    "hardlink-to-directory": Case(lambda s: tar(dir_("d"), link("h", "d")), InvalidArchiveError),
    "hardlink-to-root": Case(lambda s: tar(link("h", "./")), UnsafeArchiveError),
    "hardlink-to-itself": Case(
        lambda s: tar(reg("h", b"keep"), link("h", "h")), "ok", _reads("h", b"keep")
    ),
    "hardlink-then-overwrite-keeps-target": Case(
        lambda s: tar(reg("f", b"orig"), link("h", "f"), reg("h", X)),
        "ok",
        _all(_reads("f", b"orig"), _reads("h", X)),
    ),
    "hardlink-replacing-its-targets-dir": Case(
        lambda s: tar(dir_("d"), reg("d/f", b"f"), link("d", "d/f")), InvalidArchiveError
    ),
    "hardlink-pax-linkpath-overrides-safe": Case(
        lambda s: tar(reg("safe", b"s"), pax({"linkpath": f"{S}/hello"}), link("h", "safe")),
        UnsafeArchiveError,
    ),
    # ---- whiteouts and opaque markers
    "whiteout-dotdot-path": Case(lambda s: tar(reg("../.wh.sentinel")), UnsafeArchiveError),
    "whiteout-names-dotdot": Case(lambda s: tar(reg(".wh...")), UnsafeArchiveError),
    "whiteout-names-dotdot-in-dir": Case(lambda s: tar(reg("sub/.wh...")), UnsafeArchiveError),
    "whiteout-names-dot": Case(lambda s: tar(reg(".wh..")), UnsafeArchiveError),
    "whiteout-names-nothing": Case(lambda s: tar(reg(".wh.")), UnsafeArchiveError),
    "whiteout-prefix-as-dir-name": Case(
        lambda s: tar(reg(".wh.../x", b"x")), "ok", _reads(".wh.../x", b"x")
    ),
    "whiteout-through-symlink": Case(
        lambda s: tar(sym("s", S), reg("s/.wh.hello")), UnsafeArchiveError
    ),
    "whiteout-of-symlink-to-outside": Case(
        lambda s: tar(sym("s", S), reg(".wh.s")), "ok", _listing()
    ),
    "whiteout-deletes-tree": Case(
        lambda s: tar(reg(".wh.tree")),
        "ok",
        _listing("keep"),
        before=lambda s: tar(
            dir_("tree"), dir_("tree/a"), reg("tree/a/f"), sym("tree/s", S), reg("keep")
        ),
    ),
    "opaque-at-root": Case(
        lambda s: tar(reg(".wh..wh..opq"), reg("new", b"n")),
        "ok",
        _listing("new"),
        before=lambda s: tar(dir_("old"), reg("old/f"), sym("l", S), reg("f")),
    ),
    "opaque-through-symlink": Case(
        lambda s: tar(sym("s", S), reg("s/.wh..wh..opq")), UnsafeArchiveError
    ),
    "opaque-as-directory-entry": Case(
        lambda s: tar(dir_("d/.wh..wh..opq"), reg("d/y")),
        "ok",
        _all(_absent("d/x"), _reads("d/y", b"")),
        before=lambda s: tar(dir_("d"), reg("d/x")),
    ),
    "opaque-with-content": Case(
        lambda s: tar(dir_("d"), reg("d/.wh..wh..opq", b"junk")), "ok", _listing("d")
    ),
    "opaque-in-missing-dir": Case(lambda s: tar(reg("a/b/.wh..wh..opq")), "ok", _is_dir("a/b")),
    "opaque-keeps-this-layers-entries": Case(
        lambda s: tar(dir_("d"), reg("d/x", b"x"), reg("d/.wh..wh..opq"), reg("d/y", b"y")),
        "ok",
        _all(_reads("d/x", b"x"), _reads("d/y", b"y"), _absent("d/old")),
        before=lambda s: tar(dir_("d"), reg("d/old")),
    ),
    "aufs-metadata-dirs-are-skipped": Case(
        lambda s: tar(dir_(".wh..wh.plnk"), reg(".wh..wh.plnk/123", b"x"), reg(".wh..wh.aufs")),
        "ok",
        _listing(),
    ),
    # ---- duplicates and type changes
    "duplicate-file": Case(
        lambda s: tar(reg("f", b"one"), reg("f", b"two")), "ok", _reads("f", b"two")
    ),
    "file-replaces-dir": Case(
        lambda s: tar(dir_("d"), dir_("d/e"), reg("d/e/f"), reg("d", b"file")),
        "ok",
        _reads("d", b"file"),
    ),
    "dir-replaces-file": Case(
        lambda s: tar(reg("d", b"file"), dir_("d"), reg("d/x", b"x")), "ok", _reads("d/x", b"x")
    ),
    "file-under-a-file": Case(lambda s: tar(reg("f"), reg("f/x")), UnsafeArchiveError),
    # ---- names
    "nul-in-ustar-name-terminates-it": Case(
        lambda s: tar(reg(b"ok\x00/../../sentinel/hello", X)), "ok", _reads("ok", X)
    ),
    "nul-in-pax-path": Case(
        lambda s: tar(pax({"path": b"ok\x00../x"}), reg("safe", X)), InvalidArchiveError
    ),
    "nul-in-pax-linkpath": Case(
        lambda s: tar(pax({"linkpath": b"a\x00b"}), sym("s", "t")), InvalidArchiveError
    ),
    "nul-in-xattr-name": Case(
        lambda s: tar(pax({"SCHILY.xattr.user.a\x00b": b"v"}), reg("f")), InvalidArchiveError
    ),
    "empty-name-file-is-skipped": Case(lambda s: tar(reg("", X)), "ok", _listing()),
    "empty-pax-path": Case(lambda s: tar(pax({"path": ""}), reg("x", X)), "ok", _listing()),
    "overlong-component": Case(
        lambda s: tar(pax({"path": "n" * 300}), reg("x", X)), InvalidArchiveError
    ),
    "overlong-path-of-short-components": Case(
        lambda s: tar(pax({"path": "/".join(["c" * 99] * 80) + "/f"}), reg("x", X)),
        "ok",
        _is_dir("c" * 99),
    ),
    "overlong-symlink-target": Case(
        lambda s: tar(pax({"linkpath": "t" * 5000}), sym("s", "t")), InvalidArchiveError
    ),
    "gnu-longname-dotdot": Case(
        lambda s: tar(gnu_long("L", f"{S}/hello"), reg("safe", X)), UnsafeArchiveError
    ),
    "pax-path-overrides-safe-name": Case(
        lambda s: tar(pax({"path": f"{S}/hello"}), reg("safe", X)), UnsafeArchiveError
    ),
    "pax-linkpath-symlink-then-write": Case(
        lambda s: tar(pax({"linkpath": S}), sym("s", "harmless"), reg("s/hello", X)),
        UnsafeArchiveError,
    ),
    "ustar-prefix-dotdot": Case(
        lambda s: tar(_with_prefix(reg("hello", X), b"../sentinel")), UnsafeArchiveError
    ),
    "non-utf8-name": Case(lambda s: tar(reg(b"caf\xe9", X)), "ok", _reads("caf\udce9", X)),
    # ---- numbers
    "negative-size": Case(
        lambda s: tar(header("f", size_field=_base256(-1, 12))), InvalidArchiveError
    ),
    "huge-size": Case(
        lambda s: tar(header("f", size_field=_base256(1 << 80, 12))), InvalidArchiveError
    ),
    "huge-pax-size": Case(
        lambda s: tar(pax({"size": str(1 << 70)}), reg("f", b"x")), InvalidArchiveError
    ),
    "negative-pax-size": Case(lambda s: tar(pax({"size": "-5"}), reg("f")), InvalidArchiveError),
    "garbage-size-field": Case(
        lambda s: tar(header("f", size_field=b"12x45678901\x00")), InvalidArchiveError
    ),
    "huge-mtime-is-clamped": Case(
        lambda s: tar(reg("f", b"x", mtime_field=_base256(1 << 70, 12)), dir_("d")),
        "ok",
        _reads("f", b"x"),
    ),
    "huge-pax-mtime-is-clamped": Case(
        lambda s: tar(
            pax({"mtime": "9" * 30}), reg("f", b"x"), pax({"mtime": "-" + "9" * 30}), dir_("d")
        ),
        "ok",
        _reads("f", b"x"),
    ),
    "huge-uid": Case(lambda s: tar(pax({"uid": str(1 << 40)}), reg("f")), InvalidArchiveError),
    "negative-uid": Case(
        lambda s: tar(header("f", uid_field=_base256(-1, 8))), InvalidArchiveError
    ),
    "uid-minus-one-sentinel": Case(
        lambda s: tar(pax({"uid": str((1 << 32) - 1)}), reg("f")), InvalidArchiveError
    ),
    "huge-device-numbers": Case(
        lambda s: tar(chr_("c", devmajor_field=_base256(1 << 40, 8))),
        InvalidArchiveError,
        opts=(("devices", True),),
    ),
    # ---- broken structure
    "truncated-header": Case(lambda s: reg("f", b"data")[:300], InvalidArchiveError),
    "truncated-data": Case(lambda s: header("f", size=10_000) + b"x" * 700, InvalidArchiveError),
    "truncated-padding": Case(lambda s: header("f", size=10) + b"x" * 10, InvalidArchiveError),
    "no-end-marker-is-accepted": Case(lambda s: reg("f", b"x"), "ok", _reads("f", b"x")),
    "bad-checksum": Case(lambda s: tar(header("f", checksum_delta=1)), InvalidArchiveError),
    "pax-header-without-entry": Case(lambda s: pax({"path": "x"}), InvalidArchiveError),
    "malformed-pax-record": Case(
        lambda s: tar(header("p", kind="x", size=9) + pad(b"99 a=b\n\n\n"), reg("f")),
        InvalidArchiveError,
    ),
    "unknown-type": Case(lambda s: tar(header("f", kind="Z")), InvalidArchiveError),
    "sparse-gnu": Case(lambda s: tar(header("f", kind="S", size=0)), InvalidArchiveError),
    "sparse-pax": Case(
        lambda s: tar(pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}), reg("f")),
        InvalidArchiveError,
    ),
    "oversized-pax-record": Case(
        lambda s: tar(pax({"comment": "x" * (2 << 20)}), reg("f")), InvalidArchiveError
    ),
    "pax-headers-piling-up": Case(
        lambda s: tar(*(pax({f"k{i}": "v" * 900_000}) for i in range(3)), reg("f")),
        InvalidArchiveError,
    ),
    "global-pax-records-piling-up": Case(
        lambda s: tar(pax({f"k{i}": "v" for i in range(5000)}, kind="g"), reg("f")),
        InvalidArchiveError,
    ),
    "global-pax-applies": Case(
        lambda s: tar(pax({"mtime": "1234567890"}, kind="g"), reg("f", b"x")),
        "ok",
        _mtime("f", 1234567890),
    ),
    "random-garbage": Case(lambda s: bytes(range(256)) * 8, InvalidArchiveError),
    # ---- compression
    "gzip-bomb": Case(
        lambda s: bomb_gzip(64 << 20), ArchiveTooLargeError, opts=(("max_bytes", 8 << 20),)
    ),
    "zstd-bomb": Case(
        lambda s: bomb_zstd(64 << 20), ArchiveTooLargeError, opts=(("max_bytes", 8 << 20),)
    ),
    "plain-over-limit": Case(
        lambda s: tar(reg("f", bytes(100_000))), ArchiveTooLargeError, opts=(("max_bytes", 50_000),)
    ),
    "truncated-gzip": Case(
        lambda s: gzip.compress(tar(reg("f", os.urandom(50_000))))[:20_000], InvalidArchiveError
    ),
    "corrupt-gzip-trailer": Case(
        lambda s: _corrupt_tail(gzip.compress(tar(reg("f", b"x" * 1000)))), InvalidArchiveError
    ),
    "truncated-zstd": Case(
        lambda s: zstandard.ZstdCompressor().compress(tar(reg("f", os.urandom(50_000))))[:20_000],
        InvalidArchiveError,
    ),
    "corrupt-zstd": Case(
        lambda s: _smash(zstandard.ZstdCompressor().compress(tar(reg("f", b"ab" * 50_000)))),
        InvalidArchiveError,
    ),
    "xz-is-refused": Case(lambda s: b"\xfd7zXZ\x00" + bytes(100), InvalidArchiveError),
    "empty-stream": Case(lambda s: b"", "ok", _listing()),
}


def _with_prefix(block_and_body: bytes, prefix: bytes) -> bytes:
    block = bytearray(block_and_body[:BLOCK])
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block) + block_and_body[BLOCK:]


def _corrupt_tail(gz: bytes) -> bytes:
    """Flip the stored CRC: only a reader that checks the end of the stream notices."""
    return gz[:-8] + bytes(b ^ 0xFF for b in gz[-8:-4]) + gz[-4:]


def _smash(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + b"\xff" * 64 + blob[mid + 64 :]


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way of resolving parents: kernel openat2 and the O_NOFOLLOW walk."""
    if request.param == "openat2" and not _openat2.AVAILABLE:
        pytest.skip("this kernel has no openat2 (Linux >= 5.6)")
    monkeypatch.setattr(_apply, "use_openat2", request.param == "openat2")
    return str(request.param)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(jail: Any, name: str, resolver: str) -> None:
    case = CASES[name]
    if case.before is not None:
        assert isinstance(jail.apply(case.before(jail.sentinel)), int)
    result = jail.apply(case.make(jail.sentinel), **dict(case.opts))
    if case.expect == "ok":
        assert isinstance(result, int), f"expected success, got {result!r}"
        if case.check is not None:
            case.check(jail)
    else:
        assert isinstance(case.expect, type)
        assert type(result) is case.expect, f"expected {case.expect.__name__}, got {result!r}"


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 30


# -- cases that need more than one tar or a special setting ---------------------------


def test_ten_thousand_deep_directories(scratch_fs: Path, jail_at: Any) -> None:
    jail = jail_at(Path(tempfile.mkdtemp(dir=scratch_fs)) / "jail")
    deep = "/".join(["d"] * 10_000)
    assert jail.apply(tar(pax({"path": deep + "/leaf"}), reg("x", b"leaf"))) == 4
    # replacing the top of the tree removes all 10,000 levels (no recursion limit)
    assert isinstance(jail.apply(tar(reg("d", b"now a file"))), int)
    assert (jail.dest / "d").read_bytes() == b"now a file"
    jail.reset()
    assert isinstance(jail.apply(tar(pax({"path": deep + "/leaf"}), reg("x", b"leaf"))), int)
    assert isinstance(jail.apply(tar(reg(".wh.d"))), int)
    assert os.listdir(jail.dest) == []
    jail.reset()
    assert isinstance(jail.apply(tar(pax({"path": deep + "/leaf"}), reg("x"))), int)
    assert isinstance(jail.apply(tar(reg(".wh..wh..opq"))), int)
    assert os.listdir(jail.dest) == []


def test_many_directories_then_hardlinks(jail: Any, resolver: str) -> None:
    # More directories than the engine keeps descriptors for, and links whose target
    # directories are no longer cached, so resolving a target opens (and caches)
    # directories while the link's own directory is in use: every link must land
    # where it says, next to the right inode.
    parts = []
    for i in range(400):
        parts += [dir_(f"t{i}"), dir_(f"t{i}/u"), reg(f"t{i}/u/x", b"%d" % i)]
    for i in range(1200):
        parts += [dir_(f"d{i}"), link(f"d{i}/l", f"t{i % 400}/u/x")]
    assert isinstance(jail.apply(tar(*parts)), int)
    for i in range(1200):
        assert os.listdir(jail.dest / f"d{i}") == ["l"]
        target = (jail.dest / f"t{i % 400}/u/x").lstat()
        assert (jail.dest / f"d{i}/l").lstat().st_ino == target.st_ino


def test_directory_times_survive_removal_and_recreation(jail: Any) -> None:
    raw = tar(
        dir_("a", mtime=1000),
        dir_("a/b", mtime=2000),
        reg(".wh.a"),
        reg("a/b", b"file", mtime=3000),
        dir_("c", mtime=4000),
    )
    assert isinstance(jail.apply(raw), int)
    assert (jail.dest / "a/b").lstat().st_mtime == 3000
    assert (jail.dest / "c").lstat().st_mtime == 4000


def test_a_failed_gzip_apply_stops_its_decompressor(jail: Any) -> None:
    # the error comes early in a big stream: the threaded gzip reader must be
    # stopped (jail.apply checks the thread count while the error is still alive)
    blob = gzip.compress(tar(reg("a", b"x"), reg(f"{S}/hello", bytes(64 << 20))), 1)
    assert type(jail.apply(blob)) is UnsafeArchiveError


def test_the_callers_stream_is_left_open(jail: Any) -> None:
    for raw in (tar(reg("f", b"x")), gzip.compress(tar(reg("f", b"x")))):
        src = io.BytesIO(raw)  # no peek(): the engine has to buffer it itself
        apply_layer(src, jail.dest, ApplyOptions())
        gc.collect()
        assert not src.closed
        src.close()


def test_setuid_with_mapped_owner(jail: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown to mapped ids")
    idmap = IDMap((IDRange(0, 100_000, 65_536),), (IDRange(0, 200_000, 65_536),))
    raw = tar(
        reg("suid", b"s", mode=0o4755, uid=1000, gid=1000),
        dir_("sgid", mode=0o2775, uid=5, gid=6),
        reg("implied/x", b"x", mode=0o6711, uid=0, gid=0),
    )
    assert isinstance(jail.apply(raw, id_map=idmap), int)
    st = (jail.dest / "suid").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (101_000, 201_000, 0o4755)
    st = (jail.dest / "sgid").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (100_005, 200_006, 0o2775)
    st = (jail.dest / "implied").lstat()
    assert (st.st_uid, st.st_gid) == (100_000, 200_000)
    st = (jail.dest / "implied/x").lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (100_000, 0o6711)
    # an owner outside the map is refused, not written as an unmapped host id
    bad = tar(reg("f", b"x", mode=0o4755, uid=70_000))
    assert type(jail.apply(bad, id_map=idmap)) is InvalidArchiveError


def test_overlay_whiteouts_get_mapped_owners(jail: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for 0:0 character devices")
    idmap = IDMap((IDRange(0, 100_000, 65_536),), (IDRange(0, 100_000, 65_536),))
    raw = tar(dir_("d"), reg("d/.wh.gone"))
    assert isinstance(jail.apply(raw, id_map=idmap, whiteouts=WhiteoutFormat.OVERLAY), int)
    st = (jail.dest / "d/gone").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (st.st_uid, st.st_gid) == (100_000, 100_000)


def test_devices_refused_when_asked(jail: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("root decides whether to create devices; unprivileged is the next test")
    assert type(jail.apply(tar(chr_("null")), devices=False)) is UnsafeArchiveError
    assert isinstance(jail.apply(tar(chr_("null")), devices=True), int)
    assert stat.S_ISCHR((jail.dest / "null").lstat().st_mode)


_CHILD = r"""
import io, json, os, sys
# load everything first: the interpreter's own files are not readable by nobody
from lamina.archive import _apply, _openat2
from lamina.archive import ApplyOptions, apply_layer
from lamina.errors import LaminaError
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
raw = open(sys.argv[1], "rb").read()
out = {}
for devices in (None, True, False):
    try:
        out[str(devices)] = apply_layer(io.BytesIO(raw), sys.argv[2], ApplyOptions(devices=devices))
    except LaminaError as exc:
        out[str(devices)] = type(exc).__name__
out["listing"] = sorted(os.listdir(sys.argv[2]))
print(json.dumps(out))
"""


def _apply_as_nobody(layer: Path, dest: Path) -> dict[str, Any]:
    os.chown(dest, 65534, 65534)
    layer.chmod(0o644)
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(layer), str(dest)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_device_nodes_when_unprivileged(shared_base: Path, jail_at: Any) -> None:
    """A child that dropped to nobody: devices skipped by default, refused when required."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to 65534 in a child process")
    layer = shared_base / "layer.tar"
    layer.write_bytes(tar(chr_("null"), header("sda", kind="4", devmajor=8), fifo("p"), reg("f")))
    jail = jail_at(shared_base / "jail")
    out = _apply_as_nobody(layer, jail.dest)
    assert out == {
        "None": 0,  # skipped, as documented: an unprivileged apply cannot make them
        "True": "NotSupportedError",
        "False": "UnsafeArchiveError",
        "listing": ["f", "p"],
    }
    jail.check()


def test_unprivileged_escape_through_symlink(shared_base: Path, jail_at: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to 65534 in a child process")
    layer = shared_base / "layer.tar"
    layer.write_bytes(tar(reg("f", b"x"), sym("escape", S), chr_("escape/null"), reg("escape/z")))
    jail = jail_at(shared_base / "jail")
    os.chmod(jail.sentinel, 0o777)  # even a writable outside must stay untouched
    out = _apply_as_nobody(layer, jail.dest)
    assert out["None"] == out["False"] == "UnsafeArchiveError"
    assert out["True"] == "UnsafeArchiveError"
    assert out["listing"] == ["escape", "f"]
    os.chmod(jail.sentinel, 0o755)
    jail.check()


_CHILD_LAYERS = r"""
import io, json, os, sys
from lamina.archive import ApplyOptions, apply_layer
from lamina.errors import LaminaError
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
out = []
for path in sys.argv[2:]:
    try:
        out.append(apply_layer(open(path, "rb"), sys.argv[1], ApplyOptions()))
    except LaminaError as exc:
        out.append(type(exc).__name__)
print(json.dumps([out, sorted(os.listdir(sys.argv[1]))]))
"""


def test_unprivileged_replaces_read_only_trees(shared_base: Path, jail_at: Any) -> None:
    """Read-only directories (0555, 0500, 0000) of a lower layer are replaceable by their owner."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to 65534 in a child process")
    paths = []
    for i, raw in enumerate([tar(reg(".wh.ro")), tar(reg("ro2", b"now a file"))]):
        paths.append(shared_base / f"layer{i}.tar")
        paths[-1].write_bytes(raw)
        paths[-1].chmod(0o644)
    jail = jail_at(shared_base / "jail")  # after the files: it watches its parent's listing
    lower = tar(
        dir_("ro", 0o555, uid=65534, gid=65534),
        dir_("ro/sub", 0o555, uid=65534, gid=65534),
        reg("ro/sub/f", b"x", uid=65534, gid=65534),
        dir_("ro/none", 0o000, uid=65534, gid=65534),
        dir_("ro2", 0o500, uid=65534, gid=65534),
        dir_("ro2/a", 0o500, uid=65534, gid=65534),
        dir_("ro2/a/b", 0o000, uid=65534, gid=65534),
    )
    assert isinstance(jail.apply(lower), int)  # as root, owned by nobody
    os.chown(jail.dest, 65534, 65534)
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_LAYERS, str(jail.dest), *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[0, 10], ["ro2"]]
    assert (jail.dest / "ro2").read_bytes() == b"now a file"
    jail.check()
