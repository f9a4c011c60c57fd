//! The reply to a synchronous invocation, sent by the runtime on the core
//! NATS subject named in the invocation's `Sluice-Reply-To` header: the
//! function's response in the response wire format, or a failure as
//! `Sluice-Failure: <kind>` with the reason as the body.

use bytes::Bytes;
use sluice_api::invocation::{VERSION_HEADER, WIRE_VERSION};
use sluice_api::{InvocationResponse, WireError};

use sluice_api::{Failure, FailureKind, Outcome};

pub const FAILURE_HEADER: &str = "Sluice-Failure";
/// Marks a runtime's answer to a direct call it did not take (no free
/// slot, or stopping): the call never ran, and the gateway queues it on
/// the invocation stream instead. Its value says why.
pub const DECLINED_HEADER: &str = "Sluice-Declined";

/// Why a direct call is declined: every slot of its function is taken.
pub const BUSY: &str = "busy";
/// Why a direct call is declined: the runtime stops serving its function.
pub const STOPPING: &str = "stopping";

/// Set on a direct call sent again after a runtime declined it as
/// [`BUSY`]: the runtime that gets it waits for its function's next free
/// slot, which it takes before the function's async backlog, rather than
/// declining; unless as many calls as the function has slots wait there
/// already. Value: `1`.
pub const WAIT_HEADER: &str = "Sluice-Wait-For-Slot";

/// The answer to a direct call that was not taken, saying `why`.
pub fn declined(why: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DECLINED_HEADER, why);
    headers
}

/// Whether a reply is [`declined`]: the call did not run.
pub fn is_declined(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers.is_some_and(|headers| headers.get(DECLINED_HEADER).is_some())
}

/// Whether a reply is [`declined`] as [`BUSY`].
pub fn is_declined_busy(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers
        .and_then(|headers| headers.get(DECLINED_HEADER))
        .is_some_and(|why| why.as_str() == BUSY)
}

/// Whether a direct call asks to wait for a slot ([`WAIT_HEADER`]).
pub fn waits_for_slot(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers.is_some_and(|headers| headers.get(WAIT_HEADER).is_some())
}

/// Encodes an attempt's outcome as reply headers and body.
pub fn encode(outcome: &Outcome) -> (async_nats::HeaderMap, Bytes) {
    let (pairs, body) = match outcome {
        Outcome::Responded(response) => response.to_wire(),
        Outcome::Failed(failure) => (
            vec![
                (VERSION_HEADER.to_owned(), WIRE_VERSION.to_owned()),
                (FAILURE_HEADER.to_owned(), failure.kind.as_str().to_owned()),
            ],
            Bytes::from(failure.reason.clone()),
        ),
    };
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in pairs {
        headers.append(name.as_str(), value.as_str());
    }
    (headers, body)
}

/// Decodes a reply; a reply that cannot be read is an internal failure.
pub fn decode(
    headers: Option<&async_nats::HeaderMap>,
    body: Bytes,
) -> Result<InvocationResponse, Failure> {
    let pairs = crate::header_pairs(headers);
    if let Some((_, kind)) = pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(FAILURE_HEADER))
    {
        return Err(Failure {
            kind: FailureKind::parse(kind).unwrap_or(FailureKind::Internal),
            reason: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    InvocationResponse::from_wire(pairs.iter().copied(), body).map_err(|e: WireError| Failure {
        kind: FailureKind::Internal,
        reason: format!("the runtime's reply cannot be read: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    #[test]
    fn responses_and_failures_survive_the_reply() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "1".parse().unwrap());
        let response = InvocationResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"\x00made"),
        };
        let (h, b) = encode(&Outcome::Responded(response.clone()));
        assert_eq!(decode(Some(&h), b), Ok(response));

        let failure = Failure {
            kind: FailureKind::MemoryLimit,
            reason: "refused to grow memory past 16 MiB".into(),
        };
        let (h, b) = encode(&Outcome::Failed(failure.clone()));
        assert!(!is_declined(Some(&h)));
        assert_eq!(decode(Some(&h), b), Err(failure));
        assert!(is_declined(Some(&declined("busy"))));
        assert!(!is_declined(None));
    }
}
