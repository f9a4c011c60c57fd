//! The in-process queue of local mode. It keeps the semantics of the
//! JetStream backend: per-function concurrency, one attempt for sync calls,
//! retries with exponential backoff for async ones (retryable failures
//! only), dead letters with their reason, records kept for a TTL, and
//! idempotent submits within a window.

use sluice_serve::sync::{lock, read, write};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sluice_api::dead_letter::{
    DeadLetterDetail, PurgeReport, RedriveReport, Selection, Skipped, unredrivable,
};
use sluice_api::destination;
use sluice_api::invocation::unix_millis;
use sluice_api::logs::{AttemptLog, Captured, LogBounds};
use sluice_api::names::FunctionRef;
use sluice_api::record::CANCELLED_REASON;
use sluice_api::{CancelDecision, DeadLetter, Destinations, InvocationState, cancel_decision};
use sluice_api::{
    Failure, FailureKind, Invocation, InvocationId, InvocationRecord, Outcome, RetryPolicy,
    Settlement,
};
use sluice_api::{Lane, WeightedPick};
use sluice_runtime::callback::Callbacks;
use sluice_runtime::{Attempted, PreparedFunction, Runtime};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use sluice_nats::layout;

use super::budget::{ByteBudget, QueueBound, Reservation};
use super::logs::MemoryLogs;
use super::ordered::KeyGate;
use super::{CallResult, Cancelled, InvocationQueue, LogFeed, QueueError, Submitted};
use crate::metrics::Metrics;

/// Settings of the in-process queue; its defaults are those of the
/// JetStream layout, so both queues behave alike.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Invocations a function may have queued in each of its lanes
    /// (sync calls; `high`, `normal` and `low` async work, keyed work in
    /// `normal`) before submits get 429, as each lane is a subject of its
    /// own on JetStream; so a full async queue leaves sync calls room.
    /// Default: 10000.
    pub max_depth: usize,
    /// Bytes of invocations a function may hold (queued, waiting for a
    /// retry, or running) before submits get 429. Default: 512Mi.
    pub max_bytes: u64,
    /// How long finished records stay readable. Default: 1h.
    pub results_ttl: Duration,
    /// How long an idempotency key dedupes submits. Default: 2m (the
    /// JetStream stream's duplicate window).
    pub dedupe_window: Duration,
    /// Dead letters kept per function, newest kept. Default: 1000.
    pub dead_letter_capacity: usize,
    /// Finished records kept before their TTL; past it the oldest go
    /// first. Default: 10000.
    pub max_finished_records: usize,
    /// How much of functions' logs is kept. Default: those of the log
    /// stream ([`LogBounds::default`]).
    pub logs: LogBounds,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_depth: usize::try_from(layout::DEFAULT_MAX_QUEUE_DEPTH).unwrap_or(usize::MAX),
            max_bytes: layout::DEFAULT_MAX_QUEUE_BYTES.0,
            results_ttl: layout::DEFAULT_RESULTS_TTL,
            dedupe_window: layout::DEFAULT_DUPLICATE_WINDOW,
            dead_letter_capacity: usize::try_from(layout::DEFAULT_DEAD_LETTERS_PER_SUBJECT)
                .unwrap_or(usize::MAX),
            max_finished_records: 10_000,
            logs: LogBounds::default(),
        }
    }
}

/// A function as the queue serves it.
#[derive(Debug, Clone)]
pub struct QueuedFunction {
    pub prepared: PreparedFunction,
    pub retry: RetryPolicy,
    pub concurrency: u32,
    /// Where final records go; only function destinations (the manifests
    /// refuse subjects in local mode).
    pub destinations: Destinations,
}

#[derive(Debug, Clone)]
pub struct MemoryQueue {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    budget: Arc<ByteBudget>,
    runtime: Runtime,
    config: QueueConfig,
    /// The gateway's: queue depth.
    metrics: Metrics,
    /// The runtime's: attempts, retries, dead letters.
    runtime_metrics: sluice_runtime::metrics::Metrics,
    callbacks: Callbacks,
    queues: RwLock<HashMap<FunctionRef, Arc<FunctionQueue>>>,
    records: Mutex<HashMap<InvocationId, RecordEntry>>,
    dead_letters: Mutex<HashMap<FunctionRef, VecDeque<KeptLetter>>>,
    logs: MemoryLogs,
}

#[derive(Debug)]
struct RecordEntry {
    record: watch::Sender<InvocationRecord>,
    accepted: Instant,
    /// Set once the record is final.
    expires: Option<Instant>,
    /// Cancelled by `DELETE /invocations/<id>`: interrupts its attempt.
    cancel: CancellationToken,
    callback: Option<String>,
}

impl RecordEntry {
    fn new(record: InvocationRecord, callback: Option<String>) -> Self {
        Self {
            record: watch::Sender::new(record),
            accepted: Instant::now(),
            expires: None,
            cancel: CancellationToken::new(),
            callback,
        }
    }
}

/// A dead letter with the invocation it holds, to show and redrive.
#[derive(Debug)]
struct KeptLetter {
    letter: DeadLetter,
    invocation: Arc<Invocation>,
    callback: Option<String>,
}

/// One function's queue.
#[derive(Debug)]
struct FunctionQueue {
    function: QueuedFunction,
    /// Its lanes ([`sluice_api::Lane`], indexed by [`Lane::index`]), each
    /// in the order accepted: sync calls without an ordering key, then
    /// async invocations and their retries by class. Everything with an
    /// ordering key waits in `normal`, so its key's order holds.
    lanes: [mpsc::Sender<Job>; 4],
    /// Queued, waiting for a retry, or running.
    depth: AtomicI64,
    /// Ordering keys held, with the jobs waiting for them.
    keys: KeyGate<Job>,
}

#[derive(Debug)]
enum Job {
    Call {
        invocation: Box<Invocation>,
        reply: oneshot::Sender<CallResult>,
        held: Reservation,
    },
    Deliver {
        invocation: Arc<Invocation>,
        attempt: u32,
        callback: Option<String>,
        held: Reservation,
    },
}

impl Job {
    fn invocation(&self) -> &Invocation {
        match self {
            Self::Call { invocation, .. } => invocation,
            Self::Deliver { invocation, .. } => invocation,
        }
    }

    /// The lane it waits in: `normal` with an ordering key (so its key's
    /// order holds), else the sync lane for a call and its class's for
    /// the rest.
    fn lane(&self) -> Lane {
        let invocation = self.invocation();
        if invocation.ordering_key().is_some() {
            return Lane::Normal;
        }
        Lane::of(matches!(self, Self::Call { .. }), invocation.priority())
    }

    /// A retry: its first attempt took its ordering key, which it holds.
    fn holds_key(&self) -> bool {
        matches!(self, Self::Deliver { attempt, .. } if *attempt > 1)
    }
}

impl MemoryQueue {
    pub fn new(
        runtime: Runtime,
        config: QueueConfig,
        metrics: Metrics,
        runtime_metrics: sluice_runtime::metrics::Metrics,
    ) -> Self {
        let callbacks = Callbacks::new(runtime.config().egress.clone());
        let budget = ByteBudget::new(config.max_bytes, metrics.clone());
        let logs = MemoryLogs::new(config.logs);
        let state = Arc::new(State {
            budget,
            runtime,
            config,
            metrics,
            runtime_metrics,
            callbacks,
            queues: RwLock::default(),
            records: Mutex::default(),
            dead_letters: Mutex::default(),
            logs,
        });
        tokio::spawn(sweep_expired_records(Arc::downgrade(&state)));
        Self { state }
    }

    /// Starts serving `function`, replacing an earlier version of it.
    /// Work already queued for the earlier version finishes on it.
    pub fn deploy(&self, function: QueuedFunction) {
        let depth = self.state.config.max_depth.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            Lane::ALL.map(|_| mpsc::channel(depth)).into_iter().unzip();
        let name = function.prepared.function.clone();
        let queue = Arc::new(FunctionQueue {
            function,
            lanes: senders.try_into().expect("one per queue"),
            depth: AtomicI64::new(0),
            keys: KeyGate::default(),
        });
        tokio::spawn(dispatch(
            Arc::downgrade(&self.state),
            queue.clone(),
            receivers.try_into().expect("one per queue"),
        ));
        write(&self.state.queues).insert(name, queue);
    }

    /// Invocations queued, waiting for a retry, or running.
    fn held(&self) -> usize {
        read(&self.state.queues)
            .values()
            .map(|queue| usize::try_from(queue.depth.load(Ordering::Relaxed)).unwrap_or(0))
            .sum()
    }

    fn queue_of(&self, function: &FunctionRef) -> Result<Arc<FunctionQueue>, QueueError> {
        read(&self.state.queues)
            .get(function)
            .cloned()
            .ok_or_else(|| QueueError::UnknownFunction(function.clone()))
    }
}

#[async_trait]
impl InvocationQueue for MemoryQueue {
    async fn call(&self, invocation: Invocation) -> Result<CallResult, QueueError> {
        let queue = self.queue_of(&invocation.function)?;
        let deadline = invocation.deadline;
        let (reply, answer) = oneshot::channel();
        let held = self.state.budget.hold_sync(&invocation)?;
        queue.enqueue(
            &self.state,
            Job::Call {
                invocation: Box::new(invocation),
                reply,
                held,
            },
        )?;
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        // The worker answers at the deadline at the latest; the grace
        // covers scheduling so its more precise reason wins.
        match tokio::time::timeout(wait + Duration::from_millis(250), answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(QueueError::Unavailable("the queue shut down".into())),
            Err(_) => Ok(Err(Failure {
                kind: FailureKind::Timeout,
                reason: "the invocation waited in the queue past its deadline".into(),
            })),
        }
    }

    async fn submit(
        &self,
        invocation: Invocation,
        callback: Option<String>,
    ) -> Result<Submitted, QueueError> {
        self.state.submit(invocation, callback)
    }

    async fn record(
        &self,
        id: &InvocationId,
        wait: Duration,
    ) -> Result<Option<InvocationRecord>, QueueError> {
        let Some(mut updates) = lock(&self.state.records)
            .get(id)
            .map(|e| e.record.subscribe())
        else {
            return Ok(None);
        };
        if !wait.is_zero() {
            // Whether the wait ends by timeout or by a final state, the
            // current record is the answer.
            let _ = tokio::time::timeout(wait, updates.wait_for(|r| r.state.is_final())).await;
        }
        let record = updates.borrow().clone();
        Ok(Some(record))
    }

    async fn dead_letter(
        &self,
        invocation: &Invocation,
        _subject: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.state
            .dead_letter(Arc::new(invocation.clone()), None, 0, reason.to_owned());
        Ok(())
    }

    async fn drain(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut held = self.held();
        if held > 0 {
            tracing::info!(held, "finishing accepted invocations");
        }
        while held > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
            held = self.held();
        }
        let callbacks = self
            .state
            .callbacks
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await;
        held + callbacks
    }

    async fn dead_letters(
        &self,
        function: &FunctionRef,
        _subject: &str,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(lock(&self.state.dead_letters)
            .get(function)
            .map(|d| d.iter().map(|kept| kept.letter.clone()).collect())
            .unwrap_or_default())
    }

    async fn cancel(&self, id: &InvocationId) -> Result<Option<Cancelled>, QueueError> {
        let mut records = lock(&self.state.records);
        let Some(entry) = records.get_mut(id) else {
            return Ok(None);
        };
        let state = entry.record.borrow().state;
        let decision = cancel_decision(state);
        let mut callback = None;
        if decision == CancelDecision::Cancel {
            entry.cancel.cancel();
            // A running attempt ends cancelled at its next epoch tick and
            // settles itself; a queued one (or one waiting for its retry)
            // ends here, and its job is skipped when its turn comes.
            if state == InvocationState::Queued {
                entry.record.send_modify(InvocationRecord::cancel);
                entry.expires = Some(Instant::now() + self.state.config.results_ttl);
                callback = entry.callback.clone();
            }
        }
        let record = entry.record.borrow().clone();
        drop(records);
        if let Some(url) = callback {
            self.state.callbacks.deliver(url, record.clone());
        }
        Ok(Some(Cancelled { decision, record }))
    }

    async fn dead_letter_detail(
        &self,
        function: &FunctionRef,
        _subject: &str,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterDetail>, QueueError> {
        Ok(lock(&self.state.dead_letters).get(function).and_then(|d| {
            d.iter()
                .find(|kept| kept.letter.id.as_ref() == Some(id))
                .map(|kept| DeadLetterDetail {
                    letter: kept.letter.clone(),
                    request: Some(kept.invocation.as_ref().into()),
                })
        }))
    }

    async fn redrive(
        &self,
        function: &FunctionRef,
        _subject: &str,
        selection: &Selection,
        deadline: SystemTime,
    ) -> Result<RedriveReport, QueueError> {
        let queue = self.queue_of(function)?;
        let mut report = RedriveReport::default();
        // Taken out under the lock: a concurrent redrive cannot take the
        // same dead letter.
        let taken = self
            .state
            .take_dead_letters(function, selection, &mut report);
        let mut back = Vec::new();
        for kept in taken {
            let mut invocation = (*kept.invocation).clone();
            invocation.deadline = deadline;
            let id = invocation.id.clone();
            let record = InvocationRecord::accepted(&invocation);
            let mut records = lock(&self.state.records);
            let queued = self.state.budget.hold(&invocation).and_then(|held| {
                let job = Job::Deliver {
                    invocation: Arc::new(invocation),
                    attempt: 1,
                    callback: kept.callback.clone(),
                    held,
                };
                queue.enqueue(&self.state, job)
            });
            match queued {
                Ok(()) => {
                    records.insert(id.clone(), RecordEntry::new(record, kept.callback));
                    report.redriven.push(id);
                }
                Err(e) => {
                    report.skipped.push(Skipped {
                        id: Some(id),
                        reason: e.to_string(),
                    });
                    back.push(kept);
                }
            }
        }
        if !back.is_empty() {
            let mut all = lock(&self.state.dead_letters);
            let list = all.entry(function.clone()).or_default();
            for kept in back.into_iter().rev() {
                list.push_front(kept);
            }
        }
        Ok(report)
    }

    async fn purge(
        &self,
        function: &FunctionRef,
        _subject: &str,
        selection: &Selection,
    ) -> Result<PurgeReport, QueueError> {
        let mut all = lock(&self.state.dead_letters);
        let Some(list) = all.get_mut(function) else {
            return Ok(PurgeReport::default());
        };
        let before = list.len();
        list.retain(|kept| !selection.selects(&kept.letter));
        Ok(PurgeReport {
            purged: (before - list.len()) as u64,
        })
    }

    async fn invocation_logs(
        &self,
        function: &FunctionRef,
        id: &InvocationId,
    ) -> Result<Vec<AttemptLog>, QueueError> {
        Ok(self.state.logs.of_invocation(function, id))
    }

    async fn function_logs(
        &self,
        function: &FunctionRef,
        since: SystemTime,
        follow: bool,
    ) -> Result<LogFeed, QueueError> {
        Ok(self.state.logs.of_function(function, since, follow))
    }
}

/// How often a draining queue looks whether it is empty.
const DRAIN_POLL: Duration = Duration::from_millis(20);

impl FunctionQueue {
    fn enqueue(&self, state: &State, job: Job) -> Result<(), QueueError> {
        let function = &self.function.prepared.function;
        let keyed = super::ordering_key(job.invocation())?.is_some();
        let queue = &self.lanes[job.lane().index()];
        if keyed {
            // Jobs waiting behind a key have left the channel: they count
            // against the same depth bound.
            let queued = queue.max_capacity() - queue.capacity();
            if queued + self.keys.waiting() >= state.config.max_depth.max(1) {
                return Err(state.budget.full(function, QueueBound::Depth));
            }
        }
        queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => state.budget.full(function, QueueBound::Depth),
            mpsc::error::TrySendError::Closed(_) => {
                QueueError::Unavailable("the queue shut down".into())
            }
        })?;
        self.adjust_depth(&state.metrics, 1);
        Ok(())
    }

    fn adjust_depth(&self, metrics: &Metrics, delta: i64) {
        let depth = self.depth.fetch_add(delta, Ordering::Relaxed) + delta;
        metrics.set_queue_depth(&self.function.prepared.function, depth);
    }
}

/// Starts a function's jobs, up to `concurrency` at once: whenever a slot
/// is free, the head of the lane [`WeightedPick`] picks among those with
/// work (sync 8 : high 4 : normal 2 : low 1), each lane in order; a job
/// whose ordering key is held waits for it ([`KeyGate`]).
async fn dispatch(
    state: Weak<State>,
    queue: Arc<FunctionQueue>,
    mut lanes: [mpsc::Receiver<Job>; 4],
) {
    let permits = Arc::new(Semaphore::new(queue.function.concurrency.max(1) as usize));
    let mut pick = WeightedPick::default();
    let mut permit = None;
    loop {
        // The slot first, the job then: what starts is chosen when it can.
        let slot = match permit.take() {
            Some(slot) => slot,
            None => match permits.clone().acquire_owned().await {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let Some(job) = next_job(&mut lanes, &mut pick).await else {
            return;
        };
        let key = job.invocation().ordering_key().map(str::to_owned);
        let Some(job) = queue.keys.admit(key.as_deref(), job.holds_key(), job) else {
            permit = Some(slot);
            continue;
        };
        let Some(state) = state.upgrade() else { return };
        tokio::spawn(run_in_order(
            state,
            queue.clone(),
            permits.clone(),
            job,
            slot,
        ));
    }
}

/// The next job to start: the head of the lane `pick` chooses among those
/// with work waiting, else the first to receive one (the highest lane if
/// several do at once). `None` once every lane is closed.
async fn next_job(lanes: &mut [mpsc::Receiver<Job>; 4], pick: &mut WeightedPick) -> Option<Job> {
    if let Some(class) = pick.pick(|class| !lanes[class.index()].is_empty())
        && let Ok(job) = lanes[class.index()].try_recv()
    {
        return Some(job);
    }
    let [sync, high, normal, low] = lanes;
    tokio::select! {
        biased;
        Some(job) = sync.recv() => Some(job),
        Some(job) = high.recv() => Some(job),
        Some(job) = normal.recv() => Some(job),
        Some(job) = low.recv() => Some(job),
        else => None,
    }
}

/// Runs `job`, then, when it ended holding an ordering key, the next job
/// waiting for that key (each with a permit of its own).
async fn run_in_order(
    state: Arc<State>,
    queue: Arc<FunctionQueue>,
    permits: Arc<Semaphore>,
    mut job: Job,
    mut permit: tokio::sync::OwnedSemaphorePermit,
) {
    loop {
        let key = job.invocation().ordering_key().map(str::to_owned);
        let retrying = run(&state, &queue, job).await;
        drop(permit);
        // A retry keeps the key: it comes back through the channel.
        let Some(key) = key.filter(|_| !retrying) else {
            return;
        };
        let Some(next) = queue.keys.release(&key) else {
            return;
        };
        let Ok(next_permit) = permits.clone().acquire_owned().await else {
            return;
        };
        (job, permit) = (next, next_permit);
    }
}

/// Runs one attempt of `job`; true when a retry of it was scheduled.
async fn run(state: &Arc<State>, queue: &Arc<FunctionQueue>, job: Job) -> bool {
    match job {
        Job::Call {
            invocation,
            reply,
            held,
        } => {
            let Attempted { outcome, logs, .. } = attempt(state, queue, &invocation).await;
            state.keep_logs(&invocation, 1, logs);
            drop(held);
            queue.adjust_depth(&state.metrics, -1);
            // The caller may have given up; then nobody needs the answer.
            let _ = reply.send(match outcome {
                Outcome::Responded(response) => Ok(response),
                Outcome::Failed(failure) => Err(failure),
            });
            false
        }
        Job::Deliver {
            invocation,
            attempt: number,
            callback,
            held,
        } => {
            let Some(cancel) = state.start(&invocation.id, number) else {
                // Cancelled while it waited: it never runs.
                queue.adjust_depth(&state.metrics, -1);
                return false;
            };
            let mut attempted = state
                .runtime
                .attempt(
                    &queue.function.prepared,
                    &invocation,
                    &state.runtime_metrics,
                    &cancel,
                )
                .await;
            let logs = std::mem::take(&mut attempted.logs);
            state.keep_logs(&invocation, number, logs);
            let next = Next {
                invocation,
                attempt: number,
                callback,
                held,
            };
            settle(state, queue, next, attempted, &cancel)
        }
    }
}

async fn attempt(state: &State, queue: &FunctionQueue, invocation: &Invocation) -> Attempted {
    state
        .runtime
        .attempt(
            &queue.function.prepared,
            invocation,
            &state.runtime_metrics,
            &CancellationToken::new(),
        )
        .await
}

/// An async invocation after an attempt, with the bytes it holds.
struct Next {
    invocation: Arc<Invocation>,
    attempt: u32,
    callback: Option<String>,
    held: Reservation,
}

/// Acts on what follows an async attempt: done, retry later (true), or
/// dead letter.
fn settle(
    state: &Arc<State>,
    queue: &Arc<FunctionQueue>,
    next: Next,
    attempted: Attempted,
    cancel: &CancellationToken,
) -> bool {
    let Next {
        invocation,
        attempt: number,
        callback,
        held,
    } = next;
    let Attempted { outcome, usage, .. } = attempted;
    let mut settlement = outcome.settle(&invocation.id, number, &queue.function.retry);
    if cancel.is_cancelled() && matches!(settlement, Settlement::Retry { .. }) {
        // Cancelled as the attempt failed: no retry follows.
        settlement = Settlement::Final {
            state: InvocationState::Cancelled,
            error: Some(CANCELLED_REASON.to_owned()),
        };
    }
    if let Settlement::Retry { delay, .. } = settlement {
        state.update(&invocation.id, |r| {
            r.after_attempt(&outcome, &settlement);
            r.usage = usage;
        });
        state.runtime_metrics.retried(&invocation.function);
        let retry = Next {
            invocation,
            attempt: number + 1,
            callback,
            held,
        };
        schedule_retry(queue.clone(), retry, delay);
        return true;
    }
    if let Settlement::Final {
        error: Some(reason),
        ..
    } = &settlement
        && settlement.is_dead_letter()
    {
        state.dead_letter(invocation.clone(), callback.clone(), number, reason.clone());
    }
    let expires = Instant::now() + state.config.results_ttl;
    let record = state.finish(&invocation.id, expires, |r| {
        r.after_attempt(&outcome, &settlement);
        r.usage = usage;
    });
    drop(held);
    queue.adjust_depth(&state.metrics, -1);
    if let Some(record) = &record {
        state.deliver(&queue.function.destinations, record);
    }
    if let (Some(url), Some(record)) = (callback, record) {
        state.callbacks.deliver(url, record);
    }
    false
}

fn schedule_retry(queue: Arc<FunctionQueue>, next: Next, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let job = Job::Deliver {
            invocation: next.invocation,
            attempt: next.attempt,
            callback: next.callback,
            held: next.held,
        };
        // A retry waits for room rather than failing: it was accepted once.
        let _ = queue.lanes[job.lane().index()].send(job).await;
    });
}

impl State {
    /// Keeps what attempt `number` of `invocation` wrote, if anything.
    fn keep_logs(&self, invocation: &Invocation, number: u32, logs: Captured) {
        if !logs.is_empty() {
            self.logs.keep(AttemptLog::new(
                invocation.id.clone(),
                invocation.function.clone(),
                number,
                logs,
            ));
        }
    }

    /// Queues an async invocation; a second one with the same id within
    /// the dedupe window is a duplicate, queued no more.
    fn submit(
        &self,
        invocation: Invocation,
        callback: Option<String>,
    ) -> Result<Submitted, QueueError> {
        let queue = read(&self.queues)
            .get(&invocation.function)
            .cloned()
            .ok_or_else(|| QueueError::UnknownFunction(invocation.function.clone()))?;
        let id = invocation.id.clone();
        // The record and the job go in under one lock: a duplicate submit
        // must never see a record whose job then fails to queue.
        let mut records = lock(&self.records);
        if let Some(entry) = records.get(&id)
            && entry.accepted.elapsed() < self.config.dedupe_window
        {
            return Ok(Submitted {
                id,
                duplicate: true,
            });
        }
        let record = InvocationRecord::accepted(&invocation);
        let held = self.budget.hold(&invocation)?;
        let job = Job::Deliver {
            invocation: Arc::new(invocation),
            attempt: 1,
            callback: callback.clone(),
            held,
        };
        queue.enqueue(self, job)?;
        records.insert(id.clone(), RecordEntry::new(record, callback));
        drop(records);
        Ok(Submitted {
            id,
            duplicate: false,
        })
    }

    /// Delivers a final `record` to its function destination, if it has
    /// one: an async invocation under an id derived from the record's, so
    /// it is queued once.
    fn deliver(&self, destinations: &Destinations, record: &InvocationRecord) {
        let Some((kind, destination)) = destinations.for_state(record.state) else {
            return;
        };
        let Some(name) = &destination.function else {
            return;
        };
        let queued = FunctionRef::new(&record.function.namespace, name)
            .map_err(|e| QueueError::Unavailable(e.to_string()))
            .and_then(|target| {
                let deadline = SystemTime::now() + destination::CHAINED_DEADLINE;
                self.submit(
                    destination::chained_invocation(record, kind, &target, deadline),
                    None,
                )
            });
        if let Err(e) = queued {
            tracing::warn!(function = %record.function, invocation = %record.id, destination = kind.as_str(), error = %e, "cannot deliver the final record to its destination");
        }
    }

    /// Marks attempt `number` of `id` running and returns its cancel
    /// token; `None` when it was cancelled before (it must not run). Under
    /// the records' lock, so that a cancel sees it queued or running.
    fn start(&self, id: &InvocationId, number: u32) -> Option<CancellationToken> {
        let records = lock(&self.records);
        let Some(entry) = records.get(id) else {
            // Evicted past max_finished_records: still run it.
            return Some(CancellationToken::new());
        };
        if entry.record.borrow().state == InvocationState::Cancelled {
            return None;
        }
        entry.record.send_modify(|r| r.running(number));
        Some(entry.cancel.clone())
    }

    /// Removes the dead letters of `function` that `selection` picks and
    /// that can be redriven; those that cannot stay, noted in `report`.
    fn take_dead_letters(
        &self,
        function: &FunctionRef,
        selection: &Selection,
        report: &mut RedriveReport,
    ) -> Vec<KeptLetter> {
        let mut all = lock(&self.dead_letters);
        let Some(list) = all.get_mut(function) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        for kept in std::mem::take(list) {
            if !selection.selects(&kept.letter) {
                list.push_back(kept);
            } else if let Some(reason) = unredrivable(&kept.letter) {
                report.skipped.push(Skipped {
                    id: kept.letter.id.clone(),
                    reason,
                });
                list.push_back(kept);
            } else {
                taken.push(kept);
            }
        }
        taken
    }

    fn update(&self, id: &InvocationId, change: impl FnOnce(&mut InvocationRecord)) {
        if let Some(entry) = lock(&self.records).get(id) {
            entry.record.send_modify(change);
        }
    }

    fn finish(
        &self,
        id: &InvocationId,
        expires: Instant,
        change: impl FnOnce(&mut InvocationRecord),
    ) -> Option<InvocationRecord> {
        let mut records = lock(&self.records);
        let entry = records.get_mut(id)?;
        entry.record.send_modify(change);
        entry.expires = Some(expires);
        Some(entry.record.borrow().clone())
    }

    fn dead_letter(
        &self,
        invocation: Arc<Invocation>,
        callback: Option<String>,
        attempts: u32,
        reason: String,
    ) {
        // The same one line as a dead letter on NATS carries.
        let reason = sluice_api::reason_line(&reason);
        tracing::warn!(function = %invocation.function, invocation = %invocation.id, %reason, "dead-lettered");
        self.runtime_metrics.dead_lettered(&invocation.function);
        let mut all = lock(&self.dead_letters);
        let list = all.entry(invocation.function.clone()).or_default();
        if list.len() >= self.config.dead_letter_capacity {
            list.pop_front();
        }
        let letter = DeadLetter {
            id: Some(invocation.id.clone()),
            function: invocation.function.clone(),
            reason,
            attempts,
            truncated: None,
            method: Some(invocation.method.to_string()),
            path: Some(invocation.path_and_query()),
            dead_lettered_at: unix_millis(SystemTime::now()),
        };
        list.push_back(KeptLetter {
            letter,
            invocation,
            callback,
        });
    }
}

/// Drops expired records every second, and the oldest finished ones past
/// `max_finished_records`: each may hold a response of megabytes.
async fn sweep_expired_records(state: Weak<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let now = Instant::now();
        let mut records = lock(&state.records);
        records.retain(|_, e| e.expires.is_none_or(|t| t > now));
        if records.len() <= state.config.max_finished_records {
            continue;
        }
        let mut finished: Vec<(Instant, InvocationId)> = records
            .iter()
            .filter_map(|(id, e)| Some((e.expires?, id.clone())))
            .collect();
        let excess = finished
            .len()
            .saturating_sub(state.config.max_finished_records);
        if excess > 0 {
            finished.select_nth_unstable(excess - 1);
            for (_, id) in &finished[..excess] {
                records.remove(id);
            }
        }
    }
}
