#!/usr/bin/env bash
# HTTP benchmark: local-mode sync `hello` against `wasmtime serve` running the
# same component, alternating rounds of wrk on loopback, plus the idle RSS of
# local mode serving examples/. Needs wrk (Debian) and wasmtime-cli 48.0.8
# (installs both when missing). Usage: scripts/bench-http.sh [rounds] [seconds]
set -euo pipefail
# Backtrace capture on every error value costs ~15µs per invocation; measure
# both servers as they run in production, without it.
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
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target
cargo build --locked --release -p sluice-gateway

hello=examples/target/wasm32-wasip2/release/hello.wasm
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/hello.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: $PWD/$hello }
YAML

wait_for() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

wasmtime serve -Scli --addr 127.0.0.1:18081 "$hello" >"$work/wasmtime.log" 2>&1 &
pids+=($!)
RUST_LOG=warn target/release/sluice-gateway --local "$work" --listen 127.0.0.1:18082 --admin-listen 127.0.0.1:19092 >"$work/sluice.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:18081/
wait_for http://127.0.0.1:18082/fn/default/hello/

# wrk prints e.g. "Requests/sec:  12345.67" and, with --latency, "99%  1.23ms".
run() {
  local out; out=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency "$1")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_us "$p50") $(to_us "$p99")"
}
to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'; }

echo "warming up"; wrk -t1 -c"$connections" -d2s http://127.0.0.1:18081/ >/dev/null; wrk -t1 -c"$connections" -d2s http://127.0.0.1:18082/fn/default/hello/ >/dev/null
: >"$work/wasmtime.txt"; : >"$work/sluice.txt"
for r in $(seq "$rounds"); do
  run http://127.0.0.1:18081/ >>"$work/wasmtime.txt"
  run http://127.0.0.1:18082/fn/default/hello/ >>"$work/sluice.txt"
  echo "round $r: wasmtime serve $(tail -1 "$work/wasmtime.txt") | sluice $(tail -1 "$work/sluice.txt")  (req/s p50µs p99µs)"
done
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$1" | median; }
w_rps=$(col "$work/wasmtime.txt" 1); s_rps=$(col "$work/sluice.txt" 1)
w_p50=$(col "$work/wasmtime.txt" 2); s_p50=$(col "$work/sluice.txt" 2)
w_p99=$(col "$work/wasmtime.txt" 3); s_p99=$(col "$work/sluice.txt" 3)
echo
echo "median of $rounds rounds, wrk -t1 -c$connections -d${seconds}s, same hello.wasm:"
printf '  wasmtime serve : %10.0f req/s  p50 %7.0f µs  p99 %7.0f µs\n' "$w_rps" "$w_p50" "$w_p99"
printf '  sluice local   : %10.0f req/s  p50 %7.0f µs  p99 %7.0f µs\n' "$s_rps" "$s_p50" "$s_p99"
awk -v a="$s_rps" -v b="$w_rps" -v c="$s_p99" -v d="$w_p99" 'BEGIN { printf "  ratio sluice/wasmtime: req/s %.2fx, p99 %.2fx\n", a/b, c/d }'

# Idle RSS of local mode serving the examples.
RUST_LOG=warn target/release/sluice-gateway --local examples --listen 127.0.0.1:18083 --admin-listen 127.0.0.1:19093 >"$work/idle.log" 2>&1 &
idle=$!; pids+=($idle)
wait_for http://127.0.0.1:18083/fn/default/hello/
for path in fn/default/hello/ fn/default/echo/ hello; do curl -sf -o /dev/null "http://127.0.0.1:18083/$path"; done
sleep 2
echo "  idle RSS of local mode serving examples/: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$idle/status)"
