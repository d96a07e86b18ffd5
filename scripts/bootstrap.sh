#!/usr/bin/env bash
# Idempotent bootstrap: installs what a fresh Debian machine lacks to build and
# test ackgate. Safe to run repeatedly; each step checks before it installs.
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: must run as root (installs Debian packages)" >&2
  exit 1
fi

# Debian packages: LLVM 22 for bpf-linker, network tooling for the lab/tests.
# haproxy and nftables are the bench's baselines, wrk one of its clients (its --quick runs are part of
# scripts/test.sh); chromium is the browser among the tests' clients;
# prometheus (and its promtool) scrapes ackgate and checks the alert rules.
DEB_PKGS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
          iproute2 iptables nftables python3 nginx-light haproxy curl chromium wrk prometheus)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Tests start their own nginx inside namespaces; not the system service.
  service nginx stop >/dev/null 2>&1 || true
  service haproxy stop >/dev/null 2>&1 || true
  service prometheus stop >/dev/null 2>&1 || true
fi

export PATH="$HOME/.cargo/bin:$PATH"
command -v rustup >/dev/null || { echo "bootstrap: rustup not found; install Rust first" >&2; exit 1; }

# rustfmt and clippy for the checks in scripts/test.sh.
for c in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$c"; then
    log "adding $c"
    rustup component add "$c"
  fi
done

# eBPF crate builds with nightly + rust-src (build-std for bpfel-unknown-none).
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# bpf-linker 0.13 built against Debian's LLVM 22.
if ! bpf-linker --version 2>/dev/null | grep -q '^bpf-linker 0\.13'; then
  log "building bpf-linker 0.13 against LLVM 22 (takes a few minutes)"
  # bpf-linker finds LLVM via LLVM_PREFIX (or the first llvm-config on PATH,
  # which is LLVM 14 on bookworm); llvm-sys reads LLVM_SYS_221_PREFIX.
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker@^0.13 \
    --no-default-features --features llvm-22
fi
# cargo-fuzz for scripts/fuzz.sh (libFuzzer targets in fuzz/, built with
# nightly and AddressSanitizer).
if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13'; then
  log "installing cargo-fuzz 0.13"
  cargo install --locked cargo-fuzz@^0.13
fi
log "ok"
