#!/usr/bin/env bash
# How long a pod takes from its creation to its container's first output on
# the real node, with and without volumes: the kubelet starts a pod with
# any volume only once its volume manager has seen it mounted, which it
# checks every 300 ms after a first look (README, "Proven on a real node").
#
#   scripts/bench-pod-volumes.sh DIR [ROUNDS]
#
# DIR is a node started with `scripts/k8s/cluster.sh start DIR` (as root).
# Each round creates one pod of each kind, alternating: `none` (no volume),
# `empty` (an emptyDir), `empty+secret` (an emptyDir, a Secret volume and a
# secretKeyRef variable: the runtime pods' old spec) and `envsecret` (two
# secretKeyRef variables, no volume: their new one). Every pod is the
# restricted pod of the runtimes running the node's `wget` image (a static
# Go program that prints an error at once). The time is from just before
# the POST to the first log line's timestamp (containerd's, nanoseconds).
# Prints one line per pod, then the median and p90 of each kind (ms).
# Works in namespace bench-pod-volumes, deleted at the end.
set -euo pipefail
dir=${1:?usage: $0 DIR [ROUNDS]}
rounds=${2:-8}
. "$dir/env"
pki=$dir/control-plane/pki
curl_=(curl -sf -o /dev/null --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
kubectl_() { "$SLUICE_KUBE_BIN/kubectl" "$@"; }
ns=bench-pod-volumes
logs=$dir/node/pod-logs
kubectl_ create namespace $ns >/dev/null
trap 'kubectl_ delete namespace $ns --wait=false >/dev/null 2>&1 || true' EXIT
kubectl_ -n $ns create secret generic creds --from-literal=user=u --from-literal=password=p >/dev/null

spec() { # kind name: the Pod's JSON
  local vols='[]' mounts='[]' env='[]'
  local user='{"name":"SLUICE_NATS_USER","valueFrom":{"secretKeyRef":{"name":"creds","key":"user"}}}'
  local password='{"name":"SLUICE_NATS_PASSWORD","valueFrom":{"secretKeyRef":{"name":"creds","key":"password"}}}'
  case $1 in
    none) ;;
    empty)
      vols='[{"name":"artifacts","emptyDir":{}}]'
      mounts='[{"name":"artifacts","mountPath":"/var/cache/sluice"}]' ;;
    empty+secret)
      vols='[{"name":"artifacts","emptyDir":{}},{"name":"auth","secret":{"secretName":"creds"}}]'
      mounts='[{"name":"artifacts","mountPath":"/var/cache/sluice"},{"name":"auth","mountPath":"/etc/sluice/nats-auth","readOnly":true}]'
      env="[$user]" ;;
    envsecret) env="[$user,$password]" ;;
  esac
  cat <<JSON
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"$2","namespace":"$ns"},
 "spec":{"automountServiceAccountToken":false,"restartPolicy":"Never","terminationGracePeriodSeconds":0,
  "securityContext":{"runAsNonRoot":true,"runAsUser":65532,"runAsGroup":65532,"seccompProfile":{"type":"RuntimeDefault"}},
  "containers":[{"name":"c","image":"$SLUICE_NODE_REGISTRY/wget:1","imagePullPolicy":"IfNotPresent",
    "args":["-q","-O-","-T","1","http://$SLUICE_NODE_IP:1/"],"env":$env,"volumeMounts":$mounts,
    "securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"runAsNonRoot":true,"capabilities":{"drop":["ALL"]}}}],
  "volumes":$vols}}
JSON
}

run() { # kind name: prints the milliseconds to the first log line
  local t0 file line
  t0=$(date +%s.%N)
  "${curl_[@]}" -H 'Content-Type: application/json' -X POST --data "$(spec "$1" "$2")" \
    "$SLUICE_KUBE_SERVER/api/v1/namespaces/$ns/pods"
  for _ in $(seq 1 300); do
    file=$(ls "$logs/${ns}_$2_"*/c/0.log 2>/dev/null | head -1 || true)
    [[ -n $file && -s $file ]] && break
    sleep 0.05
  done
  line=$(head -1 "$file")
  echo "(($(date -d "${line%% *}" +%s.%N) - $t0) * 1000) / 1" | bc
}

# The image's first pull is not measured.
run none warm-up >/dev/null
kubectl_ -n $ns delete pod warm-up --grace-period=0 --wait=false >/dev/null 2>&1
results=$(mktemp)
for round in $(seq 1 "$rounds"); do
  for kind in none empty empty+secret envsecret; do
    name=p$round-${kind/+/-}
    sleep 1
    echo "$kind $(run "$kind" "$name")" | tee -a "$results"
    kubectl_ -n $ns delete pod "$name" --grace-period=0 --wait=false >/dev/null 2>&1
  done
done
for kind in none empty empty+secret envsecret; do
  awk -v k="$kind" '$1 == k { print $2 }' "$results" | sort -n |
    awk -v k="$kind" '{ v[NR] = $1 } END {
      m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      p = int(0.9 * NR); if (p < 0.9 * NR) p++
      printf "%-13s median %4d ms  p90 %4d ms  (n=%d)\n", k, m, v[p], NR }'
done
rm -f "$results"
