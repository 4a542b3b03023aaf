#!/usr/bin/env bash
# Runs each cargo-fuzz target of oidc-filter for a bounded time and prints the total number of executions.
#
#   filter/fuzz/run.sh [SECONDS]    # per target, default 20 (CI); needs nightly and cargo-fuzz (harness/setup.sh)
#
# Seeds are testdata/fuzz/<target>/ (read only: new inputs go to target/fuzz-corpus/<target>/, which
# later runs reuse). A crash fails the run and leaves its input in filter/fuzz/artifacts/<target>/;
# replay it with `cargo +nightly fuzz run <target> <file>` from filter/.
set -euo pipefail

secs="${1:-20}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root/filter"

cargo +nightly fuzz build >/dev/null
total=0
failed=()
for target in $(cargo +nightly fuzz list); do
  corpus="$root/target/fuzz-corpus/$target"
  log="$root/target/fuzz-corpus/$target.log"
  mkdir -p "$corpus"
  if cargo +nightly fuzz run "$target" "$corpus" "$root/testdata/fuzz/$target" -- \
      -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    runs="${runs:-0}"
    total=$((total + runs))
    printf 'fuzz: %-16s %10d executions in %ss\n' "$target" "$runs" "$secs"
  else
    failed+=("$target")
    printf 'fuzz: %-16s FAILED, see %s\n' "$target" "$log"
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 10 || true
  fi
done
echo "fuzz: total executions $total"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]}" >&2
  exit 1
fi
