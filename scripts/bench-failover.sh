#!/usr/bin/env bash
# Failover benchmark on a three-server JetStream cluster on loopback (routes
# on loopback too), with a gateway and a runtime given every server's URL:
#   1. `runs` times: SIGKILL the leader of SLUICE_INVOCATIONS, then time
#      from the kill to the first async request answered 202, to the
#      runtime's next successful attempt (its metrics: when it ran), and
#      to a status read that says `succeeded` (the results bucket may be
#      electing a leader too); the server is started again and the cluster
#      left to heal before the next run. Medians printed.
#      BIN_DIR=… takes the binaries from there and builds nothing;
#      FAILOVER_ONLY=1 stops after this part.
#   2. Async accept rate (wrk, no runtime consuming) and end-to-end
#      completion rate (a runtime draining what was accepted) with the
#      layout at R3 and at R1 on the same cluster, alternating, the
#      gateway (the layout's owner) restarted with --stream-replicas each
#      time (NATS changes a stream's replicas in place). Ratio R3 / R1.
# Bounded: every wait gives up (and the script fails) after a fixed time.
# Usage: scripts/bench-failover.sh [runs] [seconds]
#   PROFILE=debug uses target/debug binaries (default release).
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
runs=${1:-5}
seconds=${2:-10}
connections=${CONNECTIONS:-16}
profile=${PROFILE:-release}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
. scripts/nats-server.sh
if [[ -n ${BIN_DIR:-} ]]; then
  bin=$BIN_DIR
else
  [[ $profile == release ]] && cargo build --locked --release -p sluice-gateway -p sluice-runtime
  bin=${CARGO_TARGET_DIR:-target}/$profile
fi
hello=examples/target/wasm32-wasip2/release/hello.wasm
[[ -f $hello ]] || cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}" "${server[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
now_ms() { date +%s%3N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Polls `$@` every 50 ms until it succeeds, for at most 60 s.
within_60s() { for _ in $(seq 1200); do "$@" && return 0; sleep 0.05; done; echo "gave up waiting for: $*" >&2; exit 1; }

mkdir "$work/functions"
cat >"$work/functions/hello.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: $PWD/$hello }
  concurrency: 64
YAML

# The cluster: n0..n2, client 24220+i, routes 26220+i, monitoring 28220+i.
routes="nats-route://127.0.0.1:26220, nats-route://127.0.0.1:26221, nats-route://127.0.0.1:26222"
server=()
start_server() {
  local i=$1
  "$SLUICE_NATS_SERVER" -c "$work/n$i.conf" -a 127.0.0.1 -p $((24220 + i)) -js -sd "$work/store-$i" >>"$work/n$i.log" 2>&1 &
  server[i]=$!
}
for i in 0 1 2; do
  printf 'server_name: n%d\nmax_payload: 8MB\njetstream { max_file_store: 1TB }\nhttp: "127.0.0.1:%d"\ncluster {\n  name: bench\n  listen: "127.0.0.1:%d"\n  routes: [%s]\n}\n' \
    "$i" $((28220 + i)) $((26220 + i)) "$routes" >"$work/n$i.conf"
  start_server "$i"
done
healthy() { for i in 0 1 2; do curl -sf -o /dev/null "http://127.0.0.1:$((28220 + i))/healthz" || return 1; done; }
within_60s healthy
nats=nats://127.0.0.1:24220,nats://127.0.0.1:24221,nats://127.0.0.1:24222

# The gateway owns the layout: restarted with another --stream-replicas, it
# changes every stream and bucket in place.
start_gateway() {
  RUST_LOG=warn "$bin/sluice-gateway" --nats "$nats" --stream-replicas "$1" --max-queue-depth 1000000 \
    --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:19090 >>"$work/gateway.log" 2>&1 &
  gateway=$!; pids+=("$gateway")
  within_60s curl -sf -o /dev/null http://127.0.0.1:19090/readyz
}
stop() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }
start_runtime() {
  RUST_LOG=warn "$bin/sluice-runtime" --nats "$nats" --artifacts "$work/artifacts" --admin-listen 127.0.0.1:19091 >>"$work/runtime.log" 2>&1 &
  runtime=$!; pids+=("$runtime")
  within_60s curl -sf -o /dev/null http://127.0.0.1:19091/readyz
}
start_gateway 3
RUST_LOG=warn "$bin/sluice-gateway" publish --nats "$nats" "$work/functions"
start_runtime
within_60s curl -sf -o /dev/null http://127.0.0.1:18090/fn/default/hello/

# What the servers' monitoring ports say of SLUICE_INVOCATIONS (each lists
# only the streams it holds a copy of): `leader` prints the leader's index
# and its copies once every follower is current; `pending` the messages it
# holds.
stream_info() {
  python3 - "$1" <<'PY'
import json, sys, urllib.request
for port in (28220, 28221, 28222):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz?accounts=true&streams=true", timeout=2) as r:
            jsz = json.load(r)
    except OSError:
        continue
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream["name"] != "SLUICE_INVOCATIONS":
                continue
            if sys.argv[1] == "pending":
                print(stream["state"]["messages"])
                sys.exit(0)
            cluster = stream.get("cluster") or {}
            followers = cluster.get("replicas") or []
            if cluster.get("leader") and all(f.get("current") for f in followers):
                print(cluster["leader"][1:], len(followers) + 1)
                sys.exit(0)
sys.exit(1)
PY
}
leader() { stream_info leader; }
settled_leader() { local l; l=$(leader) && echo "${l% *}"; }
pending() { stream_info pending; }

echo "== failover: SIGKILL the invocation stream's leader, $runs runs (R3)"
: >"$work/publish.txt"; : >"$work/ran.txt"; : >"$work/complete.txt"
# Attempts the runtime ran to success so far (its metrics): the first
# after a kill is the one accepted then (the gateway answers 202 only
# once the stream stored it).
successes() {
  curl -sf http://127.0.0.1:19091/metrics | awk '/^sluice_invocation_attempts_total\{/ && /outcome="success"/ {n += $NF} END {printf "%d", n}'
}
for run in $(seq "$runs"); do
  victim=""
  for _ in $(seq 1200); do victim=$(settled_leader) && [[ -n $victim ]] && break; sleep 0.05; done
  [[ -n $victim ]] || { echo "no settled leader" >&2; exit 1; }
  successes_before=$(successes)
  kill -9 "${server[victim]}"
  killed=$(now_ms)
  id=""
  for _ in $(seq 600); do
    reply=$(curl -s --max-time 20 -X POST -w '\n%{http_code}' http://127.0.0.1:18090/async/fn/default/hello/) || true
    if [[ ${reply##*$'\n'} == 202 ]]; then
      id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "${reply%$'\n'*}")
      break
    fi
    sleep 0.05
  done
  [[ -n $id ]] || { echo "no 202 within the bound" >&2; exit 1; }
  published=$(now_ms)
  ran() { (($(successes) > successes_before)); }
  within_60s ran
  ran_at=$(now_ms)
  succeeded() { curl -s --max-time 20 "http://127.0.0.1:18090/invocations/$id?wait=5s" | grep -q '"state":"succeeded"'; }
  within_60s succeeded
  completed=$(now_ms)
  echo $((published - killed)) >>"$work/publish.txt"
  echo $((ran_at - killed)) >>"$work/ran.txt"
  echo $((completed - killed)) >>"$work/complete.txt"
  echo "  run $run: killed n$victim; first 202 after $((published - killed)) ms, it ran after $((ran_at - killed)) ms, its record read succeeded after $((completed - killed)) ms"
  start_server "$victim"
  within_60s healthy
done
echo "  median of $runs: first 202 $(median <"$work/publish.txt") ms, it ran $(median <"$work/ran.txt") ms, its record read succeeded $(median <"$work/complete.txt") ms after the SIGKILL"

[[ ${FAILOVER_ONLY:-0} == 1 ]] && exit 0
echo
echo "== R3 against R1: async accept (no runtime) and completion (a runtime draining), wrk -t1 -c$connections -d${seconds}s, alternating"
printf 'wrk.method = "POST"\n' >"$work/post.lua"
: >"$work/r1.txt"; : >"$work/r3.txt"
for replicas in 3 1 3 1; do
  stop "$gateway"; stop "$runtime"
  start_gateway "$replicas"
  for _ in $(seq 1200); do [[ $(leader | awk '{print $2}') == "$replicas" ]] && break; sleep 0.05; done
  out=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/post.lua" http://127.0.0.1:18090/async/fn/default/hello/)
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  refused=$(awk '/Non-2xx/ {print $5}' <<<"$out"); refused=${refused:-0}
  accepted=$((total - refused))
  started=$(now_ms)
  start_runtime
  drained() { [[ $(pending) == 0 ]]; }
  for _ in $(seq 6000); do drained && break; sleep 0.05; done
  drained || { echo "the queue did not drain within 5 min" >&2; exit 1; }
  took=$(( $(now_ms) - started ))
  awk -v a="$accepted" -v r="$refused" -v s="$seconds" -v t="$took" 'BEGIN { printf "%.0f %.0f %d\n", a/s, a*1000/t, r }' >>"$work/r$replicas.txt"
  echo "  R$replicas: $(tail -1 "$work/r$replicas.txt" | awk '{printf "%s accepted/s, %s completed/s (runtime start included), %s refused", $1, $2, $3}')"
done
col() { awk -v c="$2" '{print $c}' "$1" | median; }
awk -v a3="$(col "$work/r3.txt" 1)" -v a1="$(col "$work/r1.txt" 1)" -v c3="$(col "$work/r3.txt" 2)" -v c1="$(col "$work/r1.txt" 2)" 'BEGIN {
  printf "  R3 / R1: accept %.0f / %.0f = %.2f, completion %.0f / %.0f = %.2f\n", a3, a1, a3/a1, c3, c1, c3/c1 }'
