#!/usr/bin/env bash
# Builds (once) and locates the pinned Kubernetes test tools:
#   kube-apiserver, kube-controller-manager, kubectl,
#   kube-scheduler, kubelet, kube-proxy               (k8s.io/kubernetes, ./kubernetes/go.mod)
#   etcd                                              (go.etcd.io/etcd/server/v3, ./etcd/go.mod)
#   helm                                              (helm.sh/helm/v4, ./helm/go.mod)
#   coredns                                           (github.com/coredns/coredns, ./coredns/go.mod)
#   sluice-pause, sluice-wget                         (./node-images: the test node's pause
#                                                      process and `helm test`'s wget)
#
# Executed: prints `SLUICE_KUBE_BIN=<dir>` on stdout (build progress goes to stderr).
# Sourced:  exports SLUICE_KUBE_BIN (the work runs in a child bash, so the
#           caller's shell options are left alone); returns non-zero on failure.
#
# Options:
#   --cached-only   never build; exit 3 if the binaries are not cached yet.
#
# Environment:
#   SLUICE_KUBE_BIN     if already set to a directory holding all five binaries,
#                       it is used as is (nothing is built).
#   SLUICE_K8S_CACHE    cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice/k8s).
#   GO                  go command (default: go). Builds run at the caller's
#                       priority: scripts/test.sh lowers cargo's instead, because
#                       the Go build is the longest single step of a cold run.
#
# Binaries are cached outside the clone, keyed by the pinned versions and a hash
# of the go.mod/go.sum/source files and build flags, so changing a pin rebuilds.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: run ourselves as a child and export the result.
    __sluice_kube_out=$(bash "${BASH_SOURCE[0]}" "$@") || {
        __sluice_kube_rc=$?
        unset __sluice_kube_out
        return "$__sluice_kube_rc"
    }
    export SLUICE_KUBE_BIN="${__sluice_kube_out#SLUICE_KUBE_BIN=}"
    unset __sluice_kube_out
    return 0
fi

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GO=${GO:-go}
K8S_COMMANDS=(kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy)
NODE_IMAGE_COMMANDS=(sluice-pause sluice-wget)
BINARIES=("${K8S_COMMANDS[@]}" etcd helm coredns "${NODE_IMAGE_COMMANDS[@]}")

cached_only=false
for arg in "$@"; do
    case "$arg" in
    --cached-only) cached_only=true ;;
    -h | --help)
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "tools.sh: unknown argument: $arg" >&2
        exit 2
        ;;
    esac
done

log() { echo "tools.sh: $*" >&2; }

have_all() { # dir
    local b
    for b in "${BINARIES[@]}"; do
        [[ -x "$1/$b" ]] || return 1
    done
}

if [[ -n "${SLUICE_KUBE_BIN:-}" ]]; then
    if have_all "$SLUICE_KUBE_BIN"; then
        echo "SLUICE_KUBE_BIN=$SLUICE_KUBE_BIN"
        exit 0
    fi
    log "SLUICE_KUBE_BIN=$SLUICE_KUBE_BIN lacks some of: ${BINARIES[*]}"
    exit 1
fi

# Version of the module a go.mod requires (first `require` line naming it).
pinned() { # go.mod module
    awk -v m="$2" '($1 == m) { print $2; exit } ($1 == "require" && $2 == m) { print $3; exit }' "$1"
}

K8S_VERSION=$(pinned "$here/kubernetes/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)
HELM_VERSION=$(pinned "$here/helm/go.mod" helm.sh/helm/v4)
COREDNS_VERSION=$(pinned "$here/coredns/go.mod" github.com/coredns/coredns)
for v in K8S_VERSION ETCD_VERSION HELM_VERSION COREDNS_VERSION; do
    [[ "${!v}" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { log "cannot read $v from go.mod (got '${!v}')"; exit 1; }
done
k8s_minor=${K8S_VERSION#v*.}
k8s_minor=${k8s_minor%%.*}
k8s_major=${K8S_VERSION#v}
k8s_major=${k8s_major%%.*}

# Build flags. Kubernetes reads its version from the same variables its own
# build (hack/lib/version.sh) sets in both packages; without them every binary
# reports v0.0.0-master, which breaks kubectl's skew check and Helm's
# kubeVersion constraints. buildDate is filled in at build time from the
# module's publish time (not part of the cache key).
k8s_ldflags() { # buildDate
    local pkg out="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        out+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
        out+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean"
        [[ -n "$1" ]] && out+=" -X $pkg.buildDate=$1"
    done
    echo "$out"
}
HELM_LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
ETCD_LDFLAGS="-s -w"
COREDNS_LDFLAGS="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
GO_BUILD_FLAGS=(-trimpath -buildvcs=false -mod=readonly)

inputs_hash() { # files...
    {
        for f in "$@"; do
            echo "== ${f#"$here"/}"
            cat "$f"
        done
    } | sha256sum | cut -c1-12
}

cache_root=${SLUICE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/k8s}
recipe="cgo=0 ${GO_BUILD_FLAGS[*]} k8s[$(k8s_ldflags '')] etcd[$ETCD_LDFLAGS] helm[$HELM_LDFLAGS] coredns[$COREDNS_LDFLAGS]"
k8s_hash=$(inputs_hash "$here"/kubernetes/go.mod "$here"/kubernetes/go.sum "$here"/kubernetes/tools.go <(echo "$recipe"))
etcd_hash=$(inputs_hash "$here"/etcd/go.mod "$here"/etcd/go.sum "$here"/etcd/main.go <(echo "$recipe"))
helm_hash=$(inputs_hash "$here"/helm/go.mod "$here"/helm/go.sum "$here"/helm/tools.go <(echo "$recipe"))
coredns_hash=$(inputs_hash "$here"/coredns/go.mod "$here"/coredns/go.sum "$here"/coredns/main.go <(echo "$recipe"))
images_hash=$(inputs_hash "$here"/node-images/go.mod "$here"/node-images/*/main.go <(echo "$recipe"))
k8s_dir="$cache_root/parts/kubernetes-$K8S_VERSION-$k8s_hash"
etcd_dir="$cache_root/parts/etcd-$ETCD_VERSION-$etcd_hash"
helm_dir="$cache_root/parts/helm-$HELM_VERSION-$helm_hash"
coredns_dir="$cache_root/parts/coredns-$COREDNS_VERSION-$coredns_hash"
images_dir="$cache_root/parts/node-images-$images_hash"
key="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-coredns-$COREDNS_VERSION-$(echo "$k8s_hash $etcd_hash $helm_hash $coredns_hash $images_hash" | sha256sum | cut -c1-12)"
bin="$cache_root/$key/bin"

if have_all "$bin"; then
    echo "SLUICE_KUBE_BIN=$bin"
    exit 0
fi
if $cached_only; then
    log "not cached: $bin (run scripts/k8s/tools.sh to build)"
    exit 3
fi

command -v "$GO" >/dev/null || { log "'$GO' not found: Go is needed to build the test tools"; exit 1; }
mkdir -p "$cache_root/parts"
exec 9>"$cache_root/.lock"
flock 9 # another tools.sh may be building the same thing

export CGO_ENABLED=0 GOWORK=off GOFLAGS=-modcacherw
# The module and build caches of one build are gigabytes that the cached
# binaries never need again: they live beside the build and go with it, so
# that a CI machine's disk holds them only while Go runs.
go_scratch=$(mktemp -d "$cache_root/.go-scratch.XXXXXX")
trap 'rm -rf "$go_scratch"' EXIT
export GOCACHE="$go_scratch/build" GOMODCACHE="$go_scratch/mod"

# build_part NAME DIR MODULE_DIR LDFLAGS PACKAGES...: build into DIR atomically.
build_part() {
    local name=$1 dir=$2 moddir=$3 ldflags=$4
    shift 4
    if [[ -d "$dir" ]]; then return 0; fi
    local tmp
    tmp=$(mktemp -d "$cache_root/parts/.tmp-$name.XXXXXX")
    log "building $name ($(basename "$dir")) ..."
    local start=$SECONDS
    if ! (cd "$moddir" && "$GO" build "${GO_BUILD_FLAGS[@]}" -ldflags "$ldflags" -o "$tmp/" "$@") >&2; then
        rm -rf "$tmp"
        log "building $name failed"
        return 1
    fi
    chmod 755 "$tmp"
    mv "$tmp" "$dir"
    log "built $name in $((SECONDS - start))s"
}

build_part etcd "$etcd_dir" "$here/etcd" "$ETCD_LDFLAGS" .
build_part helm "$helm_dir" "$here/helm" "$HELM_LDFLAGS" helm.sh/helm/v4/cmd/helm
if [[ ! -d "$k8s_dir" ]]; then
    build_date=$(cd "$here/kubernetes" && GOFLAGS=-mod=readonly "$GO" list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
    # One go build for all of them so the packages they share compile once.
    build_part kubernetes "$k8s_dir" "$here/kubernetes" "$(k8s_ldflags "$build_date")" \
        "${K8S_COMMANDS[@]/#/k8s.io/kubernetes/cmd/}"
fi
build_part coredns "$coredns_dir" "$here/coredns" "$COREDNS_LDFLAGS" .
build_part node-images "$images_dir" "$here/node-images" "-s -w" "${NODE_IMAGE_COMMANDS[@]/#/./}"

tmp=$(mktemp -d "$cache_root/.tmp-bin.XXXXXX")
ln -s "${K8S_COMMANDS[@]/#/$k8s_dir/}" "$etcd_dir/etcd" "$helm_dir/helm" "$coredns_dir/coredns" \
    "${NODE_IMAGE_COMMANDS[@]/#/$images_dir/}" "$tmp/"
chmod 755 "$tmp"
mkdir -p "$cache_root/$key"
rm -rf "$bin"
mv "$tmp" "$bin"
have_all "$bin" || { log "build finished but $bin is incomplete"; exit 1; }
echo "SLUICE_KUBE_BIN=$bin"
