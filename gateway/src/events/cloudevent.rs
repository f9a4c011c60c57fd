//! A NATS message as a CloudEvents 1.0 binary-mode HTTP request: `ce-*`
//! headers, `content-type`, body = event data.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_api::InvocationId;
use sluice_api::names::FunctionRef;

/// `ce-type` of an event whose message does not name one.
pub const DEFAULT_EVENT_TYPE: &str = "dev.sluice.nats.message";

/// The invocation an event the publisher named maps to (`identity`, see
/// [`CloudEvent::identity`]): the same event delivered twice on one subject
/// runs once; equal ids on other subjects are other events.
pub fn event_invocation_id(function: &FunctionRef, subject: &str, identity: &str) -> InvocationId {
    InvocationId::for_idempotency_key(function, &format!("{subject}\n{identity}"))
}

/// The HTTP headers of a CloudEvents binary-mode request for one message.
#[derive(Debug)]
pub struct CloudEvent {
    pub headers: HeaderMap,
    /// What names the event, when the publisher named it: its id (`ce-id`
    /// or `Nats-Msg-Id`, or the stream position), after its `ce-source`
    /// when the publisher set one, since CloudEvents ids are unique only
    /// per source. It names the invocation, so the same event delivered
    /// twice runs once.
    pub identity: Option<String>,
    pub traceparent: Option<String>,
}

impl CloudEvent {
    /// Headers a message may set itself: `ce-*` overrides, plus
    /// `content-type`; other headers are carried as they are (the runtime
    /// frames the request the function sees).
    pub fn from_message(
        message_headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        server: &str,
        stream_id: Option<String>,
    ) -> Self {
        let mut headers = HeaderMap::new();
        let mut traceparent = None;
        let mut msg_id = None;
        for (name, value) in sluice_nats::header_pairs(message_headers) {
            let lower = name.to_ascii_lowercase();
            if lower == "traceparent" {
                traceparent = Some(value.to_owned());
            } else if lower == "nats-msg-id" {
                msg_id = Some(value.to_owned());
            } else if lower.starts_with("nats-") {
                // JetStream's own headers are not the event's.
            } else if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(lower.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        let given = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let given_id = given("ce-id")
            .or(msg_id.filter(|id| !id.is_empty()))
            .or(stream_id);
        let identity = given_id.as_ref().map(|id| match given("ce-source") {
            Some(source) => format!("{source}\n{id}"),
            None => id.clone(),
        });
        let id = given_id.unwrap_or_else(|| InvocationId::random().to_string());
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let defaults = [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", id),
            ("ce-source", format!("nats://{server}/{subject}")),
            ("ce-type", DEFAULT_EVENT_TYPE.to_owned()),
            ("ce-subject", subject.to_owned()),
            ("ce-time", now),
            ("content-type", "application/octet-stream".to_owned()),
        ];
        for (name, value) in defaults {
            if !headers.contains_key(name)
                && let Ok(value) = HeaderValue::from_str(&value)
            {
                headers.insert(name, value);
            }
        }
        Self {
            headers,
            identity,
            traceparent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_message_gets_every_required_cloudevents_header() {
        let event = CloudEvent::from_message(None, "orders.created", "127.0.0.1:4222", None);
        let h = |n: &str| event.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("ce-specversion"), "1.0");
        assert_eq!(h("ce-source"), "nats://127.0.0.1:4222/orders.created");
        assert_eq!(h("ce-subject"), "orders.created");
        assert_eq!(h("ce-type"), DEFAULT_EVENT_TYPE);
        assert_eq!(h("content-type"), "application/octet-stream");
        assert!(InvocationId::parse(&h("ce-id")).is_some());
        assert!(humantime::parse_rfc3339(&h("ce-time")).is_ok());
        assert_eq!(event.identity, None);
    }

    #[test]
    fn the_publisher_may_name_the_event() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-17");
        headers.insert("ce-type", "com.example.order.created");
        headers.insert("Content-Type", "application/json");
        let event = CloudEvent::from_message(Some(&headers), "orders.created", "h:1", None);
        let h = |n: &str| event.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("ce-id"), "order-17");
        assert_eq!(h("ce-type"), "com.example.order.created");
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(event.identity.as_deref(), Some("order-17"));
        assert!(event.headers.get("nats-msg-id").is_none());
    }

    #[test]
    fn an_event_is_named_by_its_source_and_id() {
        let event = |source: Option<&str>, id: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("ce-id", id);
            if let Some(source) = source {
                headers.insert("ce-source", source);
            }
            CloudEvent::from_message(Some(&headers), "orders.created", "h:1", None)
        };
        let a = event(Some("/shop/a"), "1");
        let b = event(Some("/shop/b"), "1");
        assert_ne!(a.identity, b.identity, "equal ids from two sources");
        assert_eq!(a.identity, event(Some("/shop/a"), "1").identity);
        assert_eq!(event(None, "").identity, None, "an empty id names nothing");
    }
}
