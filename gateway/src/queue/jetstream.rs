//! The JetStream queue: invocations go onto `SLUICE_INVOCATIONS` for any
//! runtime to take (see `sluice_runtime::node`). Synchronous calls carry a
//! reply subject under this gateway's inbox; asynchronous ones get a record
//! in `sluice-results` and an id that doubles as `Nats-Msg-Id`, so a retried
//! submit with the same `Idempotency-Key` is stored once.

use sluice_serve::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use sluice_api::dead_letter::{
    DeadLetterDetail, PurgeReport, RedriveReport, Selection, Skipped, unredrivable,
};
use sluice_api::invocation::{CALLBACK_HEADER, REPLY_TO_HEADER};
use sluice_api::logs::AttemptLog;
use sluice_api::names::FunctionRef;
use sluice_api::{CancelDecision, DeadLetter, Invocation, InvocationId, InvocationRecord};
use sluice_api::{Failure, FailureKind, InvocationState, Lane, cancel_decision};
use sluice_nats::dead_letter::{self, GivenUp};
use sluice_nats::layout::Layout;
use sluice_nats::{Oversize, failover, reply};
use tokio::sync::oneshot;

use super::budget::ByteBudget;
use super::{CallResult, Cancelled, InvocationQueue, LogFeed, QueueBound, QueueError, Submitted};

/// Dead letters listed (and redriven or purged) at most per request.
const MAX_DEAD_LETTERS: usize = 1000;
/// How long past an invocation's deadline a sync caller waits for the
/// runtime's answer, which comes by the deadline with a more precise
/// reason than the caller's own timeout.
const REPLY_GRACE: Duration = Duration::from_millis(250);
/// Times a cancel reads and conditionally rewrites a record that a
/// runtime keeps changing meanwhile.
const CANCEL_TRIES: u32 = 5;

/// The pause before a record's read, or a result long-poll, is tried
/// again after a failed read or watch (a failover).
const RECORD_RETRY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct JetStreamQueue {
    client: async_nats::Client,
    layout: Layout,
    /// Replies to this gateway's sync calls arrive on `<inbox>.<id>`.
    inbox: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<async_nats::Message>>>>,
    /// `--max-queue-bytes`, on what this gateway queued.
    budget: Arc<ByteBudget>,
}

impl std::fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl JetStreamQueue {
    /// Subscribes to this gateway's reply inbox. The subscription outlives
    /// reconnections (the client restores it). `budget` holds each
    /// function's queued bytes.
    pub async fn new(
        client: async_nats::Client,
        layout: Layout,
        budget: Arc<ByteBudget>,
    ) -> Result<Self, QueueError> {
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| QueueError::Unavailable(format!("cannot subscribe to replies: {e}")))?;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<async_nats::Message>>>> =
            Arc::default();
        let route = Arc::downgrade(&waiting);
        tokio::spawn(async move {
            while let Some(message) = replies.next().await {
                let Some(waiting) = route.upgrade() else {
                    return;
                };
                let id = message.subject.rsplit('.').next().unwrap_or_default();
                let caller = lock(&waiting).remove(id);
                // A caller that gave up is gone: its reply is dropped.
                if let Some(caller) = caller {
                    let _ = caller.send(message);
                }
            }
        });
        Ok(Self {
            client,
            layout,
            inbox,
            waiting,
            budget,
        })
    }

    /// Connected, or reconnected within [`failover::RECONNECT_GRACE`]
    /// (its server died and it moves to another); else 503.
    async fn check_connected(&self) -> Result<(), QueueError> {
        if failover::connected_within(&self.client, failover::RECONNECT_GRACE).await {
            Ok(())
        } else {
            Err(QueueError::Unavailable(
                "NATS is unreachable; try again shortly".into(),
            ))
        }
    }

    /// Reads invocation `id`'s record, then follows it until it is final
    /// or `until`, keeping the newest in `known`: `None` when there is no
    /// record, the record when final or at `until`, an error when the
    /// read or the watch failed first.
    async fn follow_record(
        &self,
        id: &InvocationId,
        until: tokio::time::Instant,
        known: &mut Option<InvocationRecord>,
    ) -> Result<Option<InvocationRecord>, String> {
        let Some(value) = self
            .layout
            .results
            .get(id.as_str())
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let record = parse_record(&value).map_err(|e| e.to_string())?;
        let done = record.state.is_final();
        *known = Some(record);
        if done || tokio::time::Instant::now() >= until {
            return Ok(known.clone());
        }
        let mut updates = self
            .layout
            .results
            .watch_with_history(id.as_str())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let update = match tokio::time::timeout_at(until, updates.next()).await {
                Err(_) => return Ok(known.clone()),
                Ok(Some(Ok(entry))) => entry,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err("the record's watch ended".into()),
            };
            if let Ok(newer) = parse_record(&update.value) {
                let done = newer.state.is_final();
                *known = Some(newer);
                if done {
                    return Ok(known.clone());
                }
            }
        }
    }

    /// Publishes `invocation` on its queue's subject
    /// ([`Invocation::queue_subject`]: its class's lane, or its ordering
    /// key's bucket), holding its bytes against the function's budget
    /// unless keyed. Sync calls are queued there too, not in the `sync`
    /// lane: `call` says why.
    async fn enqueue(
        &self,
        invocation: &Invocation,
        extra: &[(&'static str, &str)],
        message_id: &str,
    ) -> Result<bool, QueueError> {
        // With a key, on the key's bucket: run in order by its consumer.
        let keyed = super::ordering_key(invocation)?.is_some();
        let mut headers = wire_headers(invocation);
        for (name, value) in extra {
            headers.insert(*name, *value);
        }
        let message = PublishMessage::build()
            .payload(invocation.body.clone())
            .headers(headers)
            .message_id(message_id);
        let function = &invocation.function;
        // The byte budget forgets what the function's own consumer has
        // delivered, which an ordering bucket's messages are not: keyed
        // invocations are bounded by the depth of their bucket's subject
        // and the stream's bytes instead (README, "Ordering keys").
        let lane = Lane::of(false, invocation.priority());
        let held = if keyed {
            None
        } else {
            Some(
                self.budget
                    .hold_queued(&self.layout, invocation, lane)
                    .await?,
            )
        };
        let refused = |e| match publish_error(function, e) {
            QueueError::Full { function, bound } => self.budget.full(&function, bound),
            other => other,
        };
        // Through a failover (the stream electing a leader) the publish is
        // sent again, with the same id, within the invocation's deadline.
        let left = invocation.time_left();
        let ack = failover::publish_patiently(
            &self.layout.js,
            &invocation.queue_subject(false),
            message,
            tokio::time::Instant::now() + left,
        )
        .await
        .map_err(refused)?;
        if !ack.duplicate
            && let Some(held) = held
        {
            held.queued(lane, ack.sequence);
        }
        Ok(ack.duplicate)
    }

    /// Sends a sync invocation straight to a warm runtime of its function
    /// (a core request on its call subject, `sluice_runtime`'s
    /// `node::direct`); when the runtime that got it is busy, once more
    /// asking the one that gets it to wait for a slot
    /// ([`reply::WAIT_HEADER`]), which puts the call ahead of the
    /// function's async backlog. `None` when it did not run there (no
    /// runtime subscribed, declined, or the request could not be sent),
    /// and the caller queues it on the stream instead.
    async fn call_directly(&self, invocation: &Invocation) -> Option<CallResult> {
        let mut headers = wire_headers(invocation);
        for wait in [false, true] {
            if wait {
                headers.insert(reply::WAIT_HEADER, "1");
            }
            let left = invocation.time_left();
            let request = async_nats::Request::new()
                .headers(headers.clone())
                .payload(invocation.body.clone())
                .timeout(Some(left + REPLY_GRACE));
            match self
                .client
                .send_request(invocation.function.call_subject(), request)
                .await
            {
                Ok(message) if reply::is_declined_busy(message.headers.as_ref()) => continue,
                Ok(message) if reply::is_declined(message.headers.as_ref()) => return None,
                Ok(message) => {
                    return Some(reply::decode(message.headers.as_ref(), message.payload));
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                    return Some(Err(Failure {
                        kind: FailureKind::Timeout,
                        reason: "the runtime running it did not answer before the deadline".into(),
                    }));
                }
                // No responders: the function is at zero. Anything else (an
                // oversized request, a broken connection) never reached a
                // runtime, and the stream says precisely why it cannot either.
                Err(_) => return None,
            }
        }
        None
    }

    /// Invocation `id`'s record as stored, read again after a failed read
    /// (a failover: the results bucket electing a leader) for
    /// [`failover::PATIENCE`] at most; then the last error.
    async fn record_entry(
        &self,
        id: &InvocationId,
    ) -> Result<Option<async_nats::jetstream::kv::Entry>, async_nats::jetstream::kv::EntryError>
    {
        let give_up = tokio::time::Instant::now() + failover::PATIENCE;
        loop {
            match self.layout.results.entry(id.as_str()).await {
                Err(error) if tokio::time::Instant::now() + RECORD_RETRY < give_up => {
                    tracing::debug!(%id, %error, "reading the invocation record again");
                    tokio::time::sleep(RECORD_RETRY).await;
                }
                read => return read,
            }
        }
    }

    /// One read and conditional write of the record for a cancel;
    /// `Ok(None)` when a runtime changed it in between, `Ok(Some(None))`
    /// for an unknown id.
    async fn cancel_once(
        &self,
        id: &InvocationId,
    ) -> Result<Option<Option<Cancelled>>, QueueError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            QueueError::Unavailable(format!("cannot cancel the invocation: {e}"))
        };
        let Some(entry) = self.record_entry(id).await.map_err(|e| unavailable(&e))? else {
            return Ok(Some(None));
        };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return Ok(Some(None));
        }
        let mut record = parse_record(&entry.value).map_err(|e| unavailable(&e))?;
        let decision = cancel_decision(record.state);
        if decision != CancelDecision::Cancel {
            return Ok(Some(Some(Cancelled { decision, record })));
        }
        if record.state == InvocationState::Queued {
            // Stored first, announced second: a runtime registers the id
            // before it reads the record, so it sees one or the other.
            let mut cancelled = record.clone();
            cancelled.cancel();
            let json = Bytes::from(serde_json::to_vec(&cancelled).unwrap_or_default());
            if self
                .layout
                .results
                .update(id.as_str(), json, entry.revision)
                .await
                .is_err()
            {
                return Ok(None);
            }
            record = cancelled;
        }
        self.client
            .publish(
                record.function.cancel_subject(),
                id.as_str().to_owned().into(),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        self.client.flush().await.map_err(|e| unavailable(&e))?;
        Ok(Some(Some(Cancelled { decision, record })))
    }

    /// The dead letters of `function` that `selection` picks, as stored.
    async fn selected(
        &self,
        function: &FunctionRef,
        subject: &str,
        selection: &Selection,
    ) -> Result<Vec<dead_letter::Stored>, QueueError> {
        self.check_connected().await?;
        let mut all = dead_letter::read(
            &self.layout.dead_letters,
            function,
            subject,
            MAX_DEAD_LETTERS,
        )
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        all.retain(|stored| selection.selects(&stored.letter));
        Ok(all)
    }

    /// Queues one stored dead letter again: its record back to queued,
    /// the invocation on its subject under a message id naming the dead
    /// letter (so a second redrive racing this one is stored once), then
    /// the dead letter removed.
    async fn redrive_one(
        &self,
        stored: &dead_letter::Stored,
        deadline: SystemTime,
    ) -> Result<InvocationId, String> {
        let (mut invocation, callback) = stored
            .invocation()
            .map_err(|e| format!("it holds no invocation: {e}"))?;
        invocation.deadline = deadline;
        let record = InvocationRecord::accepted(&invocation);
        let json = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        self.layout
            .results
            .put(invocation.id.as_str(), json)
            .await
            .map_err(|e| format!("cannot reset its record: {e}"))?;
        let extra: Vec<(&'static str, &str)> = callback
            .as_deref()
            .map(|url| (CALLBACK_HEADER, url))
            .into_iter()
            .collect();
        let message_id = format!("{}.redrive.{}", invocation.id, stored.sequence);
        let duplicate = self
            .enqueue(&invocation, &extra, &message_id)
            .await
            .map_err(|e| e.to_string())?;
        dead_letter::delete(&self.layout.dead_letters, stored.sequence)
            .await
            .map_err(|e| format!("queued again, but not removed from the dead letters: {e}"))?;
        if duplicate {
            return Err("another redrive queued it again already".into());
        }
        Ok(invocation.id)
    }
}

/// The invocation's wire headers, as a NATS header map.
fn wire_headers(invocation: &Invocation) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    invocation.write_wire_headers(|name, value| headers.append(name, value));
    headers
}

fn publish_error(function: &FunctionRef, e: PublishError) -> QueueError {
    let text = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
    // 10077, JSStreamStoreFailedF: the store refused the message, saying
    // why only in the description; "maximum messages per subject
    // exceeded" is the per-function depth limit (discard new).
    if sluice_nats::jetstream_code(&e)
        == Some(async_nats::jetstream::ErrorCode::STREAM_STORE_FAILED)
        && text.contains("maximum messages per subject")
    {
        return QueueError::Full {
            function: function.clone(),
            bound: QueueBound::Depth,
        };
    }
    match sluice_nats::oversize(&e) {
        Some(Oversize::Headers) => {
            return QueueError::HeadersTooLarge(format!(
                "the request's headers are more than a NATS message carries: {text}"
            ));
        }
        Some(Oversize::Message) => {
            return QueueError::TooLarge(format!(
                "the request (body and headers) is larger than the NATS server's max_payload: {text}"
            ));
        }
        None => {}
    }
    match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            QueueError::Unavailable("NATS did not confirm the invocation; try again".into())
        }
        _ => QueueError::Unavailable(format!("NATS refused the invocation: {text}")),
    }
}

#[async_trait]
impl InvocationQueue for JetStreamQueue {
    async fn call(&self, invocation: Invocation) -> Result<CallResult, QueueError> {
        self.check_connected().await?;
        // A keyed call waits its turn on its key's bucket: never direct.
        if super::ordering_key(&invocation)?.is_none()
            && let Some(answered) = self.call_directly(&invocation).await
        {
            return Ok(answered);
        }
        let id = invocation.id.to_string();
        let (tx, reply) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), tx);
        let forget = Forget {
            waiting: &self.waiting,
            id: &id,
        };
        let reply_to = format!("{}.{id}", self.inbox);
        // The id makes a publish sent again through a failover one message.
        // Queued in its class's lane, not the `sync` one: the sync lane's
        // consumer, made on first use, was one more thing to make while a
        // leader moved, and sync calls through a failover all timed out in
        // one CI run; a warm function's calls wait in the runtime's `sync`
        // lane of slots instead (direct calls).
        self.enqueue(&invocation, &[(REPLY_TO_HEADER, &reply_to)], &id)
            .await?;
        let wait = invocation.time_left();
        let answer = tokio::time::timeout(wait + REPLY_GRACE, reply).await;
        drop(forget);
        Ok(match answer {
            Ok(Ok(message)) => reply::decode(message.headers.as_ref(), message.payload),
            Ok(Err(_)) => Err(Failure {
                kind: FailureKind::Internal,
                reason: "the gateway stopped waiting".into(),
            }),
            Err(_) => Err(Failure {
                kind: FailureKind::Timeout,
                reason: "no runtime answered before the deadline (none running, or all busy)"
                    .into(),
            }),
        })
    }

    async fn submit(
        &self,
        invocation: Invocation,
        callback: Option<String>,
    ) -> Result<Submitted, QueueError> {
        self.check_connected().await?;
        let id = invocation.id.clone();
        let record = InvocationRecord::accepted(&invocation);
        let json = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let mut extra = Vec::new();
        if let Some(url) = &callback {
            extra.push((CALLBACK_HEADER, url.as_str()));
        }
        // Create the record and enqueue together. `create` never replaces a
        // record: when a runtime was faster, or the id was seen before, the
        // newer record stays.
        let (created, enqueued) = tokio::join!(
            self.layout.results.create(id.as_str(), json),
            self.enqueue(&invocation, &extra, id.as_str()),
        );
        let duplicate = match enqueued {
            Ok(duplicate) => duplicate,
            Err(e) => {
                if created.is_ok() {
                    let _ = self.layout.results.delete(id.as_str()).await;
                }
                return Err(e);
            }
        };
        Ok(Submitted { id, duplicate })
    }

    async fn record(
        &self,
        id: &InvocationId,
        wait: Duration,
    ) -> Result<Option<InvocationRecord>, QueueError> {
        self.check_connected().await?;
        let started = tokio::time::Instant::now();
        let until = started + wait;
        // Through a failover (the results bucket electing a leader, the
        // watch's consumer lost with its server) the read and the watch
        // are tried again: within the wait once a record is known, and
        // for a failover's patience at least until one is, so that a read
        // with no wait (every status request's first) outlasts an election
        // instead of answering 503 while it runs.
        let mut known = None;
        let give_up = started + wait.max(failover::PATIENCE);
        loop {
            let error = match self.follow_record(id, until, &mut known).await {
                Ok(found) => return Ok(found),
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if (known.is_some() && now >= until) || now + RECORD_RETRY >= give_up {
                return match known {
                    Some(record) => Ok(Some(record)),
                    None => Err(QueueError::Unavailable(format!(
                        "cannot read the invocation record: {error}"
                    ))),
                };
            }
            tracing::debug!(%id, %error, "reading the invocation record again");
            tokio::time::sleep(RECORD_RETRY).await;
        }
    }

    async fn dead_letter(
        &self,
        invocation: &Invocation,
        subject: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.check_connected().await?;
        // The message a runtime would have dead-lettered: the invocation as
        // queued, plus why.
        let mut headers = async_nats::HeaderMap::new();
        invocation.write_wire_headers(|name, value| headers.append(name, value));
        dead_letter::publish(
            &self.layout.js,
            subject,
            &headers,
            invocation.body.clone(),
            GivenUp {
                reason,
                attempts: 0,
                original_subject: &invocation.queue_subject(false),
            },
        )
        .await
        .map(drop)
        .map_err(|e| QueueError::Unavailable(format!("cannot dead-letter: {e}")))
    }

    /// Nothing to wait for: what was accepted is on the stream, and the
    /// runtimes run it.
    async fn drain(&self, _grace: Duration) -> usize {
        0
    }

    async fn dead_letters(
        &self,
        function: &FunctionRef,
        subject: &str,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.check_connected().await?;
        dead_letter::list(
            &self.layout.dead_letters,
            function,
            subject,
            MAX_DEAD_LETTERS,
        )
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))
    }

    /// A queued invocation's record is stored `cancelled` (the runtime
    /// that takes its message drops it unrun, calling back); a running
    /// one is announced on its function's cancel subject, and the runtime
    /// running it ends it `cancelled`.
    async fn cancel(&self, id: &InvocationId) -> Result<Option<Cancelled>, QueueError> {
        self.check_connected().await?;
        for _ in 0..CANCEL_TRIES {
            if let Some(done) = self.cancel_once(id).await? {
                return Ok(done);
            }
        }
        Err(QueueError::Unavailable(
            "the invocation's record kept changing; try again".into(),
        ))
    }

    async fn dead_letter_detail(
        &self,
        function: &FunctionRef,
        subject: &str,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterDetail>, QueueError> {
        let selected = self
            .selected(function, subject, &Selection::one(id.clone()))
            .await?;
        Ok(selected.into_iter().next_back().map(|stored| {
            let request = stored
                .invocation()
                .ok()
                .filter(|_| stored.letter.truncated.is_none())
                .map(|(invocation, _)| (&invocation).into());
            DeadLetterDetail {
                letter: stored.letter,
                request,
            }
        }))
    }

    async fn redrive(
        &self,
        function: &FunctionRef,
        subject: &str,
        selection: &Selection,
        deadline: SystemTime,
    ) -> Result<RedriveReport, QueueError> {
        let mut report = RedriveReport::default();
        for stored in self.selected(function, subject, selection).await? {
            let outcome = match unredrivable(&stored.letter) {
                Some(reason) => Err(reason),
                None => self.redrive_one(&stored, deadline).await,
            };
            match outcome {
                Ok(id) => report.redriven.push(id),
                Err(reason) => report.skipped.push(Skipped {
                    id: stored.letter.id,
                    reason,
                }),
            }
        }
        Ok(report)
    }

    async fn purge(
        &self,
        function: &FunctionRef,
        subject: &str,
        selection: &Selection,
    ) -> Result<PurgeReport, QueueError> {
        let mut report = PurgeReport::default();
        for stored in self.selected(function, subject, selection).await? {
            dead_letter::delete(&self.layout.dead_letters, stored.sequence)
                .await
                .map_err(|e| QueueError::Unavailable(e.to_string()))?;
            report.purged += 1;
        }
        Ok(report)
    }

    async fn invocation_logs(
        &self,
        function: &FunctionRef,
        id: &InvocationId,
    ) -> Result<Vec<AttemptLog>, QueueError> {
        self.check_connected().await?;
        sluice_nats::logs::of_invocation(&self.layout.logs, function, id)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))
    }

    async fn function_logs(
        &self,
        function: &FunctionRef,
        since: SystemTime,
        follow: bool,
    ) -> Result<LogFeed, QueueError> {
        self.check_connected().await?;
        let receiver = sluice_nats::logs::of_function(&self.layout.logs, function, since, follow)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let function = function.clone();
        Ok(futures::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|item| (item, r))
        })
        .filter_map(move |item| {
            let kept = item
                .inspect_err(|e| tracing::warn!(%function, error = %e, "reading the logs ended"))
                .ok();
            std::future::ready(kept)
        })
        .boxed())
    }
}

fn parse_record(value: &[u8]) -> Result<InvocationRecord, serde_json::Error> {
    serde_json::from_slice(value)
}

/// Removes a caller from the reply table however its wait ends.
struct Forget<'a> {
    waiting: &'a Mutex<HashMap<String, oneshot::Sender<async_nats::Message>>>,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.waiting).remove(self.id);
    }
}
