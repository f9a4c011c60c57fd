//! The operator's Prometheus metrics: reconciles and their duration,
//! failures by condition reason, and functions by Ready state; and the
//! autoscaler's decisions, replicas and queue depths. Label values come
//! from fixed sets (results, reasons, `true`/`false`, directions, triggers)
//! or name a function (`namespace/name`), removed when it is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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
pub struct DirectionLabels {
    /// `up` or `down`.
    pub direction: &'static str,
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
    readiness: Arc<Mutex<HashMap<FunctionRef, bool>>>,
    /// The autoscaler's.
    pub autoscaler: AutoscalerMetrics,
}

/// What the autoscaler reports.
#[derive(Debug, Clone)]
pub struct AutoscalerMetrics {
    decisions: Family<DirectionLabels, Counter>,
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
            readiness: Arc::default(),
            autoscaler: AutoscalerMetrics {
                decisions: Family::default(),
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
        let autoscaler = &metrics.autoscaler;
        registry.register(
            "autoscaler_decisions",
            "Changes of a function's desired replicas, by direction",
            autoscaler.decisions.clone(),
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

    fn set_ready(&self, function: &FunctionRef, ready: Option<bool>) {
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

    /// A decision for `function`: what it saw and wants, and its direction
    /// when it changed the desired replicas.
    pub fn decided(
        &self,
        function: &FunctionRef,
        depth: u64,
        desired: u32,
        direction: Option<sluice_api::autoscale::Direction>,
    ) {
        let labels = Self::labels(function);
        self.queue_depth
            .get_or_create(&labels)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.desired.get_or_create(&labels).set(i64::from(desired));
        if let Some(direction) = direction {
            self.decisions
                .get_or_create(&DirectionLabels {
                    direction: direction.as_str(),
                })
                .inc();
        }
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
