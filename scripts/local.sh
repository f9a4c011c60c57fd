#!/usr/bin/env bash
# Runs Sluice in local mode: builds the example components and the gateway,
# then serves the manifests of a folder on http://127.0.0.1:8080 (admin on
# :9090).
#   scripts/local.sh [DIR] [sluice-gateway options]
# DIR defaults to examples/ (the Rust examples); examples/polyglot serves
# the Python and JavaScript ones, built first by scripts/polyglot.sh (it
# needs python3, node and npm). Options go to sluice-gateway (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=examples
if [[ $# -gt 0 && $1 != -* ]]; then
  dir=$1
  shift
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target
if grep -qs "target/polyglot/" "$dir"/*.yaml; then
  scripts/polyglot.sh
fi
exec cargo run --locked --release -p sluice-gateway -- --local "$dir" "$@"
