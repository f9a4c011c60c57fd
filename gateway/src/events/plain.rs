//! Events on a plain (core NATS) subject: read in the function's queue
//! group; an event that cannot be queued is dead-lettered, since core NATS
//! will not deliver it again.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sluice_nats::round_trip;
use sluice_serve::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Source, Trigger};

/// Events of one plain-subject trigger being queued at once.
const MAX_QUEUEING: usize = 64;

impl Source {
    /// Takes the subject's messages in the function's queue group. When
    /// told to stop it unsubscribes, and still queues what the server had
    /// already routed to it: core NATS would not send it again.
    pub(super) async fn consume_plain(&self, stop: &CancellationToken) -> String {
        let subscribed = tokio::select! {
            subscribed = self.client.queue_subscribe(
                self.trigger.subject.clone(),
                self.trigger.function.event_queue_group(),
            ) => subscribed,
            () = stop.cancelled() => return "stopped".into(),
        };
        let mut messages = match subscribed {
            Ok(messages) => messages,
            Err(e) => return e.to_string(),
        };
        // Events are queued several at once: one after another, a
        // subscription could take only one per round trip to JetStream.
        // Behind those, at most `buffer` wait here; past it an event is
        // dropped and counted (core NATS would not send it again, and
        // holding more would let one busy subject fill the memory).
        let mut queueing = FuturesUnordered::new();
        let mut waiting = VecDeque::new();
        // Logged once per run of drops, counted each.
        let mut dropping = false;
        let mut draining = false;
        let mut ended = "the subscription ended".to_owned();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) if queueing.len() < MAX_QUEUEING => {
                        queueing.push(self.queue_plain_event(message));
                    }
                    Some(message) if waiting.len() < self.buffer => {
                        dropping = false;
                        waiting.push_back(message);
                    }
                    Some(message) => {
                        self.metrics.event_dropped();
                        if !dropping {
                            dropping = true;
                            tracing::warn!(function = %self.trigger.function, subject = %message.subject, buffer = self.buffer, "dropping events: the trigger's buffer is full (counted in sluice_events_dropped_total)");
                        }
                    }
                    None => break,
                },
                Some(()) = queueing.next() => {
                    if let Some(message) = waiting.pop_front() {
                        queueing.push(self.queue_plain_event(message));
                    }
                }
                () = stop.cancelled(), if !draining => {
                    draining = true;
                    // async-nats forgets a drained subscription once its
                    // UNSUB is written, dropping messages still on the
                    // wire: a round trip first brings in all the server
                    // routed to it so far. What it routes in the instant
                    // between is lost (use a stream-bound subject where
                    // that matters).
                    if let Err(e) = round_trip(&self.client, Duration::from_secs(5)).await {
                        tracing::warn!(error = %e, "no round trip to NATS before unsubscribing");
                    }
                    if let Err(e) = messages.drain().await {
                        ended = format!("cannot unsubscribe: {e}");
                        break;
                    }
                }
            }
        }
        while queueing.next().await.is_some() {
            if let Some(message) = waiting.pop_front() {
                queueing.push(self.queue_plain_event(message));
            }
        }
        ended
    }

    /// Queues one event from a plain subject, or dead-letters it when it
    /// cannot be queued.
    async fn queue_plain_event(&self, message: async_nats::Message) {
        let mut invocation = self.invocation(
            message.headers.as_ref(),
            message.payload,
            &message.subject,
            None,
        );
        let span = telemetry::gateway_span(&mut invocation);
        let submitted = self.queue.submit(invocation.clone(), None);
        let Err(e) = submitted.instrument(span).await else {
            self.metrics.event_queued(&self.trigger.function);
            return;
        };
        // Core NATS has no redelivery: the dead letter is the event's only
        // copy left.
        let Trigger {
            function,
            subject,
            dead_letter_subject,
            ..
        } = &self.trigger;
        let reason = format!("the event could not be queued: {e}");
        match self
            .queue
            .dead_letter(&invocation, dead_letter_subject, &reason)
            .await
        {
            Ok(()) => {
                self.metrics.event_dead_lettered(function);
                tracing::warn!(%function, %subject, invocation = %invocation.id, %reason, "event dead-lettered")
            }
            Err(dead) => {
                tracing::error!(%function, %subject, invocation = %invocation.id, %reason, error = %dead, "event dropped: it can be neither queued nor dead-lettered")
            }
        }
    }
}
