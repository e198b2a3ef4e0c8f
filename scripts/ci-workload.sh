#!/bin/bash
# Build (or reuse) the real-layer workload that tests/compat needs: a debootstrap
# Debian root filesystem as layer0.tar and a second layer with deletions and an
# opaque directory as layer1.tar, made by the shared bench scripts.
#
# Never fails CI: the workload needs root, debootstrap and the Debian mirror,
# and a machine without them should still run everything else.  On failure the
# reason is written to $BENCH_DIR/work/UNAVAILABLE, which tests/compat reads to
# skip with that reason; on success that file is removed.
#
# Environment:
#   BENCH_DIR      [/var/tmp/lamina-bench]  shared with the benchmarks; the cache
#   LAMINA_SHARED  [<repo>/../shared]       folder holding bench/make-workload.sh
#   Anything make-workload.sh reads (MIRROR, SUITE, FORCE=1 to rebuild, ...).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${LAMINA_SHARED:-$HERE/../../shared}
export BENCH_DIR=${BENCH_DIR:-/var/tmp/lamina-bench}
W=$BENCH_DIR/work
MARK=$W/UNAVAILABLE

unavailable() {
  echo "ci-workload: workload unavailable: $*" >&2
  mkdir -p "$W" 2>/dev/null && printf '%s\n' "$*" > "$MARK" 2>/dev/null
  exit 0
}

[ -x "$SHARED/bench/make-workload.sh" ] \
  || unavailable "no $SHARED/bench/make-workload.sh (set LAMINA_SHARED to the shared folder)"
[ "$(id -u)" = 0 ] || unavailable "building the workload needs root (debootstrap, chroot)"
for t in debootstrap pigz zstd; do
  command -v "$t" >/dev/null || unavailable "missing tool $t (run scripts/ci-apt.sh)"
done

if [ -f "$W/layers/layer0.tar" ] && [ -f "$W/layers/layer1.tar" ] && [ -f "$W/workload.json" ] \
   && [ "${FORCE:-0}" != 1 ]; then
  echo "ci-workload: reusing cached workload in $W" >&2
  rm -f "$MARK"
  exit 0
fi

start=$(date +%s)
log=$BENCH_DIR/make-workload.log
mkdir -p "$BENCH_DIR"
echo "ci-workload: building workload in $W (about 2 minutes; log $log)" >&2
"$SHARED/bench/make-workload.sh" >"$log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then
  rm -f "$MARK"
  echo "ci-workload: built in $(( $(date +%s) - start )) s" >&2
  exit 0
fi
tail -n 20 "$log" >&2
for f in debootstrap.log chroot-apt.log; do
  [ -f "$W/$f" ] && { echo "--- tail of $W/$f" >&2; tail -n 15 "$W/$f" >&2; }
done
unavailable "make-workload.sh failed with exit $rc after $(( $(date +%s) - start )) s (see $log)"
