//! What the controller and the autoscaler share: the operator's
//! [`Settings`] and the [`Context`] every reconcile and every scaling
//! decision reads. Both import from here; neither imports the other.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use sluice_api::ByteSize;
use sluice_api::names::FunctionRef;
use sluice_nats::Layout;
use sluice_nats::publish::Publisher;

use crate::metrics::Metrics;
use crate::module::ModuleFetcher;
use crate::resources::RuntimeTemplate;

/// The operator's settings that shape what it writes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The gateway's external base URL; `status.url` is it plus
    /// `/fn/<namespace>/<name>/`.
    pub gateway_url: String,
    /// How dedicated runtimes run.
    pub runtime: RuntimeTemplate,
    /// How runtimes are scaled.
    pub autoscaling: AutoscalerConfig,
    /// The largest `limits.memory` the runtimes take (their
    /// `--max-instance-memory`); a Function asking for more is
    /// `Ready=False`. `None`: not checked here (the runtime still refuses).
    pub max_instance_memory: Option<ByteSize>,
    /// Per-namespace prefix every trigger subject must start with
    /// (`--trigger-subject-prefix`). Default: none.
    pub trigger_scope: Option<sluice_api::TriggerScope>,
    /// The namespaces served (`--watch-namespace`). Default: all.
    pub scope: crate::scope::WatchScope,
    /// Deleting unreferenced modules (`--module-gc-after`).
    pub module_gc: crate::module_gc::ModuleGc,
    /// How long a new pool Function's `Ready` waits for the warm pool to
    /// compile its component ahead (`--compile-ahead-wait`,
    /// [`crate::compiled`]); zero never waits.
    pub compile_ahead_wait: Duration,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The connection `layout` is on, for the autoscaler's subscriptions.
    pub nats: async_nats::Client,
    pub layout: Layout,
    pub publisher: Publisher,
    pub fetcher: ModuleFetcher,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Metrics,
    /// [`crate::OperatorConfig::jetstream_storage_bound`].
    pub jetstream_storage_bound: Option<u64>,
    /// What the controller registered, for the autoscaler.
    pub registered: Registrations,
    /// The runtime pool's Deployment (`--pool-deployment`), followed for
    /// as long as the operator runs: the autoscaler sizes it, and a new
    /// pool Function's `Ready` waits for its compile only while it has a
    /// ready runtime.
    pub pool: Option<Store<Deployment>>,
    /// The components runtimes have compiled ahead ([`crate::compiled`]).
    pub compiled: crate::compiled::CompiledAhead,
}

impl Context {
    /// The pool's Deployment, if the operator follows a pool and it
    /// exists.
    pub fn pool_deployment(&self) -> Option<std::sync::Arc<Deployment>> {
        let target = self.settings.autoscaling.pool.as_ref()?;
        self.pool
            .as_ref()?
            .get(&ObjectRef::new(&target.name).within(&target.namespace))
    }

    /// Whether the runtime pool has a ready runtime; `false` when the
    /// operator does not follow the pool.
    pub fn pool_ready(&self) -> bool {
        self.pool_deployment()
            .and_then(|d| d.status.as_ref()?.ready_replicas)
            .is_some_and(|ready| ready > 0)
    }
}

/// Functions whose registry entry the controller has written (their
/// consumer made) since the autoscaler last looked, so that it can watch a
/// new pool function for its first invocation at once rather than from its
/// first queue reading, up to `--autoscale-interval` later.
#[derive(Debug, Default)]
pub struct Registrations {
    pending: std::sync::Mutex<Vec<FunctionRef>>,
    added: tokio::sync::Notify,
}

impl Registrations {
    /// `function`'s entry was written.
    pub fn push(&self, function: FunctionRef) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(function);
        self.added.notify_one();
    }

    /// Every function pushed since the last call, in order, once there is
    /// at least one. Cancel-safe: what it has not returned stays pending.
    pub async fn next(&self) -> Vec<FunctionRef> {
        loop {
            let pending = std::mem::take(
                &mut *self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if !pending.is_empty() {
                return pending;
            }
            self.added.notified().await;
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Default of `--autoscale-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How the autoscaler runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoscalerConfig {
    /// How often every queue is read. Default: [`DEFAULT_INTERVAL`].
    pub interval: Duration,
    /// The runtime pool's Deployment; `None` leaves the pool's size to
    /// someone else (pool functions still get `desiredReplicas`).
    pub pool: Option<PoolTarget>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            pool: None,
        }
    }
}

/// The Deployment of the shared runtime pool and its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolTarget {
    pub namespace: String,
    pub name: String,
    /// Fewest pool replicas, whatever its functions want. Default: `0`.
    pub min_replicas: u32,
    /// Most pool replicas. Default: `20`.
    pub max_replicas: u32,
}
