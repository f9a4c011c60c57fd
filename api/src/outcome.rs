//! What became of one attempt, and whether it should be retried.

use std::time::Duration;

use crate::function::RetryPolicy;
use crate::invocation::{InvocationId, InvocationResponse};
use crate::record::{InvocationState, StoredResponse};

/// The result of one attempt at an invocation.
#[derive(Debug)]
pub enum Outcome {
    /// The function answered, with any status.
    Responded(InvocationResponse),
    /// The function produced no usable response.
    Failed(Failure),
}

/// Why an attempt produced no usable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// A sentence a person can act on.
    pub reason: String,
}

/// Longest reason kept: a guest chooses parts of it (its error code's
/// text), and a reason travels in logs, replies, records and dead letters.
pub const MAX_REASON_BYTES: usize = 1024;

impl Failure {
    /// A failure whose reason is made one line of at most
    /// [`MAX_REASON_BYTES`] ([`reason_line`]).
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason_line(&reason.into()),
        }
    }
}

/// `text` as one line of at most [`MAX_REASON_BYTES`] (plus a note of what
/// was cut): every run of whitespace and control characters becomes one
/// space. A reason goes into header values, which cannot hold line breaks,
/// and into JSON a person reads; a trap's backtrace would span lines, and
/// both queues must store the same text.
pub fn reason_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len().min(MAX_REASON_BYTES + 32));
    let mut words = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty());
    if let Some(first) = words.next() {
        line.push_str(first);
    }
    for word in words {
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > MAX_REASON_BYTES {
        let total = line.len();
        let mut end = MAX_REASON_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(&format!("… ({} more bytes cut)", total - end));
    }
    line
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The attempt outlived the function's timeout or the caller's deadline.
    Timeout,
    /// The deadline had passed before the attempt began; nothing ran.
    Expired,
    /// The guest trapped (a panic, a stack overflow, an unreachable).
    Trap,
    /// The guest asked for more memory than `limits.memory`.
    MemoryLimit,
    /// The response body was larger than the runtime allows.
    ResponseTooLarge,
    /// The guest returned without setting a response.
    NoResponse,
    /// The invocation cannot be made into an HTTP request (a message from
    /// elsewhere than a gateway); no attempt can succeed.
    BadInvocation,
    /// The host failed to run the guest (for example, instantiation failed).
    Internal,
    /// A caller cancelled the invocation while it ran: interrupted, never
    /// retried.
    Cancelled,
}

/// What the queue should do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx or 3xx: done.
    Success,
    /// 4xx, expired or a bad invocation: retrying cannot help.
    Permanent,
    /// 5xx, trap, timeout, limit hit: another attempt may succeed.
    Retryable,
}

impl FailureKind {
    /// The kind's name on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Expired => "expired",
            Self::Trap => "trap",
            Self::MemoryLimit => "memory_limit",
            Self::ResponseTooLarge => "response_too_large",
            Self::NoResponse => "no_response",
            Self::BadInvocation => "bad_invocation",
            Self::Internal => "internal",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Timeout,
            Self::Expired,
            Self::Trap,
            Self::MemoryLimit,
            Self::ResponseTooLarge,
            Self::NoResponse,
            Self::BadInvocation,
            Self::Internal,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What follows an asynchronous attempt. Both queue backends act on it, so
/// they retry and give up alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Attempt again after `delay`.
    Retry { delay: Duration, reason: String },
    /// The invocation is over; `error` says why when it did not succeed.
    Final {
        state: InvocationState,
        error: Option<String>,
    },
}

impl Settlement {
    pub fn is_dead_letter(&self) -> bool {
        matches!(
            self,
            Self::Final {
                state: InvocationState::DeadLettered,
                ..
            }
        )
    }
}

impl Outcome {
    /// Decides what follows attempt number `attempt` (1-based) of
    /// invocation `id` under `retry`.
    pub fn settle(&self, id: &InvocationId, attempt: u32, retry: &RetryPolicy) -> Settlement {
        let reason = self.reason();
        let state = match self.verdict() {
            Verdict::Success => InvocationState::Succeeded,
            Verdict::Permanent if matches!(self, Self::Failed(f) if f.kind == FailureKind::Expired) => {
                InvocationState::Expired
            }
            Verdict::Permanent if matches!(self, Self::Failed(f) if f.kind == FailureKind::Cancelled) => {
                InvocationState::Cancelled
            }
            Verdict::Permanent => InvocationState::Failed,
            Verdict::Retryable => match retry.delay_after(attempt, id) {
                Some(delay) => {
                    return Settlement::Retry {
                        delay,
                        reason: reason.unwrap_or_default(),
                    };
                }
                None => {
                    return Settlement::Final {
                        state: InvocationState::DeadLettered,
                        error: Some(gave_up(attempt, reason.as_deref())),
                    };
                }
            },
        };
        Settlement::Final {
            state,
            error: reason,
        }
    }

    /// The response as an invocation record stores it, if there was one.
    pub fn stored_response(&self) -> Option<StoredResponse> {
        match self {
            Self::Responded(r) => Some(r.into()),
            Self::Failed(_) => None,
        }
    }

    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Responded(r) if r.status.is_success() || r.status.is_redirection() => {
                Verdict::Success
            }
            Self::Responded(r) if r.status.is_client_error() => Verdict::Permanent,
            Self::Responded(_) => Verdict::Retryable,
            Self::Failed(f)
                if matches!(
                    f.kind,
                    FailureKind::Expired | FailureKind::BadInvocation | FailureKind::Cancelled
                ) =>
            {
                Verdict::Permanent
            }
            Self::Failed(_) => Verdict::Retryable,
        }
    }

    /// A short reason for logs and records when the attempt did not succeed.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Responded(r) => (self.verdict() != Verdict::Success)
                .then(|| format!("function answered {}", r.status)),
            Self::Failed(f) => Some(f.reason.clone()),
        }
    }

    /// The outcome label used in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Responded(_) => match self.verdict() {
                Verdict::Success => "success",
                Verdict::Permanent => "client_error",
                Verdict::Retryable => "server_error",
            },
            Self::Failed(f) => f.kind.as_str(),
        }
    }
}

/// The error of an invocation dead-lettered after `attempts` attempts.
pub fn gave_up(attempts: u32, reason: Option<&str>) -> String {
    reason_line(&format!(
        "gave up after {attempts} attempt{}: {}",
        if attempts == 1 { "" } else { "s" },
        reason.unwrap_or("retryable failure")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let failure = Failure::new(FailureKind::Trap, "é".repeat(MAX_REASON_BYTES));
        assert!(
            failure.reason.len() < MAX_REASON_BYTES + 32,
            "{}",
            failure.reason.len()
        );
        assert!(
            failure.reason.ends_with("… (1024 more bytes cut)"),
            "{}",
            &failure.reason[1000..]
        );
        let short = Failure::new(FailureKind::Trap, "short");
        assert_eq!(short.reason, "short");
    }
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn responded(status: u16) -> Outcome {
        Outcome::Responded(InvocationResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        })
    }

    fn failed(kind: FailureKind) -> Outcome {
        Outcome::Failed(Failure {
            kind,
            reason: "x".into(),
        })
    }

    #[test]
    fn outcomes_map_to_the_documented_verdicts() {
        assert_eq!(responded(200).verdict(), Verdict::Success);
        assert_eq!(responded(302).verdict(), Verdict::Success);
        assert_eq!(responded(404).verdict(), Verdict::Permanent);
        assert_eq!(responded(500).verdict(), Verdict::Retryable);
        assert_eq!(responded(503).verdict(), Verdict::Retryable);
        for kind in [
            FailureKind::Timeout,
            FailureKind::Trap,
            FailureKind::MemoryLimit,
            FailureKind::ResponseTooLarge,
            FailureKind::NoResponse,
            FailureKind::Internal,
        ] {
            assert_eq!(failed(kind).verdict(), Verdict::Retryable, "{kind:?}");
        }
        assert_eq!(failed(FailureKind::Expired).verdict(), Verdict::Permanent);
        assert_eq!(
            failed(FailureKind::BadInvocation).verdict(),
            Verdict::Permanent
        );
        assert_eq!(failed(FailureKind::Cancelled).verdict(), Verdict::Permanent);
    }

    #[test]
    fn retryable_failures_are_retried_until_the_attempts_run_out() {
        let retry: RetryPolicy = serde_json::from_value(serde_json::json!({
            "maxAttempts": 3, "backoff": { "initial": "1s", "max": "10s" }
        }))
        .unwrap();
        let id = InvocationId::random();
        assert!(matches!(
            responded(500).settle(&id, 1, &retry),
            Settlement::Retry { delay, .. } if Some(delay) == retry.delay_after(1, &id)
        ));
        assert!(matches!(
            failed(FailureKind::Trap).settle(&id, 2, &retry),
            Settlement::Retry { delay, .. } if Some(delay) == retry.delay_after(2, &id)
        ));
        let last = responded(503).settle(&id, 3, &retry);
        assert!(last.is_dead_letter(), "{last:?}");
        assert!(
            matches!(&last, Settlement::Final { error: Some(e), .. } if e.starts_with("gave up after 3 attempts"))
        );
        assert_eq!(
            responded(404).settle(&id, 1, &retry),
            Settlement::Final {
                state: InvocationState::Failed,
                error: Some("function answered 404 Not Found".into())
            }
        );
        assert!(matches!(
            failed(FailureKind::Expired).settle(&id, 1, &retry),
            Settlement::Final {
                state: InvocationState::Expired,
                ..
            }
        ));
        assert_eq!(
            failed(FailureKind::Cancelled).settle(&id, 1, &retry),
            Settlement::Final {
                state: InvocationState::Cancelled,
                error: Some("x".into())
            },
            "an interrupted attempt is not retried"
        );
        assert!(matches!(
            responded(200).settle(&id, 1, &retry),
            Settlement::Final {
                state: InvocationState::Succeeded,
                error: None
            }
        ));
    }

    #[test]
    fn reasons_become_one_capped_line() {
        let cases = [
            ("plain", "plain".to_owned()),
            (
                "wasm trap: out of bounds memory access\nwasm backtrace:\n    0: 0x1a2b - f\r\n\t1: g",
                "wasm trap: out of bounds memory access wasm backtrace: 0: 0x1a2b - f 1: g"
                    .to_owned(),
            ),
            ("  padded\u{0}\u{7f} ", "padded".to_owned()),
        ];
        for (text, expected) in cases {
            assert_eq!(reason_line(text), expected, "{text:?}");
        }
        let long = format!("{}\n{}", "é".repeat(600), "x".repeat(600));
        let line = reason_line(&long);
        assert!(!line.contains('\n'));
        assert!(line.ends_with("more bytes cut)"), "{line}");
        assert!(line.len() < MAX_REASON_BYTES + 32);
        assert!(gave_up(3, Some(&long)).len() < MAX_REASON_BYTES + 32);
    }

    #[test]
    fn failure_kinds_round_trip_through_their_names() {
        for kind in [
            FailureKind::Timeout,
            FailureKind::Expired,
            FailureKind::Trap,
            FailureKind::MemoryLimit,
            FailureKind::ResponseTooLarge,
            FailureKind::NoResponse,
            FailureKind::Internal,
            FailureKind::Cancelled,
        ] {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
    }
}
