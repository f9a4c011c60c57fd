#!/usr/bin/env bash
# Builds the Python and JavaScript examples into examples/target/polyglot/:
#   hello-py.wasm, events-py.wasm   componentize-py   (examples/python/)
#   hello-js.wasm                   componentize-js   (examples/javascript/)
# with the toolchains pinned in examples/python/requirements-build.txt and
# examples/javascript/package-lock.json, installed (once) into
# .sluice/polyglot. The wasi:http WIT is the one the wasmtime in Cargo.lock
# vendors (wasmtime-wasi-http's wit/), so guests and host agree on the
# interface version. A component is rebuilt only when its inputs changed.
# Run from anywhere; needs python3 (with venv), node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=.sluice/polyglot
out=examples/target/polyglot
mkdir -p "$tools" "$out"

# stamp FILE INPUTS...: true when FILE records the same hash of INPUTS.
fresh() {
  local stamp=$1
  shift
  [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$(cat "$@" | sha256sum)" ]]
}
record() {
  local stamp=$1
  shift
  cat "$@" | sha256sum > "$stamp"
}

python_build=examples/python/requirements-build.txt
python_deps=examples/python/requirements.txt
if ! fresh "$tools/venv.stamp" "$python_build"; then
  echo "== installing componentize-py"
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --require-hashes -r "$python_build"
  record "$tools/venv.stamp" "$python_build"
fi
if ! fresh "$tools/python-deps.stamp" "$python_deps"; then
  echo "== installing the Python examples' dependencies"
  rm -rf "$tools/python-deps"
  "$tools/venv/bin/pip" install -q --require-hashes --no-deps \
    --target "$tools/python-deps" -r "$python_deps"
  record "$tools/python-deps.stamp" "$python_deps"
fi

js_lock=examples/javascript/package-lock.json
if ! fresh "$tools/js.stamp" examples/javascript/package.json "$js_lock"; then
  echo "== installing componentize-js"
  rm -rf "$tools/js"
  mkdir -p "$tools/js"
  cp examples/javascript/package.json "$js_lock" "$tools/js/"
  (cd "$tools/js" && npm ci --no-audit --no-fund --loglevel=error)
  record "$tools/js.stamp" examples/javascript/package.json "$js_lock"
fi

# The WIT of the wasi:http the runtime serves, from the wasmtime-wasi-http
# crate Cargo.lock pins.
wit=$(cargo metadata --locked --format-version 1 | python3 -c '
import json, os, sys
packages = json.load(sys.stdin)["packages"]
print(next(os.path.join(os.path.dirname(p["manifest_path"]), "wit")
           for p in packages if p["name"] == "wasmtime-wasi-http"))')
http_version=$(sed -n 's/^package wasi:http@\([0-9.]*\);/\1/p' "$wit/deps/http.wit")
[[ -n "$http_version" ]] || { echo "no wasi:http package in $wit/deps/http.wit" >&2; exit 1; }
if ! grep -q "wasi:http/types@$http_version" examples/javascript/hello.js; then
  echo "examples/javascript/hello.js does not import wasi:http/types@$http_version, the version wasmtime serves" >&2
  exit 1
fi

# build OUTPUT INPUTS... -- COMMAND...: runs COMMAND when OUTPUT is missing
# or older than one of INPUTS.
build() {
  local output=$1 inputs=() input
  shift
  while [[ $1 != -- ]]; do inputs+=("$1"); shift; done
  shift
  if [[ -f "$output" ]]; then
    local stale=false
    for input in "${inputs[@]}"; do
      [[ "$input" -nt "$output" ]] && stale=true
    done
    $stale || return 0
  fi
  echo "== building $output"
  local start=$SECONDS
  "$@" > "$tools/build.log" 2>&1 || { cat "$tools/build.log" >&2; return 1; }
  echo "   $(( $(stat -c %s "$output") / 1024 )) KiB in $((SECONDS - start)) s"
}

componentize_py() { # MODULE OUTPUT
  # componentize-py leaves __pycache__ beside the sources it reads.
  PYTHONDONTWRITEBYTECODE=1 "$tools/venv/bin/componentize-py" -d "$wit" -w "wasi:http/proxy@$http_version" \
    componentize "$1" -p examples/python -p "$tools/python-deps" -o "$2"
}
for example in hello events; do
  build "$out/$example-py.wasm" examples/python/"$example".py examples/python/http_io.py \
    "$tools/venv.stamp" "$tools/python-deps.stamp" -- componentize_py "$example" "$out/$example-py.wasm"
done
build "$out/hello-js.wasm" examples/javascript/hello.js "$tools/js.stamp" -- \
  node "$tools/js/node_modules/@bytecodealliance/componentize-js/src/cli.js" examples/javascript/hello.js \
  --wit "$wit" --world-name "wasi:http/proxy@$http_version" -o "$out/hello-js.wasm"
