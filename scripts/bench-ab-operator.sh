#!/usr/bin/env bash
# A/B benchmark of the operator: this tree's `sluice-operator` (or NEW_REV's)
# against an earlier commit's, both driven by this tree's `reconcile` and `autoscale`
# benches (operator/benches), run alternately in one sitting so the
# machine's drift hits both alike. Both operators are release builds; the
# base builds in a temporary git worktree with a copy of this tree's release
# dir (dependencies compile once; one shared dir would let one tree's
# workspace crates pass for the other's).
#
# Each round runs, for each build in alternating order, the reconcile bench
# (apply → Ready one at a time, then a burst) and the autoscale bench (first
# invocation at zero → scale written, then a tick's cost), and keeps their
# summary lines. Sizes are the benches' knobs, smaller than their defaults
# so a round fits in minutes on two cores: SLUICE_BENCH_SEQUENTIAL (20),
# SLUICE_BENCH_BURST (200), SLUICE_BENCH_TRIALS (30),
# SLUICE_BENCH_FUNCTIONS (300), SLUICE_BENCH_SECONDS (15).
# Usage: scripts/bench-ab-operator.sh BASE_REV [rounds] [NEW_REV]
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
base_rev=${1:?usage: scripts/bench-ab-operator.sh BASE_REV [rounds] [NEW_REV]}
rounds=${2:-2}
new_rev=${3:-}
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}

. scripts/nats-server.sh
if [ -z "${SLUICE_KUBE_BIN:-}" ]; then
  export "$(scripts/k8s/tools.sh --cached-only 2>/dev/null || scripts/k8s/tools.sh)"
fi
export SLUICE_BENCH_SEQUENTIAL=${SLUICE_BENCH_SEQUENTIAL:-20}
export SLUICE_BENCH_BURST=${SLUICE_BENCH_BURST:-200}
export SLUICE_BENCH_TRIALS=${SLUICE_BENCH_TRIALS:-30}
export SLUICE_BENCH_FUNCTIONS=${SLUICE_BENCH_FUNCTIONS:-300}
export SLUICE_BENCH_SECONDS=${SLUICE_BENCH_SECONDS:-15}

work=$(mktemp -d)
cleanup() {
  git -C "$root" worktree remove --force "$work/base-tree" 2>/dev/null || true
  git -C "$root" worktree remove --force "$work/new-tree" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

bench_exe() { # tree target-dir bench-name
  (cd "$1" && CARGO_TARGET_DIR=$2 cargo bench --locked --no-run -p sluice-operator --bench "$3" --message-format json) \
    | python3 -c 'import json,sys; name=sys.argv[1]; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name][-1])' "$3"
}

mkdir -p "$work/new" "$work/base"
if [ -z "$new_rev" ]; then
  (cd "$root" && cargo build --locked --release -p sluice-operator)
  cp "$target/release/sluice-operator" "$work/new/"
fi
# Assigned first, so that a bench that does not build stops the script
# (set -e ignores a failing substitution inside another command).
exe=$(bench_exe "$root" "$target" reconcile)
cp "$exe" "$work/reconcile-bench"
exe=$(bench_exe "$root" "$target" autoscale)
cp "$exe" "$work/autoscale-bench"

build_at() { # rev name
  git worktree add --detach "$work/$2-tree" "$1" >/dev/null
  mkdir -p "$work/$2-target"
  cp -a "$target/release" "$work/$2-target/"
  (cd "$work/$2-tree" && CARGO_TARGET_DIR=$work/$2-target cargo build --locked --release -p sluice-operator)
  cp "$work/$2-target/release/sluice-operator" "$work/$2/"
  rm -rf "$work/$2-target"
}
build_at "$base_rev" base
if [ -n "$new_rev" ]; then
  build_at "$new_rev" new
fi

# The benches print their results as indented `name: value` lines after a
# `==` heading; keep every line that carries a number.
for round in $(seq "$rounds"); do
  order="base new"; [ $((round % 2)) = 0 ] && order="new base"
  for b in $order; do
    for bench in reconcile autoscale; do
      echo "== round $round: $b, $bench"
      SLUICE_OPERATOR_BIN=$work/$b/sluice-operator "$work/$bench-bench" 2>/dev/null | tee "$work/$round-$b-$bench.out" | grep -E '[0-9]' || true
    done
  done
done
echo
echo "base $base_rev, new ${new_rev:-$(git rev-parse --short HEAD)}; each round's output above, in run order"
