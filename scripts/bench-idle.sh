#!/usr/bin/env bash
# Idle cost of one pool runtime serving many functions, none invoked: the
# messages it sends NATS (counted by nats-server itself, `in_msgs` of its
# connection in /connz) and the CPU it uses (utime + stime from /proc), over
# a window after it serves them all.
# Usage: scripts/bench-idle.sh BIN_DIR [functions] [seconds]
#   BIN_DIR holds sluice-gateway and sluice-runtime (e.g. target/release).
# Prints one line: "idle: <msgs/s> msgs/s <cpu> % of a core (<n> functions)".
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/bench-idle.sh BIN_DIR [functions] [seconds]}
functions=${2:-10000}
seconds=${3:-10}
. scripts/nats-server.sh >/dev/null
hello=$PWD/examples/target/wasm32-wasip2/release/hello.wasm
[ -f "$hello" ] || { echo "build the examples first: $hello is missing" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port=14522 monitor=18522
"$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p $port -m $monitor -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$monitor/varz" && break; sleep 0.1; done
url=nats://127.0.0.1:$port
# The gateway owns the layout: it creates the streams, then idles.
RUST_LOG=warn "$bin/sluice-gateway" --nats "$url" --listen 127.0.0.1:18523 --admin-listen 127.0.0.1:19523 >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:19523/healthz && break; sleep 0.1; done
mkdir "$work/functions"
for i in $(seq "$functions"); do
  printf 'apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: { name: f%d }\nspec:\n  module: { file: %s }\n' "$i" "$hello" >"$work/functions/f$i.yaml"
done
RUST_LOG=warn "$bin/sluice-gateway" publish --nats "$url" "$work/functions" >"$work/publish.log" 2>&1
RUST_LOG=warn "$bin/sluice-runtime" --nats "$url" --admin-listen 127.0.0.1:19524 >"$work/runtime.log" 2>&1 &
runtime=$!; pids+=($runtime)
# Ready once it has read the registry: every function served (a runtime
# before d0256bf opened each consumer first; later ones start a worker at
# a function's first invocation).
until curl -sf -o /dev/null http://127.0.0.1:19524/readyz; do
  kill -0 "$runtime" || { echo "the runtime exited: $(tail -5 "$work/runtime.log")" >&2; exit 1; }
  sleep 1
done
# Past the start: a worker's first pull, or the start's sweep.
sleep 3
sent() { curl -sf "http://127.0.0.1:$monitor/connz?limit=1024" | python3 -c 'import json,sys; print(next(c["in_msgs"] for c in json.load(sys.stdin)["connections"] if c.get("name") == "sluice-runtime"))'; }
cpu() { awk '{print $14 + $15}' "/proc/$runtime/stat"; }
m0=$(sent) c0=$(cpu)
sleep "$seconds"
m1=$(sent) c1=$(cpu)
awk -v m=$((m1 - m0)) -v c=$((c1 - c0)) -v s="$seconds" -v hz="$(getconf CLK_TCK)" -v n="$functions" \
  'BEGIN { printf "idle: %.1f msgs/s %.2f %% of a core (%d functions)\n", m / s, c / hz / s * 100, n }'
