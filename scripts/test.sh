#!/usr/bin/env bash
# Runs every Sluice test on a fresh machine: installs what the tests need,
# builds the example components, runs the workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "== installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

echo "== checking formatting"
cargo fmt --all -- --check

echo "== building the example components"
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml

echo "== running the tests"
cargo test --locked --workspace --all-features "$@"
