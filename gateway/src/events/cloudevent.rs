//! A NATS message as a CloudEvents 1.0 HTTP request, per the HTTP protocol
//! binding: binary mode (`ce-*` headers, `Content-Type` from
//! `datacontenttype`, body = event data) for a plain message or one in NATS
//! binary mode, structured mode (the envelope as the body, unchanged) for
//! a message in structured mode.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use sluice_api::InvocationId;
use sluice_api::names::FunctionRef;
use sluice_api::ordering;

/// `ce-type` of an event whose message does not name one.
pub const DEFAULT_EVENT_TYPE: &str = "dev.sluice.nats.message";

/// What the HTTP binding (§3.1.3.2) percent-encodes in a header value:
/// everything outside printable ASCII, and space, `"` and `%`.
/// (`utf8_percent_encode` encodes every non-ASCII byte itself.)
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The invocation an event the publisher named maps to (`identity`, see
/// [`CloudEvent::identity`]): the same event delivered twice on one subject
/// runs once; equal ids on other subjects are other events.
pub fn event_invocation_id(function: &FunctionRef, subject: &str, identity: &str) -> InvocationId {
    InvocationId::for_idempotency_key(function, &format!("{subject}\n{identity}"))
}

/// The HTTP headers of a CloudEvents request for one message.
#[derive(Debug)]
pub struct CloudEvent {
    pub headers: HeaderMap,
    /// What names the event, when the publisher named it: its source and
    /// id (CloudEvents ids are unique only per source). In binary mode the
    /// id is `ce-id` or `Nats-Msg-Id`, or the stream position, and the
    /// source counts when the publisher set one; in structured mode both
    /// come from the envelope. It names the invocation, so the same event
    /// delivered twice runs once.
    pub identity: Option<String>,
    pub traceparent: Option<String>,
}

impl CloudEvent {
    /// The request for a message on `subject`; `stream_id` names it when it
    /// came from a stream.
    pub fn from_message(
        message_headers: Option<&async_nats::HeaderMap>,
        body: &[u8],
        subject: &str,
        server: &str,
        stream_id: Option<String>,
    ) -> Self {
        let pairs = sluice_nats::header_pairs(message_headers);
        let structured = pairs
            .iter()
            .any(|(name, value)| name.eq_ignore_ascii_case("content-type") && is_structured(value));
        if structured {
            Self::structured(&pairs, body, stream_id)
        } else {
            Self::binary(&pairs, subject, server, stream_id)
        }
    }

    /// Binary mode. `ce-*` values are percent-decoded as the NATS side
    /// encoded them and encoded again as HTTP requires;
    /// `ce-datacontenttype` becomes `Content-Type`.
    fn binary(
        pairs: &[(&str, &str)],
        subject: &str,
        server: &str,
        stream_id: Option<String>,
    ) -> Self {
        let mut attributes: Vec<(String, String)> = Vec::new();
        let mut content_type = None;
        let mut data_content_type = None;
        let carried = Carried::from(pairs, |name, value| {
            if name == "ce-datacontenttype" {
                data_content_type = Some(decode(value));
            } else if name == "content-type" {
                content_type = Some(value.to_owned());
            } else if let Some(attribute) = name.strip_prefix("ce-") {
                attributes.retain(|(n, _)| n != attribute);
                attributes.push((attribute.to_owned(), decode(value)));
            } else {
                return false;
            }
            true
        });
        let Carried {
            mut headers,
            traceparent,
            msg_id,
        } = carried;
        let given = |attributes: &[(String, String)], name: &str| {
            attributes
                .iter()
                .find(|(n, v)| n == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        let given_id = given(&attributes, "id")
            .or(msg_id.filter(|id| !id.is_empty()))
            .or(stream_id);
        let identity = given_id
            .as_ref()
            .map(|id| match given(&attributes, "source") {
                Some(source) => format!("{source}\n{id}"),
                None => id.clone(),
            });
        let defaults = [
            ("specversion", "1.0".to_owned()),
            (
                "id",
                given_id.unwrap_or_else(|| InvocationId::random().to_string()),
            ),
            ("source", format!("nats://{server}/{subject}")),
            ("type", DEFAULT_EVENT_TYPE.to_owned()),
            ("subject", subject.to_owned()),
            (
                "time",
                humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ),
        ];
        for (name, value) in defaults {
            if given(&attributes, name).is_none() {
                attributes.retain(|(n, _)| n != name);
                attributes.push((name.to_owned(), value));
            }
        }
        for (name, value) in &attributes {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(format!("ce-{name}").as_bytes()),
                HeaderValue::from_str(&encode(value)),
            ) {
                headers.insert(n, v);
            }
        }
        // The binding maps `datacontenttype` to Content-Type; the message's
        // own Content-Type stands for it when it has none.
        let content_type = data_content_type
            .or(content_type)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let content_type = HeaderValue::from_str(&content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
        headers.insert(http::header::CONTENT_TYPE, content_type);
        order_by(
            &mut headers,
            given(&attributes, ordering::PARTITION_KEY_ATTRIBUTE),
        );
        Self {
            headers,
            identity,
            traceparent,
        }
    }

    /// Structured mode: the envelope is passed on as it is, with its
    /// headers and no `ce-*` added; its `source` and `id` name it.
    fn structured(pairs: &[(&str, &str)], body: &[u8], stream_id: Option<String>) -> Self {
        let Carried {
            mut headers,
            traceparent,
            msg_id,
        } = Carried::from(pairs, |_, _| false);
        let envelope = serde_json::from_slice::<serde_json::Value>(body).ok();
        let attribute = |name: &str| {
            envelope
                .as_ref()
                .and_then(|e| e.get(name))
                .and_then(serde_json::Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let identity = match (attribute("source"), attribute("id")) {
            (Some(source), Some(id)) => Some(format!("{source}\n{id}")),
            // Not a valid envelope (or a batch): named as a plain message is.
            _ => msg_id.filter(|id| !id.is_empty()).or(stream_id),
        };
        order_by(&mut headers, attribute(ordering::PARTITION_KEY_ATTRIBUTE));
        Self {
            headers,
            identity,
            traceparent,
        }
    }
}

/// A message's headers as the request carries them: JetStream's own
/// (`Nats-*`) dropped, `traceparent` and `Nats-Msg-Id` set apart.
struct Carried {
    headers: HeaderMap,
    traceparent: Option<String>,
    msg_id: Option<String>,
}

impl Carried {
    /// `take` is offered each other header first (its name lowercased) and
    /// says whether it took it.
    fn from(pairs: &[(&str, &str)], mut take: impl FnMut(&str, &str) -> bool) -> Self {
        let mut carried = Self {
            headers: HeaderMap::new(),
            traceparent: None,
            msg_id: None,
        };
        for (name, value) in pairs {
            let lower = name.to_ascii_lowercase();
            if lower == "traceparent" {
                carried.traceparent = Some((*value).to_owned());
            } else if lower == "nats-msg-id" {
                carried.msg_id = Some((*value).to_owned());
            } else if lower.starts_with("nats-") || take(&lower, value) {
                // JetStream's own headers are not the event's.
            } else if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(lower.as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                carried.headers.append(n, v);
            }
        }
        carried
    }
}

/// Whether a Content-Type is a CloudEvents structured-mode (or batch) one.
/// Makes the event's CloudEvents `partitionkey` its ordering key
/// ([`ordering::ORDERING_KEY_HEADER`], which the queue checks; a message's
/// own `Sluice-Ordering-Key` header stands without one). A value no HTTP
/// header can hold travels percent-encoded: the same key always maps to
/// the same header, so its order holds, and the queue refuses what is
/// over the bound.
fn order_by(headers: &mut HeaderMap, key: Option<String>) {
    let Some(key) = key else { return };
    let printable = key.bytes().all(|b| (b' '..=b'~').contains(&b));
    let key = if printable { key } else { encode(&key) };
    if let Ok(value) = HeaderValue::from_str(&key) {
        headers.insert(ordering::ORDERING_KEY_HEADER, value);
    }
}

fn is_structured(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    media_type
        .get(..23)
        .is_some_and(|head| head.eq_ignore_ascii_case("application/cloudevents"))
        && matches!(media_type.as_bytes().get(23), Some(b'+' | b'-'))
}

/// A header value as the HTTP binding requires it (§3.1.3.2).
fn encode(value: &str) -> String {
    utf8_percent_encode(value, HEADER_VALUE).to_string()
}

/// A `ce-*` value as the NATS side percent-encoded it; left as it is when
/// its escapes do not decode to UTF-8.
fn decode(value: &str) -> String {
    percent_decode_str(value)
        .decode_utf8()
        .map_or_else(|_| value.to_owned(), |v| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(headers: &[(&str, &str)], body: &[u8]) -> CloudEvent {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, *value);
        }
        CloudEvent::from_message(Some(&map), body, "orders.created", "h:1", None)
    }

    fn header(event: &CloudEvent, name: &str) -> String {
        event.headers[name].to_str().unwrap().to_owned()
    }

    #[test]
    fn a_bare_message_gets_every_required_cloudevents_header() {
        let event = CloudEvent::from_message(None, b"", "orders.created", "127.0.0.1:4222", None);
        let h = |n: &str| header(&event, n);
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
        let event = from(
            &[
                ("Nats-Msg-Id", "order-17"),
                ("ce-type", "com.example.order.created"),
                ("Content-Type", "application/json"),
            ],
            b"{}",
        );
        assert_eq!(header(&event, "ce-id"), "order-17");
        assert_eq!(header(&event, "ce-type"), "com.example.order.created");
        assert_eq!(header(&event, "content-type"), "application/json");
        assert_eq!(event.identity.as_deref(), Some("order-17"));
        assert!(event.headers.get("nats-msg-id").is_none());
    }

    #[test]
    fn datacontenttype_becomes_the_content_type() {
        let event = from(&[("ce-datacontenttype", "application/json")], b"{}");
        assert_eq!(header(&event, "content-type"), "application/json");
        assert!(event.headers.get("ce-datacontenttype").is_none());
    }

    #[test]
    fn header_values_are_percent_encoded_as_the_http_binding_says() {
        let event = CloudEvent::from_message(None, b"", "bestellungen.größe", "h:1", None);
        assert_eq!(header(&event, "ce-subject"), "bestellungen.gr%C3%B6%C3%9Fe");
        assert_eq!(
            header(&event, "ce-source"),
            "nats://h:1/bestellungen.gr%C3%B6%C3%9Fe"
        );
        // What the NATS side encoded is decoded first, not encoded twice.
        let event = from(
            &[
                ("ce-id", "a%20b"),
                ("ce-source", "/shop"),
                ("ce-x", "50% \"off\""),
            ],
            b"",
        );
        assert_eq!(header(&event, "ce-id"), "a%20b");
        assert_eq!(event.identity.as_deref(), Some("/shop\na b"));
        assert_eq!(header(&event, "ce-x"), "50%25%20%22off%22");
        for (name, value) in &event.headers {
            if name.as_str().starts_with("ce-") {
                assert!(
                    value
                        .as_bytes()
                        .iter()
                        .all(|b| (0x21..=0x7e).contains(b) && *b != b'"'),
                    "{name}: {value:?}"
                );
            }
        }
    }

    #[test]
    fn an_event_is_named_by_its_source_and_id() {
        let event = |source: Option<&str>, id: &str| {
            let mut headers = vec![("ce-id", id)];
            if let Some(source) = source {
                headers.push(("ce-source", source));
            }
            from(&headers, b"")
        };
        let a = event(Some("/shop/a"), "1");
        let b = event(Some("/shop/b"), "1");
        assert_ne!(a.identity, b.identity, "equal ids from two sources");
        assert_eq!(a.identity, event(Some("/shop/a"), "1").identity);
        assert_eq!(event(None, "").identity, None, "an empty id names nothing");
    }

    #[test]
    fn a_structured_event_passes_as_it_is_named_by_its_envelope() {
        let envelope = br#"{"specversion":"1.0","id":"A-1","source":"/shop","type":"t","data":{}}"#;
        let event = from(
            &[
                (
                    "Content-Type",
                    "application/cloudevents+json; charset=utf-8",
                ),
                ("Nats-Msg-Id", "other"),
            ],
            envelope,
        );
        assert_eq!(
            header(&event, "content-type"),
            "application/cloudevents+json; charset=utf-8"
        );
        assert!(
            !event.headers.keys().any(|n| n.as_str().starts_with("ce-")),
            "{:?}",
            event.headers
        );
        assert_eq!(event.identity.as_deref(), Some("/shop\nA-1"));
        assert!(is_structured("application/cloudevents-batch+json"));
        assert!(!is_structured("application/cloudeventsjson"));
        assert!(!is_structured("application/json"));
    }

    #[test]
    fn the_partitionkey_extension_is_the_ordering_key_in_either_mode() {
        let key = |event: &CloudEvent| {
            event
                .headers
                .get(ordering::ORDERING_KEY_HEADER)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(key(&from(&[], b"")), None);
        let binary = from(&[("ce-partitionkey", "customer%2017")], b"");
        assert_eq!(key(&binary).as_deref(), Some("customer 17"));
        // The extension outranks a header the publisher set.
        let both = from(
            &[("Sluice-Ordering-Key", "h"), ("ce-partitionkey", "p")],
            b"",
        );
        assert_eq!(key(&both).as_deref(), Some("p"));
        assert_eq!(
            key(&from(&[("Sluice-Ordering-Key", "h")], b"")).as_deref(),
            Some("h")
        );
        let unicode = from(&[("ce-partitionkey", "gr%C3%B6%C3%9Fe")], b"");
        assert_eq!(key(&unicode).as_deref(), Some("gr%C3%B6%C3%9Fe"));
        let structured = from(
            &[("Content-Type", "application/cloudevents+json")],
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","partitionkey":"order-9"}"#,
        );
        assert_eq!(key(&structured).as_deref(), Some("order-9"));
    }
}
