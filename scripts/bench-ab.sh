#!/usr/bin/env bash
# A/B benchmark: this tree against an earlier commit, run alternately in one
# sitting so the machine's drift hits both alike. Builds both in release
# (the base in a temporary git worktree, sharing this tree's target dir so
# dependencies compile once), then for each round and each build, in
# alternating order:
#   - local mode, sync `hello` (wrk on loopback);
#   - NATS mode, sync `hello` (gateway + one runtime + nats-server);
#   - NATS mode, async accept rate (202s per second), no runtime running;
#   - async end to end, local mode and NATS mode with one runtime: wrk
#     submits $SUBMITS (default 10,000) async invocations (within 3 s),
#     and the clock
#     runs from the first until the runtime's
#     `sluice_invocation_attempts_total{outcome="success"}` has counted
#     every 202; completions per second = 202s ÷ that time;
# then an idle runtime serving $IDLE_FUNCTIONS (default 10,000) functions,
# each build twice alternately (scripts/bench-idle.sh: NATS messages/s by
# nats-server's counters, CPU from /proc); and finally the in-process
# invoke bench of each tree, alternately.
# With MUSL=1, a third build joins the NATS-mode rounds: this tree as the
# container images build it (x86_64-unknown-linux-musl, profile `image`, the
# gateway without local mode; its own target dir, $MUSL_TARGET_DIR, default
# target/images as scripts/test.sh uses), so the images' allocator and libc
# are measured against the glibc build on the same benchmark.
# Usage: scripts/bench-ab.sh BASE_REV [rounds] [seconds]
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
base_rev=${1:?usage: scripts/bench-ab.sh BASE_REV [rounds] [seconds]}
rounds=${2:-3}
seconds=${3:-8}
connections=${CONNECTIONS:-16}
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
. scripts/nats-server.sh
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  git -C "$root" worktree remove --force "$work/base-tree" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

build() { # tree name target-dir
  (cd "$1" && CARGO_TARGET_DIR=$3 cargo build --locked --release -p sluice-gateway -p sluice-runtime)
  mkdir -p "$work/$2"
  cp "$3/release/sluice-gateway" "$3/release/sluice-runtime" "$work/$2/"
  local bench
  bench=$(cd "$1" && CARGO_TARGET_DIR=$3 cargo bench --locked --no-run -p sluice-runtime --bench invoke --message-format json 2>/dev/null \
    | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "invoke"][-1])')
  cp "$bench" "$work/$2/invoke-bench"
}
git worktree add --detach "$work/base-tree" "$base_rev" >/dev/null
# The base builds in a copy of this tree's release dir: its dependencies
# are reused, and cargo names both trees' workspace crates alike, so one
# dir would let one tree's build take the other's artifacts.
build "$root" new "$target"
mkdir -p "$work/base-target"
cp -a "$target/release" "$work/base-target/"
build "$work/base-tree" base "$work/base-target"
builds="base new"
if [ "${MUSL:-0}" = 1 ]; then
  musl_target=${MUSL_TARGET_DIR:-$root/target/images}
  rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
  command -v musl-gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq musl-tools; }
  CARGO_TARGET_DIR=$musl_target cargo build --locked --profile image --target x86_64-unknown-linux-musl -p sluice-runtime
  CARGO_TARGET_DIR=$musl_target cargo build --locked --profile image --target x86_64-unknown-linux-musl -p sluice-gateway --no-default-features
  mkdir -p "$work/musl"
  cp "$musl_target/x86_64-unknown-linux-musl/image/sluice-gateway" "$musl_target/x86_64-unknown-linux-musl/image/sluice-runtime" "$work/musl/"
  builds="base new musl"
fi

hello=$root/examples/target/wasm32-wasip2/release/hello.wasm
mkdir "$work/functions"
cat > "$work/functions/hello.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: $hello }
YAML

wait_for() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
rps() { wrk -t1 -c"$connections" -d"${seconds}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
succeeded() { # admin address: succeeded attempts so far
  curl -sf "http://$1/metrics" | awk '/^sluice_invocation_attempts_total\{/ && /outcome="success"/ {n += $NF} END {printf "%d", n}'
}
completions() { # admin address, async URL: completions per second, first submit to last success
  local before start accepted end wrk
  before=$(succeeded "$1")
  start=$(date +%s.%N)
  SLUICE_SUBMITS=${SUBMITS:-10000} wrk -t1 -c"$connections" -d3s -s "$work/submit.lua" "$2" >"$work/wrk.out" &
  wrk=$!
  # Sampled while wrk runs too: the last success may come before wrk's
  # -d is over.
  : >"$work/samples"
  for _ in $(seq 6000); do
    echo "$(date +%s.%N) $(($(succeeded "$1") - before))" >>"$work/samples"
    if ! kill -0 "$wrk" 2>/dev/null; then
      [ -n "${accepted:-}" ] || { wait "$wrk" || true; accepted=$(awk '/requests in/ {n = $1} /Non-2xx/ {bad = $NF} END {print n - bad}' "$work/wrk.out"); }
      [ "$(tail -1 "$work/samples" | cut -d' ' -f2)" -ge "$accepted" ] && break
    fi
    sleep 0.02
  done
  end=$(awk -v n="$accepted" '$2 >= n {print $1; exit}' "$work/samples")
  [ -n "$end" ] || { echo "not every accepted invocation succeeded within the wait" >&2; end=$(date +%s.%N); }
  awk -v n="$accepted" -v s="$start" -v e="$end" 'BEGIN {printf "%.0f", n / (e - s)}'
}

declare -A results
record() { results[$1]="${results[$1]:-} $2"; }

local_round() { # build
  RUST_LOG=warn "$work/$1/sluice-gateway" --local "$work/functions" --max-queue-depth 1000000 --listen 127.0.0.1:18182 --admin-listen 127.0.0.1:19192 >"$work/$1-local.log" 2>&1 &
  local gw=$!
  wait_for http://127.0.0.1:19192/readyz
  record "$1 local-sync" "$(rps http://127.0.0.1:18182/fn/default/hello/)"
  record "$1 local-async" "$(completions 127.0.0.1:19192 http://127.0.0.1:18182/async/fn/default/hello/)"
  stop "$gw"
}

nats_round() { # build
  rm -rf "$work/js"
  "$SLUICE_NATS_SERVER" -c "$SLUICE_NATS_CONF" -a 127.0.0.1 -p 14322 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
  local nats=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/14322) 2>/dev/null && break; sleep 0.1; done
  local url=nats://127.0.0.1:14322
  RUST_LOG=warn "$work/$1/sluice-gateway" --nats "$url" --max-queue-depth 1000000 --listen 127.0.0.1:18183 --admin-listen 127.0.0.1:19193 >"$work/$1-gateway.log" 2>&1 &
  local gw=$!
  wait_for http://127.0.0.1:19193/healthz
  "$work/$1/sluice-gateway" publish --nats "$url" "$work/functions" >"$work/$1-publish.log" 2>&1
  RUST_LOG=warn "$work/$1/sluice-runtime" --nats "$url" --artifacts "$work/artifacts" --admin-listen 127.0.0.1:19194 >"$work/$1-runtime.log" 2>&1 &
  local rt=$!
  for _ in $(seq 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18183/fn/default/hello/)" = 200 ] && break; sleep 0.1; done
  record "$1 nats-sync" "$(rps http://127.0.0.1:18183/fn/default/hello/)"
  record "$1 nats-async" "$(completions 127.0.0.1:19194 http://127.0.0.1:18183/async/fn/default/hello/)"
  stop "$rt"
  record "$1 nats-accept" "$(rps -s "$work/post.lua" http://127.0.0.1:18183/async/fn/default/hello/)"
  stop "$gw" "$nats"
}
printf 'wrk.method = "POST"\nwrk.body = "x"\n' > "$work/post.lua"
# The same, stopping once $SLUICE_SUBMITS have been answered (wrk itself
# runs its -d regardless; the completions clock runs on meanwhile).
cat > "$work/submit.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
local answered, limit = 0, tonumber(os.getenv("SLUICE_SUBMITS"))
function response(status, headers, body)
  answered = answered + 1
  if answered >= limit then wrk.thread:stop() end
end
LUA

for round in $(seq "$rounds"); do
  # Each round reverses the last one's order, so no build always goes first.
  order=$builds; [ $((round % 2)) = 0 ] && order=$(echo "$builds" | tr ' ' '\n' | tac | tr '\n' ' ')
  for b in $order; do
    echo "== round $round: $b"
    [ "$b" = musl ] || local_round "$b"
    nats_round "$b"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "requests per second, median of $rounds rounds of ${seconds}s (each round's values in brackets)"
printf '%-12s %-28s %-28s %s\n' what "base $base_rev" "new $(git rev-parse --short HEAD)" "new/base"
for what in local-sync nats-sync nats-accept local-async nats-async; do
  b=$(echo "${results[base $what]}" | median); n=$(echo "${results[new $what]}" | median)
  printf '%-12s %-28s %-28s %s\n' "$what" "$b [${results[base $what]# }]" "$n [${results[new $what]# }]" "$(awk -v n="$n" -v b="$b" 'BEGIN {printf "%.3f", n / b}')"
done
ratio() { awk -v n="$(echo "${results[$1 nats-sync]}" | median)" -v l="$(echo "${results[$1 local-sync]}" | median)" 'BEGIN {printf "%.2f", n / l}'; }
printf '%-12s %-28s %-28s\n' "nats/local" "$(ratio base)" "$(ratio new)"
async_ratio() { awk -v n="$(echo "${results[$1 nats-async]}" | median)" -v l="$(echo "${results[$1 local-async]}" | median)" 'BEGIN {printf "%.2f", n / l}'; }
printf '%-12s %-28s %-28s\n' "async n/l" "$(async_ratio base)" "$(async_ratio new)"
if [ "$builds" = "base new musl" ]; then
  echo
  echo "the image build (musl, profile image) against this tree's glibc release build, NATS mode"
  for what in nats-sync nats-accept nats-async; do
    g=$(echo "${results[new $what]}" | median); m=$(echo "${results[musl $what]}" | median)
    printf '%-12s glibc %-28s musl %-28s musl/glibc %s\n' "$what" "$g [${results[new $what]# }]" "$m [${results[musl $what]# }]" "$(awk -v m="$m" -v g="$g" 'BEGIN {printf "%.3f", m / g}')"
  done
fi

echo
echo "== idle runtime serving ${IDLE_FUNCTIONS:-10000} functions, none invoked, alternately"
for round in 1 2; do
  for b in base new; do
    echo "  $b: $(scripts/bench-idle.sh "$work/$b" "${IDLE_FUNCTIONS:-10000}" 10)"
  done
done

echo
echo "== in-process invoke bench, alternately (each prints its medians)"
for round in 1 2; do
  for b in base new; do
    echo "-- $b, round $round"
    "$work/$b/invoke-bench" --bench 2>/dev/null | tail -4
  done
done
