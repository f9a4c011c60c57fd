#!/usr/bin/env bash
# Ordering keys in NATS mode (nats-server, a gateway and one runtime, each a
# process of its own): synchronous `hello` through wrk on loopback, without
# a key and with `Sluice-Ordering-Key` spread over 1, 10 and 1,000 keys,
# in alternating rounds of one run; then the added latency of a keyed
# invocation at low load (one connection, p50 and p99 with and without a
# key). Sync calls are the measure because each one's answer is its end:
# throughput is what wrk sees done, not what was accepted.
# Binaries: $BIN_DIR (default ${CARGO_TARGET_DIR:-target}/release, built
# when missing; pass a debug build's folder to skip the release build).
# Usage: scripts/bench-ordering.sh [rounds] [seconds]
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
rounds=${1:-2}
seconds=${2:-8}
connections=${CONNECTIONS:-16}
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
. scripts/nats-server.sh
if [ ! -x "$bin/sluice-gateway" ] || [ ! -x "$bin/sluice-runtime" ]; then
  cargo build --locked --release -p sluice-gateway -p sluice-runtime
fi
hello=examples/target/wasm32-wasip2/release/hello.wasm
[ -f "$hello" ] || cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir "$work/functions"
cat > "$work/functions/hello.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: $PWD/$hello }
  concurrency: $connections
YAML
# Every request's key: none, or "k<n mod keys>" (wrk's own counter).
cat > "$work/keys.lua" <<'LUA'
local keys, n = 0, 0
function init(args) keys = tonumber(args[1]) or 0 end
function request()
  n = n + 1
  if keys == 0 then return wrk.format("GET", "/fn/default/hello/") end
  return wrk.format("GET", "/fn/default/hello/", { ["Sluice-Ordering-Key"] = "k" .. (n % keys) })
end
LUA

wait_for() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
"$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p 14232 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
nats=nats://127.0.0.1:14232
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/14232) 2>/dev/null && break; sleep 0.1; done
RUST_LOG=warn "$bin/sluice-gateway" --nats "$nats" --listen 127.0.0.1:18093 --admin-listen 127.0.0.1:19103 >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:19103/healthz
RUST_LOG=warn "$bin/sluice-gateway" publish --nats "$nats" "$work/functions"
RUST_LOG=warn "$bin/sluice-runtime" --nats "$nats" --admin-listen 127.0.0.1:19104 >"$work/runtime.log" 2>&1 &
pids+=($!)
url=http://127.0.0.1:18093
wait_for "$url/fn/default/hello/"
# Every bucket's consumer is made on its first use: warm them all.
wrk -t1 -c"$connections" -d3s -s "$work/keys.lua" "$url" -- 1000 >/dev/null

rps() { wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/keys.lua" "$url" -- "$1" | awk '/Requests\/sec/ {print $2}'; }
declare -A total
for keys in 0 1 10 1000; do total[$keys]=0; done
for round in $(seq "$rounds"); do
  for keys in 0 1 10 1000; do
    r=$(rps "$keys")
    echo "round $round, keys ${keys/#0/none}: $r req/s"
    total[$keys]=$(echo "${total[$keys]} + $r" | bc -l)
  done
done
base=${total[0]}
echo
echo "| keys | req/s (mean of $rounds rounds, wrk -c$connections) | ÷ unordered |"
echo "|---|---|---|"
for keys in 0 1 10 1000; do
  mean=$(echo "${total[$keys]} / $rounds" | bc -l)
  printf '| %s | %.0f | %.2f |\n' "${keys/#0/none}" "$mean" "$(echo "${total[$keys]} / $base" | bc -l)"
done

# Low load: one connection, one key per request ("k<n mod 1000>").
latency() { wrk -t1 -c1 -d"${seconds}s" --latency -s "$work/keys.lua" "$url" -- "$1" | awk '$1 == "50%" || $1 == "99%" {printf "%s %s ", $1, $2}'; }
echo
for round in $(seq "$rounds"); do
  echo "round $round, -c1, no key:   $(latency 0)"
  echo "round $round, -c1, with key: $(latency 1000)"
done
