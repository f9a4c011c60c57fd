//! The Sluice operator, the only part of Sluice that talks to Kubernetes.
//!
//! It reconciles `Function` resources ([`controller`]): resolves each
//! module from a ConfigMap, a URL or an OCI registry ([`module`]), checks it
//! is a `wasi:http` component, stores it in the NATS module store, writes
//! the registry entry that gateways and runtimes follow, ensures the
//! function's JetStream consumer, owns the Deployment of a dedicated
//! function ([`resources`]), and reports in status conditions
//! ([`conditions`]), Events and metrics ([`metrics`]). The [`autoscaler`]
//! sizes runtime Deployments from queue depth, down to zero and back.
//! Replicas elect one leader on a `coordination.k8s.io` Lease
//! ([`leader`]); only the leader reconciles and scales.

pub mod api_keys;
pub mod autoscaler;
pub mod conditions;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod module;
pub mod resources;
pub mod scope;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;
use sluice_api::Function;
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_nats::publish::Publisher;
use sluice_serve::Admin;
use tokio::net::TcpListener;

pub use controller::Settings;
pub use leader::LeaderElection;

/// Everything the operator needs to start.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    pub nats_url: String,
    /// Credentials and TLS for NATS. Default: none.
    pub nats_security: sluice_nats::NatsSecurity,
    pub settings: Settings,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_listen: SocketAddr,
    /// `None` runs without leader election (one replica only).
    pub leader_election: Option<LeaderElection>,
    pub fetcher: module::FetcherConfig,
    /// Names this replica in Events and the Lease. Default: the host name.
    pub identity: String,
}

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Kubernetes(#[source] kube::Error),
    #[error(
        "the Function CRD is not installed in this cluster (apply crds/function.yaml, or install the Helm chart with crds.install=true)"
    )]
    CrdMissing,
    #[error(
        "the operator may not list Functions ({0}); apply its RBAC (charts/sluice/files/operator-rbac.yaml) and run it under that ServiceAccount"
    )]
    Forbidden(String),
    #[error(transparent)]
    Nats(#[from] sluice_nats::NatsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
}

/// Checks the cluster and NATS, then reconciles until `shutdown` resolves
/// (or this replica loses the leadership it held, an error: its work may
/// already be someone else's).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), OperatorError> {
    check_crd(&client, &config.settings.scope).await?;
    let nats =
        sluice_nats::connect(&config.nats_url, "sluice-operator", &config.nats_security).await?;
    let layout = Layout::ensure(nats.clone(), &LayoutConfig::default()).await?;
    let mut registry = Registry::with_prefix("sluice");
    let metrics = metrics::Metrics::register(&mut registry);
    let admin = Arc::new(Admin::new(registry));
    let listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: config.admin_listen,
            source,
        })?;
    let admin_service = admin.clone().spawn(listener);
    // A standby replica is healthy and ready: it is waiting its turn.
    admin.set_ready(true);
    let ctx = Arc::new(controller::Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "sluice-operator".into(),
                instance: Some(config.identity.clone()),
            },
        ),
        publisher: Publisher::new(layout.clone()),
        layout,
        fetcher: module::ModuleFetcher::new(config.fetcher.clone()),
        settings: config.settings.clone(),
        metrics,
        client: client.clone(),
        nats,
    });
    let result = match &config.leader_election {
        None => {
            tracing::info!("reconciling (no leader election)");
            lead(ctx, shutdown).await;
            Ok(())
        }
        Some(election) => leader::run_as_leader(client, election, &config.identity, ctx, shutdown)
            .await
            .map_err(OperatorError::from),
    };
    admin.set_ready(false);
    admin_service.shutdown().await;
    result
}

/// The leader's work until `shutdown`: reconciling Functions and scaling
/// their runtimes.
pub async fn lead(
    ctx: Arc<controller::Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt as _;
    let shutdown = shutdown.shared();
    tokio::join!(
        controller::run(ctx.clone(), shutdown.clone()),
        autoscaler::run(ctx, shutdown),
    );
}

/// Fails with a hint when the Function CRD is missing or the operator may
/// not read Functions.
async fn check_crd(client: &Client, scope: &scope::WatchScope) -> Result<(), OperatorError> {
    for functions in scope.apis::<Function>(client) {
        match functions
            .list_metadata(&ListParams::default().limit(1))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Err(OperatorError::CrdMissing),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(OperatorError::Forbidden(e.message));
            }
            Err(e) => return Err(OperatorError::Kubernetes(e)),
        }
    }
    Ok(())
}

/// Default of `--lease-duration`: how long a dead leader's Lease holds
/// before a standby takes over.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
