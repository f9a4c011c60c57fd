#!/usr/bin/env bash
# Builds (once) and locates the pinned Prometheus server and promtool
# (github.com/prometheus/prometheus, ./prometheus/go.mod) for the monitoring
# tests: `promtool check/test rules` on the chart's alerts, and a real
# Prometheus scraping a real Sluice run on loopback.
#
# Executed: prints `SLUICE_PROMETHEUS_BIN=<dir>` on stdout (build progress
#           goes to stderr).
# Sourced:  exports SLUICE_PROMETHEUS_BIN (the work runs in a child bash, so
#           the caller's shell options are left alone); returns non-zero on
#           failure.
#
# Options:
#   --cached-only   never build; exit 3 if the binaries are not cached yet.
#
# Environment:
#   SLUICE_PROMETHEUS_BIN    if already set to a directory holding prometheus
#                            and promtool, it is used as is.
#   SLUICE_PROMETHEUS_CACHE  cache root (default
#                            ${XDG_CACHE_HOME:-$HOME/.cache}/sluice/prometheus).
#   GO                       go command (default: go).
#
# The build leaves out what the tests never use: the web UI's assets (no
# `builtinassets` tag: the API answers, the UI pages say the assets are
# missing) and every service discovery but static, file and HTTP
# (`remove_all_sd`). Binaries are cached outside the clone, keyed by the
# pinned version and a hash of go.mod/go.sum/tools.go and the build flags.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    __sluice_prom_out=$(bash "${BASH_SOURCE[0]}" "$@") || {
        __sluice_prom_rc=$?
        unset __sluice_prom_out
        return "$__sluice_prom_rc"
    }
    export SLUICE_PROMETHEUS_BIN="${__sluice_prom_out#SLUICE_PROMETHEUS_BIN=}"
    unset __sluice_prom_out
    return 0
fi

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/prometheus" && pwd)
GO=${GO:-go}
BINARIES=(prometheus promtool)

cached_only=false
for arg in "$@"; do
    case "$arg" in
    --cached-only) cached_only=true ;;
    -h | --help)
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "prometheus.sh: unknown argument: $arg" >&2
        exit 2
        ;;
    esac
done

log() { echo "prometheus.sh: $*" >&2; }

have_all() { # dir
    local b
    for b in "${BINARIES[@]}"; do
        [[ -x "$1/$b" ]] || return 1
    done
}

if [[ -n "${SLUICE_PROMETHEUS_BIN:-}" ]]; then
    if have_all "$SLUICE_PROMETHEUS_BIN"; then
        echo "SLUICE_PROMETHEUS_BIN=$SLUICE_PROMETHEUS_BIN"
        exit 0
    fi
    log "SLUICE_PROMETHEUS_BIN=$SLUICE_PROMETHEUS_BIN lacks some of: ${BINARIES[*]}"
    exit 1
fi

VERSION=$(awk '($1 == "require" && $2 == "github.com/prometheus/prometheus") { print $3; exit }
               ($1 == "github.com/prometheus/prometheus") { print $2; exit }' "$here/go.mod")
[[ "$VERSION" =~ ^v0\.([0-9]+)\.([0-9]+)$ ]] || { log "cannot read the prometheus version from go.mod (got '$VERSION')"; exit 1; }
# The Go module v0.MMm.p is Prometheus 3.MM.p (v0.316.0 is 3.16.0); the
# binaries report it the way the project's release build (.promu.yml) sets it.
minor=${BASH_REMATCH[1]}
release="${minor:0:1}.$((10#${minor:1})).${BASH_REMATCH[2]}"
LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Branch=$VERSION"
GO_BUILD_FLAGS=(-trimpath -buildvcs=false -mod=readonly -tags netgo,remove_all_sd)

cache_root=${SLUICE_PROMETHEUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/prometheus}
hash=$({
    for f in go.mod go.sum tools.go; do
        echo "== $f"
        cat "$here/$f"
    done
    echo "== recipe: cgo=0 ${GO_BUILD_FLAGS[*]} $LDFLAGS"
} | sha256sum | cut -c1-12)
bin="$cache_root/prometheus-$VERSION-$hash"

if have_all "$bin"; then
    echo "SLUICE_PROMETHEUS_BIN=$bin"
    exit 0
fi
if $cached_only; then
    log "not cached: $bin (run scripts/prometheus.sh to build)"
    exit 3
fi

command -v "$GO" >/dev/null || { log "'$GO' not found: Go is needed to build Prometheus"; exit 1; }
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9 # another prometheus.sh may be building the same thing
if have_all "$bin"; then
    echo "SLUICE_PROMETHEUS_BIN=$bin"
    exit 0
fi

export CGO_ENABLED=0 GOWORK=off GOFLAGS=-modcacherw
# The module and build caches are gigabytes the cached binaries never need
# again: they live beside the build and go with it.
go_scratch=$(mktemp -d "$cache_root/.go-scratch.XXXXXX")
tmp=$(mktemp -d "$cache_root/.tmp-bin.XXXXXX")
trap 'rm -rf "$go_scratch" "$tmp"' EXIT
export GOCACHE="$go_scratch/build" GOMODCACHE="$go_scratch/mod"

log "building prometheus and promtool $VERSION ($release) ..."
start=$SECONDS
# One go build for both so the packages they share compile once.
(cd "$here" && "$GO" build "${GO_BUILD_FLAGS[@]}" -ldflags "$LDFLAGS" -o "$tmp/" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool) >&2 ||
    { log "building prometheus failed"; exit 1; }
chmod 755 "$tmp"
rm -rf "$bin"
mv "$tmp" "$bin"
log "built prometheus and promtool in $((SECONDS - start))s"
have_all "$bin" || { log "build finished but $bin is incomplete"; exit 1; }
echo "SLUICE_PROMETHEUS_BIN=$bin"
