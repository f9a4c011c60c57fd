#!/usr/bin/env bash
# The real node's install and first-request numbers (README, "Proven on a
# real node"), each as the median, p90 and slowest of ROUNDS rounds
# (default 5) on one node: per round `helm install --wait` on the chart's
# defaults to every pod Ready, `kubectl apply` of a ConfigMap Function to
# Ready and to its first 200 (the pool at zero, so its first pod starts),
# a function at zero in the warm pool once the pool has compiled it ahead
# (its first request beside its warm p50), a component new to the warm
# pool as a user meets it (`kubectl apply`, wait for Ready, its first
# request at once: Ready waits for the pool's compile ahead), and the
# removal (Functions
# deleted, `helm uninstall --wait`). The wakes from zero (pool, dedicated)
# are timed by the node test itself, five each run.
#
#   scripts/bench-node.sh [ROUNDS]
#
# As root, on a machine where scripts/test.sh has run once: it takes the
# Kubernetes binaries (scripts/k8s/tools.sh), the images (scripts/images.sh,
# in .sluice/containers or SLUICE_CONTAINERS) and the example components
# from there. It is the ignored test `bench_install_and_first_requests` of
# `operator/tests/node`, which starts and stops its node like the others.
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_NODE_BENCH_ROUNDS=${1:-5}
export RUST_MIN_STACK=${RUST_MIN_STACK:-8388608}
. scripts/nats-server.sh >/dev/null
. scripts/oci-registry.sh >/dev/null
cargo test --locked --workspace --all-features --test node -- \
  --ignored --exact bench_install_and_first_requests --nocapture 2>&1 |
  tee .sluice/bench-node.log | grep --line-buffered NODE-BENCH
