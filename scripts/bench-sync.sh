#!/usr/bin/env bash
# Sync `hello` in local mode and in NATS mode (gateway + one runtime +
# nats-server, separate processes) from the binaries in BIN_DIR, in
# alternating wrk rounds on loopback: -c16 for `seconds`, then -c1.
# Prints each round and the medians, NATS over local. Builds nothing
# (scripts/bench-http.sh builds release and adds `wasmtime serve`, the
# polyglot examples and idle costs; scripts/bench-ab.sh compares commits).
# Usage: scripts/bench-sync.sh BIN_DIR [rounds] [seconds]
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/bench-sync.sh BIN_DIR [rounds] [seconds]}
rounds=${2:-3}
seconds=${3:-5}
. scripts/nats-server.sh
hello=$PWD/examples/target/wasm32-wasip2/release/hello.wasm
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/functions"
printf 'apiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: { name: hello }\nspec:\n  module: { file: %s }\n' "$hello" >"$work/functions/hello.yaml"
wait_for() { for _ in $(seq 1200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

"$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p 14522 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/14522) 2>/dev/null && break; sleep 0.1; done
RUST_LOG=warn "$bin/sluice-gateway" --local "$work/functions" --listen 127.0.0.1:18582 --admin-listen 127.0.0.1:19582 >"$work/local.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$bin/sluice-gateway" --nats nats://127.0.0.1:14522 --listen 127.0.0.1:18583 --admin-listen 127.0.0.1:19583 >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:19583/healthz
RUST_LOG=warn "$bin/sluice-gateway" publish --nats nats://127.0.0.1:14522 "$work/functions"
RUST_LOG=warn "$bin/sluice-runtime" --nats nats://127.0.0.1:14522 --artifacts "$work/artifacts" --admin-listen 127.0.0.1:19584 >"$work/runtime.log" 2>&1 &
pids+=($!)
declare -A url=([local]=http://127.0.0.1:18582/fn/default/hello/ [nats]=http://127.0.0.1:18583/fn/default/hello/)
for m in local nats; do wait_for "${url[$m]}"; wrk -t1 -c16 -d2s "${url[$m]}" >/dev/null; done

to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for c in 16 1; do
  for m in local nats; do : >"$work/$m-$c"; done
  for r in $(seq "$rounds"); do
    for m in local nats; do
      out=$(wrk -t1 -c"$c" -d"${seconds}s" --latency "${url[$m]}")
      echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")" >>"$work/$m-$c"
      echo "-c$c round $r $m: $(tail -1 "$work/$m-$c") (req/s p50µs)"
    done
  done
  awk -v c="$c" -v lr="$(cut -d' ' -f1 "$work/local-$c" | median)" -v nr="$(cut -d' ' -f1 "$work/nats-$c" | median)" \
      -v lp="$(cut -d' ' -f2 "$work/local-$c" | median)" -v np="$(cut -d' ' -f2 "$work/nats-$c" | median)" 'BEGIN {
    printf "== -c%s medians: local %.0f req/s p50 %.0f µs; nats %.0f req/s p50 %.0f µs; nats/local %.2fx, p50 %+.0f µs\n", c, lr, lp, nr, np, nr/lr, np-lp }'
done
echo "invocations that went through the stream: $(curl -s http://127.0.0.1:19584/metrics | awk '/^sluice_queue_wait_seconds_count/ {n+=$2} END {print n+0}')"
