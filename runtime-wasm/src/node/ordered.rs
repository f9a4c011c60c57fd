//! Serving a function's ordering buckets ([`sluice_api::ordering`]): a
//! loop per bucket found to have work, started when a publish or the sweep
//! first names the bucket ([`super::wake`]), with the bucket's consumer
//! created then (`max_ack_pending: 1`, [`sluice_nats::layout::keyed_consumer_config`]).
//!
//! A bucket lets one message out at a time to all runtimes together, so
//! its loop runs each message it receives to its acknowledgement (or its
//! negative acknowledgement for a retry, which keeps the bucket held
//! until the retry falls due) before it reads the next. One pull stays
//! open up to [`PULL_EXPIRY`] for many messages: the server sends the next
//! as soon as the last is acknowledged, so a busy bucket costs one pull
//! request a second, not one per message. A pull that brings nothing
//! means the bucket is empty or held by another runtime, which goes on
//! itself when it finishes: the loop sleeps until woken. A message waits
//! for one of the function's slots (shared with its unordered queue) after
//! it arrives, telling the server meanwhile that it is in progress, so a
//! loop holds no slot while its pull waits.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use sluice_nats::layout::ack_wait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::loader::Served;
use super::wake::BucketWakes;
use super::worker::{PULL_EXPIRY, Shared, handle, pause_or_stop};

/// Starts a loop for each bucket as it is first woken, and wakes those
/// already running, until told to stop; then waits for every loop to
/// finish what it holds.
pub(super) async fn serve_buckets(
    shared: Arc<Shared>,
    served: Arc<Served>,
    woken: Arc<BucketWakes>,
    slots: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut loops: HashMap<u16, Arc<Notify>> = HashMap::new();
    let mut running = JoinSet::new();
    loop {
        let buckets = tokio::select! {
            buckets = woken.next() => buckets,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        for bucket in buckets {
            if let Some(wake) = loops.get(&bucket) {
                wake.notify_one();
                continue;
            }
            let wake = Arc::new(Notify::new());
            loops.insert(bucket, wake.clone());
            running.spawn(bucket_loop(
                shared.clone(),
                served.clone(),
                bucket,
                wake,
                slots.clone(),
                stopped.clone(),
            ));
        }
    }
    while running.join_next().await.is_some() {}
}

/// Serves one bucket: pull one message, run it, pull again; asleep while
/// the bucket has nothing deliverable.
async fn bucket_loop(
    shared: Arc<Shared>,
    served: Arc<Served>,
    bucket: u16,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let function = &served.function;
    let mut consumer: Option<PullConsumer> = None;
    // Awake at the start: it was started because the bucket has work.
    let mut awake = true;
    loop {
        if !awake {
            tokio::select! {
                () = wake.notified() => {}
                _ = stopped.wait_for(|stop| *stop) => break,
            }
        }
        if *stopped.borrow() {
            break;
        }
        let Some(open) = &consumer else {
            match shared
                .layout
                .keyed_consumer(function, &served.spec, bucket)
                .await
            {
                Ok(opened) => consumer = Some(opened),
                Err(e) => {
                    tracing::warn!(%function, bucket, error = %e, "cannot open the ordering bucket's consumer; retrying");
                    if pause_or_stop(&mut stopped).await {
                        break;
                    }
                }
            }
            continue;
        };
        match pull(&shared, &served, open, &wake, &slots, &stopped).await {
            Ok(Pulled { received, retrying }) => awake = received > 0 && !retrying,
            Err(e) => {
                // NATS away, or the consumer deleted: open it again.
                tracing::warn!(%function, bucket, error = %e, "pulling ordered invocations failed; retrying");
                consumer = None;
                if pause_or_stop(&mut stopped).await {
                    break;
                }
            }
        }
    }
}

/// What one pull brought.
struct Pulled {
    received: usize,
    /// The last message was handed back for a retry.
    retrying: bool,
}

/// Most messages one pull may bring, one after the other.
const BUCKET_BATCH: usize = 256;

/// One pull, open up to [`PULL_EXPIRY`]: each message run to its end
/// before the next comes. Once the worker stops, what still arrives is
/// handed back at once (a negative acknowledgement without delay), so the
/// bucket's next message goes to another runtime now rather than after
/// `ack_wait`.
async fn pull(
    shared: &Arc<Shared>,
    served: &Arc<Served>,
    consumer: &PullConsumer,
    wake: &Arc<Notify>,
    slots: &Arc<Semaphore>,
    stopped: &watch::Receiver<bool>,
) -> Result<Pulled, String> {
    let mut batch = consumer
        .batch()
        .max_messages(BUCKET_BATCH)
        .expires(PULL_EXPIRY)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut pulled = Pulled {
        received: 0,
        retrying: false,
    };
    // Read to its end: the pull is over only then.
    while let Some(message) = batch.next().await {
        let message = message.map_err(|e| e.to_string())?;
        if *stopped.borrow() {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(error = %e, "cannot hand back an ordered invocation");
            }
            continue;
        }
        let Some(slot) = slot_for(&message, served, slots).await else {
            return Ok(pulled);
        };
        pulled.received += 1;
        pulled.retrying = handle(shared.clone(), served.clone(), message, wake.clone(), slot).await;
    }
    Ok(pulled)
}

/// A slot for `message`, telling the server every half `ack_wait` while it
/// waits that the message is in progress; `None` if the slots are closed.
async fn slot_for(
    message: &jetstream::Message,
    served: &Served,
    slots: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    let every = ack_wait(&served.spec) / 2;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let acquire = slots.clone().acquire_owned();
    let mut acquire = std::pin::pin!(acquire);
    loop {
        tokio::select! {
            slot = &mut acquire => return slot.ok(),
            _ = progress.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "cannot report progress");
                }
            }
        }
    }
}
