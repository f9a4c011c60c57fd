//! The runtime's Prometheus metrics: attempts and their duration, time
//! queued, retries, dead letters, redeliveries and cold starts, by
//! function; and the instance pool's use ([`register_instances`]). Label
//! values are function references, so they grow with deployments, not
//! traffic.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_api::names::FunctionRef;

use crate::CacheUse;
use crate::budget::MemoryBudget;
use crate::callback::Callbacks;

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
    /// `fetched` (downloaded and compiled), `precompiled` (loaded from the
    /// on-disk artifact),
    /// `shared` (loaded from the artifact another runtime stored in
    /// `sluice-artifacts`) or `ahead` (loaded from this process's compile
    /// ahead of the first invocation, handed over as it ended).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompileLabels {
    /// `invocation` (a load an invocation waited for) or `ahead` (a
    /// registered component compiled before its first invocation).
    pub trigger: &'static str,
}

type HistogramFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;
type ColdStartFamily = Family<ColdStartLabels, Histogram, fn() -> Histogram>;

/// What the runtime counts, registered under the registry's prefix
/// (`sluice_` in every binary). Both queues count through it: the runtime
/// node on NATS, and the in-process queue of local mode.
#[derive(Debug, Clone)]
pub struct Metrics {
    invocations: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily,
    retries: Family<FunctionLabels, Counter>,
    dead_letters: Family<FunctionLabels, Counter>,
    dead_letter_failures: Family<FunctionLabels, Counter>,
    redeliveries: Family<FunctionLabels, Counter>,
    cold_starts: ColdStartFamily,
    queue_wait: HistogramFamily,
    wall: Family<FunctionLabels, Counter<f64>>,
    guest_cpu: Family<FunctionLabels, Counter<f64>>,
    memory: Family<FunctionLabels, Counter<f64>>,
    compiles: Family<CompileLabels, Counter>,
    compiling: Family<CompileLabels, Gauge>,
}

/// A compile under way, counted in `sluice_runtime_compiles_in_progress`
/// until dropped.
#[derive(Debug)]
#[must_use]
pub struct CompileUnderWay(Gauge);

impl Drop for CompileUnderWay {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn duration_histogram() -> Histogram {
    // 100µs to ~100s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

impl Metrics {
    /// Creates the runtime's metric families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            invocations: Family::default(),
            duration: HistogramFamily::new_with_constructor(duration_histogram),
            retries: Family::default(),
            dead_letters: Family::default(),
            dead_letter_failures: Family::default(),
            redeliveries: Family::default(),
            cold_starts: ColdStartFamily::new_with_constructor(duration_histogram),
            queue_wait: HistogramFamily::new_with_constructor(duration_histogram),
            wall: Family::default(),
            guest_cpu: Family::default(),
            memory: Family::default(),
            compiles: Family::default(),
            compiling: Family::default(),
        };
        // What each attempt used (sluice_api::Usage), summed per function,
        // for charging by use: Lambda's GB-seconds are `memory`'s bytes.
        registry.register(
            "usage_wall_seconds",
            "Wall-clock time of attempts that ran an instance, instantiation included",
            metrics.wall.clone(),
        );
        registry.register(
            "usage_guest_cpu_seconds",
            "Time guests spent executing, counted in epoch ticks (runtime epoch_tick, 5ms by default)",
            metrics.guest_cpu.clone(),
        );
        registry.register(
            "usage_memory_byte_seconds",
            "Each attempt's peak linear memory times its wall-clock time",
            metrics.memory.clone(),
        );
        registry.register(
            "invocation_attempts",
            "Attempts at invocations, by function and outcome",
            metrics.invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Time from instantiation to collected response, per attempt",
            metrics.duration.clone(),
        );
        registry.register(
            "retries",
            "Attempts scheduled again after a retryable failure",
            metrics.retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Invocations dead-lettered",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "dead_letter_failures",
            "Invocations given up on whose dead letter could not be stored (dropped)",
            metrics.dead_letter_failures.clone(),
        );
        registry.register(
            "redeliveries",
            "Invocation messages delivered again (a retry, or a runtime that stopped mid-attempt)",
            metrics.redeliveries.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Time to make a component servable when an invocation needs it and this process does not hold it (its first use, or after it was dropped for room)",
            metrics.cold_starts.clone(),
        );
        registry.register(
            "runtime_compiles",
            "Compiles of components this process started, by trigger: an invocation's load, or ahead of a registered function's first invocation",
            metrics.compiles.clone(),
        );
        registry.register(
            "runtime_compiles_in_progress",
            "Compiles of components under way in this process, by trigger",
            metrics.compiling.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from an invocation being stored in the queue to its first delivery to a runtime (NATS mode)",
            metrics.queue_wait.clone(),
        );
        metrics
    }

    /// Registers the memory budget's gauges: `memory_budget_bytes` (the
    /// budget) and `memory_reserved_bytes` (what live instances reserve).
    pub fn register_memory_budget(registry: &mut Registry, budget: &MemoryBudget) {
        let total = Gauge::<i64>::default();
        total.set(i64::try_from(budget.total()).unwrap_or(i64::MAX));
        registry.register(
            "memory_budget_bytes",
            "Bytes the live instances may reserve together (limits.memory plus each instance's host-side share)",
            total,
        );
        registry.register(
            "memory_reserved_bytes",
            "Bytes reserved by the live instances now",
            budget.reserved_gauge(),
        );
    }

    /// Registers `callbacks_dropped`: callbacks dropped at
    /// [`crate::callback::MAX_PENDING`] deliveries under way.
    pub fn register_callbacks(registry: &mut Registry, callbacks: &Callbacks) {
        registry.register(
            "callbacks_dropped",
            "Callbacks not delivered because too many deliveries were under way (their records stay readable)",
            callbacks.dropped(),
        );
    }

    fn labels(function: &FunctionRef) -> FunctionLabels {
        FunctionLabels {
            function: function.to_string(),
        }
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

    /// Adds what one attempt used to its function's usage counters.
    pub fn used(&self, function: &FunctionRef, usage: &sluice_api::Usage) {
        let labels = Self::labels(function);
        let wall = usage.wall_ms as f64 / 1000.0;
        self.wall.get_or_create(&labels).inc_by(wall);
        self.guest_cpu
            .get_or_create(&labels)
            .inc_by(usage.guest_cpu_ms as f64 / 1000.0);
        self.memory
            .get_or_create(&labels)
            .inc_by(usage.peak_memory_bytes as f64 * wall);
    }

    pub fn retried(&self, function: &FunctionRef) {
        self.retries.get_or_create(&Self::labels(function)).inc();
    }

    pub fn dead_lettered(&self, function: &FunctionRef) {
        self.dead_letters
            .get_or_create(&Self::labels(function))
            .inc();
    }

    pub fn dead_letter_failed(&self, function: &FunctionRef) {
        self.dead_letter_failures
            .get_or_create(&Self::labels(function))
            .inc();
    }

    pub fn redelivered(&self, function: &FunctionRef) {
        self.redeliveries
            .get_or_create(&Self::labels(function))
            .inc();
    }

    /// An invocation of `function` reached a runtime for the first time,
    /// `seconds` after the queue stored it (retries are not counted again:
    /// their wait is the retry's backoff).
    pub fn waited(&self, function: &FunctionRef, seconds: f64) {
        self.queue_wait
            .get_or_create(&Self::labels(function))
            .observe(seconds);
    }

    /// Counts a compile started by `trigger` (`invocation` or `ahead`),
    /// under way until the value returned is dropped.
    pub fn compile_started(&self, trigger: &'static str) -> CompileUnderWay {
        let labels = CompileLabels { trigger };
        self.compiles.get_or_create(&labels).inc();
        let under_way = self.compiling.get_or_create(&labels).clone();
        under_way.inc();
        CompileUnderWay(under_way)
    }

    pub fn cold_start(&self, function: &FunctionRef, source: &'static str, seconds: f64) {
        self.cold_starts
            .get_or_create(&ColdStartLabels {
                function: function.to_string(),
                source,
            })
            .observe(seconds);
    }
}

/// A gauge of the component cache: name, help, and what it reads.
type CacheGauge = (&'static str, &'static str, fn(CacheUse) -> u64);

/// Reports the instance pool's use: `sluice_runtime_instances` (component
/// instances alive now) and `sluice_runtime_instance_slots` (at most, the
/// `--max-instances` the pooling allocator reserves memory for). When the
/// two are equal, invocations wait for a free instance: the pool's memory
/// budget is spent. And the components in memory:
/// `sluice_runtime_components_loaded`, `sluice_runtime_component_bytes`,
/// `sluice_runtime_components_evicted`.
pub fn register_instances(registry: &mut Registry, runtime: &crate::Runtime) {
    let slots = i64::from(runtime.inner.config.max_instances);
    let inner = runtime.inner.clone();
    sluice_serve::ScrapedGauge::register(
        registry,
        "runtime_instances",
        "Component instances alive now, each in a slot of the pooling allocator",
        move || i64::try_from(inner.share.in_use()).unwrap_or(slots),
    );
    sluice_serve::ScrapedGauge::register(
        registry,
        "runtime_instance_slots",
        "Component instances the pooling allocator reserves memory for (--max-instances); more wait",
        move || slots,
    );
    let components: [CacheGauge; 3] = [
        (
            "runtime_components_loaded",
            "Compiled components held in memory now (loaded on a function's first use)",
            |held| held.components as u64,
        ),
        (
            "runtime_component_bytes",
            "Bytes of compiled components held in memory now (at most --component-cache, beside the newest)",
            |held| held.bytes,
        ),
        (
            "runtime_components_evicted",
            "Compiled components dropped from memory for room since the start (reloaded on their next use)",
            |held| held.evicted,
        ),
    ];
    for (name, help, read) in components {
        let runtime = runtime.clone();
        sluice_serve::ScrapedGauge::register(registry, name, help, move || {
            i64::try_from(read(runtime.component_cache_use())).unwrap_or(i64::MAX)
        });
    }
}
