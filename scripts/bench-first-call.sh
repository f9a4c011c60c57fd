#!/usr/bin/env bash
# A function at zero in a warm pool: what its first request costs over a
# warm one, no Kubernetes. One nats-server, a NATS-mode gateway and one
# pool runtime (processes, loopback). Each round registers FUNCTIONS new
# functions, each with a component of its own (hello with a custom section
# naming it, so no two share a digest and nothing is cached or shared from
# before), waits SETTLE seconds, then asks each function twice: its first
# request (the worker starts, the component loads: compiled, or loaded as
# precompiled) and at once a second (warm). Rounds alternate the runtime's
# --precompile-registered between true and false (a new runtime each).
# Prints, per round, how the components were loaded and who compiled them
# (the runtime's cold-start and compile counters), and per setting the
# median, p90 and p99 of the first request, the warm one, and their
# difference, over every function of its rounds.
#
#   scripts/bench-first-call.sh [functions] [rounds] [settle-seconds]
#
# Binaries from $BIN_DIR (default ${CARGO_TARGET_DIR:-target}/release,
# which it builds). Needs curl and python3; everything listens on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
functions=${1:-20}
rounds=${2:-4}
settle=${3:-5}
. scripts/nats-server.sh >/dev/null
if [[ -z ${BIN_DIR:-} ]]; then
  cargo build --locked --release -p sluice-gateway -p sluice-runtime
  BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
hello=$PWD/examples/target/wasm32-wasip2/release/hello.wasm
[[ -f $hello ]] || { echo "$hello is missing (scripts/test.sh builds the examples)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
start_nats_server "$work"
pids+=("$nats_pid")
http_port=$(free_port) admin_port=$(free_port)
RUST_LOG=warn "$BIN_DIR/sluice-gateway" --nats "$nats" --listen "127.0.0.1:$http_port" \
  --admin-listen "127.0.0.1:$(free_port)" >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$http_port/" && break; sleep 0.1; done

# variant NAME: hello.wasm with a custom section "sluice-bench" holding
# NAME appended (a component may end with custom sections).
variant() {
  python3 - "$hello" "$work/components/$1.wasm" "$1" <<'PY'
import sys
def leb(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
name, payload = b"sluice-bench", sys.argv[3].encode()
content = leb(len(name)) + name + payload
data = open(sys.argv[1], "rb").read() + b"\x00" + leb(len(content)) + content
open(sys.argv[2], "wb").write(data)
PY
}
mkdir -p "$work/components" "$work/functions"
call() { curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$http_port/fn/default/$1/"; }

declare -A samples
for round in $(seq "$rounds"); do
  precompile=true; [ $((round % 2)) = 0 ] && precompile=false
  rm -rf "$work/artifacts" "$work/functions"/*
  RUST_LOG=warn "$BIN_DIR/sluice-runtime" --nats "$nats" --artifacts "$work/artifacts" \
    --precompile-registered="$precompile" --admin-listen "127.0.0.1:$admin_port" >"$work/runtime-$round.log" 2>&1 &
  runtime=$!
  pids+=($runtime)
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break; sleep 0.1; done
  for i in $(seq "$functions"); do
    name=f$round-$i
    variant "$name"
    printf -- '---\napiVersion: sluice.dev/v1alpha1\nkind: Function\nmetadata: { name: %s }\nspec:\n  module: { file: "%s" }\n' \
      "$name" "$work/components/$name.wasm" >>"$work/functions/round.yaml"
  done
  "$BIN_DIR/sluice-gateway" publish --nats "$nats" "$work/functions" >"$work/publish-$round.log" 2>&1
  last=f$round-$functions
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/dead-letters/default/$last")" = 200 ] && break
    sleep 0.1
  done
  sleep "$settle"
  for i in $(seq "$functions"); do
    read -r code1 first <<<"$(call "f$round-$i")"
    read -r code2 warm <<<"$(call "f$round-$i")"
    [ "$code1" = 200 ] && [ "$code2" = 200 ] || { echo "f$round-$i answered $code1 then $code2" >&2; exit 1; }
    samples[$precompile first]+=" $first"
    samples[$precompile warm]+=" $warm"
    samples[$precompile extra]+=" $(awk -v a="$first" -v b="$warm" 'BEGIN {print a - b}')"
  done
  # How each component got loaded, and who compiled it.
  loads=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '
    /^sluice_cold_start_seconds_count/ { match($0, /source="[a-z]+"/); n[substr($0, RSTART + 8, RLENGTH - 9)] += $NF }
    /^sluice_runtime_compiles_total/ { match($0, /trigger="[a-z]+"/); c[substr($0, RSTART + 9, RLENGTH - 10)] += $NF }
    END { printf "loaded"; for (k in n) printf " %s %d", k, n[k]; printf "; compiled"; for (k in c) printf " %s %d", k, c[k] }')
  kill "$runtime"; wait "$runtime" 2>/dev/null || true
  echo "round $round (--precompile-registered=$precompile): $functions functions; $loads"
done

stats() { # seconds... -> "p50 p90 p99" in ms
  tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1 * 1000} END {
    p50 = int((NR + 1) / 2); p90 = int(NR * 0.9 + 0.5); p99 = int(NR * 0.99 + 0.5)
    if (p99 < 1) p99 = 1
    printf "p50 %.1f  p90 %.1f  p99 %.1f ms (%d)", a[p50], a[p90], a[p99], NR }'
}
echo
for precompile in true false; do
  echo "--precompile-registered=$precompile"
  for what in first warm extra; do
    printf '  %-6s %s\n' "$what" "$(echo "${samples[$precompile $what]:-}" | stats)"
  done
done
