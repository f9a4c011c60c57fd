//! The event bridge: a NATS message on a function's trigger subject becomes
//! an asynchronous CloudEvents 1.0 invocation (`POST /`): binary mode
//! (`ce-*` headers, body = event data), or structured mode as it came when
//! the message is an `application/cloudevents+json` envelope.
//!
//! Plain subjects are consumed in the function's queue group
//! ([`FunctionRef::event_queue_group`]), so N
//! gateways enqueue each event once; an event that cannot be queued (the
//! function's queue is full) goes to its dead letters with the reason, since
//! core NATS will not deliver it again. A subject bound to a JetStream stream
//! is consumed through a durable consumer shared by every gateway, and a
//! message is acknowledged only after its invocation is stored; an event
//! redelivered meanwhile maps to the same invocation id, so it runs once.

mod cloudevent;
mod plain;
mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use bytes::Bytes;
use http::Method;
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, Invocation, InvocationId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cloudevent::{CloudEvent, DEFAULT_EVENT_TYPE, event_invocation_id};

use crate::metrics::Metrics;
use crate::queue::InvocationQueue;

/// Subscriptions of the trigger subjects of every routed function.
#[derive(Debug)]
pub struct EventBridge {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Messages each trigger holds while earlier ones are queued.
    buffer: usize,
    queue: Arc<dyn InvocationQueue>,
    metrics: Metrics,
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
    /// Its events' class: the function's default, whatever the event's
    /// headers say (a publisher cannot promote its events).
    priority: sluice_api::Priority,
}

impl EventBridge {
    /// The bridge on `client`, whose subscriptions hold `buffer` messages
    /// each (`sluice_nats::SubscriptionBound`): a trigger holds at most as
    /// many besides those being queued, pulls half as many at once from a
    /// stream, and drops (counting) a core NATS event past it.
    pub fn new(
        client: async_nats::Client,
        buffer: usize,
        queue: Arc<dyn InvocationQueue>,
        metrics: Metrics,
        deadline: Duration,
    ) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            buffer,
            queue,
            metrics,
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
                    priority: spec.priority.default,
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
                buffer: self.buffer,
                queue: self.queue.clone(),
                metrics: self.metrics.clone(),
                deadline: self.deadline,
                trigger: key.clone(),
            };
            let stop = self.stop.child_token();
            let task = self.consumers.spawn(source.run(stop.clone()));
            self.running.insert(key, Running { stop, task });
        }
    }
}

/// Deletes the durable consumer of a trigger that is gone, if its subject
/// is on a stream: left behind, it would hold messages of an
/// interest-retention stream forever, and a trigger added again later would
/// replay everything since.
async fn forget_stream_consumer(js: jetstream::Context, trigger: Trigger) {
    let Ok(stream) = js.stream_by_subject(trigger.subject.as_str()).await else {
        return;
    };
    let name = trigger.function.event_consumer_name(&trigger.subject);
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

/// One trigger's consumer of events.
struct Source {
    client: async_nats::Client,
    js: jetstream::Context,
    buffer: usize,
    queue: Arc<dyn InvocationQueue>,
    metrics: Metrics,
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

    fn invocation(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        body: Bytes,
        subject: &str,
        stream_id: Option<String>,
    ) -> Invocation {
        let info = self.client.server_info();
        let server = format!("{}:{}", info.host, info.port);
        let mut event = CloudEvent::from_message(headers, &body, subject, &server, stream_id);
        sluice_api::priority::stamp(&mut event.headers, self.trigger.priority);
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
