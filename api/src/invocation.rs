//! The invocation wire format: one HTTP request to a function, as a list of
//! headers plus the request body. The same encoding travels through the
//! in-process queue and NATS JetStream, so it is defined once, here.
//!
//! Headers (all values text):
//!
//! | header | meaning |
//! |---|---|
//! | `Sluice-Version` | wire version, [`WIRE_VERSION`] |
//! | `Sluice-Invocation-Id` | the invocation's id |
//! | `Sluice-Function` | `<namespace>/<name>` |
//! | `Sluice-Method`, `Sluice-Path`, `Sluice-Query` | the request line as the component sees it |
//! | `Sluice-Forwarded-Prefix` | the route prefix the gateway stripped |
//! | `Sluice-Deadline` | Unix time in milliseconds after which nobody waits |
//! | `traceparent` | W3C trace context, when present |
//! | `Sluice-H-<name>` | an HTTP header of the request, value as is |
//! | `Sluice-Hb-<name>` | an HTTP header whose value is not text, base64 |
//!
//! A response uses `Sluice-Version`, `Sluice-Status` and the same header
//! prefixes, with the response body as the body.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::names::FunctionRef;

/// Version of the wire format this crate writes and reads.
pub const WIRE_VERSION: &str = "1";

pub const VERSION_HEADER: &str = "Sluice-Version";
pub const ID_HEADER: &str = "Sluice-Invocation-Id";
pub const FUNCTION_HEADER: &str = "Sluice-Function";
pub const METHOD_HEADER: &str = "Sluice-Method";
pub const PATH_HEADER: &str = "Sluice-Path";
pub const QUERY_HEADER: &str = "Sluice-Query";
pub const PREFIX_HEADER: &str = "Sluice-Forwarded-Prefix";
pub const DEADLINE_HEADER: &str = "Sluice-Deadline";
pub const STATUS_HEADER: &str = "Sluice-Status";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// On a queued synchronous invocation: the core NATS subject the single
/// attempt's outcome is sent to.
pub const REPLY_TO_HEADER: &str = "Sluice-Reply-To";
/// On a queued asynchronous invocation: where the final record is posted.
pub const CALLBACK_HEADER: &str = "Sluice-Callback-Url";
const HTTP_HEADER_PREFIX: &str = "Sluice-H-";
const BINARY_HTTP_HEADER_PREFIX: &str = "Sluice-Hb-";

/// Longest header block JetStream stores: the block's length must fit in
/// 16 bits ("header size exceeds maximum allowed of 64k" otherwise).
pub const MAX_HEADER_BLOCK: usize = 65_535;

/// Longest header block of a request as queued ([`Invocation::header_block_len`],
/// with the callback URL): larger gets 431, in both modes. It leaves
/// [`MAX_HEADER_BLOCK`] room for what is added after the gateway (the reply
/// inbox, `Nats-Msg-Id`, the dead-letter headers), and it keeps what the
/// runtime hands a guest under wasmtime's 64 KiB field-map accounting
/// (each field costs its bytes plus 72; see `runtime-wasm`'s
/// `MAX_FIELDS_BYTES`), so a guest can copy its request's headers.
pub const MAX_REQUEST_HEADER_BLOCK: usize = 56 << 10;

/// Room kept in [`MAX_HEADER_BLOCK`] beyond [`MAX_REQUEST_HEADER_BLOCK`].
pub const HEADER_BLOCK_RESERVE: usize = MAX_HEADER_BLOCK - MAX_REQUEST_HEADER_BLOCK;

/// Bytes a NATS header block takes for `headers`: `NATS/1.0\r\n`, one
/// `name: value\r\n` line per value, and a closing `\r\n`.
pub fn header_block_len<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
    headers
        .into_iter()
        .fold(HEADER_BLOCK_FRAME, |n, (name, value)| {
            n + header_line_len(name, value)
        })
}

/// `NATS/1.0\r\n` and the closing `\r\n`.
const HEADER_BLOCK_FRAME: usize = 12;

/// Bytes of one `name: value\r\n` line of a NATS header block.
pub fn header_line_len(name: &str, value: &str) -> usize {
    name.len() + value.len() + 4
}

/// A unique invocation id (a UUID in its hyphenated form).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InvocationId(String);

/// The request header naming an idempotency key (IETF
/// `Idempotency-Key` draft): its invocation id derives from it
/// ([`InvocationId::for_idempotency_key`]).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Namespace for ids derived from idempotency keys (UUID v5).
const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1f8a3e-52b8-4c86-9d0e-7d0b3c8f6a11");

impl InvocationId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id an idempotency key always maps to for a function, so that a
    /// retried submit names the same invocation on every backend.
    pub fn for_idempotency_key(function: &FunctionRef, key: &str) -> Self {
        let name = format!("{function}\n{key}");
        Self(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string())
    }

    /// Parses an id from a URL or header; only UUIDs are ids.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s)
            .ok()
            .map(|u| Self(u.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One HTTP request to one function.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    pub id: InvocationId,
    pub function: FunctionRef,
    pub method: Method,
    /// Path as the component sees it: starts with `/`, route prefix removed.
    pub path: String,
    /// Query string without the `?`, if any.
    pub query: Option<String>,
    /// The route prefix the gateway removed (`X-Forwarded-Prefix`).
    pub forwarded_prefix: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// After this instant nobody waits for the outcome; a runtime that
    /// receives the invocation later records it as expired, unrun.
    pub deadline: SystemTime,
    /// W3C `traceparent` of the caller's span.
    pub traceparent: Option<String>,
}

impl Invocation {
    /// `path?query`, as the component's request URI path.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// For a request with an `Idempotency-Key` header: the sha256 (hex) of
    /// its method, path, query and body, which a retry with the same key
    /// must repeat (the IETF `Idempotency-Key` draft answers a different
    /// one with 422). `None` without the header.
    pub fn request_digest(&self) -> Option<String> {
        use sha2::{Digest as _, Sha256};
        if !self.headers.contains_key(IDEMPOTENCY_KEY_HEADER) {
            return None;
        }
        let mut hasher = Sha256::new();
        let query = self.query.as_deref().unwrap_or_default();
        // Each part with its length, so no two requests run together alike.
        for part in [
            self.method.as_str().as_bytes(),
            self.path.as_bytes(),
            query.as_bytes(),
            &self.body,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Some(hex::encode(hasher.finalize()))
    }

    /// Time left before the deadline; zero once it has passed.
    pub fn time_left(&self) -> Duration {
        self.deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Encodes the invocation as wire headers and a body.
    pub fn to_wire(&self) -> (Vec<(String, String)>, Bytes) {
        let mut out = Vec::new();
        self.write_wire_headers(|name, value| out.push((name.to_owned(), value.to_owned())));
        (out, self.body.clone())
    }

    /// Hands each wire header to `put`, in order: what [`Self::to_wire`]
    /// returns, without collecting it first.
    pub fn write_wire_headers(&self, mut put: impl FnMut(&str, &str)) {
        put(VERSION_HEADER, WIRE_VERSION);
        put(ID_HEADER, self.id.as_str());
        put(FUNCTION_HEADER, &self.function.to_string());
        put(METHOD_HEADER, self.method.as_str());
        put(PATH_HEADER, &self.path);
        put(PREFIX_HEADER, &self.forwarded_prefix);
        put(DEADLINE_HEADER, &unix_millis(self.deadline).to_string());
        if let Some(query) = &self.query {
            put(QUERY_HEADER, query);
        }
        if let Some(tp) = &self.traceparent {
            put(TRACEPARENT_HEADER, tp);
        }
        write_http_headers(&self.headers, put);
    }

    /// Bytes of the NATS header block [`Self::write_wire_headers`] fills,
    /// without what the queue adds (reply inbox, callback, message id).
    pub fn header_block_len(&self) -> usize {
        let mut n = HEADER_BLOCK_FRAME;
        self.write_wire_headers(|name, value| n += header_line_len(name, value));
        n
    }

    /// Decodes wire headers and a body; every problem names its header.
    pub fn from_wire<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Bytes,
    ) -> Result<Self, WireError> {
        let wire = WireHeaders::collect(headers)?;
        let id = wire.required(ID_HEADER)?;
        let id = InvocationId::parse(id).ok_or_else(|| WireError::invalid(ID_HEADER, id))?;
        let function = wire.required(FUNCTION_HEADER)?;
        let function = function
            .parse()
            .map_err(|_| WireError::invalid(FUNCTION_HEADER, function))?;
        let method = wire.required(METHOD_HEADER)?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| WireError::invalid(METHOD_HEADER, method))?;
        let path = wire.required(PATH_HEADER)?;
        if !path.starts_with('/') {
            return Err(WireError::invalid(PATH_HEADER, path));
        }
        let deadline = wire.required(DEADLINE_HEADER)?;
        let deadline = deadline
            .parse::<u64>()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .map_err(|_| WireError::invalid(DEADLINE_HEADER, deadline))?;
        Ok(Self {
            id,
            function,
            method,
            path: path.to_owned(),
            query: wire.optional(QUERY_HEADER).map(str::to_owned),
            forwarded_prefix: wire.optional(PREFIX_HEADER).unwrap_or_default().to_owned(),
            traceparent: wire.optional(TRACEPARENT_HEADER).map(str::to_owned),
            headers: wire.http_headers,
            body,
            deadline,
        })
    }
}

/// A function's HTTP response.
#[derive(Clone, Debug, PartialEq)]
pub struct InvocationResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl InvocationResponse {
    pub fn to_wire(&self) -> (Vec<(String, String)>, Bytes) {
        let mut out = vec![
            (VERSION_HEADER.to_owned(), WIRE_VERSION.to_owned()),
            (STATUS_HEADER.to_owned(), self.status.as_u16().to_string()),
        ];
        write_http_headers(&self.headers, |name, value| {
            out.push((name.to_owned(), value.to_owned()));
        });
        (out, self.body.clone())
    }

    pub fn from_wire<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Bytes,
    ) -> Result<Self, WireError> {
        let wire = WireHeaders::collect(headers)?;
        let status = wire.required(STATUS_HEADER)?;
        let status = status
            .parse::<u16>()
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| WireError::invalid(STATUS_HEADER, status))?;
        Ok(Self {
            status,
            headers: wire.http_headers,
            body,
        })
    }
}

/// A wire message that cannot be decoded. Such a message is poison: it is
/// dead-lettered with this error as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("header {header} has an invalid value {value:?}")]
    Invalid { header: String, value: String },
    #[error("unsupported wire version {0:?}; this build reads version {WIRE_VERSION}")]
    UnsupportedVersion(String),
}

impl WireError {
    fn invalid(header: &str, value: &str) -> Self {
        Self::Invalid {
            header: header.to_owned(),
            value: value.chars().take(200).collect(),
        }
    }
}

/// Wire headers split into Sluice's own and the carried HTTP headers.
struct WireHeaders<'a> {
    own: Vec<(&'a str, &'a str)>,
    http_headers: HeaderMap,
}

impl<'a> WireHeaders<'a> {
    fn collect(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, WireError> {
        let mut own = Vec::new();
        let mut http_headers = HeaderMap::new();
        for (name, value) in headers {
            let (http_name, header_value) =
                if let Some(n) = strip_prefix_ci(name, BINARY_HTTP_HEADER_PREFIX) {
                    let bytes = BASE64
                        .decode(value)
                        .map_err(|_| WireError::invalid(name, value))?;
                    (n, HeaderValue::from_bytes(&bytes))
                } else if let Some(n) = strip_prefix_ci(name, HTTP_HEADER_PREFIX) {
                    (n, HeaderValue::from_str(value))
                } else {
                    own.push((name, value));
                    continue;
                };
            let http_name = HeaderName::from_bytes(http_name.as_bytes())
                .map_err(|_| WireError::invalid(name, value))?;
            let header_value = header_value.map_err(|_| WireError::invalid(name, value))?;
            http_headers.append(http_name, header_value);
        }
        let wire = Self { own, http_headers };
        match wire.optional(VERSION_HEADER) {
            Some(WIRE_VERSION) => Ok(wire),
            Some(other) => Err(WireError::UnsupportedVersion(other.to_owned())),
            None => Err(WireError::Missing(VERSION_HEADER)),
        }
    }

    fn optional(&self, name: &str) -> Option<&'a str> {
        self.own
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn required(&self, name: &'static str) -> Result<&'a str, WireError> {
        self.optional(name).ok_or(WireError::Missing(name))
    }
}

fn strip_prefix_ci<'s>(name: &'s str, prefix: &str) -> Option<&'s str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// Hands `put` the wire headers carrying `headers`. Every field line of
/// one name goes under one wire name, in order: `Sluice-H-<name>` when all
/// its values are text, `Sluice-Hb-<name>` (each value in base64) when one
/// is not. Split between the two, the lines would lose their order on NATS,
/// whose header map groups values by name (found by fuzzing the reply
/// codec).
fn write_http_headers(headers: &HeaderMap, mut put: impl FnMut(&str, &str)) {
    let mut wire_name = String::new();
    for name in headers.keys() {
        let values = headers.get_all(name);
        let text = values.iter().all(|v| v.to_str().is_ok());
        wire_name.clear();
        wire_name.push_str(if text {
            HTTP_HEADER_PREFIX
        } else {
            BINARY_HTTP_HEADER_PREFIX
        });
        wire_name.push_str(name.as_str());
        for value in values {
            match value.to_str() {
                Ok(value) if text => put(&wire_name, value),
                _ => put(&wire_name, &BASE64.encode(value.as_bytes())),
            }
        }
    }
}

/// Milliseconds since the Unix epoch (zero before it).
/// Headers that belong to one connection and never reach a function, nor
/// leave one.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Removes the [`HOP_BY_HOP`] headers, and those the `Connection` header
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invocation {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        headers.append("x-multi", "one".parse().unwrap());
        headers.append("x-multi", "two".parse().unwrap());
        headers.insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        Invocation {
            id: InvocationId::random(),
            function: "default/echo".parse().unwrap(),
            method: Method::PUT,
            path: "/a/b".into(),
            query: Some("x=1&y=%20".into()),
            forwarded_prefix: "/fn/default/echo".into(),
            headers,
            body: Bytes::from_static(b"\x00\x01\xffbinary"),
            deadline: UNIX_EPOCH + Duration::from_millis(1_900_000_000_123),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

    fn as_refs(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    #[test]
    fn an_invocation_round_trips_through_the_wire() {
        let inv = sample();
        let (headers, body) = inv.to_wire();
        let back = Invocation::from_wire(as_refs(&headers), body).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn a_response_round_trips_through_the_wire() {
        let mut headers = HeaderMap::new();
        headers.insert("set-cookie", "a=1".parse().unwrap());
        headers.append("set-cookie", "b=2".parse().unwrap());
        let resp = InvocationResponse {
            status: StatusCode::IM_A_TEAPOT,
            headers,
            body: Bytes::from_static(b"short and stout"),
        };
        let (wire, body) = resp.to_wire();
        assert_eq!(
            InvocationResponse::from_wire(as_refs(&wire), body).unwrap(),
            resp
        );
    }

    /// The wire headers as NATS delivers them: values grouped by name, in
    /// order within a name, the names in any order (here: reversed).
    fn grouped_by_name(wire: &[(String, String)]) -> Vec<(String, String)> {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, value) in wire {
            match groups.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => groups.push((name, vec![value])),
            }
        }
        groups
            .into_iter()
            .rev()
            .flat_map(|(n, vs)| vs.into_iter().map(move |v| (n.to_owned(), v.to_owned())))
            .collect()
    }

    /// Regression (found by the `reply` fuzz target): a repeated field
    /// whose values were partly text and partly not went out under two
    /// wire names, `Sluice-H-x` and `Sluice-Hb-x`, and NATS, which groups
    /// values by name, gave its lines back in another order.
    #[test]
    fn repeated_fields_of_text_and_bytes_keep_their_order_over_nats() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static(""));
        headers.append("content-type", HeaderValue::from_bytes(b"\xbf.").unwrap());
        headers.append("x-a", HeaderValue::from_static("text only"));
        headers.append("content-type", HeaderValue::from_static("text"));
        let resp = InvocationResponse {
            status: StatusCode::from_u16(667).unwrap(),
            headers: headers.clone(),
            body: Bytes::new(),
        };
        let (wire, body) = resp.to_wire();
        let back = InvocationResponse::from_wire(as_refs(&grouped_by_name(&wire)), body).unwrap();
        assert_eq!(back, resp);
        let values: Vec<&[u8]> = back
            .headers
            .get_all("content-type")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(values, [&b""[..], b"\xbf.", b"text"]);

        let mut inv = sample();
        inv.headers = headers;
        let (wire, body) = inv.to_wire();
        assert!(
            wire.iter().any(|(n, _)| n == "Sluice-H-x-a"),
            "a name whose values are all text stays text: {wire:?}"
        );
        let back = Invocation::from_wire(as_refs(&grouped_by_name(&wire)), body).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn header_names_are_matched_case_insensitively() {
        let (headers, body) = sample().to_wire();
        let lowered: Vec<(String, String)> = headers
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        assert_eq!(
            Invocation::from_wire(as_refs(&lowered), body).unwrap(),
            sample_with_id(&lowered)
        );
    }

    fn sample_with_id(wire: &[(String, String)]) -> Invocation {
        let mut inv = sample();
        let id = wire
            .iter()
            .find(|(n, _)| n == "sluice-invocation-id")
            .unwrap();
        inv.id = InvocationId::parse(&id.1).unwrap();
        inv
    }

    #[test]
    fn broken_messages_name_what_is_wrong() {
        let (headers, body) = sample().to_wire();
        let without = |name: &str| -> Vec<(String, String)> {
            headers.iter().filter(|(n, _)| n != name).cloned().collect()
        };
        let replace = |name: &str, value: &str| -> Vec<(String, String)> {
            headers
                .iter()
                .map(|(n, v)| {
                    if n == name {
                        (n.clone(), value.into())
                    } else {
                        (n.clone(), v.clone())
                    }
                })
                .collect()
        };
        let cases = [
            (without(VERSION_HEADER), "missing header Sluice-Version"),
            (
                replace(VERSION_HEADER, "7"),
                "unsupported wire version \"7\"",
            ),
            (without(PATH_HEADER), "missing header Sluice-Path"),
            (
                replace(PATH_HEADER, "no-slash"),
                "header Sluice-Path has an invalid value",
            ),
            (replace(DEADLINE_HEADER, "soon"), "header Sluice-Deadline"),
            (replace(FUNCTION_HEADER, "nope"), "header Sluice-Function"),
            (replace(ID_HEADER, "42"), "header Sluice-Invocation-Id"),
            (replace(METHOD_HEADER, "GE T"), "header Sluice-Method"),
        ];
        for (wire, expected) in cases {
            let err = Invocation::from_wire(as_refs(&wire), body.clone()).unwrap_err();
            assert!(err.to_string().contains(expected), "{err} !~ {expected}");
        }
    }

    #[test]
    fn the_header_block_length_is_what_nats_frames() {
        let inv = sample();
        let (wire, _) = inv.to_wire();
        let framed: String = std::iter::once("NATS/1.0\r\n".to_owned())
            .chain(wire.iter().map(|(n, v)| format!("{n}: {v}\r\n")))
            .chain(std::iter::once("\r\n".to_owned()))
            .collect();
        assert_eq!(inv.header_block_len(), framed.len());
        assert_eq!(header_block_len(as_refs(&wire)), framed.len());
    }

    #[test]
    fn idempotency_keys_map_to_stable_ids_per_function() {
        let a: FunctionRef = "default/a".parse().unwrap();
        let b: FunctionRef = "default/b".parse().unwrap();
        let id = InvocationId::for_idempotency_key(&a, "order-7");
        assert_eq!(id, InvocationId::for_idempotency_key(&a, "order-7"));
        assert_ne!(id, InvocationId::for_idempotency_key(&a, "order-8"));
        assert_ne!(id, InvocationId::for_idempotency_key(&b, "order-7"));
        assert_eq!(InvocationId::parse(id.as_str()), Some(id));
    }
}
