#!/usr/bin/env bash
# A real single-node Kubernetes cluster for end-to-end tests, on this
# machine only: the control plane of control-plane.sh (node mode: the API
# server on the node's bridge address, plus a scheduler), and a node made of
# containerd + runc, the CNI bridge plugin, kubelet, kube-proxy (iptables)
# and CoreDNS, with a loopback registry holding the images pods run.
#
#   cluster.sh start DIR   clean up leftovers, start everything, wait until
#                          the node is Ready, print env (also DIR/env)
#   cluster.sh stop DIR    stop everything and restore the host
#   cluster.sh clean       restore the host after a run that was killed
#                          (`start` does this first)
#
# `start` prints KEY=VALUE lines: KUBECONFIG, SLUICE_KUBE_BIN,
# SLUICE_KUBE_SERVER, SLUICE_NODE_REGISTRY (host:port of the registry
# kubelet pulls from), SLUICE_NODE_IP.
#
# The network exists only on this machine: pods sit on a bridge with the
# private range 10.244.0.0/24 and routes only to it and to the Service range
# 10.0.0.0/24 (no default route); the host forwards nothing between the
# bridge and any other interface (chain SLUICE-NODE-FENCE); CoreDNS answers
# for cluster.local only (it has no `forward` plugin); the API server
# reaches the kubelet by its InternalIP. So no test traffic can leave the
# machine.
#
# Only one node per machine: the bridge, ports 10250/10248/10249/10256,
# 53 and 5000 on the node address, and a few paths kubelet and
# containerd insist on are fixed. Must run as root.
#
# Environment:
#   SLUICE_KUBE_BIN        the binaries (tools.sh); default: tools.sh builds them
#   SLUICE_KUBE_OWNER_PID  a watchdog stops the cluster once that process is gone
#   SLUICE_NATS_SERVER     the nats-server binary for the NATS image
#                          (default: scripts/nats-server.sh installs it)
#   SLUICE_CONTAINERS      buildah storage holding Sluice's images, which are
#                          pushed to the registry if present
#                          (default: .sluice/containers, as scripts/images.sh)
#   SLUICE_IMAGES_FROM     the registry prefix those images were built under
#                          (default: ghcr.io/sluice-dev, scripts/images.sh's)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
BRIDGE=sluicebr0
FENCE=SLUICE-NODE-FENCE
# On the node address, not loopback: pods (the operator pulling OCI
# modules) reach it as well as containerd.
REGISTRY=$NODE_IP:5000
NODE_NAME=sluice-node
# What the host keeps of a running (or crashed) node: the baseline to restore
# and the folder of the node that runs.
STATE=/run/sluice-node
# Paths kubelet and containerd write whatever their configuration says.
FIXED_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /run/containerd /etc/cni/net.d /var/lib/containers/cache /var/lib/cni)
# Sysctls that the node changes: ip_forward here, the rest by kubelet.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops net.bridge.bridge-nf-call-iptables)
NODE_COMPONENTS=(kube-proxy kubelet coredns containerd registry watchdog)

log() { echo "cluster.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

cmd=${1:-}
case "$cmd" in
start | stop) [[ $# -eq 2 ]] || usage ;;
_watch) [[ $# -eq 3 ]] || usage ;;
clean) [[ $# -eq 1 ]] || usage ;;
*) usage ;;
esac
[[ $(id -u) -eq 0 ]] || die "must run as root (it runs kubelet and containerd)"
if [[ $cmd != clean ]]; then
    mkdir -p "$2"
    dir=$(cd "$2" && pwd)
fi
# One node per machine: start, stop, clean and a watchdog's stop take turns
# (a test binary's next start waits for the last one's watchdog to finish).
# Spawned processes close fd 8, or they would hold the lock for their life.
lock() {
    exec 8>/run/sluice-node.lock
    flock 8
}
[[ $cmd == _watch ]] || lock

# ---------------------------------------------------------------- processes

live_pid() { # component [dir]
    local d=${2:-$dir} f pid
    f="$d/node/$1.pid"
    [[ -f "$f" ]] || return 1
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    # Empty for a moment while the process execs (it is still ours then).
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ -z $cmdline || $cmdline == *"$d"* ]] || return 1
    echo "$pid"
}

# spawn NAME CMD...: detached, its pid written by the process itself (a pid
# taken from the launching shell was once wrong and left two containerds
# blocked on one lock).
spawn() {
    local name=$1
    shift
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/node/$name.pid" "$@" \
        </dev/null >"$dir/node/$name.log" 2>&1 8>&- &
    local i
    for i in $(seq 50); do
        [[ -s "$dir/node/$name.pid" ]] && return 0
        sleep 0.02
    done
    die "$name did not start"
}

check_alive() { # component
    live_pid "$1" >/dev/null && return 0
    log "$1 exited; last lines of $dir/node/$1.log:"
    tail -n 30 "$dir/node/$1.log" >&2 || true
    return 1
}

# wait_for WHAT SECONDS COMPONENT CMD...: until CMD succeeds.
wait_for() {
    local what=$1 limit=$((SECONDS + $2)) component=$3
    shift 3
    until "$@" >/dev/null 2>&1; do
        [[ -z $component ]] || check_alive "$component" || die "$what: $component died"
        ((SECONDS < limit)) || die "timed out waiting for $what"
        sleep 0.1
    done
}

stop_pids() { # pid...: TERM, KILL after 10 s, wait.
    local pid deadline=$((SECONDS + 10))
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null; do
            ((SECONDS < deadline)) || kill -KILL "$pid" 2>/dev/null || true
            sleep 0.05
        done
    done
}

# ---------------------------------------------------------------- host state

# What the host had before the first node: restored by clean. Kept across a
# crash, so that a crashed run's changes are not mistaken for the baseline.
record_baseline() {
    mkdir -p "$STATE"
    [[ -f "$STATE/baseline" ]] && return 0
    local s p
    {
        for s in "${SYSCTLS[@]}"; do
            p=/proc/sys/${s//.//}
            [[ -f $p ]] && echo "sysctl $s $(<"$p")"
        done
        for p in "${FIXED_PATHS[@]}"; do
            [[ -e $p ]] && echo "path $p"
        done
    } >"$STATE/baseline.tmp"
    mv "$STATE/baseline.tmp" "$STATE/baseline"
}

# Undoes everything a node changes on the host, whether it stopped or
# crashed; harmless when nothing is left.
clean_host() {
    local d
    if [[ -f "$STATE/dir" ]]; then
        d=$(<"$STATE/dir")
        [[ -d $d ]] && stop_node_processes "$d"
    fi
    # Anything still in the pods' cgroups (containers of a killed node).
    local procs
    procs=$(find /sys/fs/cgroup/ -path '*kubepods*' -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
    # shellcheck disable=SC2086
    [[ -z $procs ]] || kill -KILL $procs 2>/dev/null || true
    pkill -KILL -f 'containerd-shim-runc-v2 .*-namespace k8s.io' 2>/dev/null || true
    sleep 0.2
    # Mounts: the pods' volumes and rootfs, network namespaces, shm.
    local m
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^(/run/containerd|/var/lib/kubelet|/run/sluice-node|${d:-/nonexistent})" | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    # cgroups: deepest first, in every v1 hierarchy (and v2 if mounted).
    find /sys/fs/cgroup/ -depth -type d -path '*kubepods*' -exec rmdir {} + 2>/dev/null || true
    # Network: the pods' veths go with their namespaces; the bridge and our
    # routes, then the iptables chains of kube-proxy, the CNI plugins and ours.
    ip link del "$BRIDGE" 2>/dev/null || true
    local t ipt chains c
    for ipt in iptables ip6tables; do
        command -v "$ipt-save" >/dev/null || continue
        if [[ $("$ipt-save" 2>/dev/null) =~ KUBE-|CNI-|SLUICE-NODE ]]; then
            # Every rule that names one of the chains goes (a restore
            # flushes the tables it is given), then the chains themselves:
            # iptables-nft's restore leaves empty user chains behind.
            "$ipt-save" | grep -vE 'KUBE-|CNI-|SLUICE-NODE' | "$ipt-restore"
            for t in filter nat mangle raw; do
                chains=$("$ipt" -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|SLUICE-NODE)/ {print $2}')
                for c in $chains; do "$ipt" -t "$t" -F "$c"; done
                for c in $chains; do "$ipt" -t "$t" -X "$c"; done
            done
        fi
    done
    # Sysctls and paths as the baseline had them.
    if [[ -f "$STATE/baseline" ]]; then
        local kind a b
        while read -r kind a b; do
            [[ $kind == sysctl ]] && echo "$b" >"/proc/sys/${a//.//}" 2>/dev/null || true
        done <"$STATE/baseline"
        for t in "${FIXED_PATHS[@]}"; do
            grep -qxF "path $t" "$STATE/baseline" || rm -rf "$t"
        done
        rm -f "$STATE/baseline"
    fi
    rm -f /etc/cni/net.d/cni.lock
    rm -rf "$STATE"
}

stop_node_processes() { # dir
    local d=$1 c pid pids=()
    # kubelet first, so that it restarts nothing while the rest stops.
    for c in watchdog kubelet kube-proxy coredns; do
        [[ $c == watchdog && "${SLUICE_NODE_IN_WATCHDOG:-}" == 1 ]] && continue
        pid=$(live_pid "$c" "$d") && pids+=("$pid")
    done
    ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
    # The containers, through their cgroups, then containerd and its shims.
    local procs
    procs=$(find /sys/fs/cgroup/ -path '*kubepods*' -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
    # shellcheck disable=SC2086
    [[ -z $procs ]] || kill -KILL $procs 2>/dev/null || true
    pids=()
    for c in containerd registry; do
        pid=$(live_pid "$c" "$d") && pids+=("$pid")
    done
    ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $d/" 2>/dev/null || true
    SLUICE_KUBE_IN_WATCHDOG=1 "$here/control-plane.sh" stop "$d/control-plane" >/dev/null 2>&1 || true
    rm -f "$d"/node/*.pid
}

# ---------------------------------------------------------------- network

net_up() {
    echo 1 >/proc/sys/net/ipv4/ip_forward
    # A MAC address of its own: a bridge without one takes the lowest of
    # its ports', so each pod's veth coming or going could change it. Pods
    # that had the old one cached (the gateways answering the host) then
    # sent to a MAC nobody had until their ARP entry was checked again,
    # and TCP resent: wakes from zero of 0.9-3.5 s instead of 0.3 s, each
    # 0.6, 1.4 or 3.0 s (TCP's 0.2 s retransmission timeout doubling) late
    # after the runtime had taken its invocation. Locally administered.
    ip link add "$BRIDGE" address 02:53:4c:00:00:01 type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # Service addresses are answered by kube-proxy's rules on this host;
    # the route keeps them on the bridge, never towards the default gateway.
    ip route add "$SERVICE_CIDR" dev "$BRIDGE"
    # Kube-proxy's Service rules see bridged pod-to-pod traffic only with this.
    if [[ -f /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
        echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    fi
    # Nothing is forwarded between the bridge and any other interface.
    iptables -N "$FENCE"
    iptables -A "$FENCE" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
    iptables -A "$FENCE" ! -i "$BRIDGE" -o "$BRIDGE" -j DROP
    iptables -I FORWARD 1 -j "$FENCE"
}

# ---------------------------------------------------------------- images

buildah_() {
    buildah --root "$dir/images/storage" --runroot "$dir/images/run" --storage-driver vfs "$@"
}

# image NAME:TAG ENTRYPOINT FILE:PATH...: a FROM-scratch image pushed to
# the registry; FILE is copied to PATH (mode 755).
image() {
    local ref=$1 entrypoint=$2 c
    shift 2
    c=$(buildah_ from --quiet scratch)
    local f
    for f in "$@"; do
        buildah_ copy --chmod 755 "$c" "${f%%:*}" "${f#*:}" >/dev/null
    done
    buildah_ config --entrypoint "[\"$entrypoint\"]" --env PATH=/bin --user 65532:65532 "$c"
    buildah_ commit --quiet --format oci "$c" "$REGISTRY/$ref" >/dev/null
    buildah_ rm "$c" >/dev/null
    buildah_ push --quiet --tls-verify=false "$REGISTRY/$ref" "docker://$REGISTRY/$ref"
}

push_images() {
    mkdir -p "$dir/images"
    local nats=${SLUICE_NATS_SERVER:-}
    if [[ -z $nats ]]; then
        # shellcheck source=../nats-server.sh
        nats=$(cd "$repo" && . scripts/nats-server.sh >/dev/null && echo "$SLUICE_NATS_SERVER")
    fi
    local nats_version
    nats_version=$("$nats" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
    image pause:3.10 /bin/pause "$BIN/sluice-pause:/bin/pause"
    image "nats:$nats_version" /bin/nats-server "$nats:/bin/nats-server"
    image wget:1 /bin/wget "$BIN/sluice-wget:/bin/wget"
    # Sluice's images, under the names scripts/images.sh gives them (the
    # same storage also holds copies other tests pushed and pulled back).
    local containers=${SLUICE_CONTAINERS:-$repo/.sluice/containers} name
    local built=${SLUICE_IMAGES_FROM:-ghcr.io/sluice-dev}
    if [[ -d $containers/storage ]]; then
        local sb=(buildah --root "$containers/storage" --runroot "$containers/run" --storage-driver vfs)
        for name in $("${sb[@]}" images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep -F "$built/sluice-" || true); do
            "${sb[@]}" push --quiet --tls-verify=false "$name" "docker://$REGISTRY/${name##*/}"
        done
    fi
    rm -rf "$dir/images"
    echo "$nats_version" >"$dir/node/nats-version"
}

# ---------------------------------------------------------------- node

write_configs() {
    local n="$dir/node"
    mkdir -p "$n/cni/net.d" "$n/containerd/certs.d/$REGISTRY" "$n/registry" "$n/pod-logs"
    cat >"$n/registry/config.yml" <<EOF
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $n/registry/data }
  delete: { enabled: true }
http:
  addr: $REGISTRY
EOF
    cat >"$n/containerd/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
EOF
    # containerd 1.6 (Debian). restrict_oom_score_adj: this machine's root
    # lacks CAP_SYS_RESOURCE, so runc cannot give a sandbox a negative
    # oom_score_adj (-998) and every sandbox would fail to start.
    cat >"$n/containerd/config.toml" <<EOF
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$n/containerd/containerd.sock"
[ttrpc]
  address = "$n/containerd/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$REGISTRY/pause:3.10"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$n/containerd/certs.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
EOF
    # No default route in pods: only the pod range (the bridge) and the
    # Service range.
    cat >"$n/cni/net.d/10-sluice.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sluice",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "isDefaultGateway": false,
      "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$n/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    cat >"$n/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host: kubelet >= 1.35 refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /
enforceNodeAllocatable: [pods]
containerRuntimeEndpoint: unix://$n/containerd/containerd.sock
imageServiceEndpoint: unix://$n/containerd/containerd.sock
runtimeRequestTimeout: 5m
serializeImagePulls: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $dir/control-plane/pki/kubelet.crt
tlsPrivateKeyFile: $dir/control-plane/pki/kubelet.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $dir/control-plane/pki/ca.crt }
authorization: { mode: Webhook }
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
# No host resolv.conf in pods: nothing to ask outside the cluster.
resolvConf: ""
podLogsDir: $n/pod-logs
volumePluginDir: $n/kubelet/volume-plugins
staticPodPath: ""
failSwapOn: false
protectKernelDefaults: false
# A busy test machine must not evict the pods under test, nor taint the
# node with disk-pressure (which leaves every new pod Pending): the
# thresholds are absolute, since 1 % of a 252 GB disk is 2.5 GB and a CI
# machine's disk, after the workspace's builds, can have less free than that.
evictionHard: { memory.available: 50Mi, nodefs.available: 100Mi, imagefs.available: 100Mi, nodefs.inodesFree: 1% }
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 110
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
fileCheckFrequency: 20s
serverTLSBootstrap: false
rotateCertificates: false
EOF
    cat >"$n/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: $dir/control-plane/kube-proxy.kubeconfig }
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: { localhostNodePorts: false, masqueradeAll: false, syncPeriod: 10s, minSyncPeriod: 0s }
# 0: leave the host's conntrack sysctls alone.
conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
oomScoreAdj: 0
EOF
    cat >"$n/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $dir/control-plane/coredns.kubeconfig sluice-test
        pods insecure
        ttl 5
    }
    cache 5
}
EOF
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$dir/control-plane/kubeconfig" "$@"; }

http_ok() { # host port path: a 200 from a plain HTTP endpoint on loopback
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "GET $3 HTTP/1.0\r\nHost: $1\r\n\r\n" >&3 && head -1 <&3 | grep -q " 200"' _ "$@"
}

node_ready() {
    [[ $(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

start_node() {
    local n="$dir/node"
    spawn containerd containerd --config "$n/containerd/config.toml"
    wait_for containerd 30 containerd test -S "$n/containerd/containerd.sock"
    kubectl_ apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "sluice:coredns" }
rules:
- { apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch] }
- { apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "sluice:coredns" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "sluice:coredns" }
subjects: [ { apiGroup: rbac.authorization.k8s.io, kind: User, name: "sluice:coredns" } ]
EOF
    spawn coredns "$BIN/coredns" -conf "$n/Corefile"
    spawn kubelet "$BIN/kubelet" --config="$n/kubelet-config.yaml" \
        --kubeconfig="$dir/control-plane/kubelet.kubeconfig" \
        --root-dir="$n/kubelet/root" --cert-dir="$n/kubelet/pki" \
        --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
    spawn kube-proxy "$BIN/kube-proxy" --config="$n/kube-proxy-config.yaml" --v=1
    wait_for "node Ready" 120 kubelet node_ready
    wait_for "CoreDNS ready" 60 coredns http_ok 127.0.0.1 18181 /ready
    check_alive kube-proxy
}

# ---------------------------------------------------------------- commands

start() {
    [[ -z $(live_pid kubelet || true) ]] || die "already running in $dir (run: $0 stop $dir)"
    local b
    for b in containerd runc conntrack iptables buildah docker-registry; do
        command -v "$b" >/dev/null && continue
        log "installing the node's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            containerd runc conntrack iptables containernetworking-plugins buildah docker-registry >/dev/null
        break
    done
    [[ -x /usr/lib/cni/bridge ]] || die "/usr/lib/cni/bridge missing (apt-get install containernetworking-plugins)"
    if [[ -z "${SLUICE_KUBE_BIN:-}" ]]; then
        SLUICE_KUBE_BIN=$("$here/tools.sh")
        SLUICE_KUBE_BIN=${SLUICE_KUBE_BIN#SLUICE_KUBE_BIN=}
    fi
    BIN=$SLUICE_KUBE_BIN
    for b in kubelet kube-proxy kube-scheduler coredns sluice-pause sluice-wget; do
        [[ -x "$BIN/$b" ]] || die "$BIN/$b missing (scripts/k8s/tools.sh builds it)"
    done

    local t0=$SECONDS phases="" t1=$SECONDS
    phase() { phases+=" $1 $((SECONDS - t1))s"; t1=$SECONDS; }
    clean_host
    record_baseline
    echo "$dir" >"$STATE/dir"
    mkdir -p "$dir/node"
    trap 'log "start failed: cleaning up"; stop_node_processes "$dir"; clean_host' EXIT
    if [[ -n "${SLUICE_KUBE_OWNER_PID:-}" ]]; then
        kill -0 "$SLUICE_KUBE_OWNER_PID" || die "SLUICE_KUBE_OWNER_PID=$SLUICE_KUBE_OWNER_PID is not running"
        spawn watchdog bash "${BASH_SOURCE[0]}" _watch "$dir" "$SLUICE_KUBE_OWNER_PID"
    fi
    net_up
    write_configs
    spawn registry docker-registry serve "$dir/node/registry/config.yml"
    wait_for registry 30 registry http_ok "$NODE_IP" 5000 /v2/
    phase network+registry
    push_images
    phase images
    SLUICE_KUBE_NODE_IP=$NODE_IP SLUICE_KUBE_BIN=$BIN SLUICE_KUBE_OWNER_PID= \
        "$here/control-plane.sh" start "$dir/control-plane" >/dev/null 8>&-
    phase control-plane
    start_node
    phase node
    trap - EXIT

    local vars
    vars="KUBECONFIG=$dir/control-plane/kubeconfig
SLUICE_KUBE_BIN=$BIN
SLUICE_KUBE_SERVER=$(sed -n 's/^export SLUICE_KUBE_SERVER=//p' "$dir/control-plane/env")
SLUICE_NODE_REGISTRY=$REGISTRY
SLUICE_NODE_IP=$NODE_IP
SLUICE_NODE_NATS_VERSION=$(<"$dir/node/nats-version")"
    sed 's/^/export /' <<<"$vars" >"$dir/env"
    echo "$vars"
    log "node Ready in $((SECONDS - t0)) s:$phases ($dir)"
}

case "$cmd" in
start) start ;;
stop)
    stop_node_processes "$dir"
    clean_host
    ;;
clean) clean_host ;;
_watch) # internal: DIR OWNER_PID. Stops the cluster once the owner exits.
    while kill -0 "$3" 2>/dev/null; do sleep 1; done
    lock
    SLUICE_NODE_IN_WATCHDOG=1 stop_node_processes "$dir"
    clean_host
    ;;
esac
