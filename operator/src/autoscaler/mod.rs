//! The autoscaler: sizes runtime Deployments from queue depth, down to zero
//! and back, with the pure rule of [`sluice_api::autoscale`].
//!
//! It is the one reader of queue depth. Every tick (default 1 s) it lists
//! the invocation stream's consumers page by page (JetStream's
//! `CONSUMER.LIST`, 256 a page: a few requests per tick however many
//! functions there are), adds the sync calls warm runtimes took directly,
//! which no consumer sees (their load reports, `sluice_nats::load`),
//! decides each function's replicas, and writes:
//! - the scale of a dedicated function's Deployment, or of the runtime
//!   pool's (named in the operator's settings) from the sum over its
//!   functions, through the `scale` subresource with its own field manager
//!   (`sluice-autoscaler`), so neither Helm nor the operator's own apply of
//!   the Deployment (which sets no `replicas`) takes the field back;
//! - the Function's `status.replicas`, `desiredReplicas`, `queueDepth` and
//!   its `Active` condition, when they change (`queueDepth` alone when
//!   its order of magnitude changes, at most every 30 s, or at once when it
//!   reaches zero);
//! - an Event for each change of desired replicas, with the reason.
//!
//! While a function is at zero it holds a core NATS subscription on the
//! function's invocation subject (the `waker` module): the first invocation wakes it
//! at once instead of at the next tick. The stream keeps the invocation
//! meanwhile, so nothing is lost while a runtime starts.
//!
//! What it remembers is only what delays need (each function's
//! [`History`]); after a restart (or a change of leader) each function
//! resumes from the replicas it is found running with, so nothing dips.

mod scale;
mod status;
mod waker;
mod writes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::Store;
use sluice_api::Function;
use sluice_api::autoscale::{History, Observation};
use sluice_api::names::{FunctionRef, LOAD_SUBJECTS};
use sluice_nats::load::LoadReports;
use tokio::sync::mpsc;

use crate::context::{AutoscalerConfig, Context};
use crate::reflectors::Stores;
use status::Shown;
use waker::Waker;

pub use status::ACTIVE;

/// The field manager of the autoscaler's writes (scales and its status
/// fields), apart from the operator's so that neither takes the other's.
pub const FIELD_MANAGER: &str = "sluice-autoscaler";

/// What the autoscaler keeps of one function.
struct Tracked {
    history: History,
    shown: Shown,
    shown_at: Instant,
    /// The last status write failed: write it again.
    stale: bool,
}

/// The autoscaler's state while this replica leads.
struct Autoscaler {
    ctx: Arc<Context>,
    config: AutoscalerConfig,
    /// One store per watched namespace (or one for the cluster).
    functions: Vec<Store<Function>>,
    deployments: Vec<Store<Deployment>>,
    tracked: HashMap<FunctionRef, Tracked>,
    observed: HashMap<FunctionRef, Observation>,
    waker: Waker,
    /// The pool's replicas as last decided.
    pool_written: Option<u32>,
    /// Whether a reading has been taken in: before one, nothing is
    /// tracked.
    read: bool,
    /// When each function was last woken, until a reading begun after it
    /// has been taken in ([`keep_woken`]).
    woken: HashMap<FunctionRef, Instant>,
    /// Zero of the clock that histories count in.
    epoch: Instant,
}

/// Runs the autoscaler until `shutdown` resolves, reading Functions and
/// dedicated Deployments from the controller's `stores` (one per watched
/// namespace) and the pool's Deployment from the context's.
pub async fn run(
    ctx: Arc<Context>,
    stores: Vec<Stores>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let config = ctx.settings.autoscaling.clone();
    let (functions, deployments): (Vec<_>, Vec<_>) = stores
        .into_iter()
        .map(|stores| (stores.functions, stores.deployments))
        .unzip();
    tokio::pin!(shutdown);
    let ready = async {
        for store in &functions {
            let _ = store.wait_until_ready().await;
        }
        for store in &deployments {
            let _ = store.wait_until_ready().await;
        }
        if let Some(pool) = &ctx.pool {
            let _ = pool.wait_until_ready().await;
        }
    };
    tokio::select! {
        () = ready => {}
        () = &mut shutdown => return,
    }
    let mut autoscaler = Autoscaler {
        waker: Waker::new(ctx.nats.clone()),
        ctx,
        config,
        functions,
        deployments,
        tracked: HashMap::new(),
        observed: HashMap::new(),
        pool_written: None,
        read: false,
        woken: HashMap::new(),
        epoch: Instant::now(),
    };
    tracing::info!(
        interval = ?autoscaler.config.interval,
        pool = ?autoscaler.config.pool.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)),
        "autoscaling"
    );
    // Read apart from the loop: with thousands of functions a listing takes
    // a while of the server's, and a first invocation must not wait for it.
    let (readings_tx, mut readings) = mpsc::channel(1);
    let reader = tokio::spawn(read_queues(
        autoscaler.ctx.nats.clone(),
        autoscaler.ctx.layout.invocations.clone(),
        autoscaler.config.interval,
        readings_tx,
    ));
    let _reader = crate::reflectors::AbortOnDrop(reader.abort_handle());
    let ctx = autoscaler.ctx.clone();
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            (function, at) = autoscaler.waker.next() => autoscaler.wake(&function, at).await,
            Some(reading) = readings.recv() => autoscaler.tick(reading).await,
            registered = ctx.registered.next() => autoscaler.watch_registered(registered).await,
        }
    }
}

/// One reading of every queue, and when it began.
struct Reading {
    observed: Result<HashMap<FunctionRef, Observation>, sluice_nats::depth::DepthError>,
    started: Instant,
}

/// Reads every queue each `interval` (the next reading waits until the
/// last one is taken, so none pile up) until the receiver is gone. Each
/// reading's in-flight counts include the direct calls runtimes report
/// (`sluice_nats::load`), received meanwhile on `nats`.
async fn read_queues(
    nats: async_nats::Client,
    invocations: async_nats::jetstream::stream::Stream,
    interval: Duration,
    readings: mpsc::Sender<Reading>,
) {
    let mut reports = match nats.subscribe(LOAD_SUBJECTS).await {
        Ok(reports) => Some(reports),
        Err(e) => {
            tracing::warn!(subject = LOAD_SUBJECTS, error = %e, "cannot follow the runtimes' load reports; direct sync calls do not count towards scaling");
            None
        }
    };
    let mut loads = LoadReports::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(report) = next_report(&mut reports) => {
                if let (Some(function), Some((reporter, peak))) = (
                    FunctionRef::from_load_subject(&report.subject),
                    sluice_nats::load::decode(&report.payload),
                ) {
                    loads.record(function, reporter, peak, Instant::now());
                }
            }
            _ = ticks.tick() => {
                let started = Instant::now();
                let observed = sluice_nats::depth::queue_depths(&invocations)
                    .await
                    .map(|mut observed| {
                        loads.add_to(&mut observed, Instant::now());
                        observed
                    });
                if readings.send(Reading { observed, started }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The next load report; never, without a subscription (or once it ends).
async fn next_report(reports: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match reports {
        Some(subscriber) => match subscriber.next().await {
            Some(report) => Some(report),
            None => {
                *reports = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

impl Autoscaler {
    /// Decides and writes for every function from a reading of every
    /// queue.
    async fn tick(&mut self, reading: Reading) {
        let started = reading.started;
        match reading.observed {
            Ok(mut observed) => {
                keep_woken(&mut observed, &self.observed, &mut self.woken, started);
                self.observed = observed;
                self.read = true;
                self.evaluate(None, Instant::now()).await;
                self.ctx
                    .metrics
                    .autoscaler
                    .ticked(started.elapsed().as_secs_f64(), true);
            }
            Err(e) => {
                // Nothing is decided without a reading: replicas stay.
                tracing::warn!(error = %e, "cannot read queue depths; replicas left as they are");
                self.ctx
                    .metrics
                    .autoscaler
                    .ticked(started.elapsed().as_secs_f64(), false);
            }
        }
    }

    /// A first invocation reached `function` at zero, seen `at`.
    async fn wake(&mut self, function: &FunctionRef, at: Instant) {
        self.woken.insert(function.clone(), at);
        let observed = self.observed.entry(function.clone()).or_default();
        observed.pending = observed.pending.max(1);
        tracing::debug!(%function, "first invocation at zero");
        self.evaluate(Some(function), at).await;
    }
}

/// Takes `before`'s observation of each function woken after `started`
/// (when the reading `reading` began) into `reading` where the reading
/// lacks it: a function registered and woken while the queues were being
/// read has no consumer in that listing, and without its wake's
/// observation the pool's sum would drop it until the next reading. Wakes
/// before `started` are forgotten: the reading covers them.
fn keep_woken(
    reading: &mut HashMap<FunctionRef, Observation>,
    before: &HashMap<FunctionRef, Observation>,
    woken: &mut HashMap<FunctionRef, Instant>,
    started: Instant,
) {
    woken.retain(|_, at| *at >= started);
    for function in woken.keys() {
        if !reading.contains_key(function)
            && let Some(seen) = before.get(function)
        {
            reading.insert(function.clone(), *seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_function_woken_after_a_reading_began_keeps_its_wake_in_that_reading() {
        let function = |name: &str| FunctionRef::new("default", name).expect("a reference");
        let woken = |pending: u64| Observation {
            pending,
            ..Observation::default()
        };
        let started = Instant::now();
        let before: HashMap<_, _> = [
            (function("new"), woken(1)),
            (function("old-wake"), woken(1)),
            (function("read"), woken(1)),
            (function("gone"), woken(3)),
        ]
        .into();
        let mut wakes: HashMap<_, _> = [
            (function("new"), started + Duration::from_millis(5)),
            (function("old-wake"), started - Duration::from_millis(5)),
            (function("read"), started + Duration::from_millis(5)),
        ]
        .into();
        let mut reading: HashMap<_, _> = [(function("read"), woken(7))].into();
        keep_woken(&mut reading, &before, &mut wakes, started);
        // Woken after the reading began and missing from it: kept. Woken
        // before, or not woken: the reading decides. In the reading: its own.
        let expected: HashMap<_, _> =
            [(function("new"), woken(1)), (function("read"), woken(7))].into();
        assert_eq!(reading, expected);
        // Until a reading begun after the wake comes in.
        assert_eq!(
            wakes.keys().collect::<std::collections::BTreeSet<_>>(),
            [function("new"), function("read")].iter().collect()
        );
        let mut later = HashMap::new();
        keep_woken(
            &mut later,
            &reading,
            &mut wakes,
            started + Duration::from_millis(10),
        );
        assert!(later.is_empty() && wakes.is_empty(), "{later:?} {wakes:?}");
    }
}
