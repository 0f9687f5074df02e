#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time; any crash fails the run.
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain (which cannot change here) accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "no fuzz targets found" >&2; exit 1; }
mkdir -p logs
for t in $targets; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "--- fuzzing $t for ${seconds}s"
  status=0
  cargo fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$seconds" -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || status=$?
  grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" "logs/$t.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "logs/$t.log" >&2
    echo "fuzz target $t failed (exit $status)" >&2
    exit 1
  fi
done
