"""Coverage-guided fuzzing (atheris/libFuzzer) of the tar reader and the apply path.

Each input is one layer.  The first byte picks what to do with the rest:

* 0 — read it with :class:`TarReader` only, every entry and body;
* 1 — apply it as is (plain tar, or whatever compression it starts with);
* 2 — gzip it, then apply (so the fuzzer explores tars behind a valid gzip);
* 3 — zstd it, then apply.

Applies go into a fresh root beside a sentinel tree, in a jail directory made
on tmpfs when one is writable (``LAMINA_FUZZ_DIR`` overrides where; libFuzzer
exits without Python's cleanup, so the small jail stays behind).  A finding is any exception that
is not a :class:`lamina.errors.LaminaError` (an ``InvalidArchiveError`` for
mode 0), a change to the sentinel, anything created outside the root, or a
descriptor or thread left behind.  See ``fuzz/README.md`` for how to run it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import threading

import atheris

with atheris.instrument_imports(include=["lamina.archive", "lamina._tree", "lamina.errors"]):
    from lamina._tree import remove_tree_at
    from lamina.archive import ApplyOptions, apply_layer
    from lamina.archive._tarreader import TarReader
    from lamina.errors import InvalidArchiveError, LaminaError

import zstandard

#: Decompressed bytes allowed per input: bombs must end in ArchiveTooLargeError, fast.
MAX_BYTES = 64 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


BASE = ""  # the jail: made by _setup() when fuzzing starts
SENTINEL = ""
BEFORE = ""
BASE_FD = -1


def _setup() -> None:
    """Make the jail: a sentinel tree beside the root each input is applied into."""
    global BASE, SENTINEL, BEFORE, BASE_FD
    where = os.environ.get("LAMINA_FUZZ_DIR")
    if where is None and os.access("/dev/shm", os.W_OK):
        where = "/dev/shm"
    BASE = tempfile.mkdtemp(prefix="lamina-fuzz-", dir=where)
    SENTINEL = os.path.join(BASE, "sentinel")
    os.mkdir(SENTINEL)
    with open(os.path.join(SENTINEL, "hello"), "wb") as f:
        f.write(b"sentinel\n")
    os.mkdir(os.path.join(SENTINEL, "sub"))
    os.symlink("hello", os.path.join(SENTINEL, "link"))
    BEFORE = _snapshot()
    BASE_FD = os.open(BASE, _DIR)


def _snapshot() -> str:
    """Everything about the sentinel and the jail's listing that an escape could change."""
    h = hashlib.sha256()
    h.update(repr(sorted(set(os.listdir(BASE)) - {"dest"})).encode())
    for name in sorted(os.listdir(SENTINEL)):
        path = os.path.join(SENTINEL, name)
        st = os.lstat(path)
        h.update(
            repr((name, st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_ino)).encode()
        )
        if name == "hello":
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _read_only(data: bytes) -> None:
    reader = TarReader(io.BytesIO(data))
    try:
        while reader.next_entry() is not None:
            while reader.read_body(1 << 16):
                pass
    except InvalidArchiveError:
        pass


def _apply(data: bytes) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    os.mkdir(os.path.join(BASE, "dest"))
    try:
        apply_layer(io.BytesIO(data), os.path.join(BASE, "dest"), ApplyOptions(max_bytes=MAX_BYTES))
    except LaminaError:
        pass
    finally:
        assert len(os.listdir("/proc/self/fd")) == fds, "descriptor leak"
        assert threading.active_count() == threads, "decompression thread left running"
        assert _snapshot() == BEFORE, "the sentinel or the jail changed"
        remove_tree_at(BASE_FD, "dest")


def test_one_input(raw: bytes) -> None:
    if not raw:
        return
    mode, data = raw[0] % 4, raw[1:]
    if mode == 0:
        _read_only(data)
    elif mode == 1:
        _apply(data)
    elif mode == 2:
        _apply(gzip.compress(data, 1))
    else:
        _apply(zstandard.ZstdCompressor(level=1).compress(data))


def write_seeds(directory: str) -> None:
    """A few small valid layers (each with a mode byte) for libFuzzer to start from."""
    os.makedirs(directory, exist_ok=True)

    def layer(members: list[tuple[str, bytes, str]], fmt: int) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, kind, extra in members:
                info = tarfile.TarInfo(name)
                info.type = kind
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = extra
                data = extra.encode() if kind == tarfile.REGTYPE else b""
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data) if data else None)
        return buf.getvalue()

    members = [
        ("d", tarfile.DIRTYPE, ""),
        ("d/f", tarfile.REGTYPE, "hello"),
        ("d/s", tarfile.SYMTYPE, "../sentinel"),
        ("d/h", tarfile.LNKTYPE, "d/f"),
        ("d/.wh.gone", tarfile.REGTYPE, ""),
        ("e/.wh..wh..opq", tarfile.REGTYPE, ""),
        ("p", tarfile.FIFOTYPE, ""),
        ("long/" + "n" * 120, tarfile.REGTYPE, "x"),
    ]
    seeds = {
        "pax": layer(members, tarfile.PAX_FORMAT),
        "gnu": layer(members, tarfile.GNU_FORMAT),
        "ustar": layer(members[:4], tarfile.USTAR_FORMAT),
    }
    for name, body in seeds.items():
        for mode in range(4):
            with open(os.path.join(directory, f"{name}-{mode}"), "wb") as f:
                f.write(bytes([mode]) + body)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(sys.argv[2])
        return
    _setup()  # libFuzzer ends the process without Python's cleanup: the jail stays (small)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
