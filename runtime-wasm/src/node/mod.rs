//! A runtime node (`sluice-runtime --nats URL`): follows the registry and
//! runs a worker per function on its durable consumer, started by the
//! function's first wake ([`wake`]); the function's component is loaded by
//! digest when an invocation first needs it ([`loader`]). So a function
//! registered and never invoked costs a pool node its registry entry
//! alone. Shutting down stops every worker's pulling and waits for what
//! they hold: nothing in flight is lost.

mod cancel;
mod direct;
mod loader;
mod ordered;
mod slots;
mod wake;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use sluice_api::names::{CANCEL_SUBJECTS, FunctionRef};
use sluice_api::{FunctionSpec, Placement, RegistryEntry};
use sluice_nats::layout::Layout;
use sluice_nats::registry::{RegistryEvent, RegistryWatcher};
use sluice_nats::{NatsError, NatsSecurity, PAYLOAD_HEADROOM};
use sluice_serve::{Admin, Service};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::callback::Callbacks;
use crate::metrics::Metrics;
use crate::{Runtime, RuntimeConfig, RuntimeError};
use loader::{Loader, Served};
use worker::{Shared, Worker};

/// Default of [`NodeConfig::admin_listen`] (and `sluice-runtime
/// --admin-listen`): beside the gateway's 9090.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

/// Default folder of precompiled components: `sluice-artifacts` in the
/// system's temporary directory.
pub fn default_artifacts_dir() -> PathBuf {
    std::env::temp_dir().join("sluice-artifacts")
}

/// Everything a runtime node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub nats_url: String,
    /// Credentials and TLS for NATS. Default: none.
    pub nats_security: NatsSecurity,
    /// Serve only this function (dedicated placement); `None` serves every
    /// function of the pool.
    pub function: Option<FunctionRef>,
    /// Without `function`, serve `placement: dedicated` functions too, as
    /// local mode does: its one process runs everything. Default: false.
    pub pool_serves_dedicated: bool,
    /// Where precompiled components are kept; `None` keeps none.
    pub artifacts: Option<PathBuf>,
    /// Load components other runtimes compiled from the shared bucket
    /// (`sluice-artifacts`), and store there what this one compiles (only
    /// with `artifacts` or `artifacts_in_memory`). Its content is run as
    /// machine code: keep it on only where no one but Sluice's runtimes may
    /// publish to `$O.sluice-artifacts.>` (the chart's NATS permissions).
    /// Default: true.
    pub shared_artifacts: bool,
    /// Without `artifacts`, still use the shared bucket (with
    /// `shared_artifacts`), loading its artifacts straight from memory: for
    /// a pod with no writable folder, which then needs no volume (the
    /// kubelet starts a pod with volumes only once its volume manager has
    /// seen them mounted, about 300 ms later). Default: false.
    pub artifacts_in_memory: bool,
    /// A pool node (no `function`) compiles each component registered,
    /// dedicated functions' included, ahead of its first invocation and
    /// stores it in the shared bucket (with `shared_artifacts` only), one
    /// at a time in the background and only while no invocation waits for
    /// a load, holding it in memory while the component cache has room
    /// to spare (and the same with one the bucket holds already): a
    /// function's first invocation then finds it loaded, or loads it
    /// instead of compiling; one arriving while its component compiles
    /// ahead takes the compiled bytes as that compile ends. Default: true.
    pub precompile_registered: bool,
    /// Where `/healthz`, `/readyz` and `/metrics` are served. Default:
    /// [`DEFAULT_ADMIN_LISTEN`].
    pub admin_listen: SocketAddr,
    pub runtime: RuntimeConfig,
    /// Longest a stopping node takes, from the stop to its exit: held
    /// invocations get what is left of it after [`CALLBACK_SHARE`], then
    /// callbacks the rest; an invocation still running at its end is left
    /// unacknowledged for JetStream to deliver again elsewhere. Set it
    /// within the pod's `terminationGracePeriodSeconds` (the chart passes
    /// that less 5 s). Default: [`DEFAULT_DRAIN_GRACE`].
    pub drain_grace: Duration,
}

/// Default of [`NodeConfig::drain_grace`]: within Kubernetes' default
/// 30 s termination grace period.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(25);

impl NodeConfig {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_security: NatsSecurity::default(),
            function: None,
            pool_serves_dedicated: false,
            artifacts: None,
            shared_artifacts: true,
            artifacts_in_memory: false,
            precompile_registered: true,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            runtime: RuntimeConfig::default(),
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot subscribe to the cancel subjects ({CANCEL_SUBJECTS}): {0}")]
    Cancels(#[source] async_nats::SubscribeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub admin_addr: SocketAddr,
    admin: Arc<Admin>,
    service: Service,
    shared: Arc<Shared>,
}

impl Node {
    /// Whether this node serves `function` (its worker started or not).
    pub fn serves(&self, function: &FunctionRef) -> bool {
        self.shared.wakes.serves(function)
    }

    /// What `/metrics` answers now.
    pub fn metrics_text(&self) -> String {
        self.admin.encode_metrics()
    }

    /// Stops pulling, finishes and acknowledges what is held, then returns.
    pub async fn shutdown(self) {
        self.service.shutdown().await;
    }

    /// Waits until the node stops (it stops only by `shutdown`).
    pub async fn wait(&mut self) {
        self.service.wait().await;
    }
}

/// Serves the admin endpoints (not ready), waits for NATS and the layout
/// (trying again with backoff while the server is unreachable, saying so
/// in the log), then follows the registry. Fails at once only for what
/// waiting cannot fix: the admin listener, credentials NATS refuses, TLS,
/// the engine.
pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
    let mut registry = Registry::with_prefix("sluice");
    let metrics = Metrics::register(&mut registry);
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| NodeError::Listen {
            addr: config.admin_listen,
            source,
        })?;
    let admin = Arc::new(Admin::new(registry));
    // Dropped (stopping it) if the start fails.
    let admin_service = admin.clone().spawn(admin_listener);
    tracing::info!(admin = %admin_addr, nats = %sluice_nats::redacted(&config.nats_url), "connecting to NATS");
    let client =
        sluice_nats::connect_patiently(&config.nats_url, "sluice-runtime", &config.nats_security)
            .await?;
    tracing::info!("connected to NATS");
    let mut config = config;
    // A response travels as one NATS message, and is stored in its record
    // as base64: both must fit the server's max_payload.
    let fits = client
        .server_info()
        .max_payload
        .saturating_sub(PAYLOAD_HEADROOM)
        / 4
        * 3;
    if config.runtime.max_response_body > fits {
        tracing::warn!(
            max_payload = client.server_info().max_payload,
            max_response_body = fits,
            "lowering the response limit to what the NATS server's max_payload carries"
        );
        config.runtime.max_response_body = fits;
    }
    // The layout's owner (the operator, or a gateway) creates it.
    let layout = sluice_nats::patiently("opening the layout", &config.nats_url, || {
        Layout::open(client.clone())
    })
    .await?;
    let mut runtime_config = config.runtime.clone();
    // The loader compiles functions side by side, each on one CPU.
    runtime_config.parallel_compilation = false;
    let runtime = tokio::task::spawn_blocking(move || Runtime::new(runtime_config))
        .await
        .map_err(|e| RuntimeError::Engine(format!("engine task failed: {e}")))??;
    tracing::info!("layout opened, engine ready");
    let callbacks = Callbacks::new(config.runtime.egress.clone());
    admin.register(|registry| {
        crate::metrics::register_instances(registry, &runtime);
        let (name, help) = sluice_nats::CONNECTED_METRIC;
        let connection = client.clone();
        sluice_serve::ScrapedGauge::register(registry, name, help, move || {
            sluice_nats::is_connected(&connection)
        });
        if let Some(budget) = runtime.memory_budget() {
            Metrics::register_memory_budget(registry, budget);
        }
        Metrics::register_callbacks(registry, &callbacks);
    });
    let watcher = RegistryWatcher::new(layout.functions.clone());
    let running = Arc::new(cancel::Running::default());
    cancel::listen(client.clone(), Arc::downgrade(&running))
        .await
        .map_err(NodeError::Cancels)?;
    let loader = Arc::new(Loader::new(
        runtime.clone(),
        layout.clone(),
        config.artifacts.clone(),
        config.shared_artifacts && (config.artifacts.is_some() || config.artifacts_in_memory),
        config.precompile_registered && config.function.is_none(),
        metrics.clone(),
    ));
    let (starts, start_requests) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        runtime,
        layout,
        client,
        metrics,
        callbacks,
        running,
        lines: direct::Lines::default(),
        wakes: wake::Wakes::new(starts),
    });
    let subjects = wake::subjects(config.function.as_ref());
    let waking = tokio::spawn(wake::run(shared.clone(), subjects.clone()));
    let reporting = tokio::spawn(direct::report(shared.clone()));
    let node = NodeLoop {
        shared: shared.clone(),
        subjects,
        caught_up: false,
        only: config.function,
        drain_grace: config.drain_grace,
        pool_serves_dedicated: config.pool_serves_dedicated,
        loader,
        workers: HashMap::new(),
        failed: HashMap::new(),
        retired: Vec::new(),
        admin: admin.clone(),
    };
    let service = Service::spawn(|stop| async move {
        node.run(watcher, start_requests, stop).await;
        waking.abort();
        reporting.abort();
        admin_service.shutdown().await;
    });
    Ok(Node {
        admin_addr,
        admin,
        service,
        shared,
    })
}

struct NodeLoop {
    shared: Arc<Shared>,
    /// The invocation subjects this node serves ([`wake::subjects`]).
    subjects: Vec<String>,
    /// Whether the registry as it was at start has been read.
    caught_up: bool,
    only: Option<FunctionRef>,
    pool_serves_dedicated: bool,
    loader: Arc<Loader>,
    /// Every function served here: its worker once woken ([`wake`]).
    workers: HashMap<FunctionRef, (RegistryEntry, Option<Worker>)>,
    /// Entries that could not be served yet (over this node's limits);
    /// tried again every [`RETRY_EVERY`].
    failed: HashMap<FunctionRef, RegistryEntry>,
    /// Replaced or removed workers finishing what they hold.
    retired: Vec<Worker>,
    admin: Arc<Admin>,
    drain_grace: Duration,
}

/// How often entries that could not be served are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// The part of the drain kept for callbacks of what finished last (one
/// delivery's attempt takes at most 10 s).
const CALLBACK_SHARE: Duration = Duration::from_secs(10);

impl NodeLoop {
    async fn run(
        mut self,
        mut watcher: RegistryWatcher,
        mut start_requests: mpsc::UnboundedReceiver<FunctionRef>,
        mut shutdown: oneshot::Receiver<()>,
    ) {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = watcher.next() => self.apply(event).await,
                Some(function) = start_requests.recv() => self.wake_up(&function),
                _ = retry.tick() => self.retry_failed().await,
                _ = &mut shutdown => break,
            }
        }
        self.admin.set_ready(false);
        tracing::info!(
            functions = self.workers.len(),
            "draining: finishing held invocations"
        );
        let mut workers: Vec<_> = self.workers.drain().filter_map(|(_, (_, w))| w).collect();
        workers.append(&mut self.retired);
        let deadline = Instant::now() + self.drain_grace;
        for worker in &workers {
            worker.stop();
        }
        let held = deadline - CALLBACK_SHARE.min(self.drain_grace / 2);
        let joined = tokio::time::timeout_at(held, async {
            for worker in workers {
                worker.join().await;
            }
        });
        if joined.await.is_err() {
            tracing::warn!(
                drain_grace = ?self.drain_grace,
                "invocations still running at the end of the drain are left unacknowledged: JetStream delivers them again elsewhere"
            );
        }
        // Acknowledgements are not confirmed one by one: make sure the
        // server has them all before the connection goes.
        if let Err(e) = sluice_nats::round_trip(&self.shared.client, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "the last acknowledgements may not have arrived; their messages will be redelivered");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let abandoned = self.shared.callbacks.drain(left).await;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "callbacks still failing at the end of the drain ({left:?} for them) are given up; their records stay in sluice-results"
            );
        }
    }

    async fn apply(&mut self, event: RegistryEvent) {
        match event {
            // Ready once every function registered at start is served or
            // known to have failed (and is being retried).
            RegistryEvent::CaughtUp => {
                self.admin.set_ready(true);
                self.caught_up = true;
                // What was queued before this node knew its functions woke
                // nobody: ask the stream once for all of them.
                let (shared, subjects) = (self.shared.clone(), self.subjects.clone());
                tokio::spawn(async move { wake::sweep_all(&shared, &subjects).await });
            }
            RegistryEvent::Removed { function, .. } => {
                if self.wanted(&function) {
                    self.stop_serving(&function, "removed from the registry; stopping");
                }
            }
            RegistryEvent::Put { entry, .. } if !self.wanted(&entry.function) => {}
            RegistryEvent::Put { entry, .. } if !self.serves(&entry.spec) => {
                // Its own runtime, started at its first invocation, loads
                // what this node compiled.
                self.loader
                    .precompile(&entry.function, &entry.module_digest);
                self.stop_serving(
                    &entry.function,
                    "placement: dedicated; leaving it to its own runtime",
                );
            }
            RegistryEvent::Put { entry, .. } => self.deploy(*entry),
        }
    }

    /// Whether this node may serve `function` at all (`--function` names one).
    fn wanted(&self, function: &FunctionRef) -> bool {
        self.only.as_ref().is_none_or(|only| only == function)
    }

    /// Whether this node serves a function of the pool it was not started
    /// for (`--function` picks its one function before this).
    fn serves(&self, spec: &FunctionSpec) -> bool {
        self.only.is_some() || self.pool_serves_dedicated || spec.placement == Placement::Pool
    }

    fn stop_serving(&mut self, function: &FunctionRef, why: &str) {
        self.failed.remove(function);
        self.shared.wakes.forget(function);
        if let Some((_, worker)) = self.workers.remove(function) {
            tracing::info!(%function, "{why}");
            if let Some(worker) = worker {
                self.retire(worker);
            }
        }
    }

    async fn retry_failed(&mut self) {
        let failed: Vec<_> = self.failed.drain().map(|(_, entry)| entry).collect();
        for registered in failed {
            self.deploy(registered);
        }
    }

    /// Serves `registered`, replacing the version served so far: a worker
    /// at once for a dedicated node's function (started because it has
    /// work) or in place of a running one, else at the function's first
    /// wake. One over this node's limits is tried again later.
    fn deploy(&mut self, registered: RegistryEntry) {
        let function = registered.function.clone();
        if self
            .workers
            .get(&function)
            .is_some_and(|(current, _)| *current == registered)
        {
            return;
        }
        // What can never serve is refused before the component loads.
        if let Err(e) = self.shared.runtime.check_limits(&registered.spec) {
            tracing::error!(%function, digest = %registered.module_digest, error = %e, "not serving it yet; trying again in {RETRY_EVERY:?}");
            self.failed.insert(function, registered);
            return;
        }
        self.failed.remove(&function);
        tracing::info!(%function, digest = %registered.module_digest, "serving");
        self.loader.precompile(&function, &registered.module_digest);
        let awake = self.only.is_some()
            || self
                .workers
                .get(&function)
                .is_some_and(|(_, worker)| worker.is_some());
        let old = self.workers.insert(function.clone(), (registered, None));
        if let Some((_, Some(old))) = old {
            // The old version finishes what it holds; the new one pulls.
            self.retire(old);
        }
        if awake {
            self.wake_up(&function);
            return;
        }
        self.shared.wakes.sleep(&function);
        if self.caught_up {
            // Registered after the start's sweep: what was queued for it
            // before now woke nobody.
            let shared = self.shared.clone();
            tokio::spawn(async move {
                for subject in function.queue_subjects() {
                    wake::sweep_once(&shared, &subject).await;
                }
            });
        }
    }

    /// Starts the worker of `function` if it is served here and has none.
    fn wake_up(&mut self, function: &FunctionRef) {
        let Some((registered, worker @ None)) = self.workers.get_mut(function) else {
            return;
        };
        self.shared.wakes.forget(function);
        let served = Arc::new(Served {
            function: function.clone(),
            spec: registered.spec.clone(),
            digest: registered.module_digest.clone(),
            loader: self.loader.clone(),
        });
        if self.only.is_some() {
            // A dedicated runtime serves this one function, started because
            // it has work: load it now, beside the first pull.
            let served = served.clone();
            tokio::spawn(async move { drop(served.prepared().await) });
        }
        *worker = Some(Worker::start(self.shared.clone(), served));
    }

    fn retire(&mut self, worker: Worker) {
        worker.stop();
        self.retired.retain(|w| !w.is_finished());
        self.retired.push(worker);
    }
}
