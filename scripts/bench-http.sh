#!/usr/bin/env bash
# HTTP benchmark of `hello` served three ways in one run, alternating rounds
# of wrk on loopback: `wasmtime serve` (the peer), Sluice local mode, and
# Sluice NATS mode (gateway + one runtime + nats-server, separate processes).
# Then: the Python and JavaScript examples beside hello (local mode, and
# `wasmtime serve` on the same components), NATS-mode async accept rate,
# the first invocation of each after a runtime restart with the precompiled
# components on disk, local mode's idle RSS, and an idle runtime's NATS
# messages and CPU with $IDLE_FUNCTIONS (default 10,000) functions
# (scripts/bench-idle.sh).
# Installs wrk (Debian), wasmtime-cli 48.0.8 and nats-server when missing.
# Usage: scripts/bench-http.sh [rounds] [seconds]
set -euo pipefail
# Backtrace capture on every error value costs ~15µs per invocation; measure
# every server as it runs in production, without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
connections=${CONNECTIONS:-16}
wasmtime_version=48.0.8

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if ! wasmtime --version 2>/dev/null | grep -q " $wasmtime_version"; then
  cargo install --locked --version "$wasmtime_version" wasmtime-cli
fi
. scripts/nats-server.sh
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target
scripts/polyglot.sh
cargo build --locked --release -p sluice-gateway -p sluice-runtime
bin=${CARGO_TARGET_DIR:-target}/release

hello=examples/target/wasm32-wasip2/release/hello.wasm
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mkdir "$work/functions"
declare -A component=([hello]=$hello [hello-py]=examples/target/polyglot/hello-py.wasm [hello-js]=examples/target/polyglot/hello-js.wasm)
for name in "${!component[@]}"; do
  cat > "$work/functions/$name.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: $name }
spec:
  module: { file: $PWD/${component[$name]} }
YAML
done

# Up to 2 min: servers compile the Python and JavaScript components (seconds
# each) before they answer.
wait_for() { for _ in $(seq 1200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

"$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p 14222 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
nats=nats://127.0.0.1:14222
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/14222) 2>/dev/null && break; sleep 0.1; done

wasmtime serve -Scli --addr 127.0.0.1:18081 "$hello" >"$work/wasmtime.log" 2>&1 &
pids+=($!)
wasmtime serve -Scli --addr 127.0.0.1:18086 "${component[hello-py]}" >"$work/wasmtime-py.log" 2>&1 &
pids+=($!)
wasmtime serve -Scli --addr 127.0.0.1:18087 "${component[hello-js]}" >"$work/wasmtime-js.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$bin/sluice-gateway" --local "$work/functions" --listen 127.0.0.1:18082 --admin-listen 127.0.0.1:19092 >"$work/local.log" 2>&1 &
pids+=($!)
# The NATS gateway starts first so that it creates the invocation stream
# with room for the async accept run.
RUST_LOG=warn "$bin/sluice-gateway" --nats "$nats" --max-queue-depth 1000000 --listen 127.0.0.1:18083 --admin-listen 127.0.0.1:19093 >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:19093/healthz
RUST_LOG=warn "$bin/sluice-gateway" publish --nats "$nats" "$work/functions"
start_runtime() {
  RUST_LOG=info "$bin/sluice-runtime" --log-json --nats "$nats" --artifacts "$work/artifacts" --admin-listen 127.0.0.1:19094 >>"$work/runtime.log" 2>&1 &
  runtime=$!; pids+=($runtime)
}
start_runtime
wait_for http://127.0.0.1:18081/
wait_for http://127.0.0.1:18082/fn/default/hello/
wait_for http://127.0.0.1:18083/fn/default/hello/
for url in http://127.0.0.1:18086/ http://127.0.0.1:18087/ http://127.0.0.1:18082/fn/default/hello-py/ \
  http://127.0.0.1:18082/fn/default/hello-js/ http://127.0.0.1:18083/fn/default/hello-py/ http://127.0.0.1:18083/fn/default/hello-js/; do
  wait_for "$url"
done

# wrk prints e.g. "Requests/sec:  12345.67" and, with --latency, "99%  1.23ms".
run() {
  local out; out=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency "$@")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_us "$p50") $(to_us "$p99")"
}
run_c1() {
  local out; out=$(wrk -t1 -c1 -d"$(( (seconds + 1) / 2 ))s" --latency "$1")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}
to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$1" | median; }

urls=(wasmtime=http://127.0.0.1:18081/ local=http://127.0.0.1:18082/fn/default/hello/ nats=http://127.0.0.1:18083/fn/default/hello/)
echo "== warming up"
for u in "${urls[@]}"; do wrk -t1 -c"$connections" -d2s "${u#*=}" >/dev/null; done
for u in "${urls[@]}"; do : >"$work/${u%%=*}.txt"; done
for r in $(seq "$rounds"); do
  line="round $r:"
  for u in "${urls[@]}"; do
    run "${u#*=}" >>"$work/${u%%=*}.txt"
    line="$line ${u%%=*} $(tail -1 "$work/${u%%=*}.txt") |"
  done
  echo "$line  (req/s p50µs p99µs)"
done
echo
echo "== sync hello, median of $rounds rounds, wrk -t1 -c$connections -d${seconds}s, same hello.wasm:"
for u in "${urls[@]}"; do
  n=${u%%=*}
  printf '  %-9s: %8.0f req/s  p50 %7.0f µs  p99 %7.0f µs\n' "$n" "$(col "$work/$n.txt" 1)" "$(col "$work/$n.txt" 2)" "$(col "$work/$n.txt" 3)"
done
awk -v lr="$(col "$work/local.txt" 1)" -v wr="$(col "$work/wasmtime.txt" 1)" -v nr="$(col "$work/nats.txt" 1)" \
    -v lp99="$(col "$work/local.txt" 3)" -v wp99="$(col "$work/wasmtime.txt" 3)" \
    -v lp50="$(col "$work/local.txt" 2)" -v np50="$(col "$work/nats.txt" 2)" 'BEGIN {
  printf "  local/wasmtime: req/s %.2fx, p99 %.2fx\n", lr/wr, lp99/wp99
  printf "  nats/wasmtime : req/s %.2fx\n", nr/wr
  printf "  nats p50 - local p50: %.0f µs\n", np50-lp50 }'

echo
echo "== unloaded sync latency, wrk -t1 -c1, $rounds alternating rounds of $(( (seconds + 1) / 2 ))s"
: >"$work/local1.txt"; : >"$work/nats1.txt"
for r in $(seq "$rounds"); do
  CONN=1 run_c1 http://127.0.0.1:18082/fn/default/hello/ >>"$work/local1.txt"
  CONN=1 run_c1 http://127.0.0.1:18083/fn/default/hello/ >>"$work/nats1.txt"
done
awk -v l="$(col "$work/local1.txt" 2)" -v n="$(col "$work/nats1.txt" 2)" -v l99="$(col "$work/local1.txt" 3)" -v n99="$(col "$work/nats1.txt" 3)" 'BEGIN {
  printf "  local p50 %.0f µs (p99 %.0f), nats p50 %.0f µs (p99 %.0f): nats p50 - local p50 = %.0f µs\n", l, l99, n, n99, n-l }'

echo
echo "== Python and JavaScript beside hello: sync, $rounds alternating rounds, wrk -t1 -c$connections -d${seconds}s"
poly=(local-rust=http://127.0.0.1:18082/fn/default/hello/ local-py=http://127.0.0.1:18082/fn/default/hello-py/
  local-js=http://127.0.0.1:18082/fn/default/hello-js/ wasmtime-py=http://127.0.0.1:18086/ wasmtime-js=http://127.0.0.1:18087/)
for u in "${poly[@]}"; do wrk -t1 -c"$connections" -d2s "${u#*=}" >/dev/null; : >"$work/${u%%=*}.txt"; done
for r in $(seq "$rounds"); do
  for u in "${poly[@]}"; do run "${u#*=}" >>"$work/${u%%=*}.txt"; done
done
for u in "${poly[@]}"; do
  n=${u%%=*}
  printf '  %-11s: %8.0f req/s  p50 %8.0f µs  p99 %8.0f µs\n' "$n" "$(col "$work/$n.txt" 1)" "$(col "$work/$n.txt" 2)" "$(col "$work/$n.txt" 3)"
done
awk -v r="$(col "$work/local-rust.txt" 1)" -v p="$(col "$work/local-py.txt" 1)" -v j="$(col "$work/local-js.txt" 1)" \
    -v wp="$(col "$work/wasmtime-py.txt" 1)" -v wj="$(col "$work/wasmtime-js.txt" 1)" 'BEGIN {
  printf "  req/s against Rust hello: Python %.3fx, JavaScript %.3fx; against wasmtime serve on the same component: Python %.2fx, JavaScript %.2fx\n", p/r, j/r, p/wp, j/wj }'

echo
echo "== first invocation after a runtime restart, precompiled components on disk"
kill -TERM "$runtime"; wait "$runtime" 2>/dev/null || true
: >"$work/runtime.log"
start_runtime
for _ in $(seq 600); do [[ $(grep -c "\"message\":\"serving\"" "$work/runtime.log") -ge 3 ]] && break; sleep 0.05; done
for name in hello hello-py hello-js; do
  first=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:18083/fn/default/$name/")
  for _ in $(seq 50); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:18083/fn/default/$name/"; done >"$work/after.txt"
  steady=$(median <"$work/after.txt")
  line=$(grep "\"function\":\"default/$name\"" "$work/runtime.log" | grep '"seconds"' | head -1)
  source=$(grep -o '"source":"[a-z]*"' <<<"$line")
  load=$(grep -o '"seconds":[0-9.e-]*' <<<"$line" | cut -d: -f2)
  awk -v n="$name" -v f="$first" -v s="$steady" -v l="${load:-0}" -v src="$source" 'BEGIN {
    printf "  %-8s load (%s) %.2f ms; first request %.2f ms vs median of the next 50 %.2f ms: %.2f ms extra\n", n, src, l*1000, f*1000, s*1000, (f-s)*1000 }'
done

echo
echo "== NATS-mode async accept rate, POST /async/fn/default/hello, wrk -t1 -c$connections -d${seconds}s"
printf 'wrk.method = "POST"\n' >"$work/post.lua"
accept() {
  local out total refused
  out=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/post.lua" http://127.0.0.1:18083/async/fn/default/hello/)
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  refused=$(awk '/Non-2xx/ {print $5}' <<<"$out"); refused=${refused:-0}
  awk -v t="$total" -v r="$refused" -v s="$seconds" -v what="$1" 'BEGIN { printf "  %s: %.0f accepted/s (%d accepted, %d refused)\n", what, (t-r)/s, t-r, r }'
}
accept "runtime consuming meanwhile"
kill -TERM "$runtime"; wait "$runtime" 2>/dev/null || true
accept "accept path alone (no runtime: the stream holds them)"

echo
# Idle RSS of local mode serving the examples.
RUST_LOG=warn "$bin/sluice-gateway" --local examples --listen 127.0.0.1:18085 --admin-listen 127.0.0.1:19095 >"$work/idle.log" 2>&1 &
idle=$!; pids+=($idle)
wait_for http://127.0.0.1:18085/fn/default/hello/
for path in fn/default/hello/ fn/default/echo/ hello; do curl -sf -o /dev/null "http://127.0.0.1:18085/$path"; done
sleep 2
echo "== idle RSS of local mode serving examples/: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$idle/status)"

echo
echo "== idle runtime serving ${IDLE_FUNCTIONS:-10000} functions, none invoked, over 10 s"
echo "  $(scripts/bench-idle.sh "$bin" "${IDLE_FUNCTIONS:-10000}" 10)"
