#!/bin/bash
# A short fuzz run for CI: atheris (libFuzzer) over the tar reader and apply_layer.
#
#   scripts/fuzz-ci.sh [SECONDS]        default 60, or $LAMINA_FUZZ_SECONDS
#
# Starts from a few valid layers (fuzz/fuzz_apply.py --write-seeds), works on
# tmpfs when /dev/shm is writable, and exits non-zero on a finding after
# printing the input (base64) and its traceback.  Without atheris installed
# (the "fuzz" extra) it says so and exits 0, so a machine without the extra
# still runs the rest of CI.  Long runs: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
seconds=${1:-${LAMINA_FUZZ_SECONDS:-60}}

if ! "$PY" -c 'import atheris' 2>/dev/null; then
  echo "fuzz: atheris is not installed in $PY (pip install -e '.[fuzz]'); fuzzing skipped"
  exit 0
fi

if [ -w /dev/shm ]; then work=$(mktemp -d -p /dev/shm lamina-fuzz-ci.XXXXXX); else work=$(mktemp -d); fi
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus" "$work/jail" "$work/findings"
"$PY" fuzz/fuzz_apply.py --write-seeds "$work/corpus"

set +e
LAMINA_FUZZ_DIR="$work/jail" "$PY" fuzz/fuzz_apply.py \
  -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$work/findings/" \
  "$work/corpus" 2>"$work/log"
rc=$?
set -e
grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: Seed)' "$work/log" || true

if [ "$rc" -ne 0 ]; then
  echo "fuzz: FINDING (exit $rc); last lines of the log:" >&2
  tail -n 60 "$work/log" >&2
  for f in "$work"/findings/*; do
    [ -e "$f" ] || continue
    echo "fuzz: input $(basename "$f") (base64; reproduce: base64 -d > x && $PY fuzz/fuzz_apply.py x):" >&2
    base64 -w 0 "$f" >&2
    echo >&2
  done
  exit 1
fi
echo "fuzz: no finding in ${seconds}s"
