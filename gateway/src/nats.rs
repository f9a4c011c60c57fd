//! NATS mode (`sluice-gateway --nats URL`): routes come from the registry
//! bucket and follow its changes; invocations go onto JetStream for the
//! runtimes; trigger subjects feed the event bridge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation};
use futures::StreamExt as _;
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, RegistryEntry};
use sluice_runtime::admin::Admin;
use sluice_runtime::metrics::Metrics;
use sluice_runtime::nats::layout::{Layout, LayoutConfig};
use sluice_runtime::nats::{NatsError, PAYLOAD_HEADROOM};

use crate::events::EventBridge;
use crate::http::{Gateway, HttpConfig, Registry};
use crate::queue::QueueError;
use crate::queue::jetstream::JetStreamQueue;
use crate::running::{ListenError, RunningGateway};

/// Everything NATS mode needs to start.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub nats_url: String,
    /// Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Default: `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    pub http: HttpConfig,
    pub layout: LayoutConfig,
}

impl NatsConfig {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            http: HttpConfig::default(),
            layout: LayoutConfig::default(),
        }
    }
}

/// Why NATS mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsModeError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// Connects, opens the layout, starts following the registry and serves.
pub async fn start(mut config: NatsConfig) -> Result<RunningGateway, NatsModeError> {
    let client = sluice_runtime::nats::connect(&config.nats_url, "sluice-gateway").await?;
    let layout = Layout::ensure(client.clone(), &config.layout).await?;
    // An invocation is one message: a body that fits the limit but not the
    // server would fail to queue (503), so the limit shrinks to what fits
    // and such a body gets 413.
    let max_payload = client.server_info().max_payload;
    let fits = max_payload.saturating_sub(PAYLOAD_HEADROOM);
    if config.http.max_request_body > fits {
        tracing::warn!(
            max_payload,
            max_request_body = fits,
            "lowering the request limit to what the NATS server's max_payload carries with headers (raise max_payload, e.g. to 8MB)"
        );
        config.http.max_request_body = fits;
    }
    let queue = Arc::new(JetStreamQueue::new(client.clone(), layout.clone()).await?);
    let gateway = Arc::new(Gateway::new(
        queue.clone(),
        Registry::default(),
        config.http.clone(),
    ));
    let admin = Arc::new(Admin {
        metrics: Arc::new(Metrics::default()),
        ready: Default::default(),
    });
    let bridge = EventBridge::new(client, queue, config.http.async_deadline);
    let running = RunningGateway::start(
        gateway.clone(),
        admin.clone(),
        config.listen,
        config.admin_listen,
    )
    .await?;
    running.spawn_companion(|stop| async move {
        let mut bridge = bridge;
        tokio::select! {
            () = follow_registry(&layout, &gateway, &admin, &mut bridge) => {}
            () = stop.cancelled() => {}
        }
        bridge.shutdown().await;
    });
    Ok(running)
}

/// Keeps the gateway's routes and the event bridge in step with the
/// registry. Ready once the first full view of the registry is applied.
async fn follow_registry(
    layout: &Layout,
    gateway: &Gateway,
    admin: &Admin,
    bridge: &mut EventBridge,
) {
    let mut functions: HashMap<FunctionRef, Arc<FunctionSpec>> = HashMap::new();
    loop {
        let mut watch = match layout.functions.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the registry; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut caught_up = false;
        loop {
            // An empty registry delivers nothing: a quiet watch is caught up.
            let next = if caught_up {
                watch.next().await
            } else {
                match tokio::time::timeout(Duration::from_millis(200), watch.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        caught_up = true;
                        admin.ready.store(true, Ordering::Relaxed);
                        continue;
                    }
                }
            };
            let entry = match next {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the registry watch failed; watching again");
                    break;
                }
                None => break,
            };
            let pending = entry.delta;
            apply(&mut functions, entry);
            if pending == 0 {
                let (registry, conflicts) = Registry::first_claim_wins(functions.clone());
                for conflict in conflicts {
                    tracing::error!(error = %conflict, "custom route not applied");
                }
                gateway.set_registry(registry);
                bridge.update(&functions);
                caught_up = true;
                admin.ready.store(true, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn apply(functions: &mut HashMap<FunctionRef, Arc<FunctionSpec>>, entry: Entry) {
    let Some((namespace, name)) = entry.key.split_once('.') else {
        return;
    };
    let Ok(function) = FunctionRef::new(namespace, name) else {
        tracing::warn!(key = %entry.key, "ignoring a registry key that names no function");
        return;
    };
    match entry.operation {
        Operation::Delete | Operation::Purge => {
            if functions.remove(&function).is_some() {
                tracing::info!(%function, "function removed");
            }
        }
        Operation::Put => match RegistryEntry::parse(&function, &entry.value) {
            Ok(registered) => {
                tracing::info!(%function, digest = %registered.module_digest, "function routed");
                functions.insert(function, Arc::new(registered.spec));
            }
            Err(e) => {
                tracing::error!(%function, error = %e, "not routing an invalid registry entry");
                functions.remove(&function);
            }
        },
    }
}
