#!/usr/bin/env bash
# Every test: installs what is missing, checks formatting and lints, runs the
# host, BPF_PROG_TEST_RUN and network-namespace tests, and smoke-runs the
# benchmark. Needs root (XDP and namespaces); CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/bootstrap.sh
# Each stage's heading says when it started, so a slow run shows where.
SECONDS=0
stage() { echo "== $1 (at $((SECONDS / 60))m$((SECONDS % 60))s)"; }

stage "fmt"
cargo fmt --all -- --check
stage "clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
stage "build"
cargo build --release --bins --quiet
stage "tests"
log=$(mktemp)
out=$(mktemp -d)
trap 'rm -rf "$log" "$out"' EXIT
# Doc tests are skipped: there are none, and their empty "0 passed" result
# lines would read as a run that tested nothing.
cargo test --release --workspace --lib --bins --tests 2>&1 | tee "$log"
# The end-to-end proxy tests again on the other engine (the first pass ran
# what `auto` picks here, io_uring; each test checks which engine ran).
# --workspace keeps the first pass's feature set, so nothing is rebuilt.
stage "proxy tests on the tokio engine"
e2e=()
for t in proxy nginx loss fleet metrics limits client_matrix reload upgrade server_first \
         duplicate tcp_duties resources; do
  e2e+=(--test "${t}_e2e")
done
ACKGATE_ENGINE=tokio cargo test --release --workspace "${e2e[@]}" 2>&1 | tee -a "$log"
stage "bench smoke (structure, not speed)"
./target/release/ackgate-bench xdp --quick --out "$out" >/dev/null
python3 - "$out/xdp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
names = {c["name"] for c in r["cases"]}
want = {"syn_v4_full_options", "syn_v4_mss_only", "syn_v6_full_options", "ack_v4_forged",
        "ack_v4_verified", "pass_v4_other_port", "harness_plus_xdp_drop_v4"}
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
for k in ("ttfb_ackgate", "ttfb_ackgate_eager", "ttfb_direct"):
    assert r[k]["median_us"] > 0 and r[k]["p99_us"] >= r[k]["median_us"], r[k]
assert r["rate_ackgate_per_s"] > 0 and r["rate_direct_per_s"] > 0, r
m = [(x["path"], x["batch"]) for x in r["materialize"]]
assert m == [("sync", 1), ("io_uring", 1), ("io_uring", 16), ("io_uring", 64)], m
for x in r["materialize"]:
    assert x["handoffs_per_s"]["median"] > 0 and x["call_median_us"] > 0, x
print("handoff bench smoke ok")
PY
./target/release/ackgate-bench clients --quick --out "$out" >/dev/null
python3 - "$out/clients.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
profiles = {x["profile"] for x in r["rows"]}
assert profiles == {"linux_default", "no_timestamps", "no_window_scaling", "no_sack", "bare",
                    "mss_536", "mtu_9000"}, profiles
assert len(r["rows"]) == 7 * 2 * 2, len(r["rows"])
for x in r["rows"]:
    for k in ("ackgate_mbit_s", "relay_mbit_s", "direct_mbit_s"):
        assert x[k]["median"] > 0 and len(x[k]["runs"]) == r["runs"], x
    assert x["ratio_direct"] > 0 and x["ratio_relay"] > 0, x
print("clients bench smoke ok")
PY
# The lab scenarios, each against its baselines in a fresh namespace lab.
for s in syn attack conn bulk relay; do
  stage "ackgate-bench $s --quick"
  ./target/release/ackgate-bench "$s" --quick --out "$out" >/dev/null
done
python3 - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
def load(n):
    r = json.load(open(os.path.join(d, n + ".json")))
    assert r["benchmark"] == n and r["machine"]["kernel"] and r["machine"]["nproc"] > 0, r.get("machine")
    md = open(os.path.join(d, n + ".md")).read()
    assert md.startswith("### ") and "|---" in md, md[:200]
    return r
def svg(name):
    t = open(os.path.join(d, name)).read()
    assert t.startswith("<svg") and t.rstrip().endswith("</svg>"), name
syn = load("syn")
assert [t["target"] for t in syn["targets"]] == ["sink", "floor", "ackgate", "syncookies", "synproxy"], syn["targets"]
# The XDP generator, or AF_PACKET with the reason live frames were refused.
assert syn["generator"] == "xdp" or syn["generator_fallback"], syn
assert syn["generator_ceiling_pps"]["median"] > 0, syn
for t in syn["targets"]:
    # Every target answered, on a core it kept busy (ticks are coarse).
    assert t["answered_per_s"]["median"] > 0 and t["ns_per_syn"]["median"] > 0, t
    assert 0 < t["target_cpu_busy"]["median"] <= 1.05, t
ag = [t for t in syn["targets"] if t["target"] == "ackgate"][0]
assert ag["process"]["rss_max_mib"]["median"] > 0, ag
svg("syn.svg")
att = load("attack")
pts = {(p["target"], p["flood_pps"]) for p in att["points"]}
assert pts == {(t, f) for t in ("ackgate", "syncookies", "synproxy") for f in (0, None)}, pts
assert {p["clients"] for p in att["points"]} == {"linux", "no_timestamps"}, att["points"]
assert {(b["target"], b["clients"]) for b in att["breaks"]} == {(t, c) for t in ("ackgate", "syncookies", "synproxy") for c in ("linux", "no_timestamps")}, att["breaks"]
for p in att["points"]:
    assert 0 <= p["success_rate"]["median"] <= 1, p
    if p["flood_pps"] == 0:
        assert p["success_rate"]["median"] >= 0.95 and p["connect_p50_ms"]["median"] > 0, p
    else:
        assert p["flood_sent_pps"]["median"] > 0, p
svg("attack_latency.svg"); svg("attack_success.svg")
for n, key in (("conn", "connections_per_s"), ("bulk", "gbit_per_s")):
    r = load(n)
    assert [x["target"] for x in r[key]] == ["ackgate", "ackgate_one_thread", "ackgate_tokio", "ackgate_copy", "haproxy", "direct"], r[key]
    for x in r[key]:
        assert x["value"]["median"] > 0 and len(x["value"]["runs"]) == r["runs"], x
    svg(n + ".svg")
conn = load("conn")
assert [x["target"] for x in conn["wrk_per_s"]] == [x["target"] for x in conn["connections_per_s"]], conn["wrk_per_s"]
for x in conn["wrk_per_s"]:
    assert x["value"]["median"] > 0, x
rel = load("relay")
paths = [{"relay_path": p} for p in ("copy", "splice", "uring_splice", "uring_recv")]
for key in ("gbit_per_s", "exchanges_per_s"):
    assert [x["target"] for x in rel[key]] == ["ackgate", *paths, "direct"], rel[key]
    for x in rel[key]:
        # CPU comes from /proc/stat's 10 ms ticks: a quick measurement of a
        # few milliseconds may see none.
        assert x["value"]["median"] > 0 and x["cpu_per_unit"]["median"] >= 0, x
assert [x[0] for x in rel["exchange_rtt_us"]] == [x["target"] for x in rel["gbit_per_s"]], rel["exchange_rtt_us"]
svg("relay.svg")
print("lab bench smokes ok")
PY
# A short soak: mixed client profiles under a SYN flood; it fails by itself
# on a leak or a byte unaccounted for, and its report is checked here too.
stage "ackgate-bench soak --quick"
./target/release/ackgate-bench soak --quick --out "$out" >/dev/null
python3 - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
r = json.load(open(os.path.join(d, "soak.json")))
assert r["benchmark"] == "soak" and r["failures"] == [], r["failures"]
profiles = {"short", "keep_alive", "download", "idle", "idle_close", "half_close",
            "idle_timeout", "abort_request", "abort_download"}
assert set(r["profiles"]) == profiles, r["profiles"].keys()
for name, t in r["profiles"].items():
    assert t["ok"] > 0 and t["failed"] == 0, (name, t)
# Every connection the backend answered was handed off, none twice.
assert r["connections"] >= 1000 and r["answered"] <= r["handoffs"] <= r["connections"], r["handoffs"]
assert r["flood_pps_sent"] > 0 and r["syns_answered"] > r["connections"], r["flood_pps_sent"]
# Exactly what the clients counted on the clean service; the resets' within
# their bounds.
bytes = {(b["service"], b["direction"]): b for b in r["bytes"]}
dirs = ("to_backend", "to_client")
assert set(bytes) == {(s, x) for s in ("clean", "reset") for x in dirs}, bytes
for direction in dirs:
    c, x = bytes[("clean", direction)], bytes[("reset", direction)]
    assert c["ok"] and c["relayed"] == c["exact"] > 0 and c["bound"] == 0, c
    assert x["ok"] and x["exact"] == 0 and 0 < x["relayed"] <= x["bound"], x
base, peak, after = r["baseline"], r["peak"], r["after"]
assert peak["active"] > 0 and after["active"] == 0, (peak, after)
assert peak["sockets"] > base["sockets"] and after["sockets"] == base["sockets"], (base, peak, after)
assert after["threads"] == base["threads"] and after["other_fds"] == base["other_fds"], (base, after)
assert len(r["samples"]) >= 5, len(r["samples"])
for n in ("soak_fds.svg", "soak_rss.svg"):
    t = open(os.path.join(d, n)).read()
    assert t.startswith("<svg") and t.rstrip().endswith("</svg>"), n
print("soak smoke ok")
PY
# The index over every report the smokes wrote, with its headline table.
./target/release/ackgate-bench index --out "$out" 2>/dev/null
python3 - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
md = open(os.path.join(d, "index.md")).read()
for n in ("xdp", "syn", "attack", "conn", "bulk", "relay", "handoff", "clients", "soak"):
    assert f"[{n}.md]({n}.md)" in md, n
assert "[syn.svg](syn.svg)" in md and "| SYN-ACKs/s that fill one core" in md, md
idx = json.load(open(os.path.join(d, "index.json")))
assert len(idx["reports"]) == 9 and "relay Gbit/s" in idx["headline_markdown"], idx
print("bench index ok")
PY
stage "Debian package"
bash scripts/test_package.sh
# Every parser of outside input under libFuzzer; FUZZ_SECONDS per target.
stage "fuzz"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}" | tee "$out/fuzz.log"
fuzzed=$(grep -c ', no crash$' "$out/fuzz.log")
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END{print s+0}')
# The bench smokes' five checks, the package, and each fuzz target.
stage "done"
echo "summary: $((passed + 5 + 1 + fuzzed)) passed, 0 failed"
