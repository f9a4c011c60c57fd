//! The streams, buckets and consumers of DESIGN.md's NATS layout, created
//! when missing by whichever part starts first. Existing ones are used as
//! they are: changing a stream's limits is an operator's decision.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use sluice_api::FunctionSpec;
use sluice_api::names::{
    DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, FUNCTIONS_BUCKET, FunctionRef, INVOCATION_STREAM,
    INVOKE_SUBJECTS, MODULES_BUCKET, RESULTS_BUCKET,
};

use super::NatsError;

/// Limits applied when the layout is created.
#[derive(Debug, Clone)]
pub struct LayoutConfig {
    /// Invocations a function may have queued; publishing beyond it is
    /// refused (the gateway answers 429). Default: 10000.
    pub max_queue_depth: i64,
    /// How long `Nats-Msg-Id` (from `Idempotency-Key`) dedupes. Default: 2m.
    pub duplicate_window: Duration,
    /// How long invocation records stay in `sluice-results`. Default: 1h.
    pub results_ttl: Duration,
    /// Dead letters kept per subject, newest kept. Default: 1000.
    pub dead_letters_per_subject: i64,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: 10_000,
            duplicate_window: Duration::from_secs(120),
            results_ttl: Duration::from_secs(3600),
            dead_letters_per_subject: 1000,
        }
    }
}

/// Handles on everything in the layout.
#[derive(Clone)]
pub struct Layout {
    pub js: jetstream::Context,
    pub invocations: stream::Stream,
    pub dead_letters: stream::Stream,
    pub results: kv::Store,
    pub functions: kv::Store,
    pub modules: object_store::ObjectStore,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout").finish_non_exhaustive()
    }
}

fn layout_error(what: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Layout {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

impl Layout {
    /// Opens every stream and bucket, creating the missing ones.
    pub async fn ensure(
        client: async_nats::Client,
        config: &LayoutConfig,
    ) -> Result<Self, NatsError> {
        let js = jetstream::new(client);
        let invocations = js
            .get_or_create_stream(stream::Config {
                name: INVOCATION_STREAM.to_owned(),
                description: Some("Sluice invocations, one subject per function".to_owned()),
                subjects: vec![INVOKE_SUBJECTS.to_owned()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                max_messages_per_subject: config.max_queue_depth,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                ..Default::default()
            })
            .await
            .map_err(|e| layout_error(INVOCATION_STREAM, e))?;
        let dead_letters = js
            .get_or_create_stream(stream::Config {
                name: DEAD_LETTER_STREAM.to_owned(),
                description: Some("Sluice dead letters: original message and reason".to_owned()),
                subjects: vec![DEAD_LETTER_SUBJECTS.to_owned()],
                storage: stream::StorageType::File,
                max_messages_per_subject: config.dead_letters_per_subject,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| layout_error(DEAD_LETTER_STREAM, e))?;
        let results = open_kv(
            &js,
            kv::Config {
                bucket: RESULTS_BUCKET.to_owned(),
                description: "Sluice invocation records by id".to_owned(),
                history: 1,
                max_age: config.results_ttl,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let functions = open_kv(
            &js,
            kv::Config {
                bucket: FUNCTIONS_BUCKET.to_owned(),
                description: "Sluice functions: resolved specs by <ns>.<fn>".to_owned(),
                history: 5,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let modules = match js.get_object_store(MODULES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: MODULES_BUCKET.to_owned(),
                    description: Some("Sluice components by sha256-<hex>".to_owned()),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| layout_error(MODULES_BUCKET, e))?,
        };
        Ok(Self {
            js,
            invocations,
            dead_letters,
            results,
            functions,
            modules,
        })
    }

    /// The function's durable consumer, created (or brought up to date with
    /// the spec) when needed.
    pub async fn consumer(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
    ) -> Result<consumer::PullConsumer, NatsError> {
        let config = consumer_config(function, spec);
        let what = format!("the consumer of {function}");
        match self
            .invocations
            .get_consumer::<consumer::pull::Config>(&function.consumer_name())
            .await
        {
            Ok(existing)
                if existing.cached_info().config.max_ack_pending == config.max_ack_pending
                    && existing.cached_info().config.ack_wait == config.ack_wait =>
            {
                Ok(existing)
            }
            Ok(_) => self
                .invocations
                .update_consumer(config)
                .await
                .map_err(|e| layout_error(&what, e)),
            Err(_) => self
                .invocations
                .get_or_create_consumer(&function.consumer_name(), config)
                .await
                .map_err(|e| layout_error(&what, e)),
        }
    }
}

async fn open_kv(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, NatsError> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let bucket = config.bucket.clone();
    js.create_key_value(config)
        .await
        .map_err(|e| layout_error(&bucket, e))
}

/// How long a runtime may hold a message unacknowledged: longer than an
/// attempt can take, so a live runtime's messages are not redelivered under
/// it (waiting for a free instance is covered by progress acks); a dead
/// one's come back after this.
pub fn ack_wait(spec: &FunctionSpec) -> Duration {
    spec.timeout.0.saturating_add(Duration::from_secs(5))
}

/// The durable pull consumer of one function (DESIGN.md: per-function
/// consumer). Deliveries are not capped here (a departure from DESIGN.md,
/// which bounds them by `retry.maxAttempts`): the runtime counts attempts
/// against `retry.maxAttempts` and dead-letters the message itself, so a
/// message is never left stranded in the work queue by a delivery limit.
pub fn consumer_config(function: &FunctionRef, spec: &FunctionSpec) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(function.consumer_name()),
        description: Some(format!("Sluice invocations of {function}")),
        filter_subject: function.invoke_subject(),
        ack_policy: consumer::AckPolicy::Explicit,
        // `concurrency` is per replica (each runtime also caps its own
        // pulls at it); the consumer bounds the function as a whole.
        max_ack_pending: i64::from(spec.concurrency) * i64::from(spec.scaling.max_replicas.max(1)),
        ack_wait: ack_wait(spec),
        max_deliver: -1,
        ..Default::default()
    }
}
