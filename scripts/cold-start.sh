#!/usr/bin/env bash
# Cold start of a runtime process, no Kubernetes: the time from starting
# `sluice-runtime --function default/FN` (as a dedicated pod at zero does),
# with one sync invocation already waiting in the queue, to that invocation
# answered. RUNS times (default 5) with an empty artifacts folder each (a
# new pod) while the shared bucket sluice-artifacts holds the function's
# precompiled artifact, and RUNS times without it (--shared-artifacts=false:
# the runtime compiles). Prints the median and p90 of each, and where the
# time goes, from the runtime's own JSON log lines: process start to its
# first line, NATS connect, layout and engine, registry sync to serving,
# and the component load.
#
#   scripts/cold-start.sh [FN]   FN: hello (default), or hello-py, hello-js,
#                                events-py (built by scripts/polyglot.sh)
#
# Binaries from $SLUICE_BIN (default: a release build, made here). Needs
# curl and python3; everything listens on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/nats-server.sh
fn=${1:-hello}
runs=${RUNS:-5}
if [[ -z ${SLUICE_BIN:-} ]]; then
  cargo build --locked --release -p sluice-gateway -p sluice-runtime
  SLUICE_BIN=${CARGO_TARGET_DIR:-target}/release
fi
case $fn in
  hello | echo) wasm=examples/target/wasm32-wasip2/release/$fn.wasm ;;
  *) wasm=examples/target/polyglot/$fn.wasm ;;
esac
[[ -f $wasm ]] || { echo "$wasm is missing (scripts/polyglot.sh builds the Python and JavaScript ones)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; rm -rf "$work"' EXIT
start_nats_server "$work"
pids+=("$nats_pid")
http_port=$(free_port) admin_port=$(free_port)
mkdir "$work/functions"
cat >"$work/functions/$fn.yaml" <<EOF
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: $fn }
spec:
  module: { file: "$PWD/$wasm" }
  placement: dedicated
  timeout: 5m
EOF
"$SLUICE_BIN/sluice-gateway" publish --nats "$nats" "$work/functions" 2>"$work/publish.log"
"$SLUICE_BIN/sluice-gateway" --nats "$nats" --listen "127.0.0.1:$http_port" \
  --admin-listen "127.0.0.1:$admin_port" 2>"$work/gateway.log" &
pids+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null && break; sleep 0.1; done

# run NAME FLAGS...: one cold start, logged to $work/NAME.log; appends
# "NAME start_epoch answered_epoch status" to $work/runs.
run() {
  local name=$1
  shift
  curl -s -o "$work/$name.body" -w '%{http_code}' "http://127.0.0.1:$http_port/fn/default/$fn/" >"$work/$name.code" &
  local caller=$!
  # The invocation waits in the queue before the runtime starts, as at zero.
  sleep 0.5
  local started
  started=$(date +%s.%N)
  "$SLUICE_BIN/sluice-runtime" --nats "$nats" --function "default/$fn" --artifacts "$work/$name.artifacts" \
    --admin-listen 127.0.0.1:0 --log-json "$@" 2>"$work/$name.log" &
  local runtime=$!
  wait "$caller"
  local answered
  answered=$(date +%s.%N)
  if [[ $name == warm ]]; then
    # The first compile is shared in the background: let it land.
    for _ in $(seq 600); do grep -q 'shared the precompiled component' "$work/$name.log" && break; sleep 0.1; done
  fi
  kill -TERM "$runtime"
  wait "$runtime" || true
  echo "$name $started $answered $(cat "$work/$name.code")" >>"$work/runs"
}

echo "== $fn: one warm-up run that compiles and shares the artifact, then $runs cold starts each way" >&2
run warm
for i in $(seq "$runs"); do
  run "shared-$i"
  run "compiled-$i" --shared-artifacts=false
done

python3 - "$work" <<'PY'
import datetime, json, pathlib, statistics, sys

work = pathlib.Path(sys.argv[1])

def at(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

def parts(name, started, answered):
    marks = {}
    load = None
    for line in (work / f"{name}.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        fields = entry.get("fields", {})
        message = fields.get("message", "")
        marks.setdefault(message, at(entry["timestamp"]))
        if message == "cold start":
            load = (fields.get("source"), float(fields["seconds"]))
    first = marks.get("connecting to NATS", started)
    connected = marks.get("connected to NATS", first)
    engine = marks.get("layout opened, engine ready", connected)
    serving = marks.get("serving", engine)
    return {
        "total": answered - started,
        "process start": first - started,
        "NATS connect": connected - first,
        "layout + engine": engine - connected,
        "registry sync": serving - engine,
        "load": load[1] if load else float("nan"),
        "source": load[0] if load else "?",
    }

rows = {"shared": [], "compiled": []}
for line in (work / "runs").read_text().splitlines():
    name, started, answered, code = line.split()
    if code != "200":
        print(f"{name}: HTTP {code}", file=sys.stderr)
        continue
    kind = name.split("-")[0]
    if kind in rows:
        rows[kind].append(parts(name, float(started), float(answered)))

def p90(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

columns = ["total", "process start", "NATS connect", "layout + engine", "registry sync", "load"]
print("| cold start | runs | load from | " + " | ".join(f"{c} (ms, median)" for c in columns) + " | total p90 (ms) |")
print("|---|---|---|" + "---|" * len(columns) + "---|")
for kind, label in [("shared", "with the shared artifact"), ("compiled", "without it (compiles)")]:
    got = rows[kind]
    if not got:
        continue
    sources = ",".join(sorted({r["source"] for r in got}))
    medians = [statistics.median(r[c] for r in got) * 1000 for c in columns]
    print(f"| {label} | {len(got)} | {sources} | " + " | ".join(f"{m:.0f}" for m in medians)
          + f" | {p90([r['total'] for r in got]) * 1000:.0f} |")
PY
