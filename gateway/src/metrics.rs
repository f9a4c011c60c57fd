//! The gateway's Prometheus metrics: requests by route kind and status,
//! refusals by error code, invocations accepted by function, events queued
//! and dead-lettered by function, and queue depth by function. Label values come from fixed sets or from
//! function references, so they grow with deployments, not traffic.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_api::names::FunctionRef;
use sluice_serve::ConnectionLimit;

/// Which of the gateway's paths a request took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `/fn/<ns>/<name>/…` or a custom `triggers.http.path`.
    Sync,
    /// `/async/fn/<ns>/<name>/…`.
    Async,
    /// `/invocations/<id>`.
    Status,
    /// `/dead-letters/<ns>/<name>`.
    DeadLetters,
    /// `/logs/<ns>/<name>`.
    Logs,
    /// Anything else (answered 404).
    Unrouted,
}

impl RouteKind {
    /// The label value: `sync`, `async`, `status`, `dead_letters`, `logs`,
    /// `unrouted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
            Self::Status => "status",
            Self::DeadLetters => "dead_letters",
            Self::Logs => "logs",
            Self::Unrouted => "unrouted",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// [`RouteKind::as_str`].
    pub route: &'static str,
    /// The HTTP status answered, e.g. `200`.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The stable code of the JSON error body (`unknown_function`,
    /// `body_too_large`, …).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    pub function: String,
    /// `unauthenticated` (401) or `forbidden` (403).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptedLabels {
    pub function: String,
    /// `sync` or `async` ([`RouteKind::as_str`]).
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoundLabels {
    /// `depth` or `bytes` (`crate::queue::QueueBound::as_str`).
    pub bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

/// What the gateway counts, registered under the registry's prefix
/// (`sluice_`).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    events_queued: Family<FunctionLabels, Counter>,
    events_dead_lettered: Family<FunctionLabels, Counter>,
    events_dropped: Counter,
    queue_depth: Family<FunctionLabels, Gauge>,
    queue_bytes: Family<FunctionLabels, Gauge>,
    queue_full: Family<BoundLabels, Counter>,
    auth_failures: Family<AuthFailureLabels, Counter>,
    accepted: Family<AcceptedLabels, Counter>,
    buffered_bytes: Gauge,
    buffered_limit: Gauge,
    connections: Gauge,
    connections_refused: Counter,
}

impl Metrics {
    /// Creates the gateway's metric families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "http_requests",
            "Requests answered, by route kind and HTTP status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_errors",
            "Requests answered with a JSON error, by its code",
            metrics.errors.clone(),
        );
        registry.register(
            "events_queued",
            "NATS trigger events queued as invocations, by function",
            metrics.events_queued.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "NATS trigger events that could not be queued and were dead-lettered, by function",
            metrics.events_dead_lettered.clone(),
        );
        registry.register(
            "events_dropped",
            "Events from core NATS trigger subjects dropped because their trigger's buffer (--event-buffer messages) was full",
            metrics.events_dropped.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused by spec.auth (401 unauthenticated, 403 forbidden), by function",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "invocations_accepted",
            "HTTP invocations the queue took, by function and route (async: answered 202; sync: answered by a runtime, successfully or not)",
            metrics.accepted.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes of invocations a function holds against --max-queue-bytes (NATS mode: what this gateway queued and no runtime took yet; local mode: queued, waiting for a retry, or running)",
            metrics.queue_bytes.clone(),
        );
        registry.register(
            "queue_full",
            "Invocations (HTTP and events) refused because their function's queue was full, by the bound reached (depth, bytes)",
            metrics.queue_full.clone(),
        );
        registry.register(
            "buffered_bytes",
            "Bytes of request and synchronous response bodies the gateway holds now (limited by --max-buffered)",
            metrics.buffered_bytes.clone(),
        );
        registry.register(
            "buffered_limit_bytes",
            "The gateway's --max-buffered (0: no limit)",
            metrics.buffered_limit.clone(),
        );
        registry.register(
            "connections",
            "Connections open now (limited by --max-connections)",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed at --max-connections",
            metrics.connections_refused.clone(),
        );
        metrics
    }

    /// The gauge of buffered bytes, with the limit `max` shown beside it.
    pub fn buffered(&self, max: Option<u64>) -> Gauge {
        self.buffered_limit
            .set(max.map_or(0, |m| i64::try_from(m).unwrap_or(i64::MAX)));
        self.buffered_bytes.clone()
    }

    /// `limit` counted in these metrics.
    pub fn count_connections(&self, mut limit: ConnectionLimit) -> ConnectionLimit {
        limit.open = self.connections.clone();
        limit.refused = self.connections_refused.clone();
        limit
    }

    /// Also reports `sluice_queue_depth` from the in-process queue (local
    /// mode). On NATS the operator is its one reader.
    pub fn register_queue_depth(&self, registry: &mut Registry) {
        registry.register(
            "queue_depth",
            "Invocations queued, waiting for a retry, or running",
            self.queue_depth.clone(),
        );
    }

    fn labels(function: &FunctionRef) -> FunctionLabels {
        FunctionLabels {
            function: function.to_string(),
        }
    }

    pub fn answered(&self, route: RouteKind, status: http::StatusCode) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.as_str(),
                status: status.as_u16(),
            })
            .inc();
    }

    pub fn refused(&self, code: &'static str) {
        self.errors.get_or_create(&ErrorLabels { code }).inc();
    }

    pub fn auth_failed(&self, function: &FunctionRef, code: &'static str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels {
                function: function.to_string(),
                code,
            })
            .inc();
    }

    /// The queue took an invocation of `function` on `route` (sync or async).
    pub fn accepted(&self, function: &FunctionRef, route: RouteKind) {
        self.accepted
            .get_or_create(&AcceptedLabels {
                function: function.to_string(),
                route: route.as_str(),
            })
            .inc();
    }

    pub fn event_queued(&self, function: &FunctionRef) {
        self.events_queued
            .get_or_create(&Self::labels(function))
            .inc();
    }

    pub fn event_dead_lettered(&self, function: &FunctionRef) {
        self.events_dead_lettered
            .get_or_create(&Self::labels(function))
            .inc();
    }

    /// The counter of dropped trigger events, for the event bridge's
    /// client to count those it drops.
    pub fn events_dropped(&self) -> Counter {
        self.events_dropped.clone()
    }

    /// A core NATS event the bridge dropped, its buffer full.
    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn set_queue_bytes(&self, function: &FunctionRef, bytes: i64) {
        self.queue_bytes
            .get_or_create(&Self::labels(function))
            .set(bytes);
    }

    /// An invocation refused at `bound` (`depth` or `bytes`).
    pub fn queue_full(&self, bound: &'static str) {
        self.queue_full.get_or_create(&BoundLabels { bound }).inc();
    }

    pub fn set_queue_depth(&self, function: &FunctionRef, depth: i64) {
        self.queue_depth
            .get_or_create(&Self::labels(function))
            .set(depth);
    }
}
