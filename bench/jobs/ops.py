"""Store operations: diff export, changes / diff-size, create of a read-write layer, remove.

Stores are built once per group, untimed; each round times one command of
one tool.  Peers are ``containers-storage`` with its vfs and overlay drivers
on private graph roots, and plain tools (``tar -c``, ``find``, ``rm -rf``,
``cp -a``) as physical references.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from _harness import Group, Variant, sh

from jobs._ctx import Context, Raw, q

_M = Raw('"$m"')  # the mount point printed by the command before


def _stores(ctx: Context, tag: str) -> tuple[Path, Path, Path, Path]:
    base = ctx.scratch / tag
    return base / "cs-vfs", base / "cs-ovl", base / "lamina", base / "out"


def diff_groups(ctx: Context) -> list[Group]:
    csv, cso, lroot, outdir = _stores(ctx, "diff")
    l0, l1 = str(ctx.layer("layer0")), str(ctx.layer("layer1"))
    facts = ctx.layer_facts("layer1")
    upper = cso / "g" / "overlay" / "l1" / "diff"
    out = outdir / "diff.tar"
    rm_out = f"rm -f {q(str(out))}"
    # the check that matters: layer0 + the exported diff == rootfs1
    chk = outdir / "check"
    roundtrip = (
        f"{ctx.fresh(chk)} && tar --numeric-owner -xf {q(l0)} -C {q(str(chk))} && "
        f"{ctx.entry('apply', str(out), str(chk))} && "
        f"{ctx.treecmp(ctx.workload / 'rootfs1', chk)}; rc=$?; rm -rf {q(str(chk))}; exit $rc"
    )

    def prepare() -> None:
        for drv, d in (("vfs", csv), ("overlay", cso)):
            ctx.run(ctx.clean(d))
            ctx.run(f"{ctx.cs(drv, d)} import-layer --id l0 -f {q(l0)} >/dev/null")
            ctx.run(f"{ctx.cs(drv, d)} import-layer --id l1 -f {q(l1)} l0 >/dev/null")
        ctx.run(ctx.fresh(outdir))
        for drv in ("vfs", "overlay"):
            ctx.try_build(
                f"diff-lamina-{drv}",
                f"{ctx.clean(lroot / drv)} && "
                + ctx.entry("store", drv, str(lroot / drv), f"l0={l0}", f"l1:l0={l1}"),
            )

    def finish() -> None:
        for d in (csv, cso, lroot, outdir):
            ctx.run(ctx.clean(d))

    vs = [
        Variant(
            "gnu-tar -c of layer1's files (c-storage overlay upper dir)",
            f"tar --numeric-owner -cf {q(str(out))} -C {q(str(upper))} .",
            rm_out,
            rm_out,
            str(upper),
            ctx.P_TAR,
        ),
        Variant(
            "lamina export_tree of the same upper dir (overlay whiteouts)",
            ctx.entry("export-tree", str(upper), str(out), "--overlay"),
            rm_out,
            rm_out,
            str(upper),
            ctx.p_lamina,
            lamina=True,
            check=roundtrip,
            note="the engine of a native overlay diff, on the very files tar -c reads",
        ),
    ]
    for drv, what in (("overlay", "native"), ("vfs", "naive: changes + export")):
        root = lroot / drv
        vs.append(
            Variant(
                f"lamina {drv} diff l1 -p l0 (CLI, {what})",
                ctx.lamina(root, drv, "layer", "diff", "l1", "--parent", "l0", "-o", str(out)),
                f"{ctx.require('diff-lamina-' + drv)} && {rm_out}",
                rm_out,
                str(root),
                ctx.p_lamina,
                lamina=True,
                check=roundtrip,
            )
        )
    for drv, d in (("overlay", cso), ("vfs", csv)):
        vs.append(
            Variant(
                f"c-storage {drv} diff l1 (tar-split)",
                f"{ctx.cs(drv, d)} diff -u -f {q(str(out))} l1",
                rm_out,
                rm_out,
                str(d / "g"),
                ctx.p_cs,
            )
        )
    return [
        Group(
            name="diff-layer1",
            job="diff",
            title="diff export of layer1 (uncompressed tar)",
            variants=vs,
            bytes=facts["tar_bytes"],
            files=facts["entries"],
            prepare=prepare,
            finish=finish,
            notes=[
                "c-storage rebuilds the tar from the tar-split data recorded at import",
                "and file contents, so it never walks or compares trees.",
            ],
            also_vs=("c-storage overlay diff l1 (tar-split)",),
        )
    ]


def changes_groups(ctx: Context) -> list[Group]:
    """100 changed files (40 rewritten, 30 added, 30 deleted) on the 50,000-file base."""
    csv, cso, lroot, _ = _stores(ctx, "changes")
    small = str(ctx.layer("small"))
    nchanges = "100"

    def cs_store(drv: str, d: Path) -> None:
        c = ctx.cs(drv, d)
        ctx.run(ctx.clean(d))
        ctx.run(f"{c} import-layer --id s0 -f {q(small)} >/dev/null")
        ctx.run(f"{c} create-layer --id s1 s0 >/dev/null")
        ctx.run(f"m=$({c} mount s1) && {ctx.entry('mutate', _M, nchanges)}")
        ctx.run(f"{c} unmount s1 >/dev/null")

    def lamina_store(drv: str) -> bool:
        root = lroot / drv
        return ctx.try_build(
            f"changes-lamina-{drv}",
            f"{ctx.clean(root)} && {ctx.entry('store', drv, str(root), 's0=' + small)} && "
            f"{ctx.lamina(root, drv, 'layer', 'create-rw', 's1', '--parent', 's0')} && "
            + ctx.entry("mutate-layer", drv, str(root), "s1", nchanges),
        )

    notes = ["caches dropped before each command: every tool walks cold metadata"]
    extra: dict[str, Any] = {}

    def call_alone() -> None:
        """The overlay driver's calls without a process around them: context for the target."""
        runs = []
        for _ in range(5):
            p = sh(ctx.entry("calls", "overlay", str(lroot / "overlay"), "s1", "s0"), log=ctx.log)
            if p.returncode != 0:
                return
            changes_ms, size_ms = p.stdout.split()[:2]
            runs.append((float(changes_ms), float(size_ms)))
        changes = statistics.median(r[0] for r in runs)
        size = statistics.median(r[1] for r in runs)
        extra["call_alone_ms"] = {"changes": changes, "diff_size": size}
        notes.append(
            "in-process, the overlay driver's calls alone (caches dropped before each, "
            f"median of 5, untimed by the harness): changes() {changes:.1f} ms, "
            f"diff_size() {size:.1f} ms"
        )

    def prepare() -> None:
        cs_store("vfs", csv)
        cs_store("overlay", cso)
        lamina_store("vfs")
        if lamina_store("overlay"):
            call_alone()

    def finish() -> None:
        for d in (csv, cso, lroot):
            ctx.run(ctx.clean(d))

    a, b = csv / "g" / "vfs" / "dir" / "s0", csv / "g" / "vfs" / "dir" / "s1"
    vs = [
        Variant(
            "full walk of both trees (find -printf of lstat fields)",
            f"find {q(str(a))} {q(str(b))} -printf '%i %m %U %G %s %T@\\n' >/dev/null",
            warm="",
            prime="find --version",
            note="the cost any tree comparison pays; target: overlay changes <= 2% of it",
        )
    ]
    for drv, what in (("overlay", "native"), ("vfs", "naive")):
        root = lroot / drv
        need = ctx.require(f"changes-lamina-{drv}")
        vs.append(
            Variant(
                f"lamina {drv} changes (CLI, {what})",
                ctx.lamina(root, drv, "layer", "changes", "s1", "--parent", "s0"),
                need,
                prime=ctx.p_lamina,
                lamina=True,
                check=f"{ctx.lamina(root, drv, 'layer', 'changes', 's1', '--parent', 's0')} | "
                'awk \'{n[$1]++} END {for (k in n) printf "%s=%d ", k, n[k]; print ""}\'',
            )
        )
        vs.append(
            Variant(
                f"lamina {drv} diff-size (CLI, {what})",
                ctx.lamina(root, drv, "layer", "diff-size", "s1", "--parent", "s0"),
                need,
                prime=ctx.p_lamina,
                lamina=True,
                check=ctx.lamina(root, drv, "layer", "diff-size", "s1", "--parent", "s0"),
            )
        )
    for drv, d in (("overlay", cso), ("vfs", csv)):
        for cmd in ("changes", "diffsize"):
            vs.append(
                Variant(
                    f"c-storage {drv} {cmd}",
                    f"{ctx.cs(drv, d)} {cmd} s1 s0",
                    prime=ctx.p_cs,
                )
            )
    return [
        Group(
            name="changes-100-on-small",
            job="changes",
            title="changes and diff-size: 100 changed files (40 rewritten, 30 added, "
            "30 deleted) on the 50,000-file base",
            variants=vs,
            files=50111,
            prepare=prepare,
            finish=finish,
            notes=notes,
            extra=extra,
            also_vs=("c-storage overlay changes", "c-storage vfs changes"),
        )
    ]


def create_rw_groups(ctx: Context) -> list[Group]:
    """A container layer on top of the l0+l1 image."""
    groups = []
    l0, l1 = str(ctx.layer("layer0")), str(ctx.layer("layer1"))
    for drv in ("vfs", "overlay"):
        csd, _, lroot, _ = _stores(ctx, f"createrw-{drv}")
        c = ctx.cs(drv, csd)

        def prepare(drv: str = drv, csd: Path = csd, lroot: Path = lroot, c: str = c) -> None:
            ctx.run(ctx.clean(csd))
            ctx.run(f"{c} import-layer --id l0 -f {q(l0)} >/dev/null")
            ctx.run(f"{c} import-layer --id l1 -f {q(l1)} l0 >/dev/null")
            ctx.try_build(
                f"createrw-lamina-{drv}",
                f"{ctx.clean(lroot)} && "
                + ctx.entry("store", drv, str(lroot), f"l0={l0}", f"l1:l0={l1}"),
            )

        def finish(csd: Path = csd, lroot: Path = lroot) -> None:
            ctx.run(ctx.clean(csd))
            ctx.run(ctx.clean(lroot))

        vs = [
            Variant(
                f"c-storage {drv} create-layer",
                f"{c} create-layer --id ctr l1 >/dev/null",
                teardown=f"{c} delete-layer ctr >/dev/null",
                warm="",
                prime=ctx.p_cs,
            ),
            Variant(
                f"lamina {drv} create-rw (CLI)",
                ctx.lamina(lroot, drv, "layer", "create-rw", "ctr", "--parent", "l1"),
                ctx.require(f"createrw-lamina-{drv}"),
                ctx.lamina(lroot, drv, "layer", "rm", "ctr"),
                prime=ctx.p_lamina,
                lamina=True,
            ),
        ]
        if drv == "vfs":
            src = lroot / "vfs" / "dir" / "l1"
            dst = ctx.scratch / "createrw-vfs" / "cp"
            vs.append(
                Variant(
                    "cp -a of the l1 tree (physical reference)",
                    f"cp -a {q(str(src))} {q(str(dst))}",
                    f"{ctx.require('createrw-lamina-vfs')} && rm -rf {q(str(dst))}",
                    f"rm -rf {q(str(dst))}",
                )
            )
        groups.append(
            Group(
                name=f"create-rw-{drv}",
                job="create-rw",
                title=f"create a read-write layer on the l0+l1 image ({drv})",
                variants=vs,
                prepare=prepare,
                finish=finish,
                notes=["vfs: a full copy of the parent (8.3k entries, 205 MB)"]
                if drv == "vfs"
                else [],
            )
        )
    return groups


def remove_groups(ctx: Context) -> list[Group]:
    """Remove a big layer: the 1 GiB one and the 50,000-file one."""
    names = ("small",) if ctx.quick else ("big", "small")
    groups = []
    for name in names:
        src = str(ctx.layer(name))
        csd, _, lroot, outdir = _stores(ctx, f"remove-{name}")
        tree = outdir / "tree"
        vs = [
            Variant(
                "rm -rf of the same tree",
                f"rm -rf {q(str(tree))}",
                f"{ctx.fresh(tree)} && tar --numeric-owner -xf {q(src)} -C {q(str(tree))}",
                f"rm -rf {q(str(tree))}",
            )
        ]
        for drv in ("vfs", "overlay"):
            root = lroot / drv
            vs.append(
                Variant(
                    f"lamina {drv} rm (CLI)",
                    ctx.lamina(root, drv, "layer", "rm", "x"),
                    f"{ctx.clean(root)} && {ctx.entry('store', drv, str(root), 'x=' + src)}",
                    ctx.clean(root),
                    prime=ctx.p_lamina,
                    lamina=True,
                )
            )
        for drv in ("vfs", "overlay"):
            c = ctx.cs(drv, csd)
            vs.append(
                Variant(
                    f"c-storage {drv} delete-layer",
                    f"{c} delete-layer x >/dev/null",
                    f"{ctx.clean(csd)} && {c} import-layer --id x -f {q(src)} >/dev/null",
                    ctx.clean(csd),
                    prime=ctx.p_cs,
                )
            )
        facts = ctx.layer_facts(name)
        groups.append(
            Group(
                name=f"remove-{name}",
                job="remove",
                title="remove a layer holding "
                + ("4 x 256 MiB" if name == "big" else "50,000 files"),
                variants=vs,
                files=facts["entries"],
                bytes=facts["content_bytes"],
                finish=ctx.cleaner(csd, lroot, outdir),
            )
        )
    return groups
