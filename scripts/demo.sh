#!/usr/bin/env bash
# The self-contained demo: installs what is missing, builds, then runs
# `ackgate-demo` (a two-namespace lab; needs root, cleans up after itself).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/bootstrap.sh
cargo build --release --bins --quiet
exec ./target/release/ackgate-demo
