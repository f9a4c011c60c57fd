//! The operator's Prometheus metrics: reconciles and their duration,
//! failures by condition reason, and functions by Ready state. Label values
//! come from fixed sets (results, reasons, `true`/`false`).

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

/// What the operator counts, registered under the registry's prefix
/// (`sluice_`).
#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    duration: Histogram,
    functions: Family<ReadyLabels, Gauge>,
    readiness: Arc<Mutex<HashMap<FunctionRef, bool>>>,
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
