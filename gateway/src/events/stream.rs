//! Events on a subject bound to a JetStream stream: read through a durable
//! consumer shared by every gateway, each acknowledged only once queued.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use sluice_serve::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Source, Trigger};

impl Source {
    /// Takes the subject's messages from a durable consumer, acknowledging
    /// each once queued. When told to stop it just stops: what it received
    /// and did not acknowledge is delivered again, to another gateway.
    pub(super) async fn consume_stream(
        &self,
        stream_name: &str,
        stop: &CancellationToken,
    ) -> String {
        let stream = match self.js.get_stream(stream_name).await {
            Ok(stream) => stream,
            Err(e) => return e.to_string(),
        };
        let name = self
            .trigger
            .function
            .event_consumer_name(&self.trigger.subject);
        let consumer = match stream
            .get_or_create_consumer::<consumer::pull::Config>(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!(
                        "Sluice events of {} for {}",
                        self.trigger.subject, self.trigger.function
                    )),
                    filter_subject: self.trigger.subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    // A new trigger sees new events, not the stream's past.
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => return e.to_string(),
        };
        // Few enough at once that the bounded subscription never drops one.
        let pulled = consumer
            .stream()
            .max_messages_per_batch(sluice_nats::pull_batch(self.buffer))
            .heartbeat(Duration::from_secs(15))
            .messages()
            .await;
        let mut messages = match pulled {
            Ok(messages) => messages,
            Err(e) => return e.to_string(),
        };
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = stop.cancelled() => return "stopped".into(),
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => return e.to_string(),
                None => break,
            };
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let mut invocation = self.invocation(
                message.headers.as_ref(),
                message.payload.clone(),
                &message.subject,
                Some(format!("{stream_name}-{sequence}")),
            );
            let span = telemetry::gateway_span(&mut invocation);
            let submitted = self
                .queue
                .submit(invocation.clone(), None)
                .instrument(span)
                .await;
            let kind = match submitted {
                Ok(_) => {
                    self.metrics.event_queued(&self.trigger.function);
                    jetstream::AckKind::Ack
                }
                // It would fail the same way on every redelivery.
                Err(e) if e.is_permanent() => self.dead_letter(&invocation, &e).await,
                Err(e) => {
                    tracing::warn!(function = %self.trigger.function, subject = %self.trigger.subject, error = %e, "cannot enqueue an event; it will be redelivered");
                    jetstream::AckKind::Nak(Some(Duration::from_secs(1)))
                }
            };
            if let Err(e) = message.ack_with(kind).await {
                tracing::warn!(function = %self.trigger.function, error = %e, "cannot acknowledge an event");
            }
        }
        "the consumer ended".into()
    }

    /// Dead-letters an event that can never be queued; acknowledged once
    /// its dead letter is stored, delivered again if it could not be.
    async fn dead_letter(
        &self,
        invocation: &sluice_api::Invocation,
        error: &crate::queue::QueueError,
    ) -> jetstream::AckKind {
        let reason = format!("the event could not be queued: {error}");
        let Trigger {
            function,
            subject,
            dead_letter_subject,
            ..
        } = &self.trigger;
        match self
            .queue
            .dead_letter(invocation, dead_letter_subject, &reason)
            .await
        {
            Ok(()) => {
                self.metrics.event_dead_lettered(function);
                tracing::warn!(%function, %subject, invocation = %invocation.id, %reason, "event dead-lettered");
                jetstream::AckKind::Ack
            }
            Err(e) => {
                tracing::warn!(%function, %subject, error = %e, "cannot dead-letter an event; it will be redelivered");
                jetstream::AckKind::Nak(Some(Duration::from_secs(1)))
            }
        }
    }
}
