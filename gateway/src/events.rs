//! The event bridge: a NATS message on a function's trigger subject becomes
//! an asynchronous CloudEvents 1.0 binary-mode invocation (`POST /`, `ce-*`
//! headers, body = event data).
//!
//! Plain subjects are consumed in the function's [`queue_group`], so N
//! gateways enqueue each event once; an event that cannot be queued (the
//! function's queue is full) goes to its dead letters with the reason, since
//! core NATS will not deliver it again. A subject bound to a JetStream stream
//! is consumed through a durable consumer shared by every gateway, and a
//! message is acknowledged only after its invocation is stored; an event
//! redelivered meanwhile maps to the same invocation id, so it runs once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use sha2::{Digest as _, Sha256};
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, Invocation, InvocationId};
use sluice_runtime::nats::round_trip;
use sluice_runtime::telemetry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::queue::InvocationQueue;

/// Queue group in which every gateway subscribes to a plain trigger
/// subject for `function`: one per function, so that functions sharing a
/// subject each get every event, and gateways share each function's.
pub fn queue_group(function: &FunctionRef) -> String {
    format!("sluice-events_{}", function.unique_token())
}
/// Events of one plain-subject trigger being queued at once.
const MAX_QUEUEING: usize = 64;

/// `ce-type` of an event whose message does not name one.
pub const DEFAULT_EVENT_TYPE: &str = "dev.sluice.nats.message";

/// Subscriptions of the trigger subjects of every routed function.
#[derive(Debug)]
pub struct EventBridge {
    client: async_nats::Client,
    js: jetstream::Context,
    queue: Arc<dyn InvocationQueue>,
    /// How long an event's invocation may take, retries included.
    deadline: Duration,
    /// Each trigger's consumer stops when its token is cancelled, after
    /// queueing the events it already received.
    running: HashMap<Trigger, Running>,
    consumers: TaskTracker,
    /// Parent of every trigger's token.
    stop: CancellationToken,
}

/// A trigger's consumer task and what stops it.
#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One function's subscription to one subject.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Trigger {
    function: FunctionRef,
    subject: String,
    /// Where events that cannot be queued go.
    dead_letter_subject: String,
}

impl EventBridge {
    pub fn new(
        client: async_nats::Client,
        queue: Arc<dyn InvocationQueue>,
        deadline: Duration,
    ) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            queue,
            deadline,
            running: HashMap::new(),
            consumers: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Stops every trigger's consumer and waits for them to queue the
    /// events they already received.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.consumers.close();
        self.consumers.wait().await;
    }

    /// Subscribes to the trigger subjects of `functions` and drops the
    /// subscriptions of triggers that are gone.
    pub fn update(&mut self, functions: &HashMap<FunctionRef, Arc<FunctionSpec>>) {
        let wanted: HashSet<Trigger> = functions
            .iter()
            .flat_map(|(f, spec)| {
                let dead_letter_subject = spec.dead_letter_subject(f);
                spec.triggers.nats.iter().map(move |t| Trigger {
                    function: f.clone(),
                    subject: t.subject.clone(),
                    dead_letter_subject: dead_letter_subject.clone(),
                })
            })
            .collect();
        let gone: Vec<Trigger> = self
            .running
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            let Some(running) = self.running.remove(&key) else {
                continue;
            };
            tracing::info!(function = %key.function, subject = %key.subject, "event trigger removed");
            running.stop.cancel();
            // A trigger that only changed its dead-letter subject keeps its
            // durable consumer, and with it its place in the stream.
            if !wanted
                .iter()
                .any(|w| w.function == key.function && w.subject == key.subject)
            {
                let js = self.js.clone();
                self.consumers.spawn(async move {
                    // Only once the consumer task is done, or it could
                    // create the consumer again.
                    let _ = running.task.await;
                    forget_stream_consumer(js, key).await;
                });
            }
        }
        for key in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let source = Source {
                client: self.client.clone(),
                js: self.js.clone(),
                queue: self.queue.clone(),
                deadline: self.deadline,
                trigger: key.clone(),
            };
            let stop = self.stop.child_token();
            let task = self.consumers.spawn(source.run(stop.clone()));
            self.running.insert(key, Running { stop, task });
        }
    }
}

/// One durable consumer per function and subject, shared by gateways.
fn stream_consumer_name(trigger: &Trigger) -> String {
    let hash = hex::encode(&Sha256::digest(trigger.subject.as_bytes())[..6]);
    format!("sluice-events_{}_{hash}", trigger.function.unique_token())
}

/// Deletes the durable consumer of a trigger that is gone, if its subject
/// is on a stream: left behind, it would hold messages of an
/// interest-retention stream forever, and a trigger added again later would
/// replay everything since.
async fn forget_stream_consumer(js: jetstream::Context, trigger: Trigger) {
    let Ok(stream) = js.stream_by_subject(trigger.subject.as_str()).await else {
        return;
    };
    let name = stream_consumer_name(&trigger);
    match js.delete_consumer_from_stream(&name, &stream).await {
        Ok(_) => {
            tracing::info!(function = %trigger.function, subject = %trigger.subject, consumer = %name, "deleted the removed trigger's consumer")
        }
        Err(e) => tracing::debug!(consumer = %name, error = %e, "no consumer deleted"),
    }
}

impl Drop for EventBridge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Source {
    client: async_nats::Client,
    js: jetstream::Context,
    queue: Arc<dyn InvocationQueue>,
    deadline: Duration,
    trigger: Trigger,
}

impl Source {
    async fn run(self, stop: CancellationToken) {
        let Trigger {
            function, subject, ..
        } = &self.trigger;
        tracing::info!(%function, %subject, "consuming events");
        loop {
            let lookup = tokio::select! {
                lookup = self.js.stream_by_subject(subject.as_str()) => lookup,
                () = stop.cancelled() => break,
            };
            let ended = match lookup {
                Ok(stream) => self.consume_stream(&stream, &stop).await,
                Err(e) if matches!(e.kind(), GetStreamByNameErrorKind::NotFound) => {
                    self.consume_plain(&stop).await
                }
                // Unknown whether a stream holds the subject: ask again.
                Err(e) => e.to_string(),
            };
            if stop.is_cancelled() {
                break;
            }
            tracing::warn!(%function, %subject, reason = %ended, "event consumption stopped; resuming");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => break,
            }
        }
        tracing::info!(%function, %subject, "stopped consuming events");
    }

    /// Takes the subject's messages in the function's queue group. When
    /// told to stop it unsubscribes, and still queues what the server had
    /// already routed to it: core NATS would not send it again.
    async fn consume_plain(&self, stop: &CancellationToken) -> String {
        let subscribed = tokio::select! {
            subscribed = self.client.queue_subscribe(
                self.trigger.subject.clone(),
                queue_group(&self.trigger.function),
            ) => subscribed,
            () = stop.cancelled() => return "stopped".into(),
        };
        let mut messages = match subscribed {
            Ok(messages) => messages,
            Err(e) => return e.to_string(),
        };
        // Events are queued several at once: one after another, a
        // subscription could take only one per round trip to JetStream, and
        // core NATS drops what a slow subscriber leaves waiting.
        let mut queueing = FuturesUnordered::new();
        let mut draining = false;
        let mut ended = "the subscription ended".to_owned();
        loop {
            tokio::select! {
                message = messages.next(), if queueing.len() < MAX_QUEUEING => match message {
                    Some(message) => queueing.push(self.queue_plain_event(message)),
                    None => break,
                },
                Some(()) = queueing.next() => {}
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
        while queueing.next().await.is_some() {}
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
            return;
        };
        // Core NATS has no redelivery: the dead letter is the event's only
        // copy left.
        let Trigger {
            function,
            subject,
            dead_letter_subject,
        } = &self.trigger;
        let reason = format!("the event could not be queued: {e}");
        match self
            .queue
            .dead_letter(&invocation, dead_letter_subject, &reason)
            .await
        {
            Ok(()) => {
                tracing::warn!(%function, %subject, invocation = %invocation.id, %reason, "event dead-lettered")
            }
            Err(dead) => {
                tracing::error!(%function, %subject, invocation = %invocation.id, %reason, error = %dead, "event dropped: it can be neither queued nor dead-lettered")
            }
        }
    }

    /// Takes the subject's messages from a durable consumer, acknowledging
    /// each once queued. When told to stop it just stops: what it received
    /// and did not acknowledge is delivered again, to another gateway.
    async fn consume_stream(&self, stream_name: &str, stop: &CancellationToken) -> String {
        let stream = match self.js.get_stream(stream_name).await {
            Ok(stream) => stream,
            Err(e) => return e.to_string(),
        };
        let name = stream_consumer_name(&self.trigger);
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
        let mut messages = match consumer.messages().await {
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
            let kind = match self.queue.submit(invocation, None).instrument(span).await {
                Ok(_) => jetstream::AckKind::Ack,
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

    fn invocation(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        body: Bytes,
        subject: &str,
        stream_id: Option<String>,
    ) -> Invocation {
        let info = self.client.server_info();
        let server = format!("{}:{}", info.host, info.port);
        let event = CloudEvent::from_message(headers, subject, &server, stream_id);
        Invocation {
            id: match &event.identity {
                Some(id) => event_invocation_id(&self.trigger.function, subject, id),
                None => InvocationId::random(),
            },
            function: self.trigger.function.clone(),
            method: Method::POST,
            path: "/".into(),
            query: None,
            forwarded_prefix: String::new(),
            headers: event.headers,
            body,
            deadline: SystemTime::now() + self.deadline,
            traceparent: event.traceparent,
        }
    }
}

/// The invocation an event the publisher named maps to (`identity`, see
/// [`CloudEvent::identity`]): the same event delivered twice on one subject
/// runs once; equal ids on other subjects are other events.
pub fn event_invocation_id(function: &FunctionRef, subject: &str, identity: &str) -> InvocationId {
    InvocationId::for_idempotency_key(function, &format!("{subject}\n{identity}"))
}

/// The HTTP headers of a CloudEvents binary-mode request for one message.
#[derive(Debug)]
pub struct CloudEvent {
    pub headers: HeaderMap,
    /// What names the event, when the publisher named it: its id (`ce-id`
    /// or `Nats-Msg-Id`, or the stream position), after its `ce-source`
    /// when the publisher set one, since CloudEvents ids are unique only
    /// per source. It names the invocation, so the same event delivered
    /// twice runs once.
    pub identity: Option<String>,
    pub traceparent: Option<String>,
}

impl CloudEvent {
    /// Headers a message may set itself: `ce-*` overrides, plus
    /// `content-type`; other headers are carried as they are (the runtime
    /// frames the request the function sees).
    pub fn from_message(
        message_headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        server: &str,
        stream_id: Option<String>,
    ) -> Self {
        let mut headers = HeaderMap::new();
        let mut traceparent = None;
        let mut msg_id = None;
        for (name, value) in sluice_runtime::nats::header_pairs(message_headers) {
            let lower = name.to_ascii_lowercase();
            if lower == "traceparent" {
                traceparent = Some(value.to_owned());
            } else if lower == "nats-msg-id" {
                msg_id = Some(value.to_owned());
            } else if lower.starts_with("nats-") {
                // JetStream's own headers are not the event's.
            } else if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(lower.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        let given = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let given_id = given("ce-id")
            .or(msg_id.filter(|id| !id.is_empty()))
            .or(stream_id);
        let identity = given_id.as_ref().map(|id| match given("ce-source") {
            Some(source) => format!("{source}\n{id}"),
            None => id.clone(),
        });
        let id = given_id.unwrap_or_else(|| InvocationId::random().to_string());
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let defaults = [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", id),
            ("ce-source", format!("nats://{server}/{subject}")),
            ("ce-type", DEFAULT_EVENT_TYPE.to_owned()),
            ("ce-subject", subject.to_owned()),
            ("ce-time", now),
            ("content-type", "application/octet-stream".to_owned()),
        ];
        for (name, value) in defaults {
            if !headers.contains_key(name)
                && let Ok(value) = HeaderValue::from_str(&value)
            {
                headers.insert(name, value);
            }
        }
        Self {
            headers,
            identity,
            traceparent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_message_gets_every_required_cloudevents_header() {
        let event = CloudEvent::from_message(None, "orders.created", "127.0.0.1:4222", None);
        let h = |n: &str| event.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("ce-specversion"), "1.0");
        assert_eq!(h("ce-source"), "nats://127.0.0.1:4222/orders.created");
        assert_eq!(h("ce-subject"), "orders.created");
        assert_eq!(h("ce-type"), DEFAULT_EVENT_TYPE);
        assert_eq!(h("content-type"), "application/octet-stream");
        assert!(InvocationId::parse(&h("ce-id")).is_some());
        assert!(humantime::parse_rfc3339(&h("ce-time")).is_ok());
        assert_eq!(event.identity, None);
    }

    #[test]
    fn the_publisher_may_name_the_event() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-17");
        headers.insert("ce-type", "com.example.order.created");
        headers.insert("Content-Type", "application/json");
        let event = CloudEvent::from_message(Some(&headers), "orders.created", "h:1", None);
        let h = |n: &str| event.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("ce-id"), "order-17");
        assert_eq!(h("ce-type"), "com.example.order.created");
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(event.identity.as_deref(), Some("order-17"));
        assert!(event.headers.get("nats-msg-id").is_none());
    }

    #[test]
    fn an_event_is_named_by_its_source_and_id() {
        let event = |source: Option<&str>, id: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("ce-id", id);
            if let Some(source) = source {
                headers.insert("ce-source", source);
            }
            CloudEvent::from_message(Some(&headers), "orders.created", "h:1", None)
        };
        let a = event(Some("/shop/a"), "1");
        let b = event(Some("/shop/b"), "1");
        assert_ne!(a.identity, b.identity, "equal ids from two sources");
        assert_eq!(a.identity, event(Some("/shop/a"), "1").identity);
        assert_eq!(event(None, "").identity, None, "an empty id names nothing");
    }
}
