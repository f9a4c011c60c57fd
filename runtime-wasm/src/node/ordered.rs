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

use std::sync::Arc;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt as _;
use sluice_api::Lane;
use tokio::sync::{Notify, watch};

use super::loader::Served;
use super::slots::LaneSlots;
use super::worker::{
    PULL_EXPIRY, Puller, Retry, Shared, handle, pause_or_stop, sleep_or_stop, slot_for,
};

/// Serves one bucket: pull one message, run it, pull again; asleep while
/// the bucket has nothing deliverable. Started by its first wake
/// ([`Puller`]'s side queues).
pub(super) async fn bucket_loop(puller: Puller, bucket: u16, wake: Arc<Notify>) {
    let Puller {
        shared,
        served,
        slots,
        mut stopped,
        ..
    } = puller;
    let function = &served.function;
    let mut consumer: Option<PullConsumer> = None;
    let mut retry = Retry::default();
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
            Ok(Pulled { received, retrying }) => {
                if retry.succeeded() {
                    tracing::info!(%function, bucket, "pulling ordered invocations again");
                }
                awake = received > 0 && !retrying;
            }
            Err(e) => {
                // NATS away, or the consumer without a leader: the same
                // consumer again after a pause, as a lane's loop does,
                // without waiting for another wake.
                awake = true;
                let (pause, first) = retry.failed();
                if first {
                    tracing::warn!(%function, bucket, error = %e, "pulling ordered invocations failed; retrying");
                } else {
                    tracing::debug!(%function, bucket, error = %e, "pulling ordered invocations failed again");
                }
                if sleep_or_stop(&mut stopped, pause).await {
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
    slots: &Arc<LaneSlots>,
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
        // A keyed invocation takes its slot as `normal` work, as in local
        // mode: its key's order, not its class, decides when it runs.
        let slot = slot_for(&message, served, slots, Lane::Normal).await;
        pulled.received += 1;
        pulled.retrying = handle(shared.clone(), served.clone(), message, wake.clone(), slot).await;
    }
    Ok(pulled)
}
