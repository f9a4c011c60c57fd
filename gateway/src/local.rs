//! Local mode: gateway and runtime in one process, serving the Function
//! manifests of a folder with the in-process queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use sluice_runtime::{Runtime, RuntimeConfig, RuntimeError};
use sluice_serve::tls::TlsError;
use sluice_serve::{Admin, TlsFiles};

pub use crate::manifests::{LocalFunction, ManifestsError, load_dir, local_destinations};

use crate::http::{Gateway, HttpConfig};
use crate::metrics::Metrics;
use crate::queue::memory::{MemoryQueue, QueueConfig, QueuedFunction};
use crate::routes::{RouteConflict, RoutedFunctions};
use crate::running::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, ListenError, ListenerTls, RunningGateway,
};
use crate::schedules::Scheduler;

/// Everything local mode needs to start.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Folder whose `*.yaml`/`*.yml` files hold Function manifests.
    pub dir: PathBuf,
    /// Where invocations are served. Default: [`DEFAULT_LISTEN`]
    /// (`127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served. Default:
    /// [`DEFAULT_ADMIN_LISTEN`] (`127.0.0.1:9090`).
    pub admin_listen: SocketAddr,
    /// Certificate and key to serve invocations over TLS. Default: none
    /// (plain HTTP).
    pub tls: Option<TlsFiles>,
    /// The same for the admin listener. Default: none.
    pub admin_tls: Option<TlsFiles>,
    pub http: HttpConfig,
    pub queue: QueueConfig,
    pub runtime: RuntimeConfig,
}

impl LocalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            tls: None,
            admin_tls: None,
            http: HttpConfig::default(),
            queue: QueueConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// Why local mode could not start. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Manifests(#[from] ManifestsError),
    #[error(transparent)]
    Route(#[from] RouteConflict),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Loads the manifests, compiles every component, binds both listeners and
/// starts serving.
pub async fn start(config: LocalConfig) -> Result<RunningGateway, LocalError> {
    // First: a bad certificate fails before any component compiles.
    let tls = ListenerTls::load(config.tls.as_ref(), config.admin_tls.as_ref())?;
    let dir = config.dir.clone();
    let runtime_config = config.runtime.clone();
    let (runtime, loaded) = tokio::task::spawn_blocking(move || -> Result<_, LocalError> {
        let functions = load_dir(&dir)?;
        local_destinations(&functions)?;
        let runtime = Runtime::new(runtime_config)?;
        let mut prepared = Vec::new();
        for f in functions {
            let ready = runtime
                .prepare(f.function.clone(), &f.spec, &f.wasm)
                .map_err(|e| {
                    let (field, problem) = match &e {
                        RuntimeError::MemoryLimitTooLarge { .. }
                        | RuntimeError::MemoryBudgetTooSmall { .. } => {
                            ("spec.limits.memory", e.to_string())
                        }
                        _ => ("spec.module.file", e.to_string()),
                    };
                    LocalError::Manifests(ManifestsError::Module {
                        file: f.file.clone(),
                        function: f.function.clone(),
                        field,
                        problem,
                    })
                })?;
            prepared.push((ready, f.spec, f.api_keys));
        }
        Ok((runtime, prepared))
    })
    .await
    .map_err(|e| LocalError::Runtime(RuntimeError::Engine(format!("loader task failed: {e}"))))??;

    let mut registry = Registry::with_prefix("sluice");
    let metrics = Metrics::register(&mut registry);
    metrics.register_queue_depth(&mut registry);
    let runtime_metrics = sluice_runtime::metrics::Metrics::register(&mut registry);
    sluice_runtime::metrics::register_instances(&mut registry, &runtime);
    let queue = MemoryQueue::new(
        runtime,
        config.queue.clone(),
        metrics.clone(),
        runtime_metrics,
    );
    let mut specs = HashMap::new();
    let mut api_keys = HashMap::new();
    for (prepared, spec, keys) in loaded {
        api_keys.insert(prepared.function.clone(), keys);
        tracing::info!(function = %prepared.function, digest = %prepared.digest, "function ready");
        specs.insert(prepared.function.clone(), Arc::new(spec.clone()));
        queue.deploy(QueuedFunction {
            prepared,
            retry: spec.retry.clone(),
            concurrency: spec.concurrency,
            destinations: spec.destinations.clone(),
        });
    }
    let queue = Arc::new(queue);
    let mut scheduler = Scheduler::new(queue.clone(), config.http.async_deadline);
    scheduler.update(&specs);
    let functions = RoutedFunctions::new(specs)?.with_api_keys(api_keys);
    let gateway = Arc::new(Gateway::new(queue, functions, config.http.clone(), metrics));
    let admin = Arc::new(Admin::new(registry));
    admin.set_ready(true);
    let running =
        RunningGateway::start(gateway, admin, config.listen, config.admin_listen, tls).await?;
    running.spawn_companion(|stop| async move {
        stop.cancelled().await;
        scheduler.shutdown().await;
    });
    Ok(running)
}
