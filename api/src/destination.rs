//! Destinations: where a finished asynchronous invocation's final record
//! goes besides its callback (`spec.destinations.onSuccess` /
//! `onFailure`), as a binary-mode CloudEvent: the record JSON (the
//! document the callback and `GET /invocations/<id>` show) is the body,
//! the event's attributes are `ce-*` headers.
//!
//! Exactly once per invocation: every delivery carries an id derived from
//! the invocation id and the destination's kind, as `Nats-Msg-Id` on a
//! subject (a stream capturing the subject keeps one copy per id within its
//! duplicate window) and as the invocation id of a chained function (the
//! queue stores one invocation per id).

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::function::{Destination, Destinations};
use crate::names::FunctionRef;
use crate::{Invocation, InvocationId, InvocationRecord, InvocationState};

/// `ce-type` of a destination event: `dev.sluice.invocation.<state>`, the
/// record's final state (`succeeded`, `failed`, `dead_lettered`, …).
pub const EVENT_TYPE_PREFIX: &str = "dev.sluice.invocation";

/// How long a chained function's invocation may wait to run: 1 hour, as an
/// async submit without `--async-deadline`.
pub const CHAINED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Which of a function's destinations a final record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationKind {
    /// `onSuccess`: the record ended `succeeded`.
    Success,
    /// `onFailure`: the record ended `failed`, `dead_lettered` or
    /// `expired`.
    Failure,
}

impl DestinationKind {
    /// For a record in `state`: none for a state that is not final, nor
    /// for `cancelled` (a caller stopped it; nothing follows from it).
    pub fn of(state: InvocationState) -> Option<Self> {
        match state {
            InvocationState::Succeeded => Some(Self::Success),
            InvocationState::Failed | InvocationState::DeadLettered | InvocationState::Expired => {
                Some(Self::Failure)
            }
            InvocationState::Queued | InvocationState::Running | InvocationState::Cancelled => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl Destinations {
    /// Where a record in `state` goes, and as which kind; `None` when the
    /// state has no destination or the function names none for it.
    pub fn for_state(&self, state: InvocationState) -> Option<(DestinationKind, &Destination)> {
        let kind = DestinationKind::of(state)?;
        let destination = match kind {
            DestinationKind::Success => self.on_success.as_ref(),
            DestinationKind::Failure => self.on_failure.as_ref(),
        }?;
        Some((kind, destination))
    }
}

/// The id of the delivery of invocation `id`'s record to its `kind`
/// destination: `<id>.destination.<kind>`, its `Nats-Msg-Id` and `ce-id`.
pub fn message_id(id: &InvocationId, kind: DestinationKind) -> String {
    format!("{id}.destination.{}", kind.as_str())
}

/// The CloudEvent attributes of `record`'s delivery, as headers:
/// `ce-specversion` `1.0`, `ce-id` [`message_id`], `ce-source`
/// `/sluice/<namespace>/<function>`, `ce-type`
/// `dev.sluice.invocation.<state>`, `ce-subject` the invocation id, and
/// `content-type: application/json`.
pub fn event_headers(
    record: &InvocationRecord,
    kind: DestinationKind,
) -> Vec<(&'static str, String)> {
    vec![
        ("ce-specversion", "1.0".into()),
        ("ce-id", message_id(&record.id, kind)),
        (
            "ce-source",
            format!(
                "/sluice/{}/{}",
                record.function.namespace, record.function.name
            ),
        ),
        (
            "ce-type",
            format!("{EVENT_TYPE_PREFIX}.{}", record.state.as_str()),
        ),
        ("ce-subject", record.id.to_string()),
        ("content-type", "application/json".into()),
    ]
}

/// The body of `record`'s delivery: the record as JSON.
pub fn event_body(record: &InvocationRecord) -> Bytes {
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

/// The id of the invocation of `target` that invocation `source`'s `kind`
/// destination starts: the same on every delivery of it.
pub fn chained_id(
    source: &InvocationId,
    kind: DestinationKind,
    target: &FunctionRef,
) -> InvocationId {
    // A newline cannot occur in an HTTP Idempotency-Key, so no request
    // maps to a chained invocation's id.
    InvocationId::for_idempotency_key(target, &format!("destination\n{source}\n{}", kind.as_str()))
}

/// The asynchronous invocation of `target` (a function of the record's
/// namespace) that `record`'s `kind` destination starts: `POST /` with
/// the event, under an id derived from the record's id and `kind` (so a
/// delivery repeated after a crash queues nothing more), waiting to run
/// until `deadline`.
pub fn chained_invocation(
    record: &InvocationRecord,
    kind: DestinationKind,
    target: &FunctionRef,
    deadline: SystemTime,
) -> Invocation {
    let id = chained_id(&record.id, kind, target);
    let mut headers = HeaderMap::new();
    for (name, value) in event_headers(record, kind) {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    Invocation {
        id,
        function: target.clone(),
        method: Method::POST,
        path: "/".into(),
        query: None,
        forwarded_prefix: String::new(),
        headers,
        body: event_body(record),
        deadline,
        traceparent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: InvocationState) -> InvocationRecord {
        let function = FunctionRef::new("shop", "orders").unwrap();
        let mut record = InvocationRecord::queued(InvocationId::random(), function);
        record.state = state;
        record
    }

    #[test]
    fn each_final_state_picks_its_destination() {
        let destinations = Destinations {
            on_success: Some(Destination {
                subject: Some("sluice.dest.shop.ok".into()),
                function: None,
            }),
            on_failure: Some(Destination {
                subject: None,
                function: Some("alert".into()),
            }),
        };
        use InvocationState::*;
        for (state, want) in [
            (Succeeded, Some(DestinationKind::Success)),
            (Failed, Some(DestinationKind::Failure)),
            (DeadLettered, Some(DestinationKind::Failure)),
            (Expired, Some(DestinationKind::Failure)),
            (Cancelled, None),
            (Queued, None),
            (Running, None),
        ] {
            assert_eq!(
                destinations.for_state(state).map(|(kind, _)| kind),
                want,
                "{state:?}"
            );
        }
        let only_success = Destinations {
            on_failure: None,
            ..destinations
        };
        assert!(only_success.for_state(Failed).is_none());
    }

    #[test]
    fn a_delivery_is_a_binary_mode_cloudevent_under_a_derived_id() {
        let record = record(InvocationState::Succeeded);
        let headers = event_headers(&record, DestinationKind::Success);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("ce-specversion"), "1.0");
        assert_eq!(
            header("ce-id"),
            format!("{}.destination.success", record.id)
        );
        assert_eq!(header("ce-source"), "/sluice/shop/orders");
        assert_eq!(header("ce-type"), "dev.sluice.invocation.succeeded");
        assert_eq!(header("ce-subject"), record.id.to_string());
        let body: InvocationRecord = serde_json::from_slice(&event_body(&record)).unwrap();
        assert_eq!(body, record);
    }

    #[test]
    fn a_chained_invocation_has_one_id_per_record_and_kind() {
        let record = record(InvocationState::Succeeded);
        let target = FunctionRef::new("shop", "ship").unwrap();
        let deadline = SystemTime::now();
        let a = chained_invocation(&record, DestinationKind::Success, &target, deadline);
        let again = chained_invocation(&record, DestinationKind::Success, &target, deadline);
        let failure = chained_invocation(&record, DestinationKind::Failure, &target, deadline);
        assert_eq!(a.id, again.id);
        assert_ne!(a.id, failure.id);
        assert_eq!(a.function, target);
        assert_eq!(a.method, Method::POST);
        assert_eq!(a.headers["ce-type"], "dev.sluice.invocation.succeeded");
        assert_eq!(a.body, event_body(&record));
    }
}
