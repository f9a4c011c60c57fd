//! The streams, buckets and consumers of Sluice's NATS layout (README,
//! "NATS layout"). One part owns the streams and buckets
//! ([`Layout::reconcile`]): the operator on a cluster, the gateway without
//! one. It creates what is missing and brings what exists to its settings
//! (TTLs, byte bounds, replicas, ...), logging each change and reporting
//! one a stream cannot take in place. The other parts only open them
//! ([`Layout::open`]), waiting while they are missing.
//! `sluice-gateway publish`, a one-off run often before any owner, creates
//! what is missing with the defaults and changes nothing that exists
//! ([`Layout::create_missing`]).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use sluice_api::logs::{DEFAULT_ATTEMPTS_PER_FUNCTION, DEFAULT_LOGS_MAX_AGE, LogBounds};
use sluice_api::names::{
    ARTIFACTS_BUCKET, DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, FUNCTIONS_BUCKET, FunctionRef,
    INVOCATION_STREAM, INVOKE_SUBJECTS, LOG_STREAM, LOG_SUBJECTS, MODULES_BUCKET, RESULTS_BUCKET,
};
use sluice_api::ordering::ORDERING_BUCKETS;
use sluice_api::{ByteSize, FunctionSpec, Lane, ModuleDigest};

use crate::NatsError;

/// Default of [`LayoutConfig::max_queue_depth`].
pub const DEFAULT_MAX_QUEUE_DEPTH: i64 = 10_000;
/// Default of [`LayoutConfig::max_queue_bytes`]: 512 MiB, an eighth of the
/// invocation stream's [`DEFAULT_MAX_BYTES`] (4 GiB), so that one
/// function's flood leaves the stream room for the others.
pub const DEFAULT_MAX_QUEUE_BYTES: ByteSize = ByteSize(512 * MIB);
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

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Default byte bounds ([`MaxBytes`]). Together 8 GiB and 832 MiB: they
/// fit the chart's bundled server, whose `max_file_store` (9Gi) stays below
/// its 10Gi volume. Queued invocations get the most room (4 GiB: 4,000
/// 1 MiB bodies); records hold responses (2 GiB); dead letters keep their
/// original message (1 GiB); modules are at most 64 MiB each (1 GiB);
/// precompiled artifacts are a cache (512 MiB: a hundred Rust functions or
/// ten Python ones; when full, new ones are compiled by each runtime);
/// registry entries are small (64 MiB); functions' logs are a ring of
/// recent attempts (256 MiB, `sluice_api::logs::DEFAULT_LOGS_MAX_BYTES`).
pub const DEFAULT_MAX_BYTES: MaxBytes = MaxBytes {
    invocations: ByteSize(4 * GIB),
    dead_letters: ByteSize(GIB),
    results: ByteSize(2 * GIB),
    functions: ByteSize(64 * MIB),
    modules: ByteSize(GIB),
    artifacts: ByteSize(512 * MIB),
    logs: ByteSize(sluice_api::logs::DEFAULT_LOGS_MAX_BYTES),
};

// The defaults fit the chart's bundled file store
// (charts/sluice/values.yaml: nats.bundled.storage.maxFileStore, 9Gi).
const _: () = assert!(
    DEFAULT_MAX_BYTES.invocations.0
        + DEFAULT_MAX_BYTES.dead_letters.0
        + DEFAULT_MAX_BYTES.results.0
        + DEFAULT_MAX_BYTES.functions.0
        + DEFAULT_MAX_BYTES.modules.0
        + DEFAULT_MAX_BYTES.artifacts.0
        + DEFAULT_MAX_BYTES.logs.0
        < 9 * GIB
);

/// The most bytes each stream and bucket may hold. Past it a stream
/// refuses new messages (every one of them discards new): submits get a
/// refusal, dead letters and records fail to store, nothing already held is
/// dropped. Default: [`DEFAULT_MAX_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxBytes {
    /// `SLUICE_INVOCATIONS`.
    pub invocations: ByteSize,
    /// `SLUICE_DEAD_LETTERS`.
    pub dead_letters: ByteSize,
    /// `sluice-results`.
    pub results: ByteSize,
    /// `sluice-functions`.
    pub functions: ByteSize,
    /// `sluice-modules`.
    pub modules: ByteSize,
    /// `sluice-artifacts`.
    pub artifacts: ByteSize,
    /// `SLUICE_LOGS`: unlike the others, full makes room by dropping the
    /// oldest attempts' logs.
    pub logs: ByteSize,
}

/// The layout's settings, applied by its owner when it creates the
/// streams and buckets and again, as updates, whenever they differ.
#[derive(Debug, Clone)]
pub struct LayoutConfig {
    /// Invocations a function may have queued; publishing beyond it is
    /// refused (the gateway answers 429). Default:
    /// [`DEFAULT_MAX_QUEUE_DEPTH`] (10000).
    pub max_queue_depth: i64,
    /// Bytes (bodies and headers) of invocations a function may have
    /// waiting; submitting beyond it is refused (the gateway answers 429).
    /// JetStream has no per-subject byte limit, so each gateway enforces
    /// it on what it queued itself (see `sluice_gateway::queue::budget`).
    /// Default: [`DEFAULT_MAX_QUEUE_BYTES`] (512Mi).
    pub max_queue_bytes: ByteSize,
    /// How long `Nats-Msg-Id` (from `Idempotency-Key`) dedupes on the
    /// stream. Default: [`DEFAULT_DUPLICATE_WINDOW`] (2m).
    pub duplicate_window: Duration,
    /// How long invocation records stay in `sluice-results`: the gateway's
    /// `--async-deadline`. Default: [`DEFAULT_RESULTS_TTL`] (1h).
    pub results_ttl: Duration,
    /// Dead letters kept per subject, newest kept. Default:
    /// [`DEFAULT_DEAD_LETTERS_PER_SUBJECT`] (1000).
    pub dead_letters_per_subject: i64,
    /// Byte bounds. Default: [`DEFAULT_MAX_BYTES`].
    pub max_bytes: MaxBytes,
    /// Attempts whose logs are kept per function, the newest. Default:
    /// 1000 (`sluice_api::logs::DEFAULT_ATTEMPTS_PER_FUNCTION`).
    pub logs_per_function: i64,
    /// How long an attempt's log is kept. Default: 24h
    /// (`sluice_api::logs::DEFAULT_LOGS_MAX_AGE`).
    pub logs_max_age: Duration,
    /// Copies of every stream and bucket in a clustered JetStream (1 to 5;
    /// a single server takes only 1). Default: 1.
    pub replicas: usize,
}

impl LayoutConfig {
    /// The bounds of functions' logs it sets, for a store of them kept
    /// elsewhere (local mode's, in memory) to keep the same.
    pub fn log_bounds(&self) -> LogBounds {
        LogBounds {
            attempts_per_function: usize::try_from(self.logs_per_function).unwrap_or(usize::MAX),
            max_bytes: self.max_bytes.logs.0,
            max_age: self.logs_max_age,
        }
    }
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: DEFAULT_MAX_QUEUE_DEPTH,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            results_ttl: DEFAULT_RESULTS_TTL,
            dead_letters_per_subject: DEFAULT_DEAD_LETTERS_PER_SUBJECT,
            max_bytes: DEFAULT_MAX_BYTES,
            logs_per_function: DEFAULT_ATTEMPTS_PER_FUNCTION as i64,
            logs_max_age: DEFAULT_LOGS_MAX_AGE,
            replicas: 1,
        }
    }
}

/// The command-line flags (and environment variables) of [`LayoutConfig`],
/// for the parts that own the layout (the operator, and the gateway
/// without one) to flatten into their arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LayoutArgs {
    /// How long async invocations may take, retries included, and how long
    /// their records stay readable (the results bucket's TTL).
    #[arg(long, env = "SLUICE_ASYNC_DEADLINE", default_value_t = sluice_api::Duration(DEFAULT_RESULTS_TTL))]
    pub async_deadline: sluice_api::Duration,
    /// Queued invocations per function before submits get 429.
    #[arg(long, env = "SLUICE_MAX_QUEUE_DEPTH", default_value_t = DEFAULT_MAX_QUEUE_DEPTH as u64)]
    pub max_queue_depth: u64,
    /// Bytes of queued invocations per function before submits get 429,
    /// enforced by each gateway on what it queued (the operator has no use
    /// for it).
    #[arg(long, env = "SLUICE_MAX_QUEUE_BYTES", default_value_t = DEFAULT_MAX_QUEUE_BYTES)]
    pub max_queue_bytes: ByteSize,
    /// How long a repeated Idempotency-Key is recognised by the stream
    /// alone (past it, by the invocation's record).
    #[arg(long, env = "SLUICE_DUPLICATE_WINDOW", default_value_t = sluice_api::Duration(DEFAULT_DUPLICATE_WINDOW))]
    pub duplicate_window: sluice_api::Duration,
    /// Dead letters kept per function, the newest.
    #[arg(long, env = "SLUICE_DEAD_LETTERS_PER_FUNCTION", default_value_t = DEFAULT_DEAD_LETTERS_PER_SUBJECT as u64)]
    pub dead_letters_per_function: u64,
    /// Most bytes of queued invocations (all functions).
    #[arg(long, env = "SLUICE_INVOCATIONS_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.invocations)]
    pub invocations_max_bytes: ByteSize,
    /// Most bytes of dead letters (all functions).
    #[arg(long, env = "SLUICE_DEAD_LETTERS_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.dead_letters)]
    pub dead_letters_max_bytes: ByteSize,
    /// Most bytes of invocation records.
    #[arg(long, env = "SLUICE_RESULTS_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.results)]
    pub results_max_bytes: ByteSize,
    /// Most bytes of registry entries.
    #[arg(long, env = "SLUICE_FUNCTIONS_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.functions)]
    pub functions_max_bytes: ByteSize,
    /// Most bytes of stored modules.
    #[arg(long, env = "SLUICE_MODULES_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.modules)]
    pub modules_max_bytes: ByteSize,
    /// Most bytes of components precompiled by runtimes (a cache: when
    /// full, runtimes compile what it lacks).
    #[arg(long, env = "SLUICE_ARTIFACTS_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.artifacts)]
    pub artifacts_max_bytes: ByteSize,
    /// Most bytes of functions' logs (all functions; the oldest go first).
    #[arg(long, env = "SLUICE_LOGS_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES.logs)]
    pub logs_max_bytes: ByteSize,
    /// Attempts whose logs are kept per function, the newest.
    #[arg(long, env = "SLUICE_LOGS_PER_FUNCTION", default_value_t = DEFAULT_ATTEMPTS_PER_FUNCTION as u64)]
    pub logs_per_function: u64,
    /// How long functions' logs are kept.
    #[arg(long, env = "SLUICE_LOGS_MAX_AGE", default_value_t = sluice_api::Duration(DEFAULT_LOGS_MAX_AGE))]
    pub logs_max_age: sluice_api::Duration,
    /// Copies of every stream and bucket (a clustered JetStream; 1 on a
    /// single server).
    #[arg(long, env = "SLUICE_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
}

impl LayoutArgs {
    /// The settings these flags give.
    pub fn config(&self) -> LayoutConfig {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        LayoutConfig {
            max_queue_depth: count(self.max_queue_depth),
            max_queue_bytes: self.max_queue_bytes,
            duplicate_window: self.duplicate_window.0,
            results_ttl: self.async_deadline.0,
            dead_letters_per_subject: count(self.dead_letters_per_function),
            max_bytes: MaxBytes {
                invocations: self.invocations_max_bytes,
                dead_letters: self.dead_letters_max_bytes,
                results: self.results_max_bytes,
                functions: self.functions_max_bytes,
                modules: self.modules_max_bytes,
                artifacts: self.artifacts_max_bytes,
                logs: self.logs_max_bytes,
            },
            logs_per_function: count(self.logs_per_function),
            logs_max_age: self.logs_max_age.0,
            replicas: usize::from(self.stream_replicas),
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
    /// Precompiled components, written and read by runtimes only.
    pub artifacts: object_store::ObjectStore,
    /// Functions' logs ([`crate::logs`]). Behind an `Arc`: a stream
    /// handle holds its whole info, and a larger `Layout` overflowed the
    /// 2 MiB stacks of the tests' threads in a debug build (futures hold
    /// several copies).
    pub logs: std::sync::Arc<stream::Stream>,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout").finish_non_exhaustive()
    }
}

/// Added to the error when a server's JetStream cannot reserve a stream's
/// `max_bytes` (error code 10047): a server started without
/// `max_file_store` reserves at most 75 % of the disk free at its start.
const STORAGE_HINT: &str = ": the server's JetStream file store cannot reserve that many bytes beside the other streams; raise its max_file_store (by default 75 % of the disk free when it started) or lower Sluice's --*-max-bytes bounds";

/// Whether `e`, or an error it wraps, is JetStream's "insufficient storage
/// resources" (code 10047): the server cannot reserve the bytes asked.
fn storage_exceeded(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(create) = e.downcast_ref::<jetstream::context::CreateStreamError>()
            && let jetstream::context::CreateStreamErrorKind::JetStream(js) = create.kind()
            && js.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn layout_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> NatsError {
    NatsError::Layout {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

/// One setting of a stream that differs from its owner's, as found by
/// [`changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutChange {
    /// The stream (a bucket's is `KV_<bucket>` or `OBJ_<bucket>`).
    pub stream: String,
    /// `max_bytes`, `max_age`, `replicas`, ... (a fixed set).
    pub setting: &'static str,
    /// As the server has it.
    pub from: String,
    /// As the owner wants it.
    pub to: String,
    /// Whether the stream took it. Not when it cannot change in place
    /// (storage, retention) or the server refused the update (its reason
    /// logged): reported, and the stream keeps what it has.
    pub applied: bool,
}

impl std::fmt::Display for LayoutChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {} -> {}",
            self.stream, self.setting, self.from, self.to
        )
    }
}

/// Reads one owned setting of a stream, as text to compare and log.
type Read = fn(&stream::Config) -> String;
/// Copies one owned setting from the wanted config into the current one.
type Copy = fn(&mut stream::Config, &stream::Config);

/// A count or size of which zero and below mean "no limit" (the server
/// reports -1 for what was created with 0).
fn limit(n: i64) -> String {
    if n <= 0 {
        "unlimited".to_owned()
    } else {
        n.to_string()
    }
}

/// The settings the owner reconciles, with how to copy each one in place
/// (`None`: it cannot change in place).
const SETTINGS: &[(&str, Read, Option<Copy>)] = &[
    (
        "max_bytes",
        |c| limit(c.max_bytes),
        Some(|c, w| c.max_bytes = w.max_bytes),
    ),
    (
        "max_age",
        |c| format!("{:?}", c.max_age),
        Some(|c, w| c.max_age = w.max_age),
    ),
    (
        "duplicate_window",
        |c| format!("{:?}", c.duplicate_window),
        Some(|c, w| c.duplicate_window = w.duplicate_window),
    ),
    (
        "max_messages_per_subject",
        |c| limit(c.max_messages_per_subject),
        Some(|c, w| c.max_messages_per_subject = w.max_messages_per_subject),
    ),
    (
        "max_consumers",
        |c| limit(i64::from(c.max_consumers)),
        Some(|c, w| c.max_consumers = w.max_consumers),
    ),
    (
        "replicas",
        |c| c.num_replicas.max(1).to_string(),
        Some(|c, w| c.num_replicas = w.num_replicas),
    ),
    (
        "discard",
        |c| format!("{:?}", c.discard),
        Some(|c, w| c.discard = w.discard),
    ),
    (
        "discard_new_per_subject",
        |c| c.discard_new_per_subject.to_string(),
        Some(|c, w| c.discard_new_per_subject = w.discard_new_per_subject),
    ),
    (
        "subjects",
        |c| c.subjects.join(","),
        Some(|c, w| c.subjects.clone_from(&w.subjects)),
    ),
    ("storage", |c| format!("{:?}", c.storage), None),
    ("retention", |c| format!("{:?}", c.retention), None),
];

/// The owned settings in which `current` differs from `wanted`.
pub fn changes(current: &stream::Config, wanted: &stream::Config) -> Vec<LayoutChange> {
    SETTINGS
        .iter()
        .filter_map(|(setting, read, copy)| {
            let (from, to) = (read(current), read(wanted));
            (from != to).then(|| LayoutChange {
                stream: current.name.clone(),
                setting,
                from,
                to,
                applied: copy.is_some(),
            })
        })
        .collect()
}

/// `current` with those of `wanted`'s owned settings that differ and can
/// change in place; the rest (what a bucket's library sets, what the
/// server adds) kept.
fn updated(mut current: stream::Config, wanted: &stream::Config) -> stream::Config {
    for (_, read, copy) in SETTINGS {
        if let Some(copy) = copy
            && read(&current) != read(wanted)
        {
            copy(&mut current, wanted);
        }
    }
    current
}

/// What opening the layout may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Create what is missing, update what differs (the owner).
    Reconcile,
    /// Create what is missing, leave what exists.
    CreateMissing,
    /// Only open; what is missing is an error worth waiting on.
    Open,
}

/// The stream config the owner wants for each part of the layout. Buckets
/// are created by their library (which sets what a bucket needs besides);
/// these are the settings it reconciles on them afterwards.
struct Wanted {
    invocations: stream::Config,
    dead_letters: stream::Config,
    results: stream::Config,
    functions: stream::Config,
    modules: stream::Config,
    artifacts: stream::Config,
    logs: stream::Config,
}

/// The stream that holds object store `bucket`, as NATS names it
/// (`OBJ_<bucket>`).
pub fn object_store_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

fn bytes(size: ByteSize) -> i64 {
    i64::try_from(size.0).unwrap_or(i64::MAX)
}

impl Wanted {
    fn new(config: &LayoutConfig) -> Self {
        let common = stream::Config {
            storage: stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let max = &config.max_bytes;
        Self {
            invocations: stream::Config {
                name: INVOCATION_STREAM.to_owned(),
                description: Some("Sluice invocations, one subject per function".to_owned()),
                subjects: vec![INVOKE_SUBJECTS.to_owned()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: config.duplicate_window,
                max_messages_per_subject: config.max_queue_depth,
                discard_new_per_subject: true,
                max_consumers: MAX_FUNCTIONS,
                max_bytes: bytes(max.invocations),
                ..common.clone()
            },
            dead_letters: stream::Config {
                name: DEAD_LETTER_STREAM.to_owned(),
                description: Some("Sluice dead letters: original message and reason".to_owned()),
                subjects: vec![DEAD_LETTER_SUBJECTS.to_owned()],
                max_messages_per_subject: config.dead_letters_per_subject,
                // The oldest of a function's dead letters make room for
                // its newest; a full stream refuses new ones.
                discard: stream::DiscardPolicy::Old,
                max_bytes: bytes(max.dead_letters),
                ..common.clone()
            },
            results: stream::Config {
                name: format!("KV_{RESULTS_BUCKET}"),
                subjects: vec![format!("$KV.{RESULTS_BUCKET}.>")],
                max_messages_per_subject: 1,
                max_age: config.results_ttl,
                // The server refuses a window longer than the age.
                duplicate_window: DEFAULT_DUPLICATE_WINDOW.min(config.results_ttl),
                max_bytes: bytes(max.results),
                ..common.clone()
            },
            functions: stream::Config {
                name: format!("KV_{FUNCTIONS_BUCKET}"),
                subjects: vec![format!("$KV.{FUNCTIONS_BUCKET}.>")],
                max_messages_per_subject: 5,
                max_bytes: bytes(max.functions),
                ..common.clone()
            },
            modules: stream::Config {
                name: object_store_stream(MODULES_BUCKET),
                subjects: vec![
                    format!("$O.{MODULES_BUCKET}.C.>"),
                    format!("$O.{MODULES_BUCKET}.M.>"),
                ],
                max_bytes: bytes(max.modules),
                ..common.clone()
            },
            artifacts: stream::Config {
                name: object_store_stream(ARTIFACTS_BUCKET),
                subjects: vec![
                    format!("$O.{ARTIFACTS_BUCKET}.C.>"),
                    format!("$O.{ARTIFACTS_BUCKET}.M.>"),
                ],
                max_bytes: bytes(max.artifacts),
                ..common.clone()
            },
            logs: stream::Config {
                name: LOG_STREAM.to_owned(),
                description: Some(
                    "Sluice functions' stdout/stderr, one message per attempt".to_owned(),
                ),
                subjects: vec![LOG_SUBJECTS.to_owned()],
                max_messages_per_subject: config.logs_per_function,
                max_age: config.logs_max_age,
                duplicate_window: DEFAULT_DUPLICATE_WINDOW.min(config.logs_max_age),
                // A ring: the newest logs make room.
                discard: stream::DiscardPolicy::Old,
                max_bytes: bytes(max.logs),
                ..common
            },
        }
    }
}

/// What [`Layout::reconcile`] found and did.
#[derive(Debug)]
pub struct Reconciled {
    pub layout: Layout,
    /// Every setting that differed, each `applied` or reported.
    pub changes: Vec<LayoutChange>,
}

impl Layout {
    /// The owner's: creates what is missing, brings every stream and
    /// bucket to `config` (each change logged), and reports the settings a
    /// stream cannot take in place (logged as errors; the stream keeps
    /// them).
    pub async fn reconcile(
        client: async_nats::Client,
        config: &LayoutConfig,
    ) -> Result<Reconciled, NatsError> {
        let mut changes = Vec::new();
        let layout = Box::pin(Self::build(client, config, Mode::Reconcile, &mut changes)).await?;
        Ok(Reconciled { layout, changes })
    }

    /// Opens every stream and bucket, creating the missing ones with
    /// `config` and leaving the others as they are.
    pub async fn create_missing(
        client: async_nats::Client,
        config: &LayoutConfig,
    ) -> Result<Self, NatsError> {
        Box::pin(Self::build(
            client,
            config,
            Mode::CreateMissing,
            &mut Vec::new(),
        ))
        .await
    }

    /// Opens every stream and bucket; one that does not exist yet is
    /// [`NatsError::Missing`] (worth waiting for: its owner creates it).
    pub async fn open(client: async_nats::Client) -> Result<Self, NatsError> {
        Box::pin(Self::build(
            client,
            &LayoutConfig::default(),
            Mode::Open,
            &mut Vec::new(),
        ))
        .await
    }

    /// Its callers box it: in a debug build its future (one step per
    /// stream and bucket) is large enough to overflow a 2 MiB thread stack
    /// where a caller's future holds it inline (the tests' threads).
    async fn build(
        client: async_nats::Client,
        config: &LayoutConfig,
        mode: Mode,
        changes: &mut Vec<LayoutChange>,
    ) -> Result<Self, NatsError> {
        let js = jetstream::new(client);
        let wanted = Wanted::new(config);
        let invocations = stream_of(&js, &wanted.invocations, mode, changes, || {
            js.create_stream(wanted.invocations.clone())
        })
        .await?;
        let dead_letters = stream_of(&js, &wanted.dead_letters, mode, changes, || {
            js.create_stream(wanted.dead_letters.clone())
        })
        .await?;
        stream_of(&js, &wanted.results, mode, changes, || async {
            js.create_key_value(kv::Config {
                bucket: RESULTS_BUCKET.to_owned(),
                description: "Sluice invocation records by id".to_owned(),
                history: 1,
                max_age: config.results_ttl,
                max_bytes: wanted.results.max_bytes,
                num_replicas: wanted.results.num_replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map(drop)
        })
        .await?;
        stream_of(&js, &wanted.functions, mode, changes, || async {
            js.create_key_value(kv::Config {
                bucket: FUNCTIONS_BUCKET.to_owned(),
                description: "Sluice functions: resolved specs by <ns>.<fn>".to_owned(),
                history: 5,
                max_bytes: wanted.functions.max_bytes,
                num_replicas: wanted.functions.num_replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map(drop)
        })
        .await?;
        stream_of(&js, &wanted.modules, mode, changes, || async {
            js.create_object_store(object_store::Config {
                bucket: MODULES_BUCKET.to_owned(),
                description: Some("Sluice components by sha256-<hex>".to_owned()),
                max_bytes: wanted.modules.max_bytes,
                num_replicas: wanted.modules.num_replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map(drop)
        })
        .await?;
        stream_of(&js, &wanted.artifacts, mode, changes, || async {
            js.create_object_store(object_store::Config {
                bucket: ARTIFACTS_BUCKET.to_owned(),
                description: Some(
                    "Sluice components precompiled by runtimes, by <engine>.sha256-<hex>"
                        .to_owned(),
                ),
                max_bytes: wanted.artifacts.max_bytes,
                num_replicas: wanted.artifacts.num_replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map(drop)
        })
        .await?;
        let logs = stream_of(&js, &wanted.logs, mode, changes, || {
            js.create_stream(wanted.logs.clone())
        })
        .await?;
        let results = js
            .get_key_value(RESULTS_BUCKET)
            .await
            .map_err(|e| layout_error(RESULTS_BUCKET, e))?;
        let functions = js
            .get_key_value(FUNCTIONS_BUCKET)
            .await
            .map_err(|e| layout_error(FUNCTIONS_BUCKET, e))?;
        let modules = js
            .get_object_store(MODULES_BUCKET)
            .await
            .map_err(|e| layout_error(MODULES_BUCKET, e))?;
        let artifacts = js
            .get_object_store(ARTIFACTS_BUCKET)
            .await
            .map_err(|e| layout_error(ARTIFACTS_BUCKET, e))?;
        Ok(Self {
            js,
            invocations,
            dead_letters,
            results,
            functions,
            modules,
            artifacts,
            logs: std::sync::Arc::new(logs),
        })
    }
}

/// The stream `wanted` names, as `mode` says: created by `create` when
/// missing (unless only opening), brought to `wanted` when reconciling.
async fn stream_of<F, Fut, T, E>(
    js: &jetstream::Context,
    wanted: &stream::Config,
    mode: Mode,
    found_changes: &mut Vec<LayoutChange>,
    create: F,
) -> Result<stream::Stream, NatsError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let name = &wanted.name;
    let existing = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) if not_found(&e) => {
            if mode == Mode::Open {
                return Err(NatsError::Missing { what: name.clone() });
            }
            match create().await {
                Ok(_) => tracing::info!(stream = %name, "created"),
                // Made meanwhile by another part: used (and reconciled) as
                // found.
                Err(e) if js.get_stream(name).await.is_ok() => {
                    tracing::debug!(stream = %name, error = %e, "made meanwhile by another part");
                }
                // The bound is in the message, and what to change when the
                // server cannot reserve it.
                Err(e) => {
                    let mut what = format!(
                        "{name} (max_bytes {}, replicas {})",
                        wanted.max_bytes, wanted.num_replicas
                    );
                    if storage_exceeded(&e) {
                        what.push_str(STORAGE_HINT);
                    }
                    return Err(layout_error(&what, e));
                }
            }
            js.get_stream(name)
                .await
                .map_err(|e| layout_error(name, e))?
        }
        Err(e) => return Err(layout_error(name, e)),
    };
    if mode != Mode::Reconcile {
        return Ok(existing);
    }
    let current = existing.cached_info().config.clone();
    let mut found = changes(&current, wanted);
    if found.is_empty() {
        return Ok(existing);
    }
    let refused = if found.iter().any(|c| c.applied) {
        match js.update_stream(updated(current, wanted)).await {
            Ok(_) => None,
            // The server's answer (a limit below what the stream holds,
            // replicas on a single server): trying again cannot help.
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::CreateStreamErrorKind::JetStream(_)
                ) =>
            {
                Some(e.to_string())
            }
            Err(e) => return Err(layout_error(name, e)),
        }
    } else {
        None
    };
    for change in &mut found {
        if refused.is_some() {
            change.applied = false;
        }
        if change.applied {
            tracing::info!(stream = %change.stream, setting = change.setting, from = %change.from, to = %change.to, "layout setting changed");
        } else {
            let why = refused.as_deref().unwrap_or("it cannot change in place");
            tracing::error!(
                stream = %change.stream,
                setting = change.setting,
                from = %change.from,
                to = %change.to,
                "{change} not applied ({why}): the stream keeps {}; to apply it, delete the stream (losing what it holds) and restart the layout's owner",
                change.from
            );
        }
    }
    found_changes.extend(found);
    js.get_stream(name).await.map_err(|e| layout_error(name, e))
}

fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

impl Layout {
    /// The function's durable consumer, created (or brought up to date with
    /// the spec) when needed.
    pub async fn consumer(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
    ) -> Result<consumer::PullConsumer, NatsError> {
        self.consumer_as(
            consumer_config(function, spec),
            format!("the consumer of {function}"),
        )
        .await
    }

    /// The durable consumer of `function`'s ordering bucket `bucket`
    /// ([`keyed_consumer_config`]), created when it first has work (by the
    /// runtime that finds it) or brought up to date with the spec. Only
    /// buckets that were used have one: a function never given a key costs
    /// no consumer beyond its own.
    pub async fn keyed_consumer(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        bucket: u16,
    ) -> Result<consumer::PullConsumer, NatsError> {
        self.consumer_as(
            keyed_consumer_config(function, spec, bucket),
            format!("the consumer of {function}'s ordering bucket {bucket}"),
        )
        .await
    }

    /// The durable consumer of `function`'s priority lane `lane`
    /// ([`lane_consumer_config`]; `normal`'s is [`Self::consumer`]),
    /// created when the lane first has work (by the runtime that finds
    /// it) or brought up to date with the spec. Only lanes that were used
    /// have one: a function whose invocations are all `normal` costs no
    /// consumer beyond its own.
    pub async fn lane_consumer(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        lane: Lane,
    ) -> Result<consumer::PullConsumer, NatsError> {
        self.consumer_as(
            lane_consumer_config(function, spec, lane),
            format!("the consumer of {function}'s {} lane", lane.as_str()),
        )
        .await
    }

    /// The durable consumer `config` names: as it is when its
    /// `max_ack_pending` and `ack_wait` are `config`'s, else updated to
    /// `config`, or created.
    async fn consumer_as(
        &self,
        config: consumer::pull::Config,
        what: String,
    ) -> Result<consumer::PullConsumer, NatsError> {
        let name = config.durable_name.clone().unwrap_or_default();
        match self
            .invocations
            .get_consumer::<consumer::pull::Config>(&name)
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
                .get_or_create_consumer(&name, config)
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
    /// gateway looking at a function's queue must not bring back the
    /// consumer of a function deleted meanwhile).
    pub async fn existing_consumer(
        &self,
        function: &FunctionRef,
        lane: Lane,
    ) -> Result<consumer::PullConsumer, NatsError> {
        self.invocations
            .get_consumer::<consumer::pull::Config>(&function.lane_consumer_name(lane))
            .await
            .map_err(|source| NatsError::Layout {
                what: format!("the consumer of {function}'s {} lane", lane.as_str()),
                source,
            })
    }

    /// Deletes the function's invocations still queued, ordered ones
    /// included: a function deleted and created again must not run its
    /// predecessor's.
    pub async fn purge_invocations(&self, function: &FunctionRef) -> Result<u64, NatsError> {
        let mut purged = 0;
        for subject in function.queue_subjects() {
            purged += self
                .invocations
                .purge()
                .filter(subject)
                .await
                .map(|purged| purged.purged)
                .map_err(|e| layout_error(&format!("the queue of {function}"), e))?;
        }
        Ok(purged)
    }

    /// Deletes the function's durable consumers: its lanes'
    /// ([`Self::lane_consumer`]) and its ordering buckets'
    /// ([`Self::keyed_consumer`]); false when there was none.
    pub async fn delete_consumer(&self, function: &FunctionRef) -> Result<bool, NatsError> {
        let mut deleted = false;
        for lane in Lane::ALL {
            deleted |= self
                .delete_consumer_named(function, &function.lane_consumer_name(lane))
                .await?;
        }
        for bucket in 0..ORDERING_BUCKETS {
            deleted |= self
                .delete_consumer_named(function, &function.keyed_consumer_name(bucket))
                .await?;
        }
        Ok(deleted)
    }

    async fn delete_consumer_named(
        &self,
        function: &FunctionRef,
        name: &str,
    ) -> Result<bool, NatsError> {
        match self.invocations.delete_consumer(name).await {
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

/// The durable pull consumer of one ordering bucket of a function
/// ([`sluice_api::ordering`]): as [`consumer_config`], but filtering the
/// bucket's subject and letting out one message at a time
/// (`max_ack_pending: 1`), so the bucket's next message waits until the
/// one out is acknowledged. A retry is a negative acknowledgement with a
/// delay, which keeps the message pending: it holds the bucket until it
/// succeeds or is dead-lettered. A runtime that dies holding it holds the
/// bucket until `ack_wait` passes, then it is delivered again, first.
pub fn keyed_consumer_config(
    function: &FunctionRef,
    spec: &FunctionSpec,
    bucket: u16,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(function.keyed_consumer_name(bucket)),
        description: Some(format!(
            "Sluice invocations of {function} with an ordering key in bucket {bucket}"
        )),
        filter_subject: function.keyed_subject(bucket),
        max_ack_pending: 1,
        ..consumer_config(function, spec)
    }
}

/// The durable pull consumer of one priority lane of a function
/// ([`sluice_api::priority`]): as [`consumer_config`], filtering the lane's
/// subject. Lanes share the function's `max_ack_pending` each (the
/// runtime's slots bound what runs at once). `normal`'s is the function's
/// own consumer, [`consumer_config`].
pub fn lane_consumer_config(
    function: &FunctionRef,
    spec: &FunctionSpec,
    lane: Lane,
) -> consumer::pull::Config {
    if lane == Lane::Normal {
        return consumer_config(function, spec);
    }
    consumer::pull::Config {
        durable_name: Some(function.lane_consumer_name(lane)),
        description: Some(format!(
            "Sluice invocations of {function} in its {} lane",
            lane.as_str()
        )),
        filter_subject: function.lane_subject(lane),
        ..consumer_config(function, spec)
    }
}

/// The owner's count of layout changes, `sluice_layout_changes_total`,
/// labelled by stream, setting and whether it was applied (`false`: the
/// stream cannot take it in place). Label values come from fixed sets.
#[derive(Debug, Clone, Default)]
pub struct LayoutMetrics {
    changes: prometheus_client::metrics::family::Family<
        ChangeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ChangeLabels {
    stream: String,
    setting: &'static str,
    applied: &'static str,
}

impl LayoutMetrics {
    /// Registers the counter in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "layout_changes",
            "Settings of a stream or bucket the layout's owner found different from its own, by whether it applied them",
            metrics.changes.clone(),
        );
        metrics
    }

    /// Counts `changes`.
    pub fn count(&self, changes: &[LayoutChange]) {
        for change in changes {
            self.changes
                .get_or_create(&ChangeLabels {
                    stream: change.stream.clone(),
                    setting: change.setting,
                    applied: if change.applied { "true" } else { "false" },
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(f: impl FnOnce(&mut stream::Config)) -> stream::Config {
        let mut config = Wanted::new(&LayoutConfig::default()).results;
        f(&mut config);
        config
    }

    #[test]
    fn what_differs_is_found_and_only_storage_and_retention_stay() {
        let wanted = stream(|_| {});
        assert_eq!(changes(&wanted, &wanted), []);
        type Change = fn(&mut stream::Config);
        let table: [(&str, Change, bool); 6] = [
            ("max_age", |c| c.max_age = Duration::from_secs(3), true),
            ("max_bytes", |c| c.max_bytes = -1, true),
            ("replicas", |c| c.num_replicas = 3, true),
            (
                "duplicate_window",
                |c| c.duplicate_window = Duration::from_secs(1),
                true,
            ),
            (
                "storage",
                |c| c.storage = stream::StorageType::Memory,
                false,
            ),
            (
                "retention",
                |c| c.retention = stream::RetentionPolicy::Interest,
                false,
            ),
        ];
        for (setting, change, in_place) in table {
            let current = stream(change);
            let found = changes(&current, &wanted);
            assert_eq!(found.len(), 1, "{setting}: {found:?}");
            assert_eq!(found[0].setting, setting);
            assert_eq!(found[0].applied, in_place, "{setting}");
            let after = updated(current, &wanted);
            assert_eq!(changes(&after, &wanted).is_empty(), in_place, "{setting}");
        }
    }

    #[test]
    fn zero_and_minus_one_are_both_no_limit() {
        let wanted = stream(|c| c.max_consumers = 0);
        assert_eq!(changes(&stream(|c| c.max_consumers = -1), &wanted), []);
    }

    #[test]
    fn the_results_window_never_exceeds_their_age() {
        let config = LayoutConfig {
            results_ttl: Duration::from_secs(3),
            ..LayoutConfig::default()
        };
        assert_eq!(
            Wanted::new(&config).results.duplicate_window,
            Duration::from_secs(3)
        );
    }
}
