//! The invocation queue: what the HTTP and event paths hand invocations to.
//! [`memory::MemoryQueue`] runs them in-process (local mode);
//! [`jetstream::JetStreamQueue`] puts them on NATS for runtimes to take,
//! with the same semantics.

pub mod budget;
pub mod jetstream;
#[cfg(feature = "local")]
pub mod logs;
#[cfg(feature = "local")]
pub mod memory;
#[cfg(feature = "local")]
mod ordered;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
pub use budget::QueueBound;
use sluice_api::Failure;
use sluice_api::dead_letter::{DeadLetterDetail, PurgeReport, RedriveReport, Selection};
use sluice_api::logs::AttemptLog;
use sluice_api::names::FunctionRef;
use sluice_api::ordering::BadOrderingKey;
use sluice_api::{
    CancelDecision, DeadLetter, Invocation, InvocationId, InvocationRecord, InvocationResponse,
};

/// A function's logs as they are read: what was kept, then (following)
/// what is kept next. It ends when nothing more is to come; an error
/// reading ends it too (logged).
pub type LogFeed = futures::stream::BoxStream<'static, AttemptLog>;

/// What a synchronous call ends with: the function's response, or why
/// there is none.
pub type CallResult = Result<InvocationResponse, Failure>;

/// An accepted asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: InvocationId,
    /// The idempotency key named an invocation already accepted; nothing
    /// new was queued.
    pub duplicate: bool,
}

/// What cancelling an invocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub decision: CancelDecision,
    /// The record after it: `cancelled` unless the invocation had
    /// finished, or is running (it then ends `cancelled` within one epoch
    /// tick of its runtime, unless it finished first).
    pub record: InvocationRecord,
}

/// Why the queue could not take or answer a request.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no function {0} is deployed")]
    UnknownFunction(FunctionRef),
    #[error("the queue of {function} is full: it holds all that {} allows", .bound.flag())]
    Full {
        function: FunctionRef,
        bound: QueueBound,
    },
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    /// The invocation's header block is longer than the queue carries; it
    /// never will be shorter, so it is not retried.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Headers and body together are larger than the queue carries; it
    /// never will be smaller, so it is not retried.
    #[error("{0}")]
    TooLarge(String),
    /// The ordering key cannot be carried (an event's `partitionkey`; the
    /// HTTP path refuses it before it reaches the queue).
    #[error(transparent)]
    BadOrderingKey(#[from] BadOrderingKey),
}

impl QueueError {
    /// Whether the same invocation would fail the same way every time.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::UnknownFunction(_)
                | Self::HeadersTooLarge(_)
                | Self::TooLarge(_)
                | Self::BadOrderingKey(_)
        )
    }
}

/// The invocation's ordering key, checked as every queue takes it
/// ([`sluice_api::ordering::from_headers`]); `None` for an unordered one.
pub fn ordering_key(invocation: &Invocation) -> Result<Option<String>, QueueError> {
    Ok(sluice_api::ordering::from_headers(&invocation.headers)?)
}

#[async_trait]
pub trait InvocationQueue: Send + Sync + std::fmt::Debug {
    /// Queues a synchronous invocation and waits for its single attempt.
    async fn call(&self, invocation: Invocation) -> Result<CallResult, QueueError>;

    /// Queues an asynchronous invocation, retried per the function's
    /// policy; `callback` receives the final record.
    async fn submit(
        &self,
        invocation: Invocation,
        callback: Option<String>,
    ) -> Result<Submitted, QueueError>;

    /// The record of an invocation; with `wait`, waits up to that long for
    /// it to reach a final state. A read that fails (in NATS mode, a
    /// failover) is tried again, for `wait` or 15 s
    /// (`sluice_nats::failover::PATIENCE`), whichever is longer, before
    /// [`QueueError::Unavailable`].
    async fn record(
        &self,
        id: &InvocationId,
        wait: Duration,
    ) -> Result<Option<InvocationRecord>, QueueError>;

    /// Keeps an invocation that could not be queued as a dead letter on
    /// `subject`, with `reason`: for an event, which core NATS cannot
    /// redeliver, this is the only copy left.
    async fn dead_letter(
        &self,
        invocation: &Invocation,
        subject: &str,
        reason: &str,
    ) -> Result<(), QueueError>;

    /// Waits up to `grace` for the accepted invocations only this process
    /// holds (queued, waiting for a retry, running, or delivering their
    /// callback) to finish, and returns how many are given up. A stopping
    /// gateway calls it once no more requests come in.
    async fn drain(&self, grace: Duration) -> usize;

    /// The dead letters of `function`, kept on `subject`, oldest first.
    async fn dead_letters(
        &self,
        function: &FunctionRef,
        subject: &str,
    ) -> Result<Vec<DeadLetter>, QueueError>;

    /// Cancels the async invocation `id` as [`sluice_api::cancel_decision`]
    /// says: a queued one never runs, a running one is interrupted, a
    /// finished one is left as it was. `None` for an unknown id. The
    /// callback, if any, receives the cancelled record once.
    async fn cancel(&self, id: &InvocationId) -> Result<Option<Cancelled>, QueueError>;

    /// The dead letter of invocation `id` of `function`, in full.
    async fn dead_letter_detail(
        &self,
        function: &FunctionRef,
        subject: &str,
        id: &InvocationId,
    ) -> Result<Option<DeadLetterDetail>, QueueError>;

    /// Queues the dead letters `selection` picks again, each as a fresh
    /// first attempt of the same invocation (same id, request and
    /// callback, a new `deadline`), and removes them from the dead letters:
    /// a dead letter is queued again at most once.
    async fn redrive(
        &self,
        function: &FunctionRef,
        subject: &str,
        selection: &Selection,
        deadline: SystemTime,
    ) -> Result<RedriveReport, QueueError>;

    /// Removes the dead letters `selection` picks.
    async fn purge(
        &self,
        function: &FunctionRef,
        subject: &str,
        selection: &Selection,
    ) -> Result<PurgeReport, QueueError>;

    /// Every attempt's log of invocation `id` of `function` still kept,
    /// oldest first (attempts that wrote nothing have none).
    async fn invocation_logs(
        &self,
        function: &FunctionRef,
        id: &InvocationId,
    ) -> Result<Vec<AttemptLog>, QueueError>;

    /// The logs of `function`'s attempts kept since `since`, from every
    /// replica; with `follow`, then each one kept after, until the feed
    /// is dropped.
    async fn function_logs(
        &self,
        function: &FunctionRef,
        since: SystemTime,
        follow: bool,
    ) -> Result<LogFeed, QueueError>;
}
