//! NATS mode (`sluice-gateway --nats URL`): routes come from the registry
//! bucket and follow its changes; invocations go onto JetStream for the
//! runtimes; trigger subjects feed the event bridge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use sluice_api::auth::ApiKeyDigest;
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, TriggerScope};
use sluice_nats::layout::{Layout, LayoutConfig, LayoutMetrics};
use sluice_nats::registry::{RegistryEvent, RegistryWatcher};
use sluice_nats::security::NatsAuth;
use sluice_nats::{NatsError, NatsSecurity, PAYLOAD_HEADROOM, SubscriptionBound};
use sluice_serve::tls::TlsError;
use sluice_serve::{Admin, TlsFiles};

use crate::events::EventBridge;
use crate::http::{Gateway, HttpConfig};
use crate::metrics::Metrics;
use crate::queue::QueueError;
use crate::queue::budget::ByteBudget;
use crate::queue::jetstream::JetStreamQueue;
use crate::routes::RoutedFunctions;
use crate::running::{
    AdminEndpoint, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, ListenError, ListenerTls, RunningGateway,
};
use crate::schedules::Scheduler;

/// Everything NATS mode needs to start.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub nats_url: String,
    /// Credentials and TLS for NATS. Default: none.
    pub nats_security: NatsSecurity,
    /// Default: [`DEFAULT_LISTEN`] (`127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Default: [`DEFAULT_ADMIN_LISTEN`] (`127.0.0.1:9090`).
    pub admin_listen: SocketAddr,
    /// Certificate and key to serve invocations over TLS. Default: none
    /// (plain HTTP).
    pub tls: Option<TlsFiles>,
    /// The same for the admin listener. Default: none.
    pub admin_tls: Option<TlsFiles>,
    pub http: HttpConfig,
    /// The layout's settings, applied when `own_layout`.
    pub layout: LayoutConfig,
    /// Whether this gateway owns the layout (creates and updates it) or
    /// only waits for it to exist (the operator owns it on a cluster).
    /// Default: true.
    pub own_layout: bool,
    /// The event bridge's own NATS credentials (TLS as for the rest), so
    /// that it subscribes to Function authors' subjects as a user that may
    /// not read `_INBOX.>`, `$…` or `sluice.…` (`SLUICE_EVENTS` in the
    /// chart's permission file). Default: none, the bridge connects as the
    /// gateway (on a connection of its own).
    pub events_auth: Option<NatsAuth>,
    /// Per-namespace prefix every trigger subject must start with; the
    /// bridge does not subscribe to others. Default: none.
    pub trigger_scope: Option<TriggerScope>,
    /// Messages each trigger subscription buffers; past it the client
    /// drops core NATS events (counted in `sluice_events_dropped_total`).
    /// Default: [`sluice_nats::DEFAULT_SUBSCRIPTION_CAPACITY`] (1024).
    pub event_buffer: usize,
}

impl NatsConfig {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_security: NatsSecurity::default(),
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            tls: None,
            admin_tls: None,
            http: HttpConfig::default(),
            layout: LayoutConfig::default(),
            own_layout: true,
            events_auth: None,
            trigger_scope: None,
            event_buffer: sluice_nats::DEFAULT_SUBSCRIPTION_CAPACITY,
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
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Serves the admin endpoints (not ready), waits for NATS and the layout
/// (trying again with backoff while the server is unreachable, saying so
/// in the log), then serves. Fails at once only for what waiting cannot
/// fix: a listener or certificate, credentials NATS refuses, TLS.
pub async fn start(mut config: NatsConfig) -> Result<RunningGateway, NatsModeError> {
    // First: a bad certificate fails before anything connects.
    let tls = ListenerTls::load(config.tls.as_ref(), config.admin_tls.as_ref())?;
    let mut registry = Registry::with_prefix("sluice");
    let metrics = Metrics::register(&mut registry);
    let layout_metrics = LayoutMetrics::register(&mut registry);
    let admin = Arc::new(Admin::new(registry));
    let admin_endpoint =
        AdminEndpoint::start(admin.clone(), config.admin_listen, tls.admin).await?;
    tracing::info!(admin = %admin_endpoint.addr, nats = %sluice_nats::redacted(&config.nats_url), "connecting to NATS");
    let client =
        sluice_nats::connect_patiently(&config.nats_url, "sluice-gateway", &config.nats_security)
            .await?;
    let layout = if config.own_layout {
        let reconciled = sluice_nats::patiently("reconciling the layout", &config.nats_url, || {
            Layout::reconcile(client.clone(), &config.layout)
        })
        .await?;
        layout_metrics.count(&reconciled.changes);
        reconciled.layout
    } else {
        sluice_nats::patiently("opening the layout", &config.nats_url, || {
            Layout::open(client.clone())
        })
        .await?
    };
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
    // A synchronous reply is one NATS message: at most max_payload.
    config.http.response_reserve = max_payload;
    admin.register(|registry| {
        let (name, help) = sluice_nats::CONNECTED_METRIC;
        let connection = client.clone();
        sluice_serve::ScrapedGauge::register(registry, name, help, move || {
            sluice_nats::is_connected(&connection)
        });
    });
    let budget = ByteBudget::new(config.layout.max_queue_bytes.0, metrics.clone());
    let queue = Arc::new(JetStreamQueue::new(client.clone(), layout.clone(), budget).await?);
    let gateway = Arc::new(Gateway::new(
        queue.clone(),
        RoutedFunctions::default(),
        config.http.clone(),
        metrics.clone(),
    ));
    // A connection of its own, whose subscriptions hold at most
    // `event_buffer` messages each: async-nats' default (65,536) would let
    // one busy trigger subject buffer gigabytes.
    let bound = SubscriptionBound {
        capacity: config.event_buffer,
        dropped: metrics.events_dropped(),
    };
    let events_client = match &config.events_auth {
        None => {
            sluice_nats::connect_events(&config.nats_url, &config.nats_security, false, &bound)
                .await?
        }
        Some(auth) => {
            let security = NatsSecurity {
                auth: Some(auth.clone()),
                tls: config.nats_security.tls.clone(),
            };
            sluice_nats::connect_events(&config.nats_url, &security, true, &bound).await?
        }
    };
    let scheduler = Scheduler::new(queue.clone(), config.http.async_deadline);
    let bridge = EventBridge::new(
        events_client,
        config.event_buffer,
        queue,
        metrics.clone(),
        config.http.async_deadline,
    );
    let running =
        RunningGateway::beside(gateway.clone(), admin_endpoint, config.listen, tls.gateway).await?;
    let watcher = RegistryWatcher::new(layout.functions.clone());
    let scope = config.trigger_scope.clone();
    running.spawn_companion(|stop| async move {
        let mut bridge = bridge;
        let mut scheduler = scheduler;
        tokio::select! {
            () = follow_registry(watcher, &gateway, &admin, &mut bridge, &mut scheduler, scope.as_ref()) => {}
            () = stop.cancelled() => {}
        }
        tokio::join!(bridge.shutdown(), scheduler.shutdown());
    });
    Ok(running)
}

/// Keeps the gateway's routes, the event bridge and the schedules in step
/// with the registry, applying changes in batches (when no more are known to be
/// pending). Ready once the first full view of the registry is applied.
async fn follow_registry(
    mut watcher: RegistryWatcher,
    gateway: &Gateway,
    admin: &Admin,
    bridge: &mut EventBridge,
    scheduler: &mut Scheduler,
    scope: Option<&TriggerScope>,
) {
    let mut functions: HashMap<FunctionRef, Arc<FunctionSpec>> = HashMap::new();
    let mut api_keys: HashMap<FunctionRef, Vec<ApiKeyDigest>> = HashMap::new();
    let mut created: HashMap<FunctionRef, String> = HashMap::new();
    loop {
        let event = watcher.next().await;
        let pending = event.pending();
        match event {
            RegistryEvent::Put { entry, .. } => {
                tracing::info!(function = %entry.function, digest = %entry.module_digest, "function routed");
                api_keys.insert(entry.function.clone(), entry.api_keys);
                match entry.created {
                    Some(time) => created.insert(entry.function.clone(), time),
                    None => created.remove(&entry.function),
                };
                functions.insert(entry.function, Arc::new(entry.spec));
            }
            RegistryEvent::Removed { function, .. } => {
                api_keys.remove(&function);
                created.remove(&function);
                if functions.remove(&function).is_some() {
                    tracing::info!(%function, "function removed");
                }
            }
            RegistryEvent::CaughtUp => admin.set_ready(true),
        }
        if pending == 0 {
            let (routed, conflicts) =
                RoutedFunctions::first_claim_wins(functions.clone(), &created);
            for conflict in conflicts {
                tracing::error!(error = %conflict, "custom route not applied");
            }
            gateway.set_functions(routed.with_api_keys(api_keys.clone()));
            scheduler.update(&functions);
            // A Function whose triggers leave its namespace's scope gets
            // no subscription (the operator says why in its status); its
            // HTTP routes stay.
            let in_scope: HashMap<FunctionRef, Arc<FunctionSpec>> = functions
                .iter()
                .filter(
                    |(function, spec)| match scope.map(|s| s.check(function, spec)) {
                        Some(Err(e)) => {
                            tracing::error!(%function, error = %e, "event triggers not subscribed");
                            false
                        }
                        _ => true,
                    },
                )
                .map(|(function, spec)| (function.clone(), spec.clone()))
                .collect();
            bridge.update(&in_scope);
        }
    }
}
