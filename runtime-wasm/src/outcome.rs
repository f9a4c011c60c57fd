//! What became of one attempt, and whether it should be retried.

use sluice_api::InvocationResponse;

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
    /// The host failed to run the guest (for example, instantiation failed).
    Internal,
}

/// What the queue should do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx or 3xx: done.
    Success,
    /// 4xx or expired: retrying cannot help.
    Permanent,
    /// 5xx, trap, timeout, limit hit: another attempt may succeed.
    Retryable,
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Responded(r) if r.status.is_success() || r.status.is_redirection() => {
                Verdict::Success
            }
            Self::Responded(r) if r.status.is_client_error() => Verdict::Permanent,
            Self::Responded(_) => Verdict::Retryable,
            Self::Failed(f) if f.kind == FailureKind::Expired => Verdict::Permanent,
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
            Self::Failed(f) => match f.kind {
                FailureKind::Timeout => "timeout",
                FailureKind::Expired => "expired",
                FailureKind::Trap => "trap",
                FailureKind::MemoryLimit => "memory_limit",
                FailureKind::ResponseTooLarge => "response_too_large",
                FailureKind::NoResponse => "no_response",
                FailureKind::Internal => "internal",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    }
}
