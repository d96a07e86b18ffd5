#!/usr/bin/env bash
# Fuzzes every parser of outside input (fuzz/fuzz_targets) with cargo-fuzz
# (libFuzzer, AddressSanitizer, debug assertions) for SECONDS each, default
# 60, starting from the committed seeds in fuzz/corpus/<target> (left as
# they are: what a run finds goes to a temporary corpus). Fails on the first
# crash, panic, leak or input that takes over 10 s; the input is kept in
# fuzz/artifacts/<target>/ to replay with `cargo +nightly fuzz run TARGET FILE`.
# Prints one line per target: executions, coverage, corpus size.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${1:-60}
shift || true
case "$secs" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2;; esac
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(syn_options cookie handoff_event proxy_header config exposition)
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz missing: run scripts/bootstrap.sh" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Every target at once (later runs reuse it).
if ! cargo +nightly fuzz build --debug-assertions >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log"
  echo "fuzz.sh: building the fuzz targets failed" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/corpus/$t"
  log="$work/$t.log"
  if ! cargo +nightly fuzz run --debug-assertions "$t" "$work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz.sh: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  execs=$(grep -Eo '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
  cov=$(grep -Eo 'DONE +cov: [0-9]+' "$log" | grep -Eo '[0-9]+$' || grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$' || echo '?')
  corp=$(ls "$work/$t" | wc -l)
  echo "fuzz $t: ${secs} s, $execs executions, coverage $cov edges, corpus $(ls "fuzz/corpus/$t" | wc -l) seeds + $corp found, no crash"
done
