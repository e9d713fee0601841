#!/usr/bin/env bash
# make fuzz: each libFuzzer target of BUILD (a `make sanitize-build`) for SECONDS, starting from its seeds
# (fuzz/corpus/TARGET, never written to). The inputs it finds interesting stay in BUILD/fuzz/corpus/TARGET, so that the
# next run goes on from there; a finding (crash, leak, timeout, out-of-memory) is written to BUILD/fuzz/findings/TARGET/
# and fails the run. Fix it, then keep the input as fuzz/corpus/TARGET/regress_<what> so that the tests replay it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-sanitize}
seconds=${2:-60}
targets=${FUZZ_TARGETS:-list config pth thresholds video http}
failed=0
for t in $targets; do
  corpus=$build/fuzz/corpus/$t findings=$build/fuzz/findings/$t log=$build/fuzz/$t.log
  mkdir -p "$corpus" "$findings"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: one run needing 2 GB is an unbounded allocation.
  if ! "$build/fuzz/fuzz_$t" "$corpus" "fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$findings/" -print_final_stats=1 >"$log" 2>&1; then
    failed=1
    echo "$t: FINDING - see $log and $findings/"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "$t: ${runs:-?} inputs in ${seconds} s (${rate:-?}/s), $cov, corpus $(ls "$corpus" | wc -l)"
done
exit $failed
