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

/// A free loopback port (bound, then released for a child to take).
pub fn free_port() -> u16 {
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
