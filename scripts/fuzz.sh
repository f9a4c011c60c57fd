#!/usr/bin/env bash
# Fuzzes Sluice's decoders and parsers (the cargo-fuzz targets in fuzz/)
# for a bounded time each, then prints a table: target, executions,
# seconds, corpus size, findings. Stops by itself; exits non-zero if a
# target fails to build or finds a crash (its input is kept under
# .sluice/fuzz/artifacts/<target>/: replay it with
# `target/fuzz/x86_64-unknown-linux-gnu/release/<target> <file>`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60, every target)
#
# Installs cargo-fuzz (pinned) once into a cache outside the clone. The
# targets are built without a sanitizer (`-s none`), which stable Rust can
# do: Sluice's code is safe Rust, so AddressSanitizer would mostly check
# the dependencies, at twice the build time and a fraction of the
# executions. SLUICE_FUZZ_SANITIZER=address builds with it, on nightly
# (installed if missing).
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) and
# the corpus earlier runs grew (.sluice/fuzz/corpus/<target>/, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(invocation_wire invocation_roundtrip reply record manifest quantity cloudevent)
fi

CARGO_FUZZ_VERSION=0.13.2
cargo_fuzz_root=${SLUICE_CARGO_FUZZ:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/cargo-fuzz-$CARGO_FUZZ_VERSION}
cargo_fuzz=$cargo_fuzz_root/bin/cargo-fuzz
if [ ! -x "$cargo_fuzz" ]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $cargo_fuzz_root"
  cargo install --locked --root "$cargo_fuzz_root" "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

sanitizer=${SLUICE_FUZZ_SANITIZER:-none}
# cargo-fuzz runs `cargo`, which takes its toolchain from RUSTUP_TOOLCHAIN.
toolchain=${RUSTUP_TOOLCHAIN:-}
if [ "$sanitizer" != none ]; then
  if ! rustup run nightly rustc --version > /dev/null 2>&1; then
    echo "== installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
  toolchain=nightly
fi

# A target folder of its own: other flags than the workspace's builds.
case ${CARGO_TARGET_DIR:-target} in
  /*) target_dir=$CARGO_TARGET_DIR/fuzz ;;
  *) target_dir=$PWD/${CARGO_TARGET_DIR:-target}/fuzz ;;
esac
work=$PWD/.sluice/fuzz

echo "== building the fuzz targets"
# One target named: only it; otherwise all of them (one cargo build).
only=()
[ ${#targets[@]} -eq 1 ] && only=("${targets[0]}")
env ${toolchain:+RUSTUP_TOOLCHAIN=$toolchain} \
  "$cargo_fuzz" fuzz build -s "$sanitizer" --target-dir "$target_dir" "${only[@]}"
bin_dir=$target_dir/x86_64-unknown-linux-gnu/release

failed=()
rows=()
for target in "${targets[@]}"; do
  corpus=$work/corpus/$target
  artifacts=$work/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  before=$(find "$artifacts" -type f | wc -l)
  log=$work/$target.log
  echo "== fuzzing $target for ${seconds}s"
  start=$EPOCHREALTIME
  status=0
  # -timeout: one input taking 10 s is a finding (a hang); -rss_limit_mb:
  # so is growing past 2 GiB.
  "$bin_dir/$target" "$corpus" "${seeds[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 > "$log" 2>&1 || status=$?
  elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
  # (A crash leaves no final statistics, maybe no status line: "?".)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  size=$({ grep -o 'corp: [0-9]*' "$log" || true; } | tail -1 | cut -d' ' -f2)
  findings=$(( $(find "$artifacts" -type f | wc -l) - before ))
  if [ "$status" -ne 0 ] || [ "$findings" -ne 0 ]; then
    failed+=("$target")
    grep -v -e '^#' -e '^"' -e 'NEW_FUNC' "$log" | tail -40 >&2
    echo "$target failed (exit $status); log: $log; inputs: $artifacts" >&2
  fi
  rows+=("$(printf '| %s | %s | %s | %s | %s |' "$target" "${runs:-?}" "$elapsed" "${size:-?}" "$findings")")
done

echo
echo "| target | executions | seconds | corpus | findings |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]}" >&2
  exit 1
fi
