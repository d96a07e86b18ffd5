#!/usr/bin/env bash
# Every test: installs what is missing, checks formatting and lints, runs the
# host, BPF_PROG_TEST_RUN and network-namespace tests, and smoke-runs the
# benchmark. Needs root (XDP and namespaces); CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/bootstrap.sh

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== build"
cargo build --release --bins --quiet
echo "== tests"
log=$(mktemp)
out=$(mktemp -d)
trap 'rm -rf "$log" "$out"' EXIT
# Doc tests are skipped: there are none, and their empty "0 passed" result
# lines would read as a run that tested nothing.
cargo test --release --workspace --lib --bins --tests 2>&1 | tee "$log"
echo "== bench smoke (structure, not speed)"
./target/release/ackgate-bench xdp --quick --out "$out" >/dev/null
python3 - "$out/xdp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
names = {c["name"] for c in r["cases"]}
want = {"syn_v4_full_options", "syn_v4_mss_only", "syn_v6_full_options", "harness_plus_xdp_drop_v4"}
assert want <= names, names
for c in r["cases"]:
    assert c["median_ns"] > 0 and len(c["runs_ns"]) == r["runs"], c
assert r["syn_v4_minus_drop_ns"] == r["syn_v4_minus_drop_ns"]  # not NaN
print("bench smoke ok")
PY
./target/release/ackgate-bench handoff --quick --out "$out" >/dev/null
python3 - "$out/handoff.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("ttfb_ackgate", "ttfb_direct"):
    assert r[k]["median_us"] > 0 and r[k]["p99_us"] >= r[k]["median_us"], r[k]
assert r["rate_ackgate_per_s"] > 0 and r["rate_direct_per_s"] > 0, r
print("handoff bench smoke ok")
PY
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END{print s+0}')
echo "summary: $((passed + 2)) passed, 0 failed"
