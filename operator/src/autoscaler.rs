//! The autoscaler: sizes runtime Deployments from queue depth, down to zero
//! and back, with the pure rule of [`sluice_api::autoscale`].
//!
//! It is the one reader of queue depth. Every tick (default 1 s) it lists
//! the invocation stream's consumers page by page (JetStream's
//! `CONSUMER.LIST`, 256 a page: a few requests per tick however many
//! functions there are), decides each function's replicas, and writes:
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
//! function's invocation subject ([`Waker`]): the first invocation wakes it
//! at once instead of at the next tick. The stream keeps the invocation
//! meanwhile, so nothing is lost while a runtime starts.
//!
//! What it remembers is only what delays need (each function's
//! [`History`]); after a restart (or a change of leader) each function
//! resumes from the replicas it is found running with, so nothing dips.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource as _, ResourceExt as _};
use sluice_api::autoscale::{self, Decision, History, Observation};
use sluice_api::names::FunctionRef;
use sluice_api::{Condition, Function, Placement};
use tokio::sync::mpsc;

use crate::conditions::{self, Observed, Status};
use crate::context::{AutoscalerConfig, Context};
use crate::resources::{self, MANAGED_BY};

/// The field manager of the autoscaler's writes (scales and its status
/// fields), apart from the operator's so that neither takes the other's.
pub const FIELD_MANAGER: &str = "sluice-autoscaler";
/// The condition the autoscaler keeps: `True` while the function's runtimes
/// are scaled above zero. Not part of `Ready`.
pub const ACTIVE: &str = "Active";
/// How often, at most, a changing `status.queueDepth` alone is written
/// ([`depth_due`]).
const DEPTH_STATUS_EVERY: Duration = Duration::from_secs(30);

/// The order of magnitude of a queue depth: 0, then 1 for 1–9, 2 for
/// 10–99, and so on.
fn depth_band(depth: u64) -> u32 {
    depth.checked_ilog10().map_or(0, |log| log + 1)
}

/// Whether `status.queueDepth` alone is worth a status write (a change of
/// replicas or conditions writes it anyway): when the depth changed its
/// order of magnitude ([`depth_band`]) and the last depth write is
/// [`DEPTH_STATUS_EVERY`] old, or at once when the queue became empty. The
/// exact depth is in `sluice_queue_depth` every tick; a busy function's
/// status is not rewritten each time its depth moves.
fn depth_due(shown: u64, now: u64, since_written: Duration) -> bool {
    if depth_band(shown) == depth_band(now) {
        return false;
    }
    now == 0 || since_written >= DEPTH_STATUS_EVERY
}
/// Writes to the API server in flight at once within one tick.
const WRITES_AT_ONCE: usize = 16;

/// What the status shows of a function's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shown {
    replicas: u32,
    desired: u32,
    depth: u64,
    active: Option<bool>,
}

/// What the autoscaler keeps of one function.
struct Tracked {
    history: History,
    shown: Shown,
    shown_at: Instant,
    /// The last status write failed: write it again.
    stale: bool,
}

/// One write a decision calls for.
enum Write {
    Scale {
        namespace: String,
        name: String,
        replicas: u32,
        /// When the demand behind it was seen, and how.
        seen_at: Instant,
        trigger: &'static str,
    },
    Status {
        function: FunctionRef,
        patch: serde_json::Value,
    },
    Event {
        regarding: Box<ObjectReference>,
        event: Event,
    },
}

/// Why the autoscaler could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to {subject}: {source}")]
pub struct WakeError {
    subject: String,
    #[source]
    source: async_nats::SubscribeError,
}

/// Core NATS subscriptions on the invocation subjects of functions at
/// zero: the first invocation of one is reported at once.
struct Waker {
    nats: async_nats::Client,
    watching: HashMap<FunctionRef, tokio::task::AbortHandle>,
    woken: mpsc::UnboundedSender<(FunctionRef, Instant)>,
    wakes: mpsc::UnboundedReceiver<(FunctionRef, Instant)>,
}

impl Waker {
    fn new(nats: async_nats::Client) -> Self {
        let (woken, wakes) = mpsc::unbounded_channel();
        Self {
            nats,
            watching: HashMap::new(),
            woken,
            wakes,
        }
    }

    /// Subscribes to `function`'s invocations unless it already is. An
    /// invocation published before the subscription took effect is seen by
    /// the next tick instead.
    async fn watch(&mut self, function: &FunctionRef) -> Result<(), WakeError> {
        if self.watching.contains_key(function) {
            return Ok(());
        }
        let subject = function.invoke_subject();
        let mut subscriber = self
            .nats
            .subscribe(subject.clone())
            .await
            .map_err(|source| WakeError { subject, source })?;
        let woken = self.woken.clone();
        let reference = function.clone();
        let task = tokio::spawn(async move {
            if subscriber.next().await.is_some() {
                let _ = woken.send((reference, Instant::now()));
            }
            // Dropped: unsubscribed after the first, as one is enough.
        });
        self.watching.insert(function.clone(), task.abort_handle());
        Ok(())
    }

    fn unwatch(&mut self, function: &FunctionRef) {
        if let Some(task) = self.watching.remove(function) {
            task.abort();
        }
    }

    /// The next function woken, and when its first invocation was seen.
    async fn next(&mut self) -> (FunctionRef, Instant) {
        loop {
            // Never `None`: `self.woken` keeps the channel open.
            if let Some((function, at)) = self.wakes.recv().await
                // Unwatched since (deleted, or scaled by a tick first).
                && self.watching.remove(&function).is_some()
            {
                return (function, at);
            }
        }
    }
}

impl Drop for Waker {
    /// Ends the subscriptions with the autoscaler (its replica may have
    /// lost the leadership): a task left behind would hold one until a
    /// message came.
    fn drop(&mut self) {
        for task in self.watching.values() {
            task.abort();
        }
    }
}

/// A function the autoscaler considers this time.
struct Member {
    function: Arc<Function>,
    reference: FunctionRef,
    observed: Observation,
    decision: Decision,
}

/// The autoscaler's state while this replica leads.
struct Autoscaler {
    ctx: Arc<Context>,
    config: AutoscalerConfig,
    /// One store per watched namespace (or one for the cluster).
    functions: Vec<Store<Function>>,
    deployments: Vec<Store<Deployment>>,
    pool: Option<Store<Deployment>>,
    tracked: HashMap<FunctionRef, Tracked>,
    observed: HashMap<FunctionRef, Observation>,
    waker: Waker,
    /// The pool's replicas as last decided.
    pool_written: Option<u32>,
    /// Zero of the clock that histories count in.
    epoch: Instant,
}

/// Watches `api` into a store, driven by a task that ends with the
/// returned guard.
fn follow<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, AbortOnDrop)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    (reader, AbortOnDrop(task.abort_handle()))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the autoscaler until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send) {
    let config = ctx.settings.autoscaling.clone();
    let client = ctx.client.clone();
    let scope = &ctx.settings.scope;
    let (functions, _functions_tasks): (Vec<_>, Vec<_>) = scope
        .apis::<Function>(&client)
        .into_iter()
        .map(|api| follow(api, watcher::Config::default().any_semantic()))
        .unzip();
    let (deployments, _deployments_tasks): (Vec<_>, Vec<_>) = scope
        .apis::<Deployment>(&client)
        .into_iter()
        .map(|api| {
            follow(
                api,
                watcher::Config::default()
                    .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
                    .any_semantic(),
            )
        })
        .unzip();
    let (pool, _pool_task) = match &config.pool {
        Some(pool) => {
            let (store, task) = follow(
                Api::<Deployment>::namespaced(client.clone(), &pool.namespace),
                watcher::Config::default()
                    .fields(&format!("metadata.name={}", pool.name))
                    .any_semantic(),
            );
            (Some(store), Some(task))
        }
        None => (None, None),
    };
    tokio::pin!(shutdown);
    let ready = async {
        for store in &functions {
            let _ = store.wait_until_ready().await;
        }
        for store in &deployments {
            let _ = store.wait_until_ready().await;
        }
        if let Some(pool) = &pool {
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
        pool,
        tracked: HashMap::new(),
        observed: HashMap::new(),
        pool_written: None,
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
        autoscaler.ctx.layout.invocations.clone(),
        autoscaler.config.interval,
        readings_tx,
    ));
    let _reader = AbortOnDrop(reader.abort_handle());
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            (function, at) = autoscaler.waker.next() => autoscaler.wake(&function, at).await,
            Some(reading) = readings.recv() => autoscaler.tick(reading).await,
        }
    }
}

/// One reading of every queue, and when it began.
struct Reading {
    observed: Result<HashMap<FunctionRef, Observation>, sluice_nats::depth::DepthError>,
    started: Instant,
}

/// Reads every queue each `interval` (the next reading waits until the
/// last one is taken, so none pile up) until the receiver is gone.
async fn read_queues(
    invocations: async_nats::jetstream::stream::Stream,
    interval: Duration,
    readings: mpsc::Sender<Reading>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let observed = sluice_nats::depth::queue_depths(&invocations).await;
        if readings.send(Reading { observed, started }).await.is_err() {
            return;
        }
    }
}

impl Autoscaler {
    /// Decides and writes for every function from a reading of every
    /// queue.
    async fn tick(&mut self, reading: Reading) {
        let started = reading.started;
        match reading.observed {
            Ok(observed) => {
                self.observed = observed;
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
        let observed = self.observed.entry(function.clone()).or_default();
        observed.pending = observed.pending.max(1);
        tracing::debug!(%function, "first invocation at zero");
        self.evaluate(Some(function), at).await;
    }

    /// Decides for every function (or only `only`, keeping the others'
    /// last decisions in the pool's sum) from the last observations, seen
    /// at `seen_at`, and makes the writes that calls for.
    async fn evaluate(&mut self, only: Option<&FunctionRef>, seen_at: Instant) {
        let now = seen_at.saturating_duration_since(self.epoch);
        let trigger = if only.is_some() { "wake" } else { "tick" };
        let mut writes = Vec::new();
        let mut pool_members = Vec::new();
        let mut pool_wanted = Vec::new();
        let functions: Vec<_> = self.functions.iter().flat_map(Store::state).collect();
        let present: std::collections::HashSet<FunctionRef> =
            functions.iter().filter_map(|f| reference(f)).collect();
        self.forget_gone(&present);
        for function in functions {
            let Some(reference) = reference(&function) else {
                continue;
            };
            if function.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // No consumer yet: not registered, nothing to scale.
            let Some(observed) = self.observed.get(&reference).copied() else {
                continue;
            };
            let pooled = function.spec.placement == Placement::Pool;
            if only.is_some_and(|o| *o != reference) {
                if pooled && let Some(tracked) = self.tracked.get(&reference) {
                    pool_wanted.push(tracked.history.replicas());
                }
                continue;
            }
            if pooled {
                let resume = function.status.as_ref().map_or(0, |s| s.desired_replicas);
                let decision =
                    self.decide(&function, &reference, observed, resume, now, &mut writes);
                pool_wanted.push(decision.replicas);
                pool_members.push(Member {
                    function,
                    reference,
                    observed,
                    decision,
                });
            } else {
                self.scale_dedicated(
                    function,
                    reference,
                    observed,
                    now,
                    seen_at,
                    trigger,
                    &mut writes,
                )
                .await;
            }
        }
        self.scale_pool(pool_members, &pool_wanted, seen_at, trigger, &mut writes)
            .await;
        self.write(writes).await;
    }

    /// Forgets functions that are gone: their history, subscription and
    /// metric series.
    fn forget_gone(&mut self, present: &std::collections::HashSet<FunctionRef>) {
        let gone: Vec<FunctionRef> = self
            .tracked
            .keys()
            .filter(|f| !present.contains(*f))
            .cloned()
            .collect();
        for function in gone {
            self.tracked.remove(&function);
            self.waker.unwatch(&function);
            self.ctx.metrics.autoscaler.forget(&function);
        }
        self.observed.retain(|f, _| present.contains(f));
    }

    /// Decides `function`'s replicas, resuming its history at `resume`
    /// replicas when it is new; an Event goes with a change.
    fn decide(
        &mut self,
        function: &Function,
        reference: &FunctionRef,
        observed: Observation,
        resume: u32,
        now: Duration,
        writes: &mut Vec<Write>,
    ) -> Decision {
        let tracked = self
            .tracked
            .entry(reference.clone())
            .or_insert_with(|| Tracked {
                history: History::resume(resume, now),
                shown: shown_in(function),
                shown_at: Instant::now(),
                stale: false,
            });
        let scaling = &function.spec.scaling;
        let decision = autoscale::decide(
            scaling,
            function.spec.replicas,
            observed,
            &mut tracked.history,
            now,
        );
        self.ctx
            .metrics
            .autoscaler
            .decided(reference, observed.depth(), &decision);
        if let Some(reason) = decision.event_reason() {
            let note = decision.explain(scaling, observed);
            tracing::info!(function = %reference, "{note}");
            writes.push(Write::Event {
                regarding: Box::new(function.object_ref(&())),
                event: Event {
                    type_: EventType::Normal,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Scale".into(),
                    secondary: None,
                },
            });
        }
        decision
    }

    /// Decides for a dedicated function and scales its Deployment.
    #[allow(clippy::too_many_arguments)]
    async fn scale_dedicated(
        &mut self,
        function: Arc<Function>,
        reference: FunctionRef,
        observed: Observation,
        now: Duration,
        seen_at: Instant,
        trigger: &'static str,
        writes: &mut Vec<Write>,
    ) {
        let name = resources::dedicated_name(&reference);
        let uid = function.metadata.uid.as_deref().unwrap_or_default();
        // Only the Deployment this Function controls: one of the same name
        // that it does not (its status says PlacementConflict) is left be.
        let key = ObjectRef::new(&name).within(&reference.namespace);
        let Some(deployment) = self
            .deployments
            .iter()
            .find_map(|store| store.get(&key))
            .filter(|d| {
                d.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
        else {
            return;
        };
        // A Deployment created without replicas runs one.
        let current = spec_replicas(&deployment);
        let decision = self.decide(&function, &reference, observed, current, now, writes);
        // A change is written even when the store already shows it: the
        // store may not have caught up with the last write yet.
        if decision.replicas != current || decision.direction().is_some() {
            writes.push(Write::Scale {
                namespace: reference.namespace.clone(),
                name,
                replicas: decision.replicas,
                seen_at,
                trigger,
            });
        }
        let scaled = decision.replicas;
        self.show(
            &function,
            &reference,
            Shown {
                replicas: status_replicas(&deployment),
                desired: decision.replicas,
                depth: observed.depth(),
                active: Some(scaled > 0),
            },
            writes,
        );
        self.watch_if_idle(&function, &reference, scaled).await;
    }

    /// Scales the pool on the sum of its functions' decisions, and shows
    /// each its share.
    async fn scale_pool(
        &mut self,
        members: Vec<Member>,
        wanted: &[u32],
        seen_at: Instant,
        trigger: &'static str,
        writes: &mut Vec<Write>,
    ) {
        // No members (the last pool Function deleted) still scales: the
        // pool goes to its minimum rather than staying at its last size.
        let pool = self.config.pool.clone().and_then(|target| {
            let store = self.pool.as_ref()?;
            let deployment = store.get(&ObjectRef::new(&target.name).within(&target.namespace));
            Some((target, deployment))
        });
        let (running, scaled) = match pool {
            Some((target, Some(deployment))) => {
                let current = spec_replicas(&deployment);
                let replicas = autoscale::pool_replicas(
                    wanted.iter().copied(),
                    target.min_replicas,
                    target.max_replicas,
                );
                let changed = self.pool_written.replace(replicas) != Some(replicas);
                if replicas != current || changed {
                    tracing::info!(
                        pool = %format!("{}/{}", target.namespace, target.name),
                        "{current} → {replicas} replicas for its functions' demand"
                    );
                    writes.push(Write::Scale {
                        namespace: target.namespace.clone(),
                        name: target.name.clone(),
                        replicas,
                        seen_at,
                        trigger,
                    });
                }
                (status_replicas(&deployment), Some(replicas))
            }
            Some((target, None)) => {
                tracing::debug!(pool = %format!("{}/{}", target.namespace, target.name), "the pool Deployment does not exist; not scaled");
                (0, None)
            }
            None => (0, None),
        };
        for member in members {
            self.show(
                &member.function,
                &member.reference,
                Shown {
                    replicas: running,
                    desired: member.decision.replicas,
                    depth: member.observed.depth(),
                    active: scaled.map(|s| s > 0),
                },
                writes,
            );
            if let Some(scaled) = scaled {
                self.watch_if_idle(&member.function, &member.reference, scaled)
                    .await;
            }
        }
    }

    /// Holds a subscription on an unpinned function's invocations while its
    /// runtimes are at zero.
    async fn watch_if_idle(&mut self, function: &Function, reference: &FunctionRef, scaled: u32) {
        if scaled > 0 || function.spec.replicas.is_some() {
            self.waker.unwatch(reference);
            return;
        }
        if let Err(e) = self.waker.watch(reference).await {
            // The next tick sees its first invocation instead.
            tracing::warn!(function = %reference, error = %e, "cannot watch for a first invocation");
        }
    }

    /// Queues a status write when what the status shows changed (the queue
    /// depth alone only as [`depth_due`] says).
    fn show(
        &mut self,
        function: &Function,
        reference: &FunctionRef,
        shown: Shown,
        writes: &mut Vec<Write>,
    ) {
        let Some(tracked) = self.tracked.get_mut(reference) else {
            return;
        };
        self.ctx
            .metrics
            .autoscaler
            .running(reference, shown.replicas);
        let before = tracked.shown;
        let scale_changed = Shown {
            depth: before.depth,
            ..shown
        } != before;
        let depth_due = depth_due(before.depth, shown.depth, tracked.shown_at.elapsed());
        if !scale_changed && !depth_due && !tracked.stale {
            return;
        }
        tracked.shown = shown;
        tracked.shown_at = Instant::now();
        tracked.stale = false;
        writes.push(Write::Status {
            function: reference.clone(),
            patch: status_patch(function, shown),
        });
    }

    /// Makes `writes`, a few at once; failures are logged and left to the
    /// next tick, which decides again from what it finds.
    async fn write(&mut self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        let failed: Vec<FunctionRef> = futures::stream::iter(writes)
            .map(|write| {
                let ctx = ctx.clone();
                async move { execute(&ctx, write).await }
            })
            .buffer_unordered(WRITES_AT_ONCE)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        // A status that was not written is written again next time.
        for function in failed {
            if let Some(tracked) = self.tracked.get_mut(&function) {
                tracked.stale = true;
            }
        }
    }
}

/// Makes one write; the function whose status write failed, if one did.
async fn execute(ctx: &Context, write: Write) -> Option<FunctionRef> {
    match write {
        Write::Scale {
            namespace,
            name,
            replicas,
            seen_at,
            trigger,
        } => {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            let patch = serde_json::json!({ "spec": { "replicas": replicas } });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            match deployments
                .patch_scale(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => ctx
                    .metrics
                    .autoscaler
                    .scaled(trigger, seen_at.elapsed().as_secs_f64()),
                Err(e) => {
                    ctx.metrics.autoscaler.scale_failed(&namespace, &name);
                    tracing::warn!(deployment = %format!("{namespace}/{name}"), replicas, error = %e, "cannot scale; trying again next tick");
                }
            }
            None
        }
        Write::Status { function, patch } => {
            let api: Api<Function> = Api::namespaced(ctx.client.clone(), &function.namespace);
            match api
                .patch_status(
                    &function.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => None,
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => {
                    tracing::debug!(%function, error = %e, "cannot write the scale status");
                    Some(function)
                }
            }
        }
        Write::Event { regarding, event } => {
            if let Err(e) = ctx.recorder.publish(&event, &regarding).await {
                tracing::warn!(error = %e, reason = %event.reason, "cannot record an Event");
            }
            None
        }
    }
}

fn reference(function: &Function) -> Option<FunctionRef> {
    FunctionRef::new(function.namespace().as_deref()?, &function.name_any()).ok()
}

/// `spec.replicas` of a Deployment: one when unset, as the API server
/// defaults it.
fn spec_replicas(deployment: &Deployment) -> u32 {
    deployment
        .spec
        .replicas
        .map_or(1, |r| u32::try_from(r).unwrap_or(0))
}

/// Pods a Deployment runs now (`status.replicas`).
fn status_replicas(deployment: &Deployment) -> u32 {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(0, |r| u32::try_from(r).unwrap_or(0))
}

/// What a Function's status shows now, so that a restarted autoscaler
/// does not write every status again.
fn shown_in(function: &Function) -> Shown {
    let status = function.status.clone().unwrap_or_default();
    Shown {
        replicas: status.replicas,
        desired: status.desired_replicas,
        depth: status.queue_depth,
        active: status
            .conditions
            .iter()
            .find(|c| c.type_ == ACTIVE)
            .map(|c| c.status == "True"),
    }
}

/// The `Active` condition for `shown`.
fn active(shown: Shown) -> Observed {
    match shown.active {
        Some(true) => Observed::new(
            ACTIVE,
            Status::True,
            "ScaledUp",
            format!(
                "{} replicas wanted, {} running",
                shown.desired, shown.replicas
            ),
        ),
        Some(false) => Observed::new(
            ACTIVE,
            Status::False,
            "ScaledToZero",
            "no replicas; the first invocation scales it up",
        ),
        None => Observed::new(
            ACTIVE,
            Status::Unknown,
            "PoolNotManaged",
            "the operator runs without --pool-deployment: the runtime pool is sized outside Sluice",
        ),
    }
}

/// The status fields the autoscaler owns, for a server-side apply.
fn status_patch(function: &Function, shown: Shown) -> serde_json::Value {
    let current: &[Condition] = function
        .status
        .as_ref()
        .map_or(&[], |s| s.conditions.as_slice());
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let conditions = conditions::merge(
        current,
        &[active(shown)],
        function.metadata.generation,
        &now,
    );
    serde_json::json!({
        "apiVersion": sluice_api::API_VERSION,
        "kind": sluice_api::KIND,
        "status": {
            "replicas": shown.replicas,
            "desiredReplicas": shown.desired,
            "queueDepth": shown.depth,
            "conditions": conditions.iter().filter(|c| c.type_ == ACTIVE).collect::<Vec<_>>(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_depth_alone_is_written_on_a_change_of_magnitude_not_on_every_move() {
        let long = DEPTH_STATUS_EVERY;
        let short = Duration::from_secs(1);
        let table = [
            // (shown, now, since written, due)
            (0, 0, long, false),
            (900, 950, long, false),
            (900, 1_100, long, true),
            (900, 1_100, short, false),
            (5, 0, short, true),
            (0, 3, short, false),
            (0, 3, long, true),
            (99, 10, long, false),
            (100, 99, long, true),
        ];
        for (shown, now, since, due) in table {
            assert_eq!(
                depth_due(shown, now, since),
                due,
                "{shown} -> {now} after {since:?}"
            );
        }
        assert_eq!(
            [0, 1, 9, 10, 99, 100, u64::MAX].map(depth_band),
            [0, 1, 1, 2, 2, 3, 20]
        );
    }

    fn function(active: Option<(&str, &str)>) -> Function {
        let mut function = Function::new(
            "f",
            serde_json::from_value(serde_json::json!({ "module": { "file": "f.wasm" } }))
                .expect("a spec"),
        );
        function.metadata.generation = Some(3);
        function.status = active.map(|(status, since)| sluice_api::FunctionStatus {
            conditions: vec![Condition {
                type_: ACTIVE.into(),
                status: status.into(),
                reason: "ScaledUp".into(),
                message: String::new(),
                last_transition_time: Some(since.into()),
                observed_generation: Some(2),
            }],
            ..Default::default()
        });
        function
    }

    fn shown(active: Option<bool>) -> Shown {
        Shown {
            replicas: 2,
            desired: 3,
            depth: 40,
            active,
        }
    }

    #[test]
    fn the_status_patch_holds_only_the_autoscalers_fields() {
        let patch = status_patch(&function(None), shown(Some(true)));
        let status = patch["status"].as_object().expect("a status");
        let mut keys: Vec<&str> = status.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["conditions", "desiredReplicas", "queueDepth", "replicas"]
        );
        assert_eq!(status["replicas"], 2);
        assert_eq!(status["desiredReplicas"], 3);
        assert_eq!(status["queueDepth"], 40);
        let conditions = status["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 1, "Active only: {conditions:?}");
        assert_eq!(conditions[0]["type"], "Active");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[0]["observedGeneration"], 3);
    }

    #[test]
    fn active_keeps_its_transition_time_until_its_status_changes() {
        let since = "2026-01-01T00:00:00Z";
        let same = status_patch(&function(Some(("True", since))), shown(Some(true)));
        assert_eq!(same["status"]["conditions"][0]["lastTransitionTime"], since);
        let changed = status_patch(&function(Some(("True", since))), shown(Some(false)));
        let condition = &changed["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "ScaledToZero");
        assert_ne!(condition["lastTransitionTime"], since);
        let unmanaged = status_patch(&function(None), shown(None));
        assert_eq!(
            unmanaged["status"]["conditions"][0]["reason"],
            "PoolNotManaged"
        );
    }

    #[test]
    fn a_deployment_without_replicas_runs_one() {
        let mut deployment = Deployment::default();
        assert_eq!(spec_replicas(&deployment), 1);
        deployment.spec.replicas = Some(0);
        assert_eq!(spec_replicas(&deployment), 0);
        assert_eq!(status_replicas(&deployment), 0);
    }
}
