"""A tiny job for the harness's own test: no workload needed, seconds to run.

It writes a small layer tar (and the tree it must produce) into the scratch
filesystem, then times GNU tar and lamina applying it, with lamina's output
checked against the tree — the whole path of a real job, end to end.
"""

from __future__ import annotations

import io
import os
import tarfile

from _harness import Group, Variant

from jobs._ctx import Context, q


def groups(ctx: Context) -> list[Group]:
    base = ctx.scratch / "selftest"
    layer = base / "tiny.tar"
    tree = base / "expected"
    out = ctx.out

    def prepare() -> None:
        ctx.run(ctx.fresh(base))
        with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tf:
            for d in ("etc", "usr", "usr/bin"):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tf.addfile(info)
            for i in range(200):
                data = (f"file {i}\n" * (i + 1)).encode()
                info = tarfile.TarInfo(f"usr/bin/f{i:03d}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo("etc/link")
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "../usr/bin/f001", 1_700_000_000
            tf.addfile(info)
        os.makedirs(tree)
        ctx.run(f"tar --numeric-owner -xf {q(str(layer))} -C {q(str(tree))}")

    def finish() -> None:
        ctx.run(ctx.rm(base))
        ctx.run(ctx.rm())

    return [
        Group(
            name="selftest-apply-tiny.tar",
            job="selftest",
            title="apply a 204-entry layer (harness self-test)",
            variants=[
                Variant(
                    "gnu-tar",
                    f"tar --numeric-owner -xf {q(str(layer))} -C {q(str(out))}",
                    ctx.fresh(),
                    ctx.rm(),
                    str(layer),
                    ctx.P_TAR,
                ),
                Variant(
                    "lamina apply_layer",
                    ctx.entry("apply", str(layer), str(out)),
                    ctx.fresh(),
                    ctx.rm(),
                    str(layer),
                    ctx.p_lamina,
                    lamina=True,
                    check=ctx.treecmp(tree, out),
                ),
            ],
            files=204,
            prepare=prepare,
            finish=finish,
        )
    ]
