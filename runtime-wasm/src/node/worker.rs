//! Serving one function from its durable consumer: asleep until woken
//! ([`super::wake`]), then pull as many messages as there are free slots
//! until a pull comes back empty; run each, then reply, record, dead-letter
//! or retry, and only then acknowledge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind, kv};
use futures::StreamExt as _;
use sluice_api::Lane;
use sluice_api::destination::{self, DestinationKind};
use sluice_api::invocation::{CALLBACK_HEADER, REPLY_TO_HEADER};
use sluice_api::logs::{AttemptLog, Captured};
use sluice_api::names::{FunctionRef, Queue, result_subject};
use sluice_api::{
    Destination, Invocation, InvocationId, InvocationRecord, InvocationState, Settlement,
};
use sluice_nats::dead_letter::{self, DeadLetterError, GivenUp};
use sluice_nats::layout::{Layout, ack_wait};
use sluice_nats::patience::retry_delay;
use sluice_nats::{PAYLOAD_HEADROOM, failover, header_pairs, reply};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::cancel::Running;
use super::direct::{self, Lines};
use super::loader::Served;
use super::ordered;
use super::slots::{LaneSlot, LaneSlots};
use super::wake::{self, SideWakes, Wakes};
use crate::callback::Callbacks;
use crate::metrics::Metrics;
use crate::{Attempted, Runtime};

/// How long one pull waits for messages. It bounds how long a stopping
/// worker keeps taking the messages it asked for, and how long a woken
/// worker stays awake without work (the wake can come before the stream
/// has stored the message that caused it).
pub(super) const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// How long a pull may go without any answer from the server before it is
/// given up as lost: past a waiting pull's own expiry and async-nats' 5 s
/// of grace after it.
const PULL_UNANSWERED: Duration = Duration::from_secs(10);

/// What every worker of a node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub runtime: Runtime,
    pub layout: Layout,
    pub client: async_nats::Client,
    pub metrics: Metrics,
    pub callbacks: Callbacks,
    /// Async invocations running here, for cancels to reach.
    pub running: Arc<Running>,
    pub wakes: Wakes,
    /// Each function's direct calls ([`direct`]).
    pub lines: Lines,
}

/// A running worker; stop it with [`Worker::stop`], then await [`Worker::join`].
#[derive(Debug)]
pub(crate) struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Taking direct calls ([`super::direct`]).
    calls: JoinHandle<()>,
}

impl Worker {
    /// Serves the function's `normal` lane, direct calls
    /// once it is warm ([`direct`]) and, as they are found to have work,
    /// its other lanes and its ordering buckets ([`ordered`]), all within
    /// one `concurrency` of slots shared by lane ([`LaneSlots`]).
    /// The `normal` lane's consumer is opened (created if missing) by its
    /// loop, which retries while NATS cannot.
    pub fn start(shared: Arc<Shared>, served: Arc<Served>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let wakes = shared.wakes.register(&served.function);
        let slots = LaneSlots::new(served.spec.concurrency.max(1) as usize);
        let (warm, warmed) = watch::channel(false);
        let calls = direct::serve(
            shared.clone(),
            served.clone(),
            slots.clone(),
            warmed,
            stopped.clone(),
        );
        let task = tokio::spawn(async move {
            let puller = Puller {
                shared: shared.clone(),
                served: served.clone(),
                slots,
                warm: Arc::new(warm),
                stopped,
            };
            let normal = puller.clone().pull_loop(Lane::Normal, wakes.normal.clone());
            let side = puller.serve_side_queues(wakes.side.clone());
            // What waits in the other lanes and buckets from before this
            // worker is announced by no publish: ask the stream now.
            let [_, side_subjects] = served.function.queue_subjects();
            let swept = wake::sweep_once(&shared, &side_subjects);
            tokio::join!(normal, side, swept);
            shared.wakes.unregister(&served.function, &wakes);
            tracing::info!(function = %served.function, "stopped serving");
        });
        Self { stop, task, calls }
    }

    /// Stops pulling and taking direct calls; what was taken still runs
    /// to its acknowledgement or reply.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn join(self) {
        let _ = self.task.await;
        let _ = self.calls.await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished() && self.calls.is_finished()
    }
}

/// What every pull loop of one worker shares.
#[derive(Clone)]
pub(super) struct Puller {
    pub shared: Arc<Shared>,
    pub served: Arc<Served>,
    /// The function's slots, shared by its lanes, buckets and direct calls.
    pub slots: Arc<LaneSlots>,
    /// Set once any of its loops took an invocation: from then on the
    /// function takes direct calls.
    warm: Arc<watch::Sender<bool>>,
    pub stopped: watch::Receiver<bool>,
}

impl Puller {
    /// Starts a loop for each lane other than `normal` and each ordering
    /// bucket as it is first woken, and wakes those already running, until
    /// told to stop; then waits for every loop to finish what it holds.
    async fn serve_side_queues(self, woken: Arc<SideWakes>) {
        let mut loops: HashMap<Queue, Arc<Notify>> = HashMap::new();
        let mut running = JoinSet::new();
        let mut stopped = self.stopped.clone();
        loop {
            let queues = tokio::select! {
                queues = woken.next() => queues,
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            for queue in queues {
                if let Some(wake) = loops.get(&queue) {
                    wake.notify_one();
                    continue;
                }
                let wake = Arc::new(Notify::new());
                loops.insert(queue, wake.clone());
                match queue {
                    Queue::Lane(lane) => {
                        running.spawn(self.clone().pull_loop(lane, wake));
                    }
                    Queue::Bucket(bucket) => {
                        running.spawn(ordered::bucket_loop(self.clone(), bucket, wake));
                    }
                }
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Serves one lane: asleep until woken, then fetches as many messages
    /// as it got slots until a pull comes back empty. The lane's consumer
    /// is opened (created) first; a pull that fails is tried again on it
    /// after a pause ([`Retry`]), never creating it again (a deleted
    /// function's is not brought back).
    async fn pull_loop(self, lane: Lane, wake: Arc<Notify>) {
        let Self {
            shared,
            served,
            slots,
            warm,
            mut stopped,
        } = self;
        let function = &served.function;
        let mut consumer: Option<PullConsumer> = None;
        let mut running = JoinSet::new();
        // Awake at the start: what was queued before this loop is
        // announced by no publish (or it was started by a wake).
        let mut awake = true;
        // The next slot of a lane that found work, in line while it fetched.
        let mut upcoming = None;
        let mut retry = Retry::default();
        loop {
            while running.try_join_next().is_some() {}
            if !awake {
                tokio::select! {
                    () = wake.notified() => awake = true,
                    _ = stopped.wait_for(|stop| *stop) => break,
                }
            }
            if *stopped.borrow() {
                break;
            }
            let Some(open) = &mut consumer else {
                match shared
                    .layout
                    .lane_consumer(function, &served.spec, lane)
                    .await
                {
                    Ok(opened) => consumer = Some(opened),
                    Err(e) => {
                        tracing::warn!(%function, lane = lane.as_str(), error = %e, "cannot open the lane's consumer; retrying");
                        if pause_or_stop(&mut stopped).await {
                            break;
                        }
                    }
                }
                continue;
            };
            // A slot of this lane first (the weighted rule decides between
            // lanes waiting for one), then the slots free besides (none
            // while another lane waits), and as many messages as it holds
            // slots, fetched without waiting: slots are never handed to
            // another lane between the grant and the fetch. Only a fetch
            // that finds nothing waits (up to `PULL_EXPIRY`, holding no
            // slot) for a message a wake announced before the stream
            // stored it.
            let request = upcoming.take().unwrap_or_else(|| slots.request(lane));
            let slot = tokio::select! {
                slot = request.wait() => slot,
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            let mut held = vec![slot];
            while let Some(slot) = slots.try_acquire() {
                held.push(slot);
            }
            // In line for the next slot meanwhile: one freeing during the
            // fetch goes to the lane the weighted rule picks, this included.
            let mut next = Some(slots.request(lane));
            let mut pull = open.fetch().max_messages(held.len()).messages().await;
            let mut received = 0_usize;
            let mut waited = false;
            let pulled = loop {
                let mut batch = match pull {
                    Ok(batch) => batch,
                    Err(e) => break Err(e.to_string()),
                };
                // A batch is read to its end even when stopping: the
                // server may already have sent what it holds for it. A
                // no-wait fetch has no client-side timer in async-nats
                // (it arms one only from `expires`, which would change what
                // the server does with the fetch): one whose answer is
                // lost, as while a leader moves, is given up here instead
                // of stalling the lane with its slots.
                let mut ended = Ok(());
                loop {
                    let Ok(next) = tokio::time::timeout(PULL_UNANSWERED, batch.next()).await else {
                        ended = Err("the server did not answer a pull".to_owned());
                        break;
                    };
                    let Some(message) = next else { break };
                    match message {
                        Ok(message) => {
                            let slot = match held.pop() {
                                Some(slot) => slot,
                                // From the waiting pull, which holds none.
                                None => slot_for(&message, &served, &slots, lane).await,
                            };
                            received += 1;
                            // Invoked: from now on it takes direct calls.
                            // Logged the first time: where a wake from zero
                            // spends its time after the component's load.
                            if warm.send_if_modified(|warm| !std::mem::replace(warm, true)) {
                                tracing::info!(%function, lane = lane.as_str(), "took the first invocation");
                            }
                            running.spawn(handle(
                                shared.clone(),
                                served.clone(),
                                message,
                                wake.clone(),
                                slot,
                            ));
                        }
                        Err(e) => {
                            ended = Err(e.to_string());
                            break;
                        }
                    }
                }
                if received > 0 || waited || ended.is_err() {
                    break ended;
                }
                // Nothing stored yet: wait a little for one, holding no
                // slot and out of line meanwhile (a slot granted to an
                // empty lane would idle).
                held.clear();
                next = None;
                waited = true;
                pull = open
                    .batch()
                    .max_messages(1)
                    .expires(PULL_EXPIRY)
                    .messages()
                    .await;
            };
            drop(held);
            match pulled {
                Ok(()) => {
                    if retry.succeeded() {
                        tracing::info!(%function, lane = lane.as_str(), "pulling invocations again");
                    }
                    if received == 0 {
                        // Nothing came while the pull waited: the lane is
                        // empty (what is published from now on wakes it).
                        awake = false;
                    } else {
                        upcoming = next;
                    }
                }
                Err(e) => {
                    // NATS away, or the consumer without a leader: pause,
                    // then pull from the same consumer again. A consumer
                    // handle is its stream's and its own name, nothing the
                    // server holds. (Asking the server for the consumer
                    // again first, while it elected a leader, waited out
                    // that request's 10 s timeout with the lane unserved.)
                    // If the function was deleted, the node stops this
                    // worker when the registry says so.
                    let (pause, first) = retry.failed();
                    if first {
                        tracing::warn!(%function, lane = lane.as_str(), error = %e, "pulling invocations failed; retrying");
                    } else {
                        tracing::debug!(%function, lane = lane.as_str(), error = %e, "pulling invocations failed again");
                    }
                    if sleep_or_stop(&mut stopped, pause).await {
                        break;
                    }
                }
            }
        }
        while running.join_next().await.is_some() {}
    }
}

/// A slot of `lane` for `message`, telling the server every half
/// `ack_wait` while it waits that the message is in progress, so a message
/// waiting behind other lanes is not delivered again meanwhile.
pub(super) async fn slot_for(
    message: &jetstream::Message,
    served: &Served,
    slots: &Arc<LaneSlots>,
    lane: Lane,
) -> LaneSlot {
    let every = ack_wait(&served.spec) / 2;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut acquire = std::pin::pin!(slots.acquire(lane));
    loop {
        tokio::select! {
            slot = &mut acquire => return slot,
            _ = progress.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "cannot report progress");
                }
            }
        }
    }
}

/// Sleeps a little before a retry; true when the worker was told to stop.
pub(super) async fn pause_or_stop(stopped: &mut watch::Receiver<bool>) -> bool {
    sleep_or_stop(stopped, Duration::from_millis(500)).await
}

/// Sleeps `pause`; true when the worker was told to stop meanwhile.
pub(super) async fn sleep_or_stop(stopped: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::time::timeout(pause, stopped.wait_for(|stop| *stop))
        .await
        .is_ok()
}

/// The first pause after a failed pull: a consumer electing a leader
/// answers 503 at once, so the pull is tried again soon, taking the lane
/// back within this of the new leader.
const RETRY_FIRST: Duration = Duration::from_millis(250);

/// The longest pause between failed pulls: bounds how late a lane resumes
/// after a long outage, at one pull per lane per period meanwhile.
const RETRY_MOST: Duration = Duration::from_secs(2);

/// The pauses of a run of failed pulls: [`RETRY_FIRST`], doubling up to
/// [`RETRY_MOST`]; a success starts the next run from the first again.
#[derive(Debug, Default)]
pub(super) struct Retry {
    /// Failed pulls in a row.
    failed: u32,
}

impl Retry {
    /// A pull failed: the pause before the next, and whether this is the
    /// run's first failure (the one worth a warning).
    pub fn failed(&mut self) -> (Duration, bool) {
        self.failed = self.failed.saturating_add(1);
        let pause = sluice_api::backoff::doubling(RETRY_FIRST, RETRY_MOST, self.failed);
        (pause, self.failed == 1)
    }

    /// A pull succeeded: true when it ended a run of failures.
    pub fn succeeded(&mut self) -> bool {
        std::mem::take(&mut self.failed) > 0
    }
}

/// Takes one message to its acknowledgement; true when it was handed
/// back for a retry (deliverable again after its delay, when `wake` is
/// woken).
pub(super) async fn handle(
    shared: Arc<Shared>,
    served: Arc<Served>,
    message: jetstream::Message,
    wake: Arc<Notify>,
    _slot: LaneSlot,
) -> bool {
    let info = message.info().ok();
    let delivered = info
        .as_ref()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1)
        .max(1);
    if delivered > 1 {
        shared.metrics.redelivered(&served.function);
    } else if let Some(info) = info {
        // The server's clock stamped it: a skew with ours reads as zero.
        let waited = std::time::SystemTime::now()
            .duration_since(info.published.into())
            .unwrap_or_default();
        shared
            .metrics
            .waited(&served.function, waited.as_secs_f64());
    }
    let Some(received) = decode(&shared, &served, &message, delivered).await else {
        return false;
    };
    match received.reply_to {
        Some(inbox) => {
            run_sync(
                &shared,
                &served,
                &message,
                &received.invocation,
                inbox,
                delivered,
            )
            .await;
            false
        }
        None => {
            run_async(
                &shared,
                &served,
                &message,
                &received.invocation,
                received.callback,
                delivered,
                &wake,
            )
            .await
        }
    }
}

/// An invocation as the message carries it, with where its outcome goes.
pub(super) struct Received {
    pub invocation: Invocation,
    /// A synchronous caller's inbox.
    reply_to: Option<String>,
    callback: Option<String>,
}

/// The invocation `message` holds; a message that can never run is
/// dead-lettered as poison instead (`None`).
async fn decode(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    delivered: u32,
) -> Option<Received> {
    match parse(
        &served.function,
        message.headers.as_ref(),
        message.payload.clone(),
    ) {
        Ok(received) => Some(received),
        Err(reason) => {
            poison(shared, served, message, &reason, delivered).await;
            None
        }
    }
}

/// The invocation of `function` that a message's headers and payload
/// hold, or why they hold none.
pub(super) fn parse(
    function: &FunctionRef,
    headers: Option<&async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> Result<Received, String> {
    let pairs = header_pairs(headers);
    let header = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| (*v).to_owned())
    };
    match Invocation::from_wire(pairs.iter().copied(), payload) {
        Ok(invocation) if invocation.function == *function => Ok(Received {
            reply_to: header(REPLY_TO_HEADER),
            callback: header(CALLBACK_HEADER),
            invocation,
        }),
        Ok(invocation) => Err(format!(
            "the message names function {} but was sent for {function}",
            invocation.function
        )),
        Err(e) => Err(format!("malformed invocation message: {e}")),
    }
}

/// A synchronous invocation: one attempt, whatever its outcome, answered
/// on the caller's inbox.
async fn run_sync(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    invocation: &Invocation,
    inbox: String,
    delivered: u32,
) {
    let Attempted { outcome, logs, .. } = attempt(
        shared,
        served,
        invocation,
        message,
        &CancellationToken::new(),
    )
    .await;
    let (headers, body) = reply::encode(&outcome);
    if let Err(e) = shared
        .client
        .publish_with_headers(inbox, headers, body)
        .await
    {
        tracing::warn!(function = %invocation.function, invocation = %invocation.id, error = %e, "cannot send the reply");
    }
    // After the reply: the caller does not wait for it.
    keep_logs(shared, invocation, delivered, logs).await;
    acknowledge(message, AckKind::Ack, &invocation.id).await;
}

/// An asynchronous invocation: an attempt, then a retry later (true), or
/// its final record (and dead letter, when given up on).
async fn run_async(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    invocation: &Invocation,
    callback: Option<String>,
    delivered: u32,
    wake: &Arc<Notify>,
) -> bool {
    let function = &invocation.function;
    let retry = &served.spec.retry;
    let deadline = invocation.deadline;
    let mut record = InvocationRecord::accepted(invocation);
    if delivered > retry.max_attempts {
        // Runtimes stopped during the last attempt(s) and the message came back.
        let error = format!(
            "delivered {delivered} times but retry.maxAttempts is {}: the runtimes running it stopped before finishing",
            retry.max_attempts
        );
        record.attempts = delivered;
        record.settled(InvocationState::DeadLettered, Some(error), None);
        give_up(shared, served, message, record, callback, deadline).await;
        return false;
    }
    // Registered before the record is read: a cancel after the read
    // arrives as a message (see `super::cancel`).
    let registered = shared.running.register(&invocation.id);
    if cancelled(shared, &invocation.id).await {
        record.attempts = delivered - 1;
        record.cancel();
        finish(shared, served, message, record, callback, deadline).await;
        return false;
    }
    record.running(delivered);
    announce(shared, &record).await;
    let Attempted {
        outcome,
        usage,
        logs,
    } = attempt(shared, served, invocation, message, &registered.token).await;
    drop(registered);
    // Before the record: once it shows the attempt, its log is kept.
    keep_logs(shared, invocation, delivered, logs).await;
    let settlement = outcome.settle(&invocation.id, delivered, retry);
    record.after_attempt(&outcome, &settlement);
    record.usage = usage;
    match settlement {
        Settlement::Retry { delay, .. } => {
            if let Err(e) = store(shared, &record).await {
                tracing::warn!(%function, invocation = %invocation.id, error = %e, "cannot record the retry");
            }
            shared.metrics.retried(function);
            acknowledge(message, AckKind::Nak(Some(delay)), &invocation.id).await;
            // Deliverable again after `delay`, announced by no publish.
            wake::wake_after(wake, delay);
            return true;
        }
        Settlement::Final {
            state: InvocationState::DeadLettered,
            ..
        } => {
            give_up(shared, served, message, record, callback, deadline).await;
        }
        Settlement::Final { .. } => {
            finish(shared, served, message, record, callback, deadline).await;
        }
    }
    false
}

/// Runs one attempt of the invocation `message` holds. Meanwhile the server
/// is told every half `ack_wait` that the message is in progress: the
/// attempt may first wait for a free instance, which its timeout does not
/// count, and the server must not deliver the message again under it.
async fn attempt(
    shared: &Shared,
    served: &Served,
    invocation: &Invocation,
    message: &jetstream::Message,
    cancel: &CancellationToken,
) -> Attempted {
    let mut attempt = std::pin::pin!(run(shared, served, invocation, cancel));
    let every = ack_wait(&served.spec) / 2;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = &mut attempt => return outcome,
            _ = progress.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(invocation = %invocation.id, error = %e, "cannot report progress");
                }
            }
        }
    }
}

/// Keeps what attempt `number` of `invocation` wrote, if anything, in the
/// log stream, so that it outlives this runtime. A log that cannot be kept
/// is logged and left: the invocation goes on.
pub(super) async fn keep_logs(
    shared: &Shared,
    invocation: &Invocation,
    number: u32,
    logs: Captured,
) {
    if logs.is_empty() {
        return;
    }
    let log = AttemptLog::new(
        invocation.id.clone(),
        invocation.function.clone(),
        number,
        logs,
    );
    if let Err(e) = sluice_nats::logs::keep(&shared.layout.js, log).await {
        tracing::warn!(function = %invocation.function, invocation = %invocation.id, error = %e, "cannot keep the attempt's log");
    }
}

/// Runs one attempt of `invocation`, loading the component first if no
/// invocation has needed it yet.
pub(super) async fn run(
    shared: &Shared,
    served: &Served,
    invocation: &Invocation,
    cancel: &CancellationToken,
) -> Attempted {
    match served.prepared().await {
        Ok(prepared) => {
            shared
                .runtime
                .attempt(&prepared, invocation, &shared.metrics, cancel)
                .await
        }
        Err(failed) => Attempted {
            outcome: failed,
            usage: None,
            logs: Captured::default(),
        },
    }
}

/// Whether a caller cancelled the invocation `id` before this delivery
/// ran: its record says so. A record that cannot be read does not stop
/// the attempt (logged): a cancel still reaches it as a message.
async fn cancelled(shared: &Shared, id: &InvocationId) -> bool {
    match shared.layout.results.get(id.as_str()).await {
        Ok(Some(value)) => serde_json::from_slice::<InvocationRecord>(&value)
            .is_ok_and(|record| record.state == InvocationState::Cancelled),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(invocation = %id, error = %e, "cannot read the record to see whether it was cancelled; running it");
            false
        }
    }
}

/// Dead-letters an async invocation, then records and acknowledges it. A
/// dead letter that cannot be stored even after [`DEAD_LETTER_TRIES`] is
/// counted and logged, and the invocation ends failed: giving up ends.
async fn give_up(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    mut record: InvocationRecord,
    callback: Option<String>,
    deadline: SystemTime,
) {
    let reason = record.error.clone().unwrap_or_default();
    if let Err(e) = dead_letter(shared, served, message, &reason, record.attempts).await {
        let error = format!("{reason}; its dead letter could not be stored: {e}");
        record.settled(
            InvocationState::Failed,
            Some(sluice_api::reason_line(&error)),
            record.response.clone(),
        );
    }
    finish(shared, served, message, record, callback, deadline).await;
}

/// Stores the final record, then delivers it to its destination, then
/// acknowledges, then calls back: a crash in between runs the invocation
/// again rather than losing it (its destination then gets the same message
/// id again). A store that fails is tried again here ([`store_final`]),
/// never by redelivering the message: that would run the function again.
async fn finish(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    record: InvocationRecord,
    callback: Option<String>,
    deadline: SystemTime,
) {
    let (record, json) = storable(record, shared.client.server_info().max_payload);
    store_final(shared, message, &record, json, deadline).await;
    if let Some((kind, destination)) = served.spec.destinations.for_state(record.state)
        && let Err(e) = deliver(shared, &record, kind, destination).await
    {
        tracing::warn!(function = %record.function, invocation = %record.id, destination = kind.as_str(), error = %e, "cannot deliver the final record to its destination");
    }
    acknowledge(message, AckKind::Ack, &record.id).await;
    if let Some(url) = callback {
        shared.callbacks.deliver(url, record);
    }
}

/// Delivers `record` to its `kind` destination as a binary-mode
/// CloudEvent ([`sluice_api::destination`]): on a subject by core NATS
/// with `Nats-Msg-Id` (a stream capturing it keeps one copy), or to a
/// function as an async invocation under an id derived from the record's,
/// its record created first (an existing one, from an earlier delivery, is
/// kept).
async fn deliver(
    shared: &Shared,
    record: &InvocationRecord,
    kind: DestinationKind,
    to: &Destination,
) -> Result<(), String> {
    if let Some(subject) = &to.subject {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in destination::event_headers(record, kind) {
            headers.insert(name, value.as_str());
        }
        headers.insert(
            "Nats-Msg-Id",
            destination::message_id(&record.id, kind).as_str(),
        );
        shared
            .client
            .publish_with_headers(subject.clone(), headers, destination::event_body(record))
            .await
            .map_err(|e| e.to_string())?;
        return shared.client.flush().await.map_err(|e| e.to_string());
    }
    let Some(name) = &to.function else {
        return Ok(());
    };
    let target = FunctionRef::new(&record.function.namespace, name).map_err(|e| e.to_string())?;
    let deadline = SystemTime::now() + destination::CHAINED_DEADLINE;
    let invocation = destination::chained_invocation(record, kind, &target, deadline);
    let queued = serde_json::to_vec(&InvocationRecord::accepted(&invocation)).unwrap_or_default();
    match shared
        .layout
        .results
        .create(invocation.id.as_str(), queued.into())
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create the record of {target}'s invocation: {e}"
            ));
        }
    }
    let mut headers = async_nats::HeaderMap::new();
    invocation.write_wire_headers(|name, value| headers.append(name, value));
    let publish = jetstream::message::PublishMessage::build()
        .payload(invocation.body.clone())
        .headers(headers)
        .message_id(invocation.id.as_str());
    failover::publish_patiently(
        &shared.layout.js,
        &target.invoke_subject(),
        publish,
        tokio::time::Instant::now() + failover::PATIENCE,
    )
    .await
    .map_err(|e| format!("cannot queue {target}'s invocation: {e}"))?;
    Ok(())
}

/// Stores a final record, trying again with a backoff doubling from 100 ms
/// to 2 s (`sluice_nats::patience::retry_delay`) while the results store
/// refuses it, the message kept from redelivery by progress acks. It gives
/// up only past the invocation's `deadline`, when nobody may wait for the
/// record any more: logged as an error, the run not repeated.
async fn store_final(
    shared: &Shared,
    message: &jetstream::Message,
    record: &InvocationRecord,
    json: Vec<u8>,
    deadline: SystemTime,
) {
    let mut failed = 0;
    while let Err(e) = store_json(shared, &record.id, json.clone()).await {
        failed += 1;
        if SystemTime::now() >= deadline {
            tracing::error!(function = %record.function, invocation = %record.id, state = ?record.state, error = %e, tries = failed, "the final record could not be stored before the invocation's deadline; it is lost (the function is not run again)");
            return;
        }
        let delay = retry_delay(failed);
        tracing::warn!(function = %record.function, invocation = %record.id, error = %e, tries = failed, "cannot store the final record; trying again in {delay:?} (the function is not run again)");
        tokio::time::sleep(delay).await;
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(invocation = %record.id, error = %e, "cannot report progress");
        }
    }
}

/// A message that can never run: dead-letter it with the reason, drop it.
async fn poison(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    reason: &str,
    delivered: u32,
) {
    let function = &served.function;
    tracing::warn!(%function, subject = %message.subject, %reason, "dead-lettering a message that cannot run");
    // Dead-lettered or not (that is counted and logged), it never runs.
    let _ = dead_letter(shared, served, message, reason, delivered).await;
    if let Err(e) = message.ack_with(AckKind::Term).await {
        tracing::warn!(%function, error = %e, "cannot drop a message that cannot run");
    }
}

/// Tries to store a dead letter at most this many times.
const DEAD_LETTER_TRIES: u32 = 5;
/// Wait before the second try; it doubles for each try after.
const DEAD_LETTER_BACKOFF: Duration = Duration::from_millis(250);

/// Republishes the original message on the dead-letter subject, with why
/// (without its body, or with only its identity, when the whole would not
/// fit one message: [`dead_letter::publish`]). Other failures are tried
/// again up to [`DEAD_LETTER_TRIES`] times with a doubling pause, the
/// server told meanwhile that the message is in progress; the last one is
/// counted, logged and returned.
async fn dead_letter(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    reason: &str,
    attempts: u32,
) -> Result<(), DeadLetterError> {
    let function = &served.function;
    let headers = message.headers.clone().unwrap_or_default();
    let given_up = GivenUp {
        reason,
        attempts,
        original_subject: message.subject.as_str(),
    };
    let subject = served.spec.dead_letter_subject(function);
    let mut tries = 0;
    let error = loop {
        tries += 1;
        match dead_letter::publish(
            &shared.layout.js,
            &subject,
            &headers,
            message.payload.clone(),
            given_up,
        )
        .await
        {
            Ok(kept) => {
                shared.metrics.dead_lettered(function);
                tracing::warn!(%function, %reason, ?kept, "dead-lettered");
                return Ok(());
            }
            Err(e) if tries >= DEAD_LETTER_TRIES => break e,
            Err(e) => {
                tracing::warn!(%function, error = %e, tries, "cannot dead-letter; trying again");
                tokio::time::sleep(sluice_api::backoff::doubling(
                    DEAD_LETTER_BACKOFF,
                    Duration::MAX,
                    tries,
                ))
                .await;
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "cannot report progress");
                }
            }
        }
    };
    shared.metrics.dead_letter_failed(function);
    tracing::error!(%function, %reason, error = %error, tries, "dropped: the dead letter could not be stored");
    Err(error)
}

/// `record` and its JSON, without the response when the record would not
/// fit one NATS message (headers at the response limit can push it over):
/// storing it must not fail, or the invocation would run again.
fn storable(record: InvocationRecord, max_payload: usize) -> (InvocationRecord, Vec<u8>) {
    let json = serde_json::to_vec(&record).unwrap_or_default();
    let Some(response) = &record.response else {
        return (record, json);
    };
    if json.len() <= max_payload.saturating_sub(PAYLOAD_HEADROOM) {
        return (record, json);
    }
    let error = format!(
        "the response ({} status, {} bytes as a record) is larger than the results store takes",
        response.status,
        json.len()
    );
    let record = InvocationRecord {
        response: None,
        error: Some(match record.error {
            Some(earlier) => format!("{earlier}; {error}"),
            None => error,
        }),
        ..record
    };
    let json = serde_json::to_vec(&record).unwrap_or_default();
    (record, json)
}

async fn store(shared: &Shared, record: &InvocationRecord) -> Result<(), kv::PutError> {
    // A record always serializes: its fields are strings and numbers.
    let json = serde_json::to_vec(record).unwrap_or_default();
    store_json(shared, &record.id, json).await
}

async fn store_json(shared: &Shared, id: &InvocationId, json: Vec<u8>) -> Result<(), kv::PutError> {
    shared
        .layout
        .results
        .put(id.as_str(), json.into())
        .await
        .map(drop)
}

/// Publishes a record that is not final without waiting for the store to
/// confirm it: the attempt need not wait, and a lost update only delays
/// what a caller sees until the final record, which is confirmed. Both go
/// to the same stream over one connection, so they are stored in order.
async fn announce(shared: &Shared, record: &InvocationRecord) {
    let Ok(json) = serde_json::to_vec(record) else {
        return;
    };
    if let Err(e) = shared
        .layout
        .js
        .publish(result_subject(&record.id), json.into())
        .await
    {
        tracing::debug!(invocation = %record.id, error = %e, "cannot publish the running state");
    }
}

/// Acknowledges without waiting for the server's confirmation (it costs a
/// round trip per message); the node flushes its connection before it
/// exits, so nothing it acknowledged is left unsent.
async fn acknowledge(message: &jetstream::Message, kind: AckKind, id: &InvocationId) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(invocation = %id, error = %e, "cannot acknowledge; the message will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::{StoredHeader, StoredResponse};

    use super::*;

    #[test]
    fn failed_pulls_pause_longer_each_time_until_one_succeeds() {
        let ms = Duration::from_millis;
        let mut retry = Retry::default();
        assert!(!retry.succeeded(), "no failure to end yet");
        // (pause, the run's first failure) for each failure in a row.
        let run = [
            (ms(250), true),
            (ms(500), false),
            (ms(1000), false),
            (ms(2000), false),
            (ms(2000), false),
        ];
        for expected in run {
            assert_eq!(retry.failed(), expected);
        }
        assert!(retry.succeeded(), "the success ends the run");
        assert!(!retry.succeeded());
        assert_eq!(retry.failed(), (ms(250), true), "a new run starts short");
    }

    #[test]
    fn a_record_too_large_to_store_keeps_its_outcome_without_the_response() {
        let mut record =
            InvocationRecord::queued(InvocationId::random(), "default/echo".parse().unwrap());
        record.state = InvocationState::Succeeded;
        record.response = Some(StoredResponse {
            status: 200,
            headers: vec![StoredHeader {
                name: "x-big".to_owned(),
                value: Some("v".repeat(100 << 10)),
                value_base64: None,
            }],
            body: "Ym9keQ==".into(),
        });
        let (kept, json) = storable(record.clone(), 1 << 20);
        assert_eq!(kept, record);
        assert_eq!(json, serde_json::to_vec(&record).unwrap());

        let (trimmed, json) = storable(record, 128 << 10);
        assert_eq!(trimmed.state, InvocationState::Succeeded);
        assert!(trimmed.response.is_none());
        assert!(
            trimmed
                .error
                .unwrap()
                .contains("larger than the results store takes")
        );
        assert!(json.len() < 1024);
    }
}
