//! The operator's Prometheus metrics: reconciles and their duration,
//! failures by condition reason, functions by Ready state and each
//! function's readiness, whether this replica leads, and JetStream's
//! storage use against its bound; and the autoscaler's decisions (by
//! function, direction and reason), failed scales, replicas and queue
//! depths. Label values come from fixed sets (results, reasons,
//! `true`/`false`, directions, triggers) or name a function
//! (`namespace/name`) or Deployment; the gauges of a function are removed
//! when it is deleted (its decision counters stay until a restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_api::autoscale::Decision;
use sluice_api::names::FunctionRef;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ready`, `not_ready` (the Function has a problem its status names) or
    /// `error` (the reconcile itself failed and is retried).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The condition reason, e.g. `ConfigMapNotFound`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `namespace/name`.
    pub function: String,
    /// `up` or `down`.
    pub direction: &'static str,
    /// Why ([`sluice_api::autoscale::Reason::as_str`]), e.g. `Demand`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// `namespace/name` of the runtime Deployment.
    pub deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `tick` (the periodic read of every queue) or `wake` (a first
    /// invocation reached a function at zero).
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// `namespace/name`.
    pub function: String,
}

/// What the operator counts, registered under the registry's prefix
/// (`sluice_`).
#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    duration: Histogram,
    functions: Family<ReadyLabels, Gauge>,
    function_ready: Family<FunctionLabels, Gauge>,
    readiness: Arc<Mutex<HashMap<FunctionRef, bool>>>,
    leader: Gauge,
    storage: Gauge,
    storage_bound: Gauge,
    /// The autoscaler's.
    pub autoscaler: AutoscalerMetrics,
}

/// What the autoscaler reports.
#[derive(Debug, Clone)]
pub struct AutoscalerMetrics {
    decisions: Family<DecisionLabels, Counter>,
    scale_failures: Family<DeploymentLabels, Counter>,
    latency: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    ticks: Histogram,
    tick_failures: Counter,
    desired: Family<FunctionLabels, Gauge>,
    replicas: Family<FunctionLabels, Gauge>,
    queue_depth: Family<FunctionLabels, Gauge>,
}

impl Metrics {
    /// Creates the operator's metric families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            // 1ms to ~30s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            functions: Family::default(),
            function_ready: Family::default(),
            readiness: Arc::default(),
            leader: Gauge::default(),
            storage: Gauge::default(),
            storage_bound: Gauge::default(),
            autoscaler: AutoscalerMetrics {
                decisions: Family::default(),
                scale_failures: Family::default(),
                latency: Family::new_with_constructor(latency_histogram),
                ticks: latency_histogram(),
                tick_failures: Counter::default(),
                desired: Family::default(),
                replicas: Family::default(),
                queue_depth: Family::default(),
            },
        };
        registry.register(
            "operator_reconciles",
            "Function reconciles, by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "operator_reconcile_failures",
            "Reconciles that left a Function not Ready, by condition reason",
            metrics.failures.clone(),
        );
        registry.register(
            "operator_reconcile_duration_seconds",
            "Time one reconcile of a Function took",
            metrics.duration.clone(),
        );
        registry.register(
            "operator_functions",
            "Functions this operator reconciled, by their Ready condition",
            metrics.functions.clone(),
        );
        registry.register(
            "function_ready",
            "1 while a Function's Ready condition is True, 0 while it is False, by function",
            metrics.function_ready.clone(),
        );
        registry.register(
            "operator_leader",
            "1 while this replica leads (reconciles and scales), 0 while it waits",
            metrics.leader.clone(),
        );
        registry.register(
            "jetstream_storage_bytes",
            "Bytes of file storage JetStream uses for this account (every stream and bucket)",
            metrics.storage.clone(),
        );
        registry.register(
            "jetstream_storage_bound_bytes",
            "Bytes of file storage JetStream may use: the account's limit, else --jetstream-storage-bound; 0 when neither is known",
            metrics.storage_bound.clone(),
        );
        let autoscaler = &metrics.autoscaler;
        registry.register(
            "autoscaler_decisions",
            "Changes of a function's desired replicas, by function, direction and reason",
            autoscaler.decisions.clone(),
        );
        registry.register(
            "autoscaler_scale_failures",
            "Writes of a runtime Deployment's scale that the API server refused or that failed, by Deployment",
            autoscaler.scale_failures.clone(),
        );
        registry.register(
            "autoscaler_decision_latency_seconds",
            "From seeing demand (a queue read, or a first invocation at zero) to the scale written, by trigger",
            autoscaler.latency.clone(),
        );
        registry.register(
            "autoscaler_tick_duration_seconds",
            "Time one autoscaler tick took: reading every queue, deciding, writing",
            autoscaler.ticks.clone(),
        );
        registry.register(
            "autoscaler_tick_failures",
            "Ticks that could not read the queues (NATS unreachable); no decision was made",
            autoscaler.tick_failures.clone(),
        );
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the autoscaler wants for a function",
            autoscaler.desired.clone(),
        );
        registry.register(
            "autoscaler_replicas",
            "Replicas running for a function (its Deployment's, or the pool's)",
            autoscaler.replicas.clone(),
        );
        registry.register(
            "queue_depth",
            "Invocations of a function queued or running (the consumer's pending plus ack-pending)",
            autoscaler.queue_depth.clone(),
        );
        metrics
    }

    /// A reconcile ended: `Ok(ready)` with the function's readiness and, when
    /// not ready, the reason; `Err` when the reconcile itself failed.
    pub fn reconciled(
        &self,
        function: &FunctionRef,
        seconds: f64,
        outcome: Result<(bool, Option<&str>), ()>,
    ) {
        self.duration.observe(seconds);
        let result = match outcome {
            Ok((true, _)) => "ready",
            Ok((false, _)) => "not_ready",
            Err(()) => "error",
        };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Ok((ready, reason)) = outcome {
            if let Some(reason) = reason {
                self.failures
                    .get_or_create(&ReasonLabels {
                        reason: reason.to_owned(),
                    })
                    .inc();
            }
            self.set_ready(function, Some(ready));
        }
    }

    /// The function is gone.
    pub fn removed(&self, function: &FunctionRef) {
        self.set_ready(function, None);
    }

    /// Whether this replica leads now.
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// JetStream's storage: `used` bytes of `bound` (`None`: not known,
    /// reported as 0, which the alert leaves alone).
    pub fn storage(&self, used: u64, bound: Option<u64>) {
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        self.storage.set(bytes(used));
        self.storage_bound.set(bound.map_or(0, bytes));
    }

    fn set_ready(&self, function: &FunctionRef, ready: Option<bool>) {
        let labels = FunctionLabels {
            function: function.to_string(),
        };
        if let Some(ready) = ready {
            self.function_ready
                .get_or_create(&labels)
                .set(i64::from(ready));
        } else {
            self.function_ready.remove(&labels);
        }
        let mut readiness = self.readiness.lock().unwrap_or_else(|p| p.into_inner());
        match ready {
            Some(ready) => readiness.insert(function.clone(), ready),
            None => readiness.remove(function),
        };
        let ready = readiness.values().filter(|r| **r).count();
        let total = readiness.len();
        drop(readiness);
        for (label, count) in [("true", ready), ("false", total - ready)] {
            self.functions
                .get_or_create(&ReadyLabels { ready: label })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// 100µs to ~6.5s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl AutoscalerMetrics {
    fn labels(function: &FunctionRef) -> FunctionLabels {
        FunctionLabels {
            function: function.to_string(),
        }
    }

    /// A decision for `function`: what it saw (`depth`) and wants, and why
    /// when it changed the desired replicas.
    pub fn decided(&self, function: &FunctionRef, depth: u64, decision: &Decision) {
        let labels = Self::labels(function);
        self.queue_depth
            .get_or_create(&labels)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.desired
            .get_or_create(&labels)
            .set(i64::from(decision.replicas));
        if let Some(direction) = decision.direction() {
            self.decisions
                .get_or_create(&DecisionLabels {
                    function: labels.function,
                    direction: direction.as_str(),
                    reason: decision.reason.as_str(),
                })
                .inc();
        }
    }

    /// Writing the scale of Deployment `namespace/name` failed.
    pub fn scale_failed(&self, namespace: &str, name: &str) {
        self.scale_failures
            .get_or_create(&DeploymentLabels {
                deployment: format!("{namespace}/{name}"),
            })
            .inc();
    }

    /// Replicas running for `function` now.
    pub fn running(&self, function: &FunctionRef, replicas: u32) {
        self.replicas
            .get_or_create(&Self::labels(function))
            .set(i64::from(replicas));
    }

    /// A scale was written `seconds` after the demand behind it was seen.
    pub fn scaled(&self, trigger: &'static str, seconds: f64) {
        self.latency
            .get_or_create(&TriggerLabels { trigger })
            .observe(seconds);
    }

    /// A tick ended; `read` is false when the queues could not be read.
    pub fn ticked(&self, seconds: f64, read: bool) {
        self.ticks.observe(seconds);
        if !read {
            self.tick_failures.inc();
        }
    }

    /// `function` is gone: its series go too.
    pub fn forget(&self, function: &FunctionRef) {
        let labels = Self::labels(function);
        self.queue_depth.remove(&labels);
        self.desired.remove(&labels);
        self.replicas.remove(&labels);
    }
}
