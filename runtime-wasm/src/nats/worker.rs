//! Serving one function from its durable consumer: pull as many messages as
//! there are free slots, run each, then reply, record, dead-letter or
//! retry, and only then acknowledge.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use sluice_api::invocation::{CALLBACK_HEADER, REPLY_TO_HEADER};
use sluice_api::names::RESULTS_BUCKET;
use sluice_api::{
    DeadLetter, FunctionSpec, Invocation, InvocationId, InvocationRecord, InvocationState,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::PAYLOAD_HEADROOM;
use super::header_pairs;
use super::layout::{Layout, ack_wait};
use super::reply;
use crate::callback::Callbacks;
use crate::metrics::Metrics;
use crate::outcome::{Outcome, Settlement};
use crate::{PreparedFunction, Runtime};

/// How long one pull waits for messages. It bounds how long a stopping
/// worker keeps taking the messages it asked for.
const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// What every worker of a node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub runtime: Runtime,
    pub layout: Layout,
    pub client: async_nats::Client,
    pub metrics: Arc<Metrics>,
    pub callbacks: Callbacks,
}

/// A function as a worker serves it.
#[derive(Debug)]
pub(crate) struct Served {
    pub prepared: PreparedFunction,
    pub spec: FunctionSpec,
}

/// A running worker; stop it with [`Worker::stop`], then await [`Worker::join`].
#[derive(Debug)]
pub(crate) struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    pub fn start(shared: Arc<Shared>, served: Arc<Served>, consumer: PullConsumer) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(pull_loop(shared, served, consumer, stopped));
        Self { stop, task }
    }

    /// Stops pulling; what was pulled still runs to its acknowledgement.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn pull_loop(
    shared: Arc<Shared>,
    served: Arc<Served>,
    mut consumer: PullConsumer,
    mut stopped: watch::Receiver<bool>,
) {
    let function = &served.prepared.function;
    let slots = Arc::new(Semaphore::new(served.spec.concurrency.max(1) as usize));
    let mut running = JoinSet::new();
    let depth = tokio::spawn(report_depth(shared.clone(), served.clone()));
    loop {
        while running.try_join_next().is_some() {}
        // Wait for a free slot, then ask for as many messages as are free,
        // so every message received has a slot and none waits unacked.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let Ok(slot) = slot else { break };
        let free = slots.available_permits() + 1;
        drop(slot);
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(PULL_EXPIRY)
            .messages()
            .await;
        let pulled = match batch {
            Ok(mut batch) => {
                // A batch is read to its end even when stopping: the server
                // may already have sent what it holds for this pull.
                let mut ended = Ok(());
                while let Some(message) = batch.next().await {
                    match message {
                        Ok(message) => {
                            let Ok(slot) = slots.clone().acquire_owned().await else {
                                break;
                            };
                            running.spawn(handle(shared.clone(), served.clone(), message, slot));
                        }
                        Err(e) => {
                            ended = Err(e.to_string());
                            break;
                        }
                    }
                }
                ended
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = pulled {
            // NATS away, or the consumer deleted: pause, open it again.
            tracing::warn!(%function, error = %e, "pulling invocations failed; retrying");
            if pause_or_stop(&mut stopped).await {
                break;
            }
            match shared.layout.consumer(function, &served.spec).await {
                Ok(fresh) => consumer = fresh,
                Err(e) => tracing::warn!(%function, error = %e, "cannot open the consumer"),
            }
        }
    }
    depth.abort();
    while running.join_next().await.is_some() {}
    tracing::info!(%function, "stopped serving");
}

/// Sleeps a little before a retry; true when the worker was told to stop.
async fn pause_or_stop(stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::time::timeout(Duration::from_millis(500), stopped.wait_for(|stop| *stop))
        .await
        .is_ok()
}

/// Publishes the consumer's depth (pending + ack-pending) every second.
async fn report_depth(shared: Arc<Shared>, served: Arc<Served>) {
    let function = &served.prepared.function;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Ok(info) = shared
            .layout
            .invocations
            .consumer_info(function.consumer_name())
            .await
        {
            let depth = info.num_pending as i64 + info.num_ack_pending as i64;
            shared.metrics.set_queue_depth(function, depth);
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    served: Arc<Served>,
    message: jetstream::Message,
    _slot: OwnedSemaphorePermit,
) {
    let function = &served.prepared.function;
    let delivered = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1)
        .max(1);
    if delivered > 1 {
        shared.metrics.redelivered(function);
    }
    let pairs = header_pairs(message.headers.as_ref());
    let header = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| (*v).to_owned())
    };
    let invocation = match Invocation::from_wire(pairs.iter().copied(), message.payload.clone()) {
        Ok(invocation) if invocation.function == *function => invocation,
        Ok(invocation) => {
            let reason = format!(
                "the message names function {} but was queued for {function}",
                invocation.function
            );
            return poison(&shared, &served, &message, &reason, delivered).await;
        }
        Err(e) => {
            let reason = format!("malformed invocation message: {e}");
            return poison(&shared, &served, &message, &reason, delivered).await;
        }
    };

    if let Some(inbox) = header(REPLY_TO_HEADER) {
        // Synchronous: one attempt, whatever its outcome.
        let outcome = attempt(&shared, &served, &invocation, &message).await;
        let (headers, body) = reply::encode(&outcome);
        if let Err(e) = shared
            .client
            .publish_with_headers(inbox, headers, body)
            .await
        {
            tracing::warn!(%function, invocation = %invocation.id, error = %e, "cannot send the reply");
        }
        return acknowledge(&message, AckKind::Ack, &invocation.id).await;
    }

    let retry = &served.spec.retry;
    if delivered > retry.max_attempts {
        // Runtimes stopped during the last attempt(s) and the message came back.
        let error = format!(
            "delivered {delivered} times but retry.maxAttempts is {}: the runtimes running it stopped before finishing",
            retry.max_attempts
        );
        let mut record = InvocationRecord::queued(invocation.id.clone(), function.clone());
        record.state = InvocationState::DeadLettered;
        record.attempts = delivered;
        record.error = Some(error.clone());
        return give_up(
            &shared,
            &served,
            &message,
            record,
            &error,
            header(CALLBACK_HEADER),
        )
        .await;
    }

    let mut record = InvocationRecord::queued(invocation.id.clone(), function.clone());
    record.state = InvocationState::Running;
    record.attempts = delivered;
    announce(&shared, &record).await;
    let outcome = attempt(&shared, &served, &invocation, &message).await;
    record.response = outcome.stored_response();
    match outcome.settle(&invocation.id, delivered, retry) {
        Settlement::Retry { delay, reason } => {
            record.state = InvocationState::Queued;
            record.error = Some(reason);
            if let Err(e) = store(&shared, &record).await {
                tracing::warn!(%function, invocation = %invocation.id, error = %e, "cannot record the retry");
            }
            shared.metrics.retried(function);
            acknowledge(&message, AckKind::Nak(Some(delay)), &invocation.id).await;
        }
        Settlement::Final { state, error } => {
            record.state = state;
            record.error = error;
            if state == InvocationState::DeadLettered {
                let reason = record.error.clone().unwrap_or_default();
                give_up(
                    &shared,
                    &served,
                    &message,
                    record,
                    &reason,
                    header(CALLBACK_HEADER),
                )
                .await;
                return;
            }
            finish(&shared, &message, record, header(CALLBACK_HEADER)).await;
        }
    }
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
) -> Outcome {
    let attempt = shared
        .metrics
        .attempt(&shared.runtime, &served.prepared, invocation);
    let mut attempt = std::pin::pin!(attempt);
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

/// Dead-letters an async invocation, then records and acknowledges it.
async fn give_up(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    record: InvocationRecord,
    reason: &str,
    callback: Option<String>,
) {
    if let Err(e) = dead_letter(shared, served, message, reason, record.attempts).await {
        tracing::warn!(function = %record.function, invocation = %record.id, error = %e, "cannot dead-letter; retrying later");
        return acknowledge(
            message,
            AckKind::Nak(Some(Duration::from_secs(1))),
            &record.id,
        )
        .await;
    }
    finish(shared, message, record, callback).await;
}

/// Stores the final record, then acknowledges, then calls back: a crash in
/// between runs the invocation again rather than losing it.
async fn finish(
    shared: &Shared,
    message: &jetstream::Message,
    record: InvocationRecord,
    callback: Option<String>,
) {
    let (record, json) = storable(record, shared.client.server_info().max_payload);
    if let Err(e) = store_json(shared, &record.id, json).await {
        tracing::warn!(function = %record.function, invocation = %record.id, error = %e, "cannot store the result; retrying later");
        return acknowledge(
            message,
            AckKind::Nak(Some(Duration::from_secs(1))),
            &record.id,
        )
        .await;
    }
    acknowledge(message, AckKind::Ack, &record.id).await;
    if let Some(url) = callback {
        shared.callbacks.deliver(url, record);
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
    let function = &served.prepared.function;
    tracing::warn!(%function, subject = %message.subject, %reason, "dead-lettering a message that cannot run");
    match dead_letter(shared, served, message, reason, delivered).await {
        Ok(()) => {
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%function, error = %e, "cannot drop a dead-lettered message");
            }
        }
        Err(e) => {
            tracing::warn!(%function, error = %e, "cannot dead-letter; retrying later");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// Republishes the original message on the dead-letter subject, with why.
async fn dead_letter(
    shared: &Shared,
    served: &Served,
    message: &jetstream::Message,
    reason: &str,
    attempts: u32,
) -> Result<(), String> {
    let function = &served.prepared.function;
    let mut headers = message.headers.clone().unwrap_or_default();
    for (name, value) in DeadLetter::headers(reason, attempts, message.subject.as_str()) {
        headers.insert(name, value.as_str());
    }
    let subject = served.spec.dead_letter_subject(function);
    shared
        .layout
        .js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    shared.metrics.dead_lettered(function);
    tracing::warn!(%function, %reason, "dead-lettered");
    Ok(())
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

async fn store(shared: &Shared, record: &InvocationRecord) -> Result<(), String> {
    let json = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    store_json(shared, &record.id, json).await
}

async fn store_json(shared: &Shared, id: &InvocationId, json: Vec<u8>) -> Result<(), String> {
    shared
        .layout
        .results
        .put(id.as_str(), json.into())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Publishes a record that is not final without waiting for the store to
/// confirm it: the attempt need not wait, and a lost update only delays
/// what a caller sees until the final record, which is confirmed. Both go
/// to the same stream over one connection, so they are stored in order.
async fn announce(shared: &Shared, record: &InvocationRecord) {
    let Ok(json) = serde_json::to_vec(record) else {
        return;
    };
    let subject = format!("$KV.{RESULTS_BUCKET}.{}", record.id);
    if let Err(e) = shared.layout.js.publish(subject, json.into()).await {
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
    use sluice_api::StoredResponse;

    use super::*;

    #[test]
    fn a_record_too_large_to_store_keeps_its_outcome_without_the_response() {
        let mut record =
            InvocationRecord::queued(InvocationId::random(), "default/echo".parse().unwrap());
        record.state = InvocationState::Succeeded;
        record.response = Some(StoredResponse {
            status: 200,
            headers: [("x-big".to_owned(), "v".repeat(100 << 10))].into(),
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
