//! The status document of an invocation, as `GET /invocations/<id>` answers
//! it and as callbacks receive it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::invocation::{Invocation, InvocationId, InvocationResponse};
use crate::names::FunctionRef;
use crate::outcome::{Outcome, Settlement};

/// Where an invocation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvocationState {
    Queued,
    Running,
    Succeeded,
    Failed,
    DeadLettered,
    Expired,
    /// A caller cancelled it (`DELETE /invocations/<id>`) before it ended:
    /// queued, it never runs; running, it was interrupted. Never retried.
    Cancelled,
}

impl InvocationState {
    /// Whether the invocation will change no more.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::DeadLettered => "dead-lettered",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What `DELETE /invocations/<id>` does to an invocation in a given state
/// ([`cancel_decision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelDecision {
    /// Queued or running: it ends `cancelled`.
    Cancel,
    /// Already cancelled: nothing changes (cancelling is idempotent).
    AlreadyCancelled,
    /// It ended otherwise: it is left as it was (409).
    Finished,
}

/// Whether an invocation in `state` can still be cancelled. Who may ask is
/// the rule of reading the record (see the gateway's status endpoint).
pub fn cancel_decision(state: InvocationState) -> CancelDecision {
    match state {
        InvocationState::Queued | InvocationState::Running => CancelDecision::Cancel,
        InvocationState::Cancelled => CancelDecision::AlreadyCancelled,
        InvocationState::Succeeded
        | InvocationState::Failed
        | InvocationState::DeadLettered
        | InvocationState::Expired => CancelDecision::Finished,
    }
}

/// The error a cancelled record carries.
pub const CANCELLED_REASON: &str = "cancelled by a caller (DELETE /invocations/<id>)";

/// What one attempt used, as its record, its callback and the runtime's
/// per-function counters state it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Wall-clock time of the attempt, from taking an instance to its
    /// outcome (instantiation included), in milliseconds.
    pub wall_ms: u64,
    /// Time the guest spent executing, in milliseconds, counted by the
    /// engine's epoch clock (not fuel): every epoch tick (the runtime's
    /// `epoch_tick`, 5 ms by default) that finds the guest running counts
    /// one tick. Its resolution is one tick; time the guest waits (on a
    /// sleep, on outbound HTTP, for a thread) does not count.
    pub guest_cpu_ms: u64,
    /// The epoch tick that `guest_cpu_ms` is counted in, in milliseconds:
    /// its resolution.
    pub cpu_resolution_ms: u64,
    /// The most linear memory the instance held at once, all its memories
    /// together, in bytes (what `limits.memory` bounds).
    pub peak_memory_bytes: u64,
}

/// A function's response as stored: every header field line as an entry
/// of its own, in order (so repeated fields such as `Set-Cookie` stay
/// apart, RFC 9110 §5.3), each value's bytes kept; the body in base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<StoredHeader>,
    /// Base64 (standard alphabet, padded).
    pub body: String,
}

/// One header field line of a stored response: `value` when its bytes are
/// UTF-8, `valueBase64` (standard alphabet, padded) when they are not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl StoredHeader {
    /// The value's bytes; `None` if it holds neither form, or bad base64.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        match (&self.value, &self.value_base64) {
            (Some(text), None) => Some(text.as_bytes().to_vec()),
            (None, Some(b64)) => BASE64.decode(b64).ok(),
            _ => None,
        }
    }
}

impl StoredHeader {
    /// Every field line of `headers`, in order.
    pub fn list(headers: &http::HeaderMap) -> Vec<Self> {
        headers
            .iter()
            .map(|(name, value)| {
                let (value, value_base64) = match std::str::from_utf8(value.as_bytes()) {
                    Ok(text) => (Some(text.to_owned()), None),
                    Err(_) => (None, Some(BASE64.encode(value.as_bytes()))),
                };
                StoredHeader {
                    name: name.to_string(),
                    value,
                    value_base64,
                }
            })
            .collect()
    }
}

impl From<&InvocationResponse> for StoredResponse {
    fn from(resp: &InvocationResponse) -> Self {
        Self {
            status: resp.status.as_u16(),
            headers: StoredHeader::list(&resp.headers),
            body: BASE64.encode(&resp.body),
        }
    }
}

impl StoredResponse {
    /// The decoded body; `None` if the stored text is not base64.
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        BASE64.decode(&self.body).ok()
    }

    /// The headers as the function sent them; `None` if an entry is not a
    /// valid header field.
    pub fn header_map(&self) -> Option<http::HeaderMap> {
        let mut map = http::HeaderMap::new();
        for header in &self.headers {
            let name = http::HeaderName::from_bytes(header.name.as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(&header.value_bytes()?).ok()?;
            map.append(name, value);
        }
        Some(map)
    }
}

/// The status of one invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: InvocationId,
    pub function: FunctionRef,
    pub state: InvocationState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The function's response, once it answered (even with an error status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StoredResponse>,
    /// Why the invocation failed, in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For an invocation submitted with `Idempotency-Key`: what a retry
    /// with the same key must repeat ([`Invocation::request_digest`]).
    #[serde(
        default,
        rename = "requestDigest",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_digest: Option<String>,
    /// What the last attempt used; absent before one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl InvocationRecord {
    pub fn queued(id: InvocationId, function: FunctionRef) -> Self {
        Self {
            id,
            function,
            state: InvocationState::Queued,
            attempts: 0,
            response: None,
            error: None,
            request_digest: None,
            usage: None,
        }
    }

    /// The record of `invocation` as accepted: queued, with its request
    /// digest when it was submitted with `Idempotency-Key`.
    pub fn accepted(invocation: &Invocation) -> Self {
        Self {
            request_digest: invocation.request_digest(),
            ..Self::queued(invocation.id.clone(), invocation.function.clone())
        }
    }

    /// Attempt number `attempt` (1-based) has begun.
    pub fn running(&mut self, attempt: u32) {
        self.state = InvocationState::Running;
        self.attempts = attempt;
    }

    /// The last attempt failed and another follows: queued again, with why
    /// and what the function answered, if it did.
    pub fn retrying(&mut self, reason: String, response: Option<StoredResponse>) {
        self.state = InvocationState::Queued;
        self.error = Some(reason);
        self.response = response;
    }

    /// The invocation is over: `state` is final, `error` says why when it
    /// did not succeed.
    pub fn settled(
        &mut self,
        state: InvocationState,
        error: Option<String>,
        response: Option<StoredResponse>,
    ) {
        debug_assert!(state.is_final(), "{state:?} is not final");
        self.state = state;
        self.error = error;
        self.response = response;
    }

    /// A caller cancelled it: final, `cancelled`, with why; the response of
    /// an interrupted attempt is not kept (it had none).
    pub fn cancel(&mut self) {
        self.settled(
            InvocationState::Cancelled,
            Some(CANCELLED_REASON.to_owned()),
            None,
        );
    }

    /// Applies what followed an attempt: [`Self::retrying`] or
    /// [`Self::settled`], keeping the outcome's response either way.
    pub fn after_attempt(&mut self, outcome: &Outcome, settlement: &Settlement) {
        let response = outcome.stored_response();
        match settlement {
            Settlement::Retry { reason, .. } => self.retrying(reason.clone(), response),
            Settlement::Final { state, error } => self.settled(*state, error.clone(), response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    #[test]
    fn records_serialize_with_the_documented_field_names() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        headers.append(
            "x-latin1",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let response = InvocationResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hi"),
        };
        let mut record = InvocationRecord::queued(
            InvocationId::parse("6f1f8a3e-52b8-4c86-9d0e-7d0b3c8f6a11").unwrap(),
            "default/hello".parse().unwrap(),
        );
        record.state = InvocationState::DeadLettered;
        record.attempts = 3;
        record.response = Some((&response).into());
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "6f1f8a3e-52b8-4c86-9d0e-7d0b3c8f6a11",
                "function": "default/hello",
                "state": "dead-lettered",
                "attempts": 3,
                "response": {
                    "status": 200,
                    "headers": [
                        { "name": "x-a", "value": "1" },
                        { "name": "x-a", "value": "2" },
                        { "name": "x-latin1", "valueBase64": "Y2Fm6Q==" }
                    ],
                    "body": "aGk="
                }
            })
        );
        let back: InvocationRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert_eq!(
            back.response.unwrap().header_map().unwrap(),
            response.headers,
            "every field line and its bytes come back"
        );
    }

    #[test]
    fn only_an_unfinished_invocation_is_cancelled_and_cancelling_twice_changes_nothing() {
        use InvocationState::*;
        for (state, expected) in [
            (Queued, CancelDecision::Cancel),
            (Running, CancelDecision::Cancel),
            (Cancelled, CancelDecision::AlreadyCancelled),
            (Succeeded, CancelDecision::Finished),
            (Failed, CancelDecision::Finished),
            (DeadLettered, CancelDecision::Finished),
            (Expired, CancelDecision::Finished),
        ] {
            assert_eq!(cancel_decision(state), expected, "{state:?}");
            assert_eq!(
                state.is_final(),
                expected != CancelDecision::Cancel,
                "{state:?}: what can be cancelled is exactly what is not final"
            );
        }
        let mut record =
            InvocationRecord::queued(InvocationId::random(), "default/echo".parse().unwrap());
        record.cancel();
        assert_eq!(record.state, Cancelled);
        assert_eq!(
            serde_json::to_value(record).unwrap()["state"],
            serde_json::json!("cancelled")
        );
    }

    #[test]
    fn a_record_states_its_usage_with_the_documented_field_names() {
        let mut record =
            InvocationRecord::queued(InvocationId::random(), "default/echo".parse().unwrap());
        record.usage = Some(Usage {
            wall_ms: 210,
            guest_cpu_ms: 200,
            cpu_resolution_ms: 5,
            peak_memory_bytes: 9 << 20,
        });
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json["usage"],
            serde_json::json!({ "wallMs": 210, "guestCpuMs": 200, "cpuResolutionMs": 5, "peakMemoryBytes": 9437184 })
        );
        assert_eq!(
            serde_json::from_value::<InvocationRecord>(json).unwrap(),
            record
        );
    }

    #[test]
    fn a_record_moves_from_queued_through_retries_to_its_end() {
        use crate::outcome::{Failure, FailureKind};
        let id = InvocationId::random();
        let mut record = InvocationRecord::queued(id.clone(), "default/echo".parse().unwrap());
        assert_eq!(record.state, InvocationState::Queued);
        record.running(1);
        assert_eq!(
            (record.state, record.attempts),
            (InvocationState::Running, 1)
        );

        let failed = Outcome::Failed(Failure::new(FailureKind::Trap, "boom"));
        let retry = Settlement::Retry {
            delay: std::time::Duration::from_secs(1),
            reason: "boom".into(),
        };
        record.after_attempt(&failed, &retry);
        assert_eq!(record.state, InvocationState::Queued);
        assert_eq!(record.error.as_deref(), Some("boom"));
        assert_eq!(record.attempts, 1, "a retry is counted when it starts");

        record.running(2);
        let answered = Outcome::Responded(InvocationResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"hi"),
        });
        let done = Settlement::Final {
            state: InvocationState::Succeeded,
            error: None,
        };
        record.after_attempt(&answered, &done);
        assert_eq!(record.state, InvocationState::Succeeded);
        assert_eq!(record.error, None, "an earlier attempt's reason is gone");
        assert_eq!(record.attempts, 2);
        assert_eq!(record.response.unwrap().body_bytes().unwrap(), b"hi");
    }
}
