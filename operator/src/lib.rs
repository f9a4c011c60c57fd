//! The Sluice operator, the only part of Sluice that talks to Kubernetes.
//!
//! It reconciles `Function` resources ([`controller`]): resolves each
//! module from a ConfigMap, a URL or an OCI registry ([`module`]), checks it
//! is a `wasi:http` component, stores it in the NATS module store, writes
//! the registry entry that gateways and runtimes follow, ensures the
//! function's JetStream consumer, owns the Deployment of a dedicated
//! function ([`resources`]), and reports in status conditions
//! ([`conditions`]), Events and metrics ([`metrics`]). The [`autoscaler`]
//! sizes runtime Deployments from queue depth, down to zero and back. Both
//! share the [`context`]: the settings and clients, nothing else.
//! Replicas elect one leader on a `coordination.k8s.io` Lease
//! ([`leader`]); only the leader reconciles and scales.

pub mod api_keys;
pub mod autoscaler;
pub mod compiled;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod module;
pub mod module_gc;
pub mod reflectors;
pub mod resources;
pub mod scope;
pub mod status;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;
use sluice_api::Function;
use sluice_nats::layout::{Layout, LayoutConfig, LayoutMetrics};
use sluice_nats::publish::Publisher;
use sluice_serve::Admin;
use tokio::net::TcpListener;

pub use context::Settings;
pub use error::{Error, OperatorError};
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
    /// Bytes of file storage JetStream may use, reported as
    /// `sluice_jetstream_storage_bound_bytes` when the account itself sets
    /// no limit ([`storage::bound`]). Default: none (not reported).
    pub jetstream_storage_bound: Option<u64>,
    /// The NATS layout's settings: the operator owns the layout, creating
    /// it and bringing it to these at start. Default: the defaults of
    /// [`LayoutConfig`].
    pub layout: LayoutConfig,
}

/// Serves its admin endpoints, checks the cluster, waits for NATS and the
/// layout (trying again with backoff while the server is unreachable, not
/// ready meanwhile, saying so in the log), then reconciles until
/// `shutdown` resolves (or this replica loses the leadership it held, an
/// error: its work may already be someone else's). Fails at once for what
/// waiting cannot fix: no CRD, no permission, credentials NATS refuses,
/// TLS.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), OperatorError> {
    use futures::FutureExt as _;
    let shutdown = shutdown.shared();
    let mut registry = Registry::with_prefix("sluice");
    let metrics = metrics::Metrics::register(&mut registry);
    let layout_metrics = LayoutMetrics::register(&mut registry);
    config.settings.module_gc.register(&mut registry);
    let admin = Arc::new(Admin::new(registry));
    let listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: config.admin_listen,
            source,
        })?;
    // Dropped (stopping it) if the start fails.
    let admin_service = admin.clone().spawn(listener);
    check_crd(&client, &config.settings.scope).await?;
    let connected = async {
        let nats = sluice_nats::connect_patiently(
            &config.nats_url,
            "sluice-operator",
            &config.nats_security,
        )
        .await?;
        admin.register(|registry| {
            let (name, help) = sluice_nats::CONNECTED_METRIC;
            let connection = nats.clone();
            sluice_serve::ScrapedGauge::register(registry, name, help, move || {
                sluice_nats::is_connected(&connection)
            });
        });
        // The operator owns the layout on a cluster: gateways (run with
        // --own-layout=false) and runtimes wait for it.
        let reconciled = sluice_nats::patiently("reconciling the layout", &config.nats_url, || {
            Layout::reconcile(nats.clone(), &config.layout)
        })
        .await?;
        layout_metrics.count(&reconciled.changes);
        let layout = reconciled.layout;
        Ok::<_, OperatorError>((nats, layout))
    };
    let (nats, layout) = tokio::select! {
        connected = connected => connected?,
        () = shutdown.clone() => {
            tracing::info!("stopped while waiting for NATS");
            admin_service.shutdown().await;
            return Ok(());
        }
    };
    // Followed by standbys too (one object): the leader's first reconciles
    // read it.
    let (pool, _pool_watch) = match &config.settings.autoscaling.pool {
        Some(target) => {
            let (store, watch) = reflectors::pool(&client, target);
            (Some(store), Some(watch))
        }
        None => (None, None),
    };
    // A standby replica is healthy and ready: it is waiting its turn.
    admin.set_ready(true);
    let ctx = Arc::new(context::Context {
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
        jetstream_storage_bound: config.jetstream_storage_bound,
        registered: context::Registrations::default(),
        pool,
        compiled: compiled::CompiledAhead::new(config.settings.compile_ahead_wait),
    });
    let result = match &config.leader_election {
        None => {
            tracing::info!("reconciling (no leader election)");
            leader::led(tokio::spawn(lead(ctx, shutdown)).await)
        }
        Some(election) => {
            leader::run_as_leader(client, election, &config.identity, ctx, shutdown).await
        }
    };
    admin.set_ready(false);
    admin_service.shutdown().await;
    result
}

/// The leader's work until `shutdown`: reconciling Functions and scaling
/// their runtimes.
pub async fn lead(
    ctx: Arc<context::Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt as _;
    let shutdown = shutdown.shared();
    ctx.metrics.leading(true);
    let watched = reflectors::per_scope(&ctx.client, &ctx.settings.scope);
    let stores = watched.iter().map(|(stores, _)| stores.clone()).collect();
    tokio::join!(
        controller::run(ctx.clone(), watched, shutdown.clone()),
        autoscaler::run(ctx.clone(), stores, shutdown.clone()),
        module_gc::run(ctx.clone(), shutdown.clone()),
        compiled::follow(ctx.clone(), shutdown.clone()),
        storage::run(
            ctx.layout.js.clone(),
            ctx.jetstream_storage_bound,
            ctx.metrics.clone(),
            shutdown,
        ),
    );
    ctx.metrics.leading(false);
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
