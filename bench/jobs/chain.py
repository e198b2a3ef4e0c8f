"""get/put (mount/unmount) of the top of a deep overlay chain: 128 and 500 layers.

One chain of N tiny layers (bench/jobs/entry.py mkchain: each layer adds a
directory of files, rewrites /etc/chain-state and whites out one file of the
layer below) is imported once, untimed, into containers-storage's overlay
driver and into lamina's; the 128-layer job mounts layer 128 of it, the
500-layer job layer 500.  ``get`` is the ``mount`` command, ``put`` the
``unmount`` command, one process each.  vfs is left out: a vfs chain is N
full copies, and its get is a no-op.
"""

from __future__ import annotations

from _harness import Group, Variant

from jobs._ctx import Context, q


def groups(ctx: Context) -> list[Group]:
    depths = (128,) if ctx.quick else (128, 500)
    top = max(depths)
    base = ctx.scratch / "chain"
    tars = base / "tars"
    csd = base / "cs-ovl"
    lroot = base / "lamina"
    c = ctx.cs("overlay", csd)

    def prepare() -> None:
        ctx.run(ctx.clean(base))
        ctx.run(ctx.entry("mkchain", str(tars), str(top)))
        ctx.run(
            f"p=''; for k in $(seq -f %03g 1 {top}); do "
            f"{c} import-layer --id c$k -f {q(str(tars))}/$k.tar $p >/dev/null || exit 1; "
            "p=c$k; done"
        )
        ctx.try_build(
            "chain-lamina-overlay", ctx.entry("chain", "overlay", str(lroot), str(tars), str(top))
        )

    def finish() -> None:
        ctx.run(ctx.clean(base))

    out: list[Group] = []
    for n, depth in enumerate(depths):
        ident = f"c{depth:03d}"
        # views that outlive the command, released by a later command (as c-storage's)
        detached = ("detached_views=true",)
        lam_mount = ctx.lamina(lroot, "overlay", "layer", "mount", ident, opts=detached)
        lam_unmount = ctx.lamina(lroot, "overlay", "layer", "unmount", ident, opts=detached)
        # the same driver calls as one library call in a process (like apply_layer vs tar)
        lib_mount = ctx.entry("mount", "overlay", str(lroot), ident, *detached)
        lib_unmount = ctx.entry("unmount", "overlay", str(lroot), ident, *detached)
        need = ctx.require("chain-lamina-overlay")
        check = (
            f'm=$({lam_mount}) && s=$(cat "$m/etc/chain-state") && '
            f'c=$(ls "$m/opt/chain" | wc -l); {lam_unmount} >/dev/null 2>&1; '
            f'echo "$s, $c entries in opt/chain (expect layer {depth}, {depth + 1})"; '
            f'[ "$s" = "layer {depth}" ] && [ "$c" = {depth + 1} ]'
        )
        get = Group(
            name=f"chain-get-{depth}",
            job="get/put",
            title=f"get (mount) the top of a {depth}-layer overlay chain",
            variants=[
                Variant(
                    "c-storage overlay mount",
                    f"{c} mount {ident} >/dev/null",
                    teardown=f"{c} unmount {ident} >/dev/null",
                    prime=ctx.p_cs,
                ),
                Variant(
                    "lamina overlay mount (CLI get)",
                    f"{lam_mount} >/dev/null",
                    need,
                    lam_unmount,
                    prime=ctx.p_lamina,
                    lamina=True,
                    check=check,
                ),
                Variant(
                    "lamina overlay driver.mount (library call, one process)",
                    f"{lib_mount} >/dev/null",
                    need,
                    lib_unmount,
                    prime=ctx.p_lamina,
                    lamina=True,
                    note="the CLI's call without its command-line parser (click)",
                ),
            ],
            prepare=prepare if n == 0 else None,
            notes=[f"layer {depth} of one {top}-layer chain; vfs left out (get is a no-op)"],
        )
        put = Group(
            name=f"chain-put-{depth}",
            job="get/put",
            title=f"put (unmount) the top of a {depth}-layer overlay chain",
            variants=[
                Variant(
                    "c-storage overlay unmount",
                    f"{c} unmount {ident} >/dev/null",
                    f"{c} mount {ident} >/dev/null",
                    prime=ctx.p_cs,
                ),
                Variant(
                    "lamina overlay unmount (CLI put)",
                    lam_unmount,
                    f"{need} && {lam_mount} >/dev/null",
                    prime=ctx.p_lamina,
                    lamina=True,
                ),
                Variant(
                    "lamina overlay driver.unmount (library call, one process)",
                    lib_unmount,
                    f"{need} && {lib_mount} >/dev/null",
                    prime=ctx.p_lamina,
                    lamina=True,
                ),
            ],
            finish=finish if n == len(depths) - 1 else None,
        )
        out += [get, put]
    return out
