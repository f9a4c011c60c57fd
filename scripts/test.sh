#!/usr/bin/env bash
# Runs every Sluice test on a fresh machine: installs what the tests need,
# builds the example components, runs the workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off build gains nothing from incremental state, which is gigabytes.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Test threads get 8 MiB of stack, not 2: an in-process gateway's request
# (HTTP, queue, JetStream) is polled on the test's own thread, and in a
# debug build its futures' frames outgrew 2 MiB in the NATS-mode
# bad-input tests (a stack overflow aborts the whole test binary).
export RUST_MIN_STACK=${RUST_MIN_STACK:-8388608}

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "== installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

# nats-server (with JetStream) for the NATS tests; each test starts its own
# server on a random loopback port and stops it.
. scripts/nats-server.sh
"$SLUICE_NATS_SERVER" --version
# docker-registry (Debian's package) for the operator's OCI tests; each test
# starts its own registry on a random loopback port and stops it.
. scripts/oci-registry.sh
"$SLUICE_DOCKER_REGISTRY" --version
# Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kubectl), CoreDNS and helm for the operator's tests,
# built from pinned Go modules (scripts/k8s/) and cached outside the clone:
# about 15 minutes the first time on a machine, then nothing. Each operator
# test starts its own control plane on loopback; the node tests start one
# real node (scripts/k8s/cluster.sh). The Go build is the longest single
# step of a cold run, so it keeps the normal priority and everything this
# script starts after it runs niced: Rust's builds fill what Go leaves idle
# instead of starving it.
mkdir -p .sluice
scripts/k8s/tools.sh > .sluice/k8s-tools.out 2> .sluice/k8s-tools.log &
k8s_tools=$!
renice -n 5 -p $$ >/dev/null

# Prometheus and promtool for the monitoring tests (the chart's alerts and
# dashboards against a real Prometheus), built from the pinned Go module
# (scripts/prometheus/) and cached outside the clone: about 6 minutes the
# first time on a machine, then nothing.
scripts/prometheus.sh > .sluice/prometheus.out 2> .sluice/prometheus.log &
prometheus=$!

# The container images (static musl binaries, buildah) for the image
# tests, built in a target folder of their own so that it runs beside the
# debug builds below.
CARGO_TARGET_DIR=target/images nice scripts/images.sh > .sluice/images.out 2> .sluice/images.log &
images=$!

# The Python and JavaScript examples (componentize-py, componentize-js):
# mostly downloads the first time, then nothing until an input changes.
scripts/polyglot.sh > .sluice/polyglot.out 2>&1 &
polyglot=$!

# The fuzz targets, a few seconds each, so that they keep building and
# their properties keep holding (scripts/fuzz.sh; a crash fails the test
# command): cargo-fuzz installed once outside the clone, a release build
# of its own in target/fuzz, then 5 s per target.
nice scripts/fuzz.sh 5 > .sluice/fuzz.out 2>&1 &
fuzz=$!

echo "== checking formatting"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

echo "== linting"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
# The NATS-mode gateway links no wasmtime: it must build, lint-clean,
# without local mode.
cargo clippy --locked -p sluice-gateway --no-default-features -- -D warnings
for crate in sluice-api sluice-nats sluice-serve; do
  if cargo tree --locked -p "$crate" -e normal | grep -q wasmtime; then
    echo "$crate depends on wasmtime" >&2
    exit 1
  fi
done
if cargo tree --locked -p sluice-gateway --no-default-features -e normal | grep -q wasmtime; then
  echo "sluice-gateway without local mode depends on wasmtime" >&2
  exit 1
fi

echo "== building the example components"
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target

# Compiled while the Kubernetes binaries and the images build.
echo "== building the tests"
cargo test --locked --workspace --all-features --no-run

echo "== waiting for the Kubernetes test binaries"
if ! wait "$k8s_tools"; then
  cat .sluice/k8s-tools.log >&2
  echo "scripts/k8s/tools.sh failed (log above)" >&2
  exit 1
fi
SLUICE_KUBE_BIN=$(sed -n 's/^SLUICE_KUBE_BIN=//p' .sluice/k8s-tools.out | tail -1)
export SLUICE_KUBE_BIN
"$SLUICE_KUBE_BIN/kubectl" version --client

echo "== waiting for Prometheus"
if ! wait "$prometheus"; then
  cat .sluice/prometheus.log >&2
  echo "scripts/prometheus.sh failed (log above)" >&2
  exit 1
fi
SLUICE_PROMETHEUS_BIN=$(sed -n 's/^SLUICE_PROMETHEUS_BIN=//p' .sluice/prometheus.out | tail -1)
export SLUICE_PROMETHEUS_BIN
"$SLUICE_PROMETHEUS_BIN/promtool" --version | head -1

echo "== waiting for the container images"
if ! wait "$images"; then
  cat .sluice/images.out .sluice/images.log >&2
  echo "scripts/images.sh failed (log above)" >&2
  exit 1
fi
cat .sluice/images.out

echo "== waiting for the Python and JavaScript examples"
if ! wait "$polyglot"; then
  cat .sluice/polyglot.out >&2
  echo "scripts/polyglot.sh failed (log above)" >&2
  exit 1
fi
cat .sluice/polyglot.out

echo "== waiting for the fuzz smoke run"
if ! wait "$fuzz"; then
  cat .sluice/fuzz.out >&2
  echo "scripts/fuzz.sh failed (log above)" >&2
  exit 1
fi
sed -n '/^| target/,$p' .sluice/fuzz.out

echo "== running the tests"
cargo test --locked --workspace --all-features "$@"
