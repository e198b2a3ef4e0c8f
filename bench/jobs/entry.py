"""Whole-process entry points into lamina's library for the benchmark (and its setups).

Each subcommand is one process doing one job, so its Python start-up and
imports are timed like a peer tool's start-up.  The timed ones call the
public API only (``lamina.archive``, ``lamina.drivers``); the others build
fixtures (stores, chains, small changes) untimed.

usage:
  entry.py apply LAYER DEST [--overlay]        apply_layer(open(LAYER), DEST)
  entry.py export-tree ROOT OUT [--overlay]     export_tree(ROOT) -> OUT
  entry.py store DRIVER ROOT ID[:PARENT]=LAYER ...   create + apply_diff, in order
  entry.py chain DRIVER ROOT CHAIN_DIR N        create c001..cNNN from CHAIN_DIR/NNN.tar
  entry.py mkchain OUT_DIR N                    write N tiny layer tars (deep-chain fixture)
  entry.py mutate DIR N                         change N files of a tree (deterministic)
  entry.py mutate-layer DRIVER ROOT ID N        mutate the layer's view (get, mutate, put)
  entry.py mount DRIVER ROOT ID [K=V ...]       driver.mount(ID) (the get of the CLI's mount)
  entry.py unmount DRIVER ROOT ID [K=V ...]     driver.unmount(ID)
  entry.py calls DRIVER ROOT ID PARENT          ms of changes() and diff_size() alone, each
                                                after dropping the caches (root; untimed)
"""

from __future__ import annotations

import io
import os
import sys

TYPE_CHECKING = False  # typing itself costs a timed process milliseconds
if TYPE_CHECKING:  # fixtures only: a timed process must not pay for importing it
    import tarfile


def _apply(args: list[str]) -> None:
    from lamina import archive

    layer, dest = args[0], args[1]
    options = None
    if "--overlay" in args[2:]:
        options = archive.ApplyOptions(whiteouts=archive.WhiteoutFormat.OVERLAY)
    with open(layer, "rb") as stream:
        archive.apply_layer(stream, dest, options)


def _export_tree(args: list[str]) -> None:
    from lamina import archive

    root, out = args[0], args[1]
    whiteouts = archive.WhiteoutFormat.OCI
    if "--overlay" in args[2:]:
        whiteouts = archive.WhiteoutFormat.OVERLAY
    stream = archive.export_tree(root, whiteouts=whiteouts)
    try:
        with open(out, "wb") as f:
            while chunk := stream.read(1 << 20):
                f.write(chunk)
    finally:
        stream.close()


def _store(args: list[str]) -> None:
    from lamina import drivers

    driver = drivers.new_driver(args[0], args[1], {})
    for spec in args[2:]:
        ident, layer = spec.split("=", 1)
        layer_id, _, parent = ident.partition(":")
        driver.create(layer_id, parent or None)
        with open(layer, "rb") as stream:
            driver.apply_diff(layer_id, parent or None, stream)


def _chain(args: list[str]) -> None:
    from lamina import drivers

    driver = drivers.new_driver(args[0], args[1], {})
    chain_dir, n = args[2], int(args[3])
    parent: str | None = None
    for k in range(1, n + 1):
        layer_id = f"c{k:03d}"
        driver.create(layer_id, parent)
        with open(os.path.join(chain_dir, f"{k:03d}.tar"), "rb") as stream:
            driver.apply_diff(layer_id, parent, stream)
        parent = layer_id


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
    else:
        info.mode = mode
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def _mkchain(args: list[str]) -> None:
    """Tiny layers shaped like a real deep chain: each adds a directory of files,
    rewrites one shared file, and whites out a file of the layer below."""
    import tarfile

    out, n = args[0], int(args[1])
    os.makedirs(out, exist_ok=True)
    for k in range(1, n + 1):
        path = os.path.join(out, f"{k:03d}.tar")
        if os.path.exists(path):
            continue
        with tarfile.open(path + ".tmp", "w", format=tarfile.PAX_FORMAT) as tf:
            _add(tf, "etc")
            _add(tf, "etc/chain-state", f"layer {k}\n".encode())
            _add(tf, "opt")
            _add(tf, "opt/chain")
            if k > 1:
                _add(tf, f"opt/chain/.wh.l{k - 1:03d}-f00", b"", 0o600)
            _add(tf, f"opt/chain/l{k:03d}")
            for j in range(10):
                _add(tf, f"opt/chain/l{k:03d}/f{j:02d}", (f"{k}-{j}\n" * 40).encode())
            _add(tf, f"opt/chain/l{k:03d}-f00", b"x" * 100)
        os.replace(path + ".tmp", path)


def _mutate(args: list[str]) -> None:
    """A container's small change: of N changes, 40% rewrite a file (size changes),
    30% add new files, 30% delete files — spread over the whole tree."""
    root, n = args[0], int(args[1])
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    if len(files) < n:
        sys.exit(f"mutate: only {len(files)} files under {root}")
    n_mod = n * 4 // 10
    n_add = n * 3 // 10
    n_del = n - n_mod - n_add
    step = len(files) // n
    picked = files[::step][:n]
    for path in picked[:n_mod]:
        with open(path, "ab") as f:
            f.write(b"changed by the benchmark\n")
    for i, path in enumerate(picked[n_mod : n_mod + n_add]):
        with open(os.path.join(os.path.dirname(path), f"bench-added-{i:03d}"), "wb") as f:
            f.write(b"added by the benchmark\n" * 50)
    for path in picked[n_mod + n_add : n_mod + n_add + n_del]:
        os.unlink(path)
    print(f"mutate {root}: {n_mod} modified, {n_add} added, {n_del} deleted")


def _mutate_layer(args: list[str]) -> None:
    from lamina import drivers

    driver = drivers.new_driver(args[0], args[1], {})
    with driver.mounted(args[2]) as view:
        _mutate([str(view), args[3]])


def _driver_options(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


def _mount(args: list[str]) -> None:
    from lamina import drivers

    driver = drivers.new_driver(args[0], args[1], _driver_options(args[3:]))
    print(driver.mount(args[2]))


def _unmount(args: list[str]) -> None:
    from lamina import drivers

    drivers.new_driver(args[0], args[1], _driver_options(args[3:])).unmount(args[2])


def _calls(args: list[str]) -> None:
    import time

    from lamina import drivers

    driver = drivers.new_driver(args[0], args[1], {})
    layer, parent = args[2], args[3]

    def drop_caches() -> None:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    drop_caches()
    t = time.perf_counter()
    found = driver.changes(layer, parent)
    changes_ms = (time.perf_counter() - t) * 1000
    drop_caches()
    t = time.perf_counter()
    size = driver.diff_size(layer, parent)
    size_ms = (time.perf_counter() - t) * 1000
    print(f"{changes_ms:.3f} {size_ms:.3f} {len(found)} {size}")


COMMANDS = {
    "calls": _calls,
    "mount": _mount,
    "unmount": _unmount,
    "mutate-layer": _mutate_layer,
    "apply": _apply,
    "export-tree": _export_tree,
    "store": _store,
    "chain": _chain,
    "mkchain": _mkchain,
    "mutate": _mutate,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
