#!/usr/bin/env bash
# A/B benchmark: this tree against an earlier commit, run alternately in one
# sitting so the machine's drift hits both alike. Builds both in release
# (the base in a temporary git worktree, sharing this tree's target dir so
# dependencies compile once), then for each round and each build, in
# alternating order:
#   - local mode, sync `hello` (wrk on loopback);
#   - NATS mode, sync `hello` (gateway + one runtime + nats-server);
#   - NATS mode, async accept rate (202s per second);
# then an idle runtime serving $IDLE_FUNCTIONS (default 10,000) functions,
# each build twice alternately (scripts/bench-idle.sh: NATS messages/s by
# nats-server's counters, CPU from /proc); and finally the in-process
# invoke bench of each tree, alternately.
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

declare -A results
record() { results[$1]="${results[$1]:-} $2"; }

local_round() { # build
  RUST_LOG=warn "$work/$1/sluice-gateway" --local "$work/functions" --listen 127.0.0.1:18182 --admin-listen 127.0.0.1:19192 >"$work/$1-local.log" 2>&1 &
  local gw=$!
  wait_for http://127.0.0.1:19192/readyz
  record "$1 local-sync" "$(rps http://127.0.0.1:18182/fn/default/hello/)"
  stop "$gw"
}

nats_round() { # build
  rm -rf "$work/js"
  echo "max_payload: 8MB" > "$work/nats.conf"
  "$SLUICE_NATS_SERVER" -c "$work/nats.conf" -a 127.0.0.1 -p 14322 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
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
  stop "$rt"
  record "$1 nats-accept" "$(rps -s "$work/post.lua" http://127.0.0.1:18183/async/fn/default/hello/)"
  stop "$gw" "$nats"
}
printf 'wrk.method = "POST"\nwrk.body = "x"\n' > "$work/post.lua"

for round in $(seq "$rounds"); do
  order="base new"; [ $((round % 2)) = 0 ] && order="new base"
  for b in $order; do
    echo "== round $round: $b"
    local_round "$b"
    nats_round "$b"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "requests per second, median of $rounds rounds of ${seconds}s (each round's values in brackets)"
printf '%-12s %-28s %-28s %s\n' what "base $base_rev" "new $(git rev-parse --short HEAD)" "new/base"
for what in local-sync nats-sync nats-accept; do
  b=$(echo "${results[base $what]}" | median); n=$(echo "${results[new $what]}" | median)
  printf '%-12s %-28s %-28s %s\n' "$what" "$b [${results[base $what]# }]" "$n [${results[new $what]# }]" "$(awk -v n="$n" -v b="$b" 'BEGIN {printf "%.3f", n / b}')"
done
ratio() { awk -v n="$(echo "${results[$1 nats-sync]}" | median)" -v l="$(echo "${results[$1 local-sync]}" | median)" 'BEGIN {printf "%.2f", n / l}'; }
printf '%-12s %-28s %-28s\n' "nats/local" "$(ratio base)" "$(ratio new)"

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
