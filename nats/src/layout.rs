//! The streams, buckets and consumers of Sluice's NATS layout (README,
//! "NATS mode"), created when missing by whichever part starts first. Existing ones are used as
//! they are: changing a stream's limits is an operator's decision.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use sluice_api::names::{
    DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, FUNCTIONS_BUCKET, FunctionRef, INVOCATION_STREAM,
    INVOKE_SUBJECTS, MODULES_BUCKET, RESULTS_BUCKET,
};
use sluice_api::{FunctionSpec, ModuleDigest};

use crate::NatsError;

/// Default of [`LayoutConfig::max_queue_depth`].
pub const DEFAULT_MAX_QUEUE_DEPTH: i64 = 10_000;
/// Default of [`LayoutConfig::duplicate_window`]: 2 minutes, JetStream's own.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Default of [`LayoutConfig::results_ttl`]: 1 hour.
pub const DEFAULT_RESULTS_TTL: Duration = Duration::from_secs(3600);
/// Default of [`LayoutConfig::dead_letters_per_subject`].
pub const DEFAULT_DEAD_LETTERS_PER_SUBJECT: i64 = 1000;
/// Most functions: the invocation stream's `max_consumers`, as every
/// function has one consumer on it. Set explicitly because nats-server
/// 2.15 caps a stream that sets none at 1,000 consumers, which would make
/// the 1,001st function fail to register.
pub const MAX_FUNCTIONS: i32 = 100_000;

/// Limits applied when the layout is created.
#[derive(Debug, Clone)]
pub struct LayoutConfig {
    /// Invocations a function may have queued; publishing beyond it is
    /// refused (the gateway answers 429). Default:
    /// [`DEFAULT_MAX_QUEUE_DEPTH`] (10000).
    pub max_queue_depth: i64,
    /// How long `Nats-Msg-Id` (from `Idempotency-Key`) dedupes. Default:
    /// [`DEFAULT_DUPLICATE_WINDOW`] (2m).
    pub duplicate_window: Duration,
    /// How long invocation records stay in `sluice-results`. Default:
    /// [`DEFAULT_RESULTS_TTL`] (1h).
    pub results_ttl: Duration,
    /// Dead letters kept per subject, newest kept. Default:
    /// [`DEFAULT_DEAD_LETTERS_PER_SUBJECT`] (1000).
    pub dead_letters_per_subject: i64,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: DEFAULT_MAX_QUEUE_DEPTH,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            results_ttl: DEFAULT_RESULTS_TTL,
            dead_letters_per_subject: DEFAULT_DEAD_LETTERS_PER_SUBJECT,
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

fn layout_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> NatsError {
    NatsError::Layout {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

impl Layout {
    /// Opens every stream and bucket, creating the missing ones.
    pub async fn ensure(
        client: async_nats::Client,
        config: &LayoutConfig,
    ) -> Result<Self, NatsError> {
        let js = jetstream::new(client);
        let mut invocations = js
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
                max_consumers: MAX_FUNCTIONS,
                ..Default::default()
            })
            .await
            .map_err(|e| layout_error(INVOCATION_STREAM, e))?;
        // Made by an earlier Sluice without a limit: the server's default
        // (1,000 since nats-server 2.15) applies until it is raised.
        let existing = invocations.cached_info().config.clone();
        if existing.max_consumers <= 0 {
            js.update_stream(stream::Config {
                max_consumers: MAX_FUNCTIONS,
                ..existing
            })
            .await
            .map_err(|e| layout_error(INVOCATION_STREAM, e))?;
            invocations = js
                .get_stream(INVOCATION_STREAM)
                .await
                .map_err(|e| layout_error(INVOCATION_STREAM, e))?;
        }
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

impl Layout {
    /// Whether the module store holds the component `digest` (an object
    /// that was deleted does not count: its info outlives it).
    pub async fn has_module(&self, digest: &ModuleDigest) -> Result<bool, NatsError> {
        match self.modules.info(digest.object_key()).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(layout_error(
                &format!("{} in {MODULES_BUCKET}", digest.object_key()),
                e,
            )),
        }
    }

    /// The function's durable consumer if it exists; never creates it (a
    /// runtime recovering from a failed pull must not bring back the
    /// consumer of a function deleted meanwhile).
    pub async fn existing_consumer(
        &self,
        function: &FunctionRef,
    ) -> Result<consumer::PullConsumer, NatsError> {
        self.invocations
            .get_consumer::<consumer::pull::Config>(&function.consumer_name())
            .await
            .map_err(|source| NatsError::Layout {
                what: format!("the consumer of {function}"),
                source,
            })
    }

    /// Deletes the function's invocations still queued: a function deleted
    /// and created again must not run its predecessor's.
    pub async fn purge_invocations(&self, function: &FunctionRef) -> Result<u64, NatsError> {
        self.invocations
            .purge()
            .filter(function.invoke_subject())
            .await
            .map(|purged| purged.purged)
            .map_err(|e| layout_error(&format!("the queue of {function}"), e))
    }

    /// Deletes the function's durable consumer; false when there was none.
    pub async fn delete_consumer(&self, function: &FunctionRef) -> Result<bool, NatsError> {
        match self
            .invocations
            .delete_consumer(&function.consumer_name())
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    stream::ConsumerErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(layout_error(&format!("the consumer of {function}"), e)),
        }
    }
}

/// Why a component could not be fetched from the module store.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {key} from the module store: {source}")]
    Get {
        key: String,
        #[source]
        source: object_store::GetError,
    },
    #[error("cannot read {key} from the module store: {source}")]
    Read {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} in the module store has sha256 {actual}")]
    Corrupt { key: String, actual: ModuleDigest },
}

impl Layout {
    /// The component named `digest`, checked against it.
    pub async fn fetch_module(&self, digest: &ModuleDigest) -> Result<Vec<u8>, FetchError> {
        use tokio::io::AsyncReadExt as _;
        let key = digest.object_key();
        let mut object = match self.modules.get(&key).await {
            Ok(object) => object,
            Err(source) => return Err(FetchError::Get { key, source }),
        };
        let mut wasm = Vec::new();
        if let Err(source) = object.read_to_end(&mut wasm).await {
            return Err(FetchError::Read { key, source });
        }
        let actual = ModuleDigest::of(&wasm);
        if actual != *digest {
            return Err(FetchError::Corrupt { key, actual });
        }
        Ok(wasm)
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

/// The durable pull consumer of one function. Deliveries are not capped
/// here (by `retry.maxAttempts`, as one might expect): the runtime counts attempts
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
