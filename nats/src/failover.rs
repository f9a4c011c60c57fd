//! Publishing through a failover: on a JetStream cluster a stream whose
//! leader died elects another within seconds, and a publish meanwhile gets
//! no responders, no acknowledgement in time, or the server's "not
//! available" answer. Such a publish is sent again, unchanged (same
//! `Nats-Msg-Id`, so the stream stores it once however many attempts
//! reached it), until it is acknowledged, fails in a way trying again
//! cannot fix, or its time runs out ([`publish_patiently`]). The decisions
//! are pure ([`retryable`], [`next_delay`]); the loop around them is thin.

use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode};
use tokio::time::Instant;

/// The longest a publish, or a read a caller waits on, is retried through
/// a failover, whatever its deadline: a leader election takes a few
/// seconds (nats-server's election timeout is 4 to 9 s), and a caller
/// waiting longer for an answer is better told 503.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// The pause after a first failed attempt; it doubles up to
/// [`RETRY_MAX`].
pub const RETRY_INITIAL: Duration = Duration::from_millis(50);
/// The longest pause between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// How long a request that finds its client disconnected waits for it to
/// reconnect: on a cluster the client reconnects to a surviving server
/// within milliseconds of losing its own, and a caller arriving meanwhile
/// should not get a 503 for it; with every server gone, the caller hears
/// so after this long.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);
/// How often [`connected_within`] looks again: async-nats tells its
/// connection's changes only through the one event callback, which
/// [`crate::connect`] keeps for logging.
const RECONNECT_POLL: Duration = Duration::from_millis(20);

/// Whether `client` is connected, or reconnects within `grace`.
pub async fn connected_within(client: &async_nats::Client, grace: Duration) -> bool {
    let until = Instant::now() + grace;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        if Instant::now() + RECONNECT_POLL > until {
            return false;
        }
        tokio::time::sleep(RECONNECT_POLL).await;
    }
}

/// JetStream's answers while a stream or the cluster has no leader (or the
/// server asked is catching up): another attempt, later, may succeed.
const UNAVAILABLE: [ErrorCode; 3] = [
    ErrorCode::CLUSTER_NOT_ACTIVE,
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_NOT_LEADER,
];

/// Whether a publish that failed with `error` may succeed if sent again
/// unchanged: nobody answered (no responders: the stream's leader is gone
/// and none elected yet), no acknowledgement came in time, the connection
/// broke, or the server said JetStream is not available for now. Not: a
/// message too large, a full stream, a missing permission, an expected
/// sequence that did not match.
pub fn retryable(error: &PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe => true,
        PublishErrorKind::Other => std::error::Error::source(error)
            .and_then(|cause| cause.downcast_ref::<jetstream::Error>())
            .is_some_and(|js| UNAVAILABLE.contains(&js.error_code())),
        _ => false,
    }
}

/// The pause before attempt `failed + 1` after `failed` failed attempts
/// (1-based), when `left` remains: doubling from [`RETRY_INITIAL`] to
/// [`RETRY_MAX`]; `None` when not even the pause fits in `left` (give up).
pub fn next_delay(failed: u32, left: Duration) -> Option<Duration> {
    let delay = sluice_api::backoff::doubling(RETRY_INITIAL, RETRY_MAX, failed);
    (delay < left).then_some(delay)
}

/// Publishes `message` on `subject`, sending it again on a [`retryable`]
/// failure until `until` (and at most [`PATIENCE`] from now).
/// Give `message` a `Nats-Msg-Id`: an attempt whose acknowledgement was
/// lost may have been stored, and the id makes the next one a duplicate
/// instead of a second copy. Returns the acknowledgement (`duplicate`
/// false when the stored copy may be that of an earlier attempt of this
/// call, whose answer was lost), or the last error (each retried one
/// logged at debug level).
pub async fn publish_patiently(
    js: &jetstream::Context,
    subject: &str,
    message: PublishMessage,
    until: Instant,
) -> Result<PublishAck, PublishError> {
    let until = until.min(Instant::now() + PATIENCE);
    let mut failed = 0u32;
    let mut maybe_stored = false;
    loop {
        let error = match publish_once(js, subject, message.clone()).await {
            Ok(mut ack) => {
                ack.duplicate &= !maybe_stored;
                return Ok(ack);
            }
            Err(error) => error,
        };
        maybe_stored |= matches!(
            error.kind(),
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
        );
        failed = failed.saturating_add(1);
        let left = until.saturating_duration_since(Instant::now());
        match next_delay(failed, left) {
            Some(delay) if retryable(&error) => {
                // An attempt that timed out has waited already.
                let delay = if matches!(error.kind(), PublishErrorKind::TimedOut) {
                    Duration::ZERO
                } else {
                    delay
                };
                tracing::debug!(subject, attempt = failed, error = %error, "publish not confirmed; sending it again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            _ => return Err(error),
        }
    }
}

/// How long one attempt waits for its acknowledgement before the next is
/// sent (at once: it has waited). A stream with no leader answers nothing
/// at all, so an attempt sent then waited out its whole timeout
/// (async-nats' default, 5 s) even when a leader was elected a moment
/// later: measured with `scripts/bench-failover.sh`, the first 202 after a
/// leader's SIGKILL came at 5.2 or 10.3 s, one or two whole timeouts. A
/// healthy stream acknowledges within milliseconds. Every attempt waits
/// the same: with 2 s for the attempts after the first, the invocation
/// accepted first after a SIGKILL ran 7.2 s after it (median of 12) where
/// 1 s each gave 5.8 s (median of 9), the elections ending between the
/// 2 s attempts. A cluster that takes longer than this to acknowledge
/// gets a repeat a second, each a duplicate by its `Nats-Msg-Id`, for
/// [`PATIENCE`] at most.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

async fn publish_once(
    js: &jetstream::Context,
    subject: &str,
    message: PublishMessage,
) -> Result<PublishAck, PublishError> {
    let ack: PublishAckFuture = js.send_publish(subject.to_owned(), message).await?;
    tokio::time::timeout(ATTEMPT_TIMEOUT, ack)
        .await
        .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js_error(code: u64) -> PublishError {
        let error: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 503, "err_code": code, "description": "from the server"
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    #[test]
    fn only_what_a_failover_causes_is_retried() {
        let table = [
            (
                "no responders",
                PublishError::new(PublishErrorKind::StreamNotFound),
                true,
            ),
            (
                "no ack in time",
                PublishError::new(PublishErrorKind::TimedOut),
                true,
            ),
            (
                "connection broke",
                PublishError::new(PublishErrorKind::BrokenPipe),
                true,
            ),
            ("JetStream not available", js_error(10008), true),
            ("not the leader", js_error(10009), true),
            ("cluster not active", js_error(10006), true),
            (
                "too large",
                PublishError::new(PublishErrorKind::MaxPayloadExceeded),
                false,
            ),
            ("full per subject", js_error(10077), false),
            ("message size", js_error(10054), false),
            (
                "wrong sequence",
                PublishError::new(PublishErrorKind::WrongLastSequence),
                false,
            ),
            (
                "too many in flight",
                PublishError::new(PublishErrorKind::MaxAckPending),
                false,
            ),
            (
                "other, no cause",
                PublishError::new(PublishErrorKind::Other),
                false,
            ),
        ];
        for (what, error, expected) in table {
            assert_eq!(retryable(&error), expected, "{what}: {error}");
        }
    }

    #[test]
    fn the_pause_doubles_to_its_cap_and_never_outlasts_the_time_left() {
        let plenty = Duration::from_secs(60);
        let table = [
            (1, plenty, Some(50)),
            (2, plenty, Some(100)),
            (5, plenty, Some(800)),
            (6, plenty, Some(1000)),
            (u32::MAX, plenty, Some(1000)),
            (1, Duration::from_millis(50), None),
            (3, Duration::from_millis(150), None),
            (3, Duration::from_millis(201), Some(200)),
            (1, Duration::ZERO, None),
        ];
        for (failed, left, millis) in table {
            assert_eq!(
                next_delay(failed, left),
                millis.map(Duration::from_millis),
                "after {failed} with {left:?} left"
            );
        }
    }
}
