#!/usr/bin/env bash
# Runs Sluice in NATS mode on this machine, no Kubernetes: a nats-server with
# JetStream (loopback, store under .sluice/nats), the examples published to
# its registry, one sluice-runtime and one sluice-gateway on
# http://127.0.0.1:8080 (admin :9090, runtime admin :9091). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/nats-server.sh
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target
cargo build --locked --release -p sluice-gateway -p sluice-runtime
bin=${CARGO_TARGET_DIR:-target}/release

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
mkdir -p .sluice/nats
"$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p 4222 -js -sd .sluice/nats/store &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
nats=nats://127.0.0.1:4222
"$bin/sluice-gateway" publish --nats "$nats" examples
"$bin/sluice-runtime" --nats "$nats" --artifacts .sluice/artifacts &
pids+=($!)
"$bin/sluice-gateway" --nats "$nats" &
pids+=($!)
wait
