//! Functions' logs on NATS: one message per attempt that wrote anything
//! ([`AttemptLog`] as JSON) on its function's `sluice.logs.<ns>.<fn>` in
//! `SLUICE_LOGS`, kept by the stream's bounds (`nats/src/layout.rs`:
//! attempts per function, bytes, age), so that they outlive the runtime
//! that ran the attempt; read back for `GET /invocations/<id>/logs` and
//! `GET /logs/<ns>/<fn>`.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use sluice_api::InvocationId;
use sluice_api::invocation::ID_HEADER;
use sluice_api::logs::AttemptLog;
use sluice_api::names::{FunctionRef, LOG_STREAM};
use tokio::sync::mpsc;

use crate::PAYLOAD_HEADROOM;

/// Why a log could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot keep the log of invocation {id} on {subject}: {source}")]
    Publish {
        id: InvocationId,
        subject: String,
        #[source]
        source: jetstream::context::PublishError,
    },
    #[error("cannot read the logs on {subject}: {reason}")]
    Read { subject: String, reason: String },
}

/// Messages asked for at once while reading the logs kept so far.
const BATCH: usize = 64;
/// How long the server keeps a reader's consumer after its reader went
/// away without deleting it (a dropped connection).
const READER_IDLE: Duration = Duration::from_secs(30);

/// Keeps `log` on its function's log subject and waits for the stream to
/// store it. A log larger than one message may be leaves out its last
/// lines (counted in its `dropped`).
pub async fn keep(js: &jetstream::Context, log: AttemptLog) -> Result<(), LogError> {
    let max = js
        .client()
        .server_info()
        .max_payload
        .saturating_sub(PAYLOAD_HEADROOM);
    let subject = log.function.log_subject();
    let id = log.invocation.clone();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ID_HEADER, id.as_str());
    let Some(body) = log.encode_within(max) else {
        // Not even an empty log fits: the server's max_payload is tiny.
        return Ok(());
    };
    let publish_error = |source| LogError::Publish {
        id: id.clone(),
        subject: subject.clone(),
        source,
    };
    js.publish_with_headers(subject.clone(), headers, body.into())
        .await
        .map_err(publish_error)?
        .await
        .map_err(publish_error)?;
    Ok(())
}

/// Every attempt's log of invocation `id` of `function` still kept,
/// oldest first. It reads the function's log headers to find the
/// invocation's, then only those messages whole.
pub async fn of_invocation(
    logs: &stream::Stream,
    function: &FunctionRef,
    id: &InvocationId,
) -> Result<Vec<AttemptLog>, LogError> {
    let subject = function.log_subject();
    let read_error = |reason: String| LogError::Read {
        subject: subject.clone(),
        reason,
    };
    let reader = Reader::new(logs, &subject, consumer::DeliverPolicy::All, true).await?;
    let mut sequences = Vec::new();
    loop {
        let batch = reader.next_batch().await?;
        let caught_up = batch.caught_up;
        for message in batch.messages {
            if crate::header_pairs(message.headers.as_ref())
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(ID_HEADER) && *v == id.as_str())
            {
                let info = message.info().map_err(|e| read_error(e.to_string()))?;
                sequences.push(info.stream_sequence);
            }
        }
        if caught_up {
            break;
        }
    }
    reader.delete().await;
    let mut found = Vec::new();
    for sequence in sequences {
        let message = match logs.get_raw_message(sequence).await {
            Ok(message) => message,
            // Gone since (its function's older attempts make room).
            Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => continue,
            Err(e) => return Err(read_error(e.to_string())),
        };
        match serde_json::from_slice::<AttemptLog>(&message.payload) {
            Ok(log) => found.push(log),
            Err(e) => {
                tracing::warn!(%function, sequence, error = %e, "a kept log does not decode; skipped")
            }
        }
    }
    Ok(found)
}

/// The logs of `function` kept since `since`, oldest first, sent on the
/// returned channel; with `follow`, then every new one as it is kept,
/// until the receiver is dropped. Without it the channel closes once what
/// was kept is sent. An error reading is sent as the last item.
pub async fn of_function(
    logs: &stream::Stream,
    function: &FunctionRef,
    since: SystemTime,
    follow: bool,
) -> Result<mpsc::Receiver<Result<AttemptLog, LogError>>, LogError> {
    let subject = function.log_subject();
    let start_time = time::OffsetDateTime::from(since);
    let reader = Reader::new(
        logs,
        &subject,
        consumer::DeliverPolicy::ByStartTime { start_time },
        false,
    )
    .await?;
    let (sender, receiver) = mpsc::channel(BATCH);
    let function = function.clone();
    tokio::spawn(async move {
        let sent = tokio::select! {
            sent = send_all(&reader, &sender, &function, follow) => sent,
            () = sender.closed() => Ok(()),
        };
        if let Err(e) = sent {
            let _ = sender.send(Err(e)).await;
        }
        reader.delete().await;
    });
    Ok(receiver)
}

async fn send_all(
    reader: &Reader,
    sender: &mpsc::Sender<Result<AttemptLog, LogError>>,
    function: &FunctionRef,
    follow: bool,
) -> Result<(), LogError> {
    loop {
        let batch = reader.next_batch().await?;
        for message in &batch.messages {
            if let Some(log) = decode(function, &message.payload)
                && sender.send(Ok(log)).await.is_err()
            {
                return Ok(());
            }
        }
        if batch.caught_up {
            break;
        }
    }
    if !follow {
        return Ok(());
    }
    let mut messages = reader
        .consumer
        .messages()
        .await
        .map_err(|e| reader.error(e.to_string()))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| reader.error(e.to_string()))?;
        if let Some(log) = decode(function, &message.payload)
            && sender.send(Ok(log)).await.is_err()
        {
            break;
        }
    }
    Ok(())
}

fn decode(function: &FunctionRef, payload: &[u8]) -> Option<AttemptLog> {
    serde_json::from_slice(payload)
        .inspect_err(
            |e| tracing::warn!(%function, error = %e, "a kept log does not decode; skipped"),
        )
        .ok()
}

/// An ephemeral consumer of one function's logs, unacknowledged.
struct Reader {
    stream: stream::Stream,
    consumer: consumer::Consumer<pull::Config>,
    subject: String,
}

/// What one fetch brought.
struct Batch {
    messages: Vec<jetstream::Message>,
    /// Nothing more was kept when the last of them was sent.
    caught_up: bool,
}

impl Reader {
    async fn new(
        logs: &stream::Stream,
        subject: &str,
        deliver_policy: consumer::DeliverPolicy,
        headers_only: bool,
    ) -> Result<Self, LogError> {
        let consumer = logs
            .create_consumer(pull::Config {
                deliver_policy,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: subject.to_owned(),
                headers_only,
                inactive_threshold: READER_IDLE,
                memory_storage: true,
                description: Some("a reader of Sluice logs".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|e| LogError::Read {
                subject: subject.to_owned(),
                reason: format!("cannot open a reader on {LOG_STREAM}: {e}"),
            })?;
        Ok(Self {
            stream: logs.clone(),
            consumer,
            subject: subject.to_owned(),
        })
    }

    fn error(&self, reason: String) -> LogError {
        LogError::Read {
            subject: self.subject.clone(),
            reason,
        }
    }

    /// Up to [`BATCH`] messages, without waiting for new ones.
    async fn next_batch(&self) -> Result<Batch, LogError> {
        let mut fetched = self
            .consumer
            .fetch()
            .max_messages(BATCH)
            .messages()
            .await
            .map_err(|e| self.error(e.to_string()))?;
        let mut messages = Vec::new();
        let mut caught_up = true;
        while let Some(message) = fetched.next().await {
            let message = message.map_err(|e| self.error(e.to_string()))?;
            caught_up = message.info().map_or(true, |info| info.pending == 0);
            messages.push(message);
        }
        Ok(Batch {
            messages,
            caught_up,
        })
    }

    /// Deletes the consumer (left to expire after [`READER_IDLE`] if
    /// that fails).
    async fn delete(self) {
        let name = self.consumer.cached_info().name.clone();
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = name, error = %e, "log reader left to expire");
        }
    }
}
