"""Apply jobs: a layer into an empty directory, and layer1 onto layer0.

Reference: GNU tar (``tar --numeric-owner -x``) in the same rounds.  lamina
runs as a whole process twice: ``entry.py apply`` (one call of
``lamina.archive.apply_layer``, the analogue of ``tar -x`` into a directory)
and the ``lamina`` command line through a driver (``create`` + ``apply-diff``,
the analogue of ``containers-storage import-layer``).  Peak RSS of every
variant comes from wait4; the 1 GiB ``big`` layer is the memory job.
"""

from __future__ import annotations

from _harness import Group, Variant

from jobs._ctx import Context, q

# (layer, umoci tag, tree it must reproduce)
_BASES = (("layer0", "base", "rootfs0"), ("small", "small", "small"), ("big", "big", "big"))
_TITLES = {
    "layer0": "Debian base layer (6.7k entries, 121 MB)",
    "small": "50,000 small files (1-4 KiB, 167 MB)",
    "big": "4 x 256 MiB files (1 GiB)",
}
_Z = {"tar": "", "tar.gz": "-z", "tar.zst": "--zstd"}


def base_groups(ctx: Context) -> list[Group]:
    if ctx.quick:
        plan = [("layer0", ("tar", "tar.gz")), ("small", ("tar",)), ("big", ("tar",))]
    else:
        plan = [(n, ("tar", "tar.gz", "tar.zst")) for n, _, _ in _BASES]
    return [_base(ctx, name, fmt) for name, fmts in plan for fmt in fmts]


def _base(ctx: Context, name: str, fmt: str) -> Group:
    tag = next(t for n, t, _ in _BASES if n == name)
    tree = ctx.workload / next(r for n, _, r in _BASES if n == name)
    facts = ctx.layer_facts(name)
    src = str(ctx.layer(name, fmt))
    out = str(ctx.out)
    fresh, rmout = ctx.fresh(), ctx.rm()
    lroot = ctx.scratch / "lamina"
    csd = ctx.scratch / "cs"
    content = name != "big"  # hashing 1 GiB twice per check is not worth it
    quick_big = ctx.quick and name == "big"

    vs = [
        Variant(
            "gnu-tar",
            f"tar --numeric-owner {_Z[fmt]} -xf {q(src)} -C {q(out)}",
            fresh,
            rmout,
            src,
            ctx.P_TAR,
        ),
        Variant(
            "lamina apply_layer",
            ctx.entry("apply", src, out),
            fresh,
            rmout,
            src,
            ctx.p_lamina,
            lamina=True,
            check=ctx.treecmp(tree, ctx.out, content=content),
        ),
    ]
    if not quick_big:
        for drv in ("vfs", "overlay"):
            vs.append(
                Variant(
                    f"lamina {drv} create+apply-diff (CLI)",
                    f"{ctx.lamina(lroot, drv, 'layer', 'create', 'l0')} && "
                    f"{ctx.lamina(lroot, drv, 'layer', 'apply-diff', 'l0', src)} >/dev/null",
                    ctx.clean(lroot),
                    ctx.clean(lroot),
                    src,
                    ctx.p_lamina,
                    lamina=True,
                    note="two processes (create, apply-diff)",
                )
            )
        if fmt != "tar.zst":  # tarfile has no zstd before Python 3.14
            vs.append(
                Variant(
                    "py-tarfile fully_trusted",
                    f"{ctx.py_extract} --filter fully_trusted {q(src)} {q(out)}",
                    fresh,
                    rmout,
                    src,
                    ctx.p_py,
                )
            )
            if name != "big":
                vs.append(
                    Variant(
                        "py-tarfile data",
                        f"{ctx.py_extract} --filter data {q(src)} {q(out)}",
                        fresh,
                        rmout,
                        src,
                        ctx.p_py,
                        note="data filter: refuses absolute symlinks, drops owners",
                    )
                )
        for drv in ("vfs", "overlay"):
            vs.append(
                Variant(
                    f"c-storage {drv} import-layer",
                    f"{ctx.cs(drv, csd)} import-layer -f {q(src)} >/dev/null",
                    ctx.clean(csd),
                    ctx.clean(csd),
                    src,
                    ctx.p_cs,
                )
            )
        if fmt != "tar.zst":  # the OCI layouts hold tar and gzip blobs only
            oci = ctx.workload / ("oci-tar" if fmt == "tar" else "oci-gz")
            vs.append(
                Variant(
                    "umoci raw unpack",
                    f"umoci raw unpack --image {q(str(oci))}:{tag} {q(out)}",
                    rmout,
                    rmout,
                    src,
                    ctx.P_UMOCI,
                )
            )
    return Group(
        name=f"apply-{name}.{fmt}",
        job="apply",
        title=f"apply {_TITLES[name]}, {fmt}",
        variants=vs,
        bytes=facts["tar_bytes"],
        files=facts["entries"],
        finish=ctx.cleaner(lroot, csd, ctx.out),
        also_vs=("c-storage vfs import-layer", "c-storage overlay import-layer"),
    )


def layer1_groups(ctx: Context) -> list[Group]:
    fmts = ("tar",) if ctx.quick else ("tar", "tar.gz", "tar.zst")
    return [_layer1(ctx, fmt) for fmt in fmts]


def _layer1(ctx: Context, fmt: str) -> Group:
    facts = ctx.layer_facts("layer1")
    src = str(ctx.layer("layer1", fmt))
    l0 = str(ctx.layer("layer0"))
    out = str(ctx.out)
    with_l0 = f"{ctx.fresh()} && tar --numeric-owner -xf {q(l0)} -C {q(out)}"
    rmout = ctx.rm()
    lroot = ctx.scratch / "lamina"
    csd = ctx.scratch / "cs"
    vs = [
        Variant(
            "gnu-tar onto layer0 (whiteouts not applied)",
            f"tar --numeric-owner {_Z[fmt]} -xf {q(src)} -C {q(out)}",
            with_l0,
            rmout,
            src,
            ctx.P_TAR,
            note="ignores whiteouts: a lower bound",
        ),
        Variant(
            "lamina apply_layer onto layer0",
            ctx.entry("apply", src, out),
            with_l0,
            rmout,
            src,
            ctx.p_lamina,
            lamina=True,
            check=ctx.treecmp(ctx.workload / "rootfs1", ctx.out),
        ),
    ]
    for drv in ("vfs", "overlay"):
        vs.append(
            Variant(
                f"lamina {drv} create -p l0 + apply-diff (CLI)",
                f"{ctx.lamina(lroot, drv, 'layer', 'create', 'l1', '--parent', 'l0')} && "
                f"{ctx.lamina(lroot, drv, 'layer', 'apply-diff', 'l1', src, '--parent', 'l0')}"
                " >/dev/null",
                f"{ctx.clean(lroot)} && {ctx.entry('store', drv, str(lroot), 'l0=' + l0)}",
                ctx.clean(lroot),
                src,
                ctx.p_lamina,
                lamina=True,
                note="two processes"
                + ("; vfs copies layer0 first, like c-storage vfs" if drv == "vfs" else ""),
            )
        )
    if fmt != "tar.zst":
        vs.append(
            Variant(
                "py-tarfile fully_trusted onto layer0 (no whiteouts)",
                f"{ctx.py_extract} --filter fully_trusted {q(src)} {q(out)}",
                with_l0,
                rmout,
                src,
                ctx.p_py,
            )
        )
    for drv in ("vfs", "overlay"):
        vs.append(
            Variant(
                f"c-storage {drv} import-layer on l0",
                f"{ctx.cs(drv, csd)} import-layer --id l1 -f {q(src)} l0 >/dev/null",
                f"{ctx.clean(csd)} && "
                f"{ctx.cs(drv, csd)} import-layer --id l0 -f {q(l0)} >/dev/null",
                ctx.clean(csd),
                f"{src} {csd / 'g'}",
                ctx.p_cs,
                note="vfs copies layer0 first" if drv == "vfs" else "",
            )
        )
    return Group(
        name=f"apply-layer1-on-layer0.{fmt}",
        job="apply",
        title=f"apply layer1 (4.4k entries, 128 whiteouts, 1 opaque dir) onto layer0, {fmt}",
        variants=vs,
        bytes=facts["tar_bytes"],
        files=facts["entries"],
        finish=ctx.cleaner(lroot, csd, ctx.out),
        also_vs=("c-storage vfs import-layer on l0", "c-storage overlay import-layer on l0"),
    )
