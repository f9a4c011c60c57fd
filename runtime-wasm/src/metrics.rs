//! Prometheus metrics of the gateway, the queues and the runtime. Label
//! values are function references, so they grow with deployments, not
//! traffic.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_api::names::FunctionRef;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub function: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColdStartLabels {
    pub function: String,
    /// `fetched` (downloaded and compiled), `compiled` (bytes at hand,
    /// compiled) or `precompiled` (loaded from the on-disk artifact).
    pub source: &'static str,
}

type HistogramFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;
type ColdStartFamily = Family<ColdStartLabels, Histogram, fn() -> Histogram>;

/// Every metric the gateway exports, under the `sluice_` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    invocations: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily,
    queue_depth: Family<FunctionLabels, Gauge>,
    retries: Family<FunctionLabels, Counter>,
    dead_letters: Family<FunctionLabels, Counter>,
    redeliveries: Family<FunctionLabels, Counter>,
    cold_starts: ColdStartFamily,
}

fn duration_histogram() -> Histogram {
    // 100µs to ~100s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let invocations = Family::<OutcomeLabels, Counter>::default();
        let duration = HistogramFamily::new_with_constructor(duration_histogram);
        let queue_depth = Family::<FunctionLabels, Gauge>::default();
        let retries = Family::<FunctionLabels, Counter>::default();
        let dead_letters = Family::<FunctionLabels, Counter>::default();
        let redeliveries = Family::<FunctionLabels, Counter>::default();
        let cold_starts = ColdStartFamily::new_with_constructor(duration_histogram);
        registry.register(
            "invocation_attempts",
            "Attempts at invocations, by function and outcome",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Time from instantiation to collected response, per attempt",
            duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Invocations queued, waiting for a retry, or running (on NATS: the consumer's pending plus ack-pending)",
            queue_depth.clone(),
        );
        registry.register(
            "retries",
            "Attempts scheduled again after a retryable failure",
            retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Invocations dead-lettered",
            dead_letters.clone(),
        );
        registry.register(
            "redeliveries",
            "Invocation messages delivered again (a retry, or a runtime that stopped mid-attempt)",
            redeliveries.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Time to make a component servable the first time this process sees its digest",
            cold_starts.clone(),
        );
        Self {
            registry,
            redeliveries,
            cold_starts,
            invocations,
            duration,
            queue_depth,
            retries,
            dead_letters,
        }
    }
}

impl Metrics {
    fn labels(function: &FunctionRef) -> FunctionLabels {
        FunctionLabels {
            function: function.to_string(),
        }
    }

    /// Runs one attempt of `invocation`, counts it and logs why it failed.
    pub async fn attempt(
        &self,
        runtime: &crate::Runtime,
        function: &crate::PreparedFunction,
        invocation: &sluice_api::Invocation,
    ) -> crate::Outcome {
        let started = std::time::Instant::now();
        let outcome = runtime.invoke(function, invocation).await;
        self.attempt_finished(
            &invocation.function,
            outcome.label(),
            started.elapsed().as_secs_f64(),
        );
        if let Some(reason) = outcome.reason() {
            tracing::info!(function = %invocation.function, invocation = %invocation.id, %reason, "attempt failed");
        }
        outcome
    }

    pub fn attempt_finished(&self, function: &FunctionRef, outcome: &'static str, seconds: f64) {
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function.to_string(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&Self::labels(function))
            .observe(seconds);
    }

    pub fn set_queue_depth(&self, function: &FunctionRef, depth: i64) {
        self.queue_depth
            .get_or_create(&Self::labels(function))
            .set(depth);
    }

    pub fn retried(&self, function: &FunctionRef) {
        self.retries.get_or_create(&Self::labels(function)).inc();
    }

    pub fn dead_lettered(&self, function: &FunctionRef) {
        self.dead_letters
            .get_or_create(&Self::labels(function))
            .inc();
    }

    pub fn redelivered(&self, function: &FunctionRef) {
        self.redeliveries
            .get_or_create(&Self::labels(function))
            .inc();
    }

    pub fn cold_start(&self, function: &FunctionRef, source: &'static str, seconds: f64) {
        self.cold_starts
            .get_or_create(&ColdStartLabels {
                function: function.to_string(),
                source,
            })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
