#!/usr/bin/env bash
# Runs Sluice in local mode: builds the example components and the gateway,
# then serves the manifests of a folder on http://127.0.0.1:8080 (admin on
# :9090).
#   scripts/local.sh [DIR] [sluice-gateway options]
# DIR defaults to examples/ (the Rust examples); examples/polyglot serves
# the Python and JavaScript ones, built first by scripts/polyglot.sh (it
# needs python3, node and npm). Options go to sluice-gateway (try --help).
# Paths (DIR, --tls-cert-file, ...) are taken from where you run it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

dir=$root/examples
if [[ $# -gt 0 && $1 != -* ]]; then
  dir=$1
  shift
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --locked --release --target wasm32-wasip2 --manifest-path "$root/examples/Cargo.toml" --target-dir "$root/examples/target"
if grep -qs "target/polyglot/" "$dir"/*.yaml; then
  "$root/scripts/polyglot.sh"
fi
exec cargo run --locked --release --manifest-path "$root/Cargo.toml" -p sluice-gateway -- --local "$dir" "$@"
