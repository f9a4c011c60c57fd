#!/usr/bin/env bash
# Memory of a pool runtime per registered, never-invoked function, no
# Kubernetes: the resident set (VmRSS) of `sluice-runtime` once ready with
# one copy of hello registered, then with N (default 1000) more, none
# invoked; prints both, the difference per function,
# and the runtime's own count of components in memory: hello's one, held
# ahead of its first invocation in room --component-cache has free (at
# most that budget, 64Mi by default, whatever the number of components).
#
#   scripts/idle-memory.sh [N]
#
# Binaries from $SLUICE_BIN (default: a release build, made here). Needs
# curl and python3; everything listens on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/nats-server.sh
count=${1:-1000}
if [[ -z ${SLUICE_BIN:-} ]]; then
  cargo build --locked --release -p sluice-gateway -p sluice-runtime
  SLUICE_BIN=${CARGO_TARGET_DIR:-target}/release
fi
wasm=$PWD/examples/target/wasm32-wasip2/release/hello.wasm
[[ -f $wasm ]] || { echo "$wasm is missing (scripts/test.sh builds the examples)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; rm -rf "$work"' EXIT
start_nats_server "$work"
pids+=("$nats_pid")
admin_port=$(free_port)
# functions I...: registers hello-I for each I (`publish` creates the
# layout: nothing else owns it here).
functions() {
  rm -rf "$work/functions"
  mkdir -p "$work/functions"
  # A file each: a manifest file holds at most 1,024 documents.
  for i in "$@"; do
    printf -- 'apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: { name: hello-%s }\nspec:\n  module: { file: "%s" }\n' \
      "$i" "$wasm" >"$work/functions/hello-$i.yaml"
  done
  "$SLUICE_BIN/sluice-gateway" publish --nats "$nats" "$work/functions" 2>"$work/publish.log"
}

# measure NAME: prints "NAME rss_kib components_loaded" once the runtime is
# ready (every registered function served) and has settled.
measure() {
  "$SLUICE_BIN/sluice-runtime" --nats "$nats" --artifacts "$work/artifacts" \
    --admin-listen "127.0.0.1:$admin_port" 2>"$work/$1.log" &
  local runtime=$!
  for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null && break; sleep 0.5; done
  sleep 5
  local rss loaded
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$runtime/status")
  loaded=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^sluice_runtime_components_loaded / {print $2}')
  kill -TERM "$runtime"
  wait "$runtime" || true
  echo "$1 $rss $loaded"
}

functions 0
base=$(measure one)
functions $(seq "$count")
with=$(measure "$count")
read -r _ rss0 loaded0 <<<"$base"
read -r _ rss1 loaded1 <<<"$with"
echo "registered functions: 1 -> RSS ${rss0} KiB (components loaded: ${loaded0}); $((count + 1)) -> RSS ${rss1} KiB (components loaded: ${loaded1})"
echo "per registered, never-invoked function: $(((rss1 - rss0) / count)) KiB"
