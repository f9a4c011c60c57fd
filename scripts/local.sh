#!/usr/bin/env bash
# Runs Sluice in local mode on the examples: builds the example components
# (Rust, and Python and JavaScript with scripts/polyglot.sh)
# and the gateway, then serves http://127.0.0.1:8080 (admin on :9090).
# Extra arguments go to sluice-gateway (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target
scripts/polyglot.sh
exec cargo run --locked --release -p sluice-gateway -- --local examples "$@"
