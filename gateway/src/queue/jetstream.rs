//! The JetStream queue: invocations go onto `SLUICE_INVOCATIONS` for any
//! runtime to take (see `sluice_runtime::node`). Synchronous calls carry a
//! reply subject under this gateway's inbox; asynchronous ones get a record
//! in `sluice-results` and an id that doubles as `Nats-Msg-Id`, so a retried
//! submit with the same `Idempotency-Key` is stored once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use sluice_api::invocation::{CALLBACK_HEADER, REPLY_TO_HEADER};
use sluice_api::names::FunctionRef;
use sluice_api::{DeadLetter, Invocation, InvocationId, InvocationRecord};
use sluice_api::{Failure, FailureKind};
use sluice_nats::dead_letter::{self, GivenUp};
use sluice_nats::layout::Layout;
use sluice_nats::{Oversize, reply};
use tokio::sync::oneshot;

use super::{CallResult, InvocationQueue, QueueError, Submitted};

/// Dead letters listed at most per request.
const MAX_DEAD_LETTERS: usize = 1000;

#[derive(Clone)]
pub struct JetStreamQueue {
    client: async_nats::Client,
    layout: Layout,
    /// Replies to this gateway's sync calls arrive on `<inbox>.<id>`.
    inbox: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<async_nats::Message>>>>,
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
    /// reconnections (the client restores it).
    pub async fn new(client: async_nats::Client, layout: Layout) -> Result<Self, QueueError> {
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
        })
    }

    fn check_connected(&self) -> Result<(), QueueError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(QueueError::Unavailable(
                "NATS is unreachable; try again shortly".into(),
            )),
        }
    }

    /// Publishes an invocation onto its function's subject.
    async fn enqueue(
        &self,
        invocation: &Invocation,
        extra: &[(&'static str, &str)],
        message_id: Option<&str>,
    ) -> Result<bool, QueueError> {
        let mut headers = async_nats::HeaderMap::new();
        invocation.write_wire_headers(|name, value| headers.append(name, value));
        for (name, value) in extra {
            headers.insert(*name, *value);
        }
        let mut message = PublishMessage::build()
            .payload(invocation.body.clone())
            .headers(headers);
        if let Some(id) = message_id {
            message = message.message_id(id);
        }
        let function = &invocation.function;
        let ack = self
            .layout
            .js
            .send_publish(function.invoke_subject(), message)
            .await
            .map_err(|e| publish_error(function, e))?
            .await
            .map_err(|e| publish_error(function, e))?;
        Ok(ack.duplicate)
    }
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
        return QueueError::Full(function.clone());
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
        self.check_connected()?;
        let id = invocation.id.to_string();
        let (tx, reply) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), tx);
        let forget = Forget {
            waiting: &self.waiting,
            id: &id,
        };
        let reply_to = format!("{}.{id}", self.inbox);
        self.enqueue(&invocation, &[(REPLY_TO_HEADER, &reply_to)], None)
            .await?;
        let wait = invocation
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        // The runtime answers by the deadline at the latest; the grace lets
        // its more precise reason arrive.
        let answer = tokio::time::timeout(wait + Duration::from_millis(250), reply).await;
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
        self.check_connected()?;
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
            self.enqueue(&invocation, &extra, Some(id.as_str())),
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
        self.check_connected()?;
        let unavailable = |e: &dyn std::fmt::Display| {
            QueueError::Unavailable(format!("cannot read the invocation record: {e}"))
        };
        let Some(value) = self
            .layout
            .results
            .get(id.as_str())
            .await
            .map_err(|e| unavailable(&e))?
        else {
            return Ok(None);
        };
        let mut record = parse_record(&value).map_err(|e| unavailable(&e))?;
        if wait.is_zero() || record.state.is_final() {
            return Ok(Some(record));
        }
        let mut updates = self
            .layout
            .results
            .watch_with_history(id.as_str())
            .await
            .map_err(|e| unavailable(&e))?;
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(entry)) = updates.next().await {
                if let Ok(newer) = parse_record(&entry.value) {
                    record = newer;
                    if record.state.is_final() {
                        return;
                    }
                }
            }
        })
        .await;
        Ok(Some(record))
    }

    async fn dead_letter(
        &self,
        invocation: &Invocation,
        subject: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.check_connected()?;
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
                original_subject: &invocation.function.invoke_subject(),
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
        self.check_connected()?;
        dead_letter::list(
            &self.layout.dead_letters,
            function,
            subject,
            MAX_DEAD_LETTERS,
        )
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
