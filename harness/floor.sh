#!/usr/bin/env bash
# What each part of a Wasm filter's work costs Envoy per request, in instructions under callgrind: the
# empty module (harness/testdata/empty.wat: one callback that returns at once), then the empty module plus
# one thing at a time (harness/testdata/floor/*.wat): a callback export, a host call. Each runs in the
# benchmark's logged-in configuration (`bench --instructions --compare MODULE`, the session cookie on every
# request), next to no filter. Under a minute a module; prints a markdown table. Not alongside `make
# bench`: both use target/bench and the login stack in target/e2e/bench.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench/floor
mkdir -p "$out"
cargo build -q --release -p harness
count() { # module name, .wat -> "none instructions, module instructions, module I1 misses"
  wat2wasm "$2" -o "$out/$1.wasm"
  cargo run -q --release -p harness -- bench --instructions --compare "$out/$1.wasm" \
    --only none,oidc-session@B --out "$out/$1" >"$out/$1.log" 2>&1 || { tail -20 "$out/$1.log" >&2; exit 1; }
  awk '$1 == "none" { n = $2 } $1 == "oidc-session@B" { m = $2; i = $4 } END { print n, m, i }' "$out/$1.log"
}
read -r none0 empty empty_i1 < <(count empty harness/testdata/empty.wat)
echo "| module | instructions/request over no filter | over the empty module | I1 misses over the empty module |"
echo "|---|---:|---:|---:|"
printf '| empty | %+d | – | – |\n' $((empty - none0))
for wat in harness/testdata/floor/*.wat; do
  name=$(basename "$wat" .wat)
  read -r none m i1 < <(count "$name" "$wat")
  printf '| %s | %+d | %+d | %+d |\n' "$name" $((m - none)) $((m - none - (empty - none0))) $((i1 - empty_i1))
done
