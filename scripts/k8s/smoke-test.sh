#!/usr/bin/env bash
# Smoke test of the test control plane: start it in a temp dir, check versions,
# controllers (Deployment -> ReplicaSet -> 2 Pending pods, garbage collection),
# server-side apply and helm, then stop it. Builds the tools if needed.
# Usage: scripts/k8s/smoke-test.sh [DIR]   (DIR kept on failure for its logs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-k8s-smoke.XXXXXX")}

fail() {
    echo "smoke-test: FAIL: $*" >&2
    echo "smoke-test: logs in $dir" >&2
    exit 1
}
trap '"$here/control-plane.sh" stop "$dir"' EXIT

# Polls a command until it succeeds (30 s).
until_ok() {
    local i
    for i in $(seq 150); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

start_ns=$(date +%s%N)
while IFS= read -r line; do export "${line?}"; done < <(SLUICE_KUBE_OWNER_PID=$$ "$here/control-plane.sh" start "$dir")
echo "smoke-test: control plane up in $((($(date +%s%N) - start_ns) / 1000000)) ms"
[[ -n "${KUBECONFIG:-}" && -n "${SLUICE_KUBE_BIN:-}" ]] || fail "start printed no KUBECONFIG/SLUICE_KUBE_BIN"
export PATH="$SLUICE_KUBE_BIN:$PATH" KUBECACHEDIR="$dir/kube-cache"
export HELM_CACHE_HOME="$dir/helm/cache" HELM_CONFIG_HOME="$dir/helm/config" HELM_DATA_HOME="$dir/helm/data"
k() { kubectl -n default "$@"; }

want=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/kubernetes/go.mod")
versions=$(kubectl version -o json)
for side in clientVersion serverVersion; do
    got=$(grep -A12 "\"$side\"" <<<"$versions" | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1)
    [[ "$got" == "$want" ]] || fail "kubectl version: $side is '$got', want $want"
done
echo "smoke-test: kubectl version: client and server $want"

k create deployment smoke --image=registry.invalid/smoke:1 --replicas=2 >/dev/null
pending() { [[ $(k get pods -l app=smoke --field-selector=status.phase=Pending -o name | wc -l) -eq 2 ]]; }
until_ok pending || fail "no 2 Pending pods from the Deployment (controller-manager?)"
rs=$(k get rs -l app=smoke -o name)
[[ -n "$rs" ]] || fail "no ReplicaSet"
echo "smoke-test: Deployment -> $rs -> 2 Pending pods"

k delete deployment smoke >/dev/null # default propagation: background
gone() { [[ -z $(k get rs,pods -l app=smoke -o name) ]]; }
until_ok gone || fail "ReplicaSet/pods not garbage-collected"
echo "smoke-test: ReplicaSet and pods garbage-collected"

cm='{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"smoke-ssa"},"data":{"a":"1"}}'
k apply --server-side --field-manager=smoke -f - <<<"$cm" >/dev/null
[[ $(k get configmap smoke-ssa -o jsonpath='{.metadata.managedFields[0].operation}') == Apply ]] ||
    fail "server-side apply did not record an Apply managed field"
echo "smoke-test: server-side apply ok"

hv=$(helm version --template '{{.Version}}')
want_helm=$(awk '$1 == "require" && $2 == "helm.sh/helm/v4" { print $3 }' "$here/helm/go.mod")
[[ "$hv" == "$want_helm" ]] || fail "helm version is '$hv', want $want_helm"
chart="$dir/chart"
mkdir -p "$chart/templates"
printf 'apiVersion: v2\nname: smoke\nversion: 0.1.0\nkubeVersion: ">=%s-0"\n' "${want%.*}.0" >"$chart/Chart.yaml"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke-helm\ndata:\n  kube: "{{ .Capabilities.KubeVersion.Version }}"\n' >"$chart/templates/cm.yaml"
helm install smoke "$chart" -n default >/dev/null
[[ $(k get configmap smoke-helm -o jsonpath='{.data.kube}') == "$want" ]] || fail "helm saw a different kube version"
helm uninstall smoke -n default >/dev/null
echo "smoke-test: helm $hv installs a chart with kubeVersion >= ${want%.*}.0"

stop_ns=$(date +%s%N)
"$here/control-plane.sh" stop "$dir"
trap - EXIT
echo "smoke-test: stopped in $((($(date +%s%N) - stop_ns) / 1000000)) ms"
echo "smoke-test: 6 passed, 0 failed"
[[ $# -gt 0 ]] || rm -rf "$dir"
