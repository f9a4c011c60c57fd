#!/usr/bin/env bash
# A throwaway Kubernetes control plane for integration tests: etcd,
# kube-apiserver and kube-controller-manager on 127.0.0.1, no kubelet (pods
# stay Pending), all state under DIR.
#
#   control-plane.sh start DIR   generate PKI, start, wait until ready, print env
#   control-plane.sh stop DIR    stop everything started for DIR and wait
#
# `start` prints KEY=VALUE lines (also written to DIR/env, sourceable):
#   KUBECONFIG, SLUICE_KUBE_BIN, SLUICE_KUBE_SERVER, SLUICE_KUBE_ETCD
# Files in DIR: kubeconfig (admin, group system:masters), pki/, etcd/ (data),
#   *.log, *.pid, env.
#
# Environment:
#   SLUICE_KUBE_NODE_IP        node mode (cluster.sh sets it): the API server binds
#                              to this address (the node's bridge, which pods
#                              reach) instead of 127.0.0.1 and publishes it as
#                              the `kubernetes` Service's endpoint; a scheduler
#                              runs too, and DIR gets the node's certificates
#                              and kubeconfigs (kubelet, kube-proxy, coredns)
#   SLUICE_KUBE_BIN            binaries dir; default: from tools.sh (builds if needed)
#   SLUICE_KUBE_START_TIMEOUT  seconds to wait for readiness (default 120)
#   SLUICE_KUBE_OWNER_PID      if set, a watchdog stops the control plane when
#                              that process exits (e.g. the test binary's pid)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
NODE_IP=${SLUICE_KUBE_NODE_IP:-}
# The node's name, as its kubelet client certificate says (Node authorizer).
NODE_NAME=sluice-node

die() {
    echo "control-plane.sh: $*" >&2
    exit 1
}
log() { echo "control-plane.sh: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

[[ $# -eq 2 || ( $# -eq 3 && $1 == _watch ) ]] || usage
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

# ---------------------------------------------------------------- processes

COMPONENTS=(kube-scheduler kube-controller-manager kube-apiserver etcd watchdog)

# pid of a component if it is still the process we started (its command line
# names $dir, so a recycled pid is never mistaken for ours).
live_pid() { # component
    local f="$dir/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # Empty for a moment while the process execs (it is still ours then).
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ -z $cmdline || $cmdline == *"$dir"* ]] || return 1
    echo "$pid"
}

# SIGTERM, then SIGKILL after 10 s; wait until gone.
stop_components() { # component...
    local c pid pids=() deadline
    for c in "$@"; do
        [[ $c == watchdog && "${SLUICE_KUBE_IN_WATCHDOG:-}" == 1 ]] && continue
        if pid=$(live_pid "$c"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.05
        done
    done
    for c in "$@"; do rm -f "$dir/$c.pid"; done
}

# All at once: stopping etcd only after the apiserver is gone takes longer.
stop_all() { stop_components "${COMPONENTS[@]}"; }

# A port in 20000-32767 (below the kernel's ephemeral range) that no socket uses.
free_port() {
    local used port i
    local _sl local_addr _rest
    used=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | while read -r _sl local_addr _rest; do
        if [[ $local_addr == *:* && $_sl != sl ]]; then echo $((16#${local_addr##*:})); fi
    done | sort -u)
    for i in $(seq 100); do
        port=$((20000 + RANDOM % 12768))
        grep -qx "$port" <<<"$used" || { echo "$port"; return 0; }
    done
    die "no free port found"
}

# spawn NAME CMD...: start detached (own session, no inherited stdio), record pid.
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
}

# Fails if the component died; says why when it was a port clash.
check_alive() { # component
    live_pid "$1" >/dev/null && return 0
    if grep -q "address already in use" "$dir/$1.log" 2>/dev/null; then
        return 2
    fi
    log "$1 exited; last lines of $dir/$1.log:"
    tail -n 25 "$dir/$1.log" >&2 || true
    return 1
}

# ---------------------------------------------------------------- PKI

pki() {
    local p="$dir/pki"
    mkdir -p "$p"
    (
        cd "$p"
        umask 077
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        [[ -f ca.crt ]] || openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 \
            -subj "/CN=sluice-test-ca" 2>/dev/null
        cert() { # name subject extensions...; kept when it exists (a restarted DIR)
            local name=$1 subj=$2
            shift 2
            [[ -f "$name.crt" ]] && return 0
            local ext=()
            for e in "$@"; do ext+=(-addext "$e"); done
            openssl req -x509 "${ec[@]}" -keyout "$name.key" -out "$name.crt" -days 3650 \
                -CA ca.crt -CAkey ca.key -subj "$subj" \
                -addext "basicConstraints=critical,CA:FALSE" \
                -addext "keyUsage=critical,digitalSignature" "${ext[@]}" 2>/dev/null
        }
        cert apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local${NODE_IP:+,IP:$NODE_IP}"
        cert admin "/O=system:masters/CN=sluice-admin" "extendedKeyUsage=clientAuth"
        cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
        if [[ -n $NODE_IP ]]; then
            cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
            # The API server's client identity towards kubelets (logs, exec).
            cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
            # The kubelet as the Node authorizer and NodeRestriction expect it.
            cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
            cert kubelet "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth" "subjectAltName=IP:$NODE_IP"
            # Bound to system:node-proxier by the default RBAC.
            cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
            cert coredns "/CN=sluice:coredns" "extendedKeyUsage=clientAuth"
        fi
        # Service-account token signing key (RS256, what every client expects).
        if [[ ! -f sa.key ]]; then
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
            openssl pkey -in sa.key -pubout -out sa.pub
        fi
    )
}

kubeconfig() { # file user server
    local b64="base64 -w0"
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sluice-test
  cluster:
    server: $3
    certificate-authority-data: $($b64 <"$dir/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$dir/pki/$2.crt")
    client-key-data: $($b64 <"$dir/pki/$2.key")
contexts:
- name: sluice-test
  context:
    cluster: sluice-test
    user: $2
    namespace: default
current-context: sluice-test
EOF
    chmod 600 "$1"
}

# ---------------------------------------------------------------- start

kubectl() {
    "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" --cache-dir "$dir/kube-cache" "$@"
}

# etcd's /health says {"health":"true"} (plain bash HTTP, no curl needed).
etcd_healthy() { # port
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 &&
        grep -q "\"health\":\"true\"" <&3' _ "$1" 2>/dev/null
}

start_etcd() {
    local client peer t
    for t in 1 2 3 4 5; do
        client=$(free_port)
        peer=$(free_port)
        [[ $client != "$peer" ]] || continue
        spawn etcd "$BIN/etcd" --name sluice --data-dir "$dir/etcd" \
            --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "sluice=http://127.0.0.1:$peer" --initial-cluster-state new \
            --unsafe-no-fsync --heartbeat-interval=10 --election-timeout=100 --log-level warn
        while :; do
            if etcd_healthy "$client"; then
                ETCD_URL="http://127.0.0.1:$client"
                return 0
            fi
            # Once (CI, 2026-12-01) etcd exited at start with an empty log
            # on a loaded machine: started again like a port clash.
            check_alive etcd || break
            ((SECONDS < deadline)) || die "timed out waiting for etcd (see $dir/etcd.log)"
            sleep 0.05
        done
        log "etcd did not start (port clash or exit), retrying"
        rm -rf "$dir/etcd"
    done
    die "could not start etcd"
}

start_apiserver() {
    local port t
    for t in 1 2 3 4 5; do
        port=$(free_port)
        SERVER="https://${NODE_IP:-127.0.0.1}:$port"
        kubeconfig "$dir/kubeconfig" admin "$SERVER"
        local mode_flags=(--endpoint-reconciler-type=none)
        if [[ -n $NODE_IP ]]; then
            # Pods reach the API through the `kubernetes` Service, whose
            # endpoint the lease reconciler publishes; kubelets are reached
            # by their InternalIP only (the default would resolve the node's
            # name, a DNS query that could leave the machine).
            mode_flags=(
                --kubelet-client-certificate="$dir/pki/apiserver-kubelet-client.crt"
                --kubelet-client-key="$dir/pki/apiserver-kubelet-client.key"
                --kubelet-certificate-authority="$dir/pki/ca.crt"
                --kubelet-preferred-address-types=InternalIP
            )
        fi
        spawn kube-apiserver "$BIN/kube-apiserver" \
            --bind-address="${NODE_IP:-127.0.0.1}" --advertise-address="${NODE_IP:-127.0.0.1}" --secure-port="$port" \
            --etcd-servers="$ETCD_URL" \
            --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
            --client-ca-file="$dir/pki/ca.crt" \
            --authorization-mode=Node,RBAC --allow-privileged=true \
            --service-cluster-ip-range="$SERVICE_CIDR" \
            --service-account-issuer=https://kubernetes.default.svc.cluster.local \
            --service-account-key-file="$dir/pki/sa.pub" \
            --service-account-signing-key-file="$dir/pki/sa.key" \
            "${mode_flags[@]}" \
            --profiling=false
        while :; do
            if [[ $(kubectl get --raw /readyz 2>/dev/null) == ok ]]; then
                return 0
            fi
            check_alive kube-apiserver || { [[ $? == 2 ]] && break; return 1; }
            check_alive etcd || return 1
            ((SECONDS < deadline)) || die "timed out waiting for kube-apiserver /readyz (see $dir/kube-apiserver.log)"
            sleep 0.2
        done
        log "kube-apiserver port clash, retrying"
    done
    die "could not start kube-apiserver"
}

start_controller_manager() {
    kubeconfig "$dir/controller-manager.kubeconfig" controller-manager "$SERVER"
    spawn kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$dir/controller-manager.kubeconfig" \
        --secure-port=0 --leader-elect=false \
        --kube-api-qps=200 --kube-api-burst=400 \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$dir/pki/sa.key" \
        --root-ca-file="$dir/pki/ca.crt" \
        --cluster-signing-cert-file="$dir/pki/ca.crt" --cluster-signing-key-file="$dir/pki/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --flex-volume-plugin-dir="$dir/flexvolume" \
        --pvclaimbinder-sync-period=2s \
        --profiling=false
    # The `default` service account is created by the controller-manager, so
    # its existence proves the controllers run.
    while ! kubectl -n default get serviceaccount default -o name >/dev/null 2>&1; do
        check_alive kube-controller-manager || return 1
        ((SECONDS < deadline)) || die "timed out waiting for serviceaccount default (see $dir/kube-controller-manager.log)"
        sleep 0.2
    done
}

# The scheduler, and kubeconfigs for the node's components (node mode).
start_node_clients() {
    kubeconfig "$dir/scheduler.kubeconfig" scheduler "$SERVER"
    kubeconfig "$dir/kubelet.kubeconfig" kubelet-client "$SERVER"
    kubeconfig "$dir/kube-proxy.kubeconfig" kube-proxy "$SERVER"
    kubeconfig "$dir/coredns.kubeconfig" coredns "$SERVER"
    spawn kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$dir/scheduler.kubeconfig" \
        --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
        --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
        --profiling=false
    check_alive kube-scheduler
}

start() {
    if live_pid kube-apiserver >/dev/null; then
        die "already running in $dir (run: $0 stop $dir)"
    fi
    stop_all # leftovers of a half-started run
    if [[ -z "${SLUICE_KUBE_BIN:-}" ]]; then
        SLUICE_KUBE_BIN=$("$here/tools.sh")
        SLUICE_KUBE_BIN=${SLUICE_KUBE_BIN#SLUICE_KUBE_BIN=}
    fi
    BIN=$SLUICE_KUBE_BIN
    local b
    for b in etcd kube-apiserver kube-controller-manager kubectl; do
        [[ -x "$BIN/$b" ]] || die "$BIN/$b missing"
    done
    command -v openssl >/dev/null || die "openssl is needed"

    local t0 c
    t0=$(date +%s%N)
    deadline=$((SECONDS + ${SLUICE_KUBE_START_TIMEOUT:-120}))
    trap stop_all EXIT # on any failure below
    for c in "${COMPONENTS[@]}"; do : >"$dir/$c.log"; done
    local phases="" t1 t2
    phase() { t2=$(date +%s%N); phases+=" $1 $(((t2 - t1) / 1000000))ms"; t1=$t2; }
    t1=$t0
    if [[ -n "${SLUICE_KUBE_OWNER_PID:-}" ]]; then
        kill -0 "$SLUICE_KUBE_OWNER_PID" || die "SLUICE_KUBE_OWNER_PID=$SLUICE_KUBE_OWNER_PID is not running"
        spawn watchdog bash "${BASH_SOURCE[0]}" _watch "$dir" "$SLUICE_KUBE_OWNER_PID"
    fi
    # (not `f && phase`: errexit is off on the left of &&)
    pki
    phase pki
    start_etcd
    phase etcd
    start_apiserver
    phase kube-apiserver
    start_controller_manager
    phase kube-controller-manager
    if [[ -n $NODE_IP ]]; then
        start_node_clients
        phase kube-scheduler
    fi
    trap - EXIT

    local vars
    vars="KUBECONFIG=$dir/kubeconfig
SLUICE_KUBE_BIN=$BIN
SLUICE_KUBE_SERVER=$SERVER
SLUICE_KUBE_ETCD=$ETCD_URL"
    sed 's/^/export /' <<<"$vars" >"$dir/env"
    echo "$vars"
    log "ready in $(((t2 - t0) / 1000000)) ms:$phases ($dir)"
}

case "$cmd" in
start) start ;;
stop) stop_all ;;
_watch) # internal: DIR OWNER_PID. Stops the rest when the owner exits; `stop` ends it.
    while kill -0 "$3" 2>/dev/null; do sleep 1; done
    SLUICE_KUBE_IN_WATCHDOG=1 stop_all
    ;;
*) usage ;;
esac
