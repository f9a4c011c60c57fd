//! Test support shared by Sluice's integration tests: real servers,
//! started on loopback for one test and stopped when dropped. Nothing here
//! ships.
//!
//! - [`NatsServer`]: `nats-server` with JetStream (`SLUICE_NATS_SERVER`,
//!   installed by `scripts/nats-server.sh`); [`LateNats`], one started
//!   after the part under test; [`NatsCluster`], three (or more) routed
//!   into a JetStream cluster on loopback.
//! - [`ControlPlane`]: etcd, kube-apiserver and kube-controller-manager
//!   (`SLUICE_KUBE_BIN`, built by `scripts/k8s/tools.sh`), with `kubectl`
//!   and `helm` pointed at it; [`helm`] alone for `lint` and `template`;
//!   with [`ControlPlane::start_with_node`], a real node besides.
//! - [`Kubelet`]: real `sluice-runtime` processes for the runtime
//!   Deployments of a control plane (which has no kubelet).
//! - [`http`]: a plain HTTP/1.1 client for loopback servers.
//! - [`prometheus`]: a Prometheus server scraping loopback targets, and
//!   promtool (`SLUICE_PROMETHEUS_BIN`, built by `scripts/prometheus.sh`).

pub mod http;
mod kube;
mod kubelet;
mod nats;
pub mod prometheus;
mod tls;

pub use kube::{ControlPlane, Node, SLUICE_NAMESPACE, helm, run_with_stdin, succeeded};
pub use kubelet::Kubelet;
pub use nats::{LateNats, NatsCluster, NatsServer, NatsUser, SecureNats};
pub use tls::TestCa;

/// A loopback TCP port free now, for a server that must be told its port
/// before it starts (a NATS cluster's routes, a restart on the same port).
///
/// Picked at random below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`; from 20000 up to 32768 when
/// unreadable), the range that outgoing connections and `bind(0)`
/// listeners take their ports from: between this call and the server's own
/// bind, none of the many connections a test opens can take it. A port is
/// never given twice in one process. Falls back to a `bind(0)` port when
/// no port below the range is free.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOWEST: u16 = 20000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let random = RandomState::new();
    if ephemeral > LOWEST {
        for attempt in 0_u32..1000 {
            let offset = random.hash_one(attempt) % u64::from(ephemeral - LOWEST);
            let port = LOWEST + u16::try_from(offset).unwrap_or(0);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The repository's root folder.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}
