//! What the fuzz targets share: reading a NATS-like message from fuzz
//! input, and `arbitrary` builders for the values Sluice encodes (HTTP
//! header maps, invocations, responses).
//!
//! Text-shaped inputs are read as a message, so that a seed is readable:
//!
//! ```text
//! Sluice-Version: 1
//! Sluice-Status: 200
//!
//! the body
//! ```
//!
//! header lines (`name: value`, split at the first `:`, one space after it
//! dropped) up to the first empty line, then the body.

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sluice_api::names::FunctionRef;
use sluice_api::{Invocation, InvocationId, InvocationResponse};

/// A message read from fuzz input: its header lines and its body.
#[derive(Debug)]
pub struct Message<'a> {
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Bytes,
}

impl<'a> Message<'a> {
    /// `None` when the header part is not UTF-8 (a NATS header block is
    /// text; async-nats hands over `&str`).
    pub fn read(data: &'a [u8]) -> Option<Self> {
        let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (data, &[][..]),
        };
        let head = std::str::from_utf8(head).ok()?;
        let headers = head
            .split('\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                (name, value.strip_prefix(' ').unwrap_or(value))
            })
            .collect();
        Some(Self {
            headers,
            body: Bytes::copy_from_slice(body),
        })
    }

    /// The headers as async-nats holds them; a line async-nats would
    /// refuse (its `append` panics on a bad name) is left out, as it could
    /// not have arrived.
    pub fn nats_headers(&self) -> async_nats::HeaderMap {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                name.parse::<async_nats::HeaderName>(),
                value.parse::<async_nats::HeaderValue>(),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

/// Characters of an HTTP token (RFC 9110), lowercase as `http` keeps names.
const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";

fn token(u: &mut Unstructured, max: usize) -> Result<String> {
    let len = u.int_in_range(1..=max)?;
    (0..len)
        .map(|_| u.choose(TOKEN).map(|&b| b as char))
        .collect()
}

/// An HTTP header name: often a common one, otherwise a made-up token.
pub fn header_name(u: &mut Unstructured) -> Result<HeaderName> {
    const COMMON: [&str; 8] = [
        "content-type",
        "set-cookie",
        "x-a",
        "traceparent",
        "sluice-version",
        "sluice-h-x",
        "sluice-hb-x",
        "ce-id",
    ];
    let name = if u.ratio(1, 3)? {
        (*u.choose(&COMMON)?).to_owned()
    } else {
        token(u, 24)?
    };
    Ok(HeaderName::from_bytes(name.as_bytes()).expect("a token is a header name"))
}

/// An HTTP header value: any bytes a field value may hold (visible ASCII,
/// space, tab, and obs-text bytes 0x80–0xFF, which are not text).
pub fn header_value(u: &mut Unstructured) -> Result<HeaderValue> {
    let bytes: Vec<u8> = u.arbitrary()?;
    let bytes: Vec<u8> = bytes
        .into_iter()
        .map(|b| {
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                b'.'
            } else {
                b
            }
        })
        .collect();
    Ok(HeaderValue::from_bytes(&bytes).expect("only field-value bytes are left"))
}

/// A header map of up to 8 fields, names repeating now and then.
pub fn header_map(u: &mut Unstructured) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=8)? {
        map.append(header_name(u)?, header_value(u)?);
    }
    Ok(map)
}

/// An RFC 1123 label, as namespaces and function names are.
fn dns_label(u: &mut Unstructured) -> Result<String> {
    const INNER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    let len = u.int_in_range(1..=63)?;
    let mut label: Vec<u8> = (0..len)
        .map(|_| u.choose(INNER).copied())
        .collect::<Result<_>>()?;
    for end in [0, len - 1] {
        if label[end] == b'-' {
            label[end] = b'a';
        }
    }
    Ok(String::from_utf8(label).expect("ASCII"))
}

pub fn function_ref(u: &mut Unstructured) -> Result<FunctionRef> {
    Ok(FunctionRef::new(&dns_label(u)?, &dns_label(u)?).expect("two DNS labels"))
}

pub fn method(u: &mut Unstructured) -> Result<Method> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::PATCH,
        Method::TRACE,
    ];
    if u.ratio(3, 4)? {
        Ok(u.choose(&STANDARD)?.clone())
    } else {
        Ok(
            Method::from_bytes(token(u, 16)?.to_ascii_uppercase().as_bytes())
                .expect("a token is a method"),
        )
    }
}

/// Any invocation `to_wire` can be handed: deadlines are whole
/// milliseconds, as the wire carries them.
pub fn invocation(u: &mut Unstructured) -> Result<Invocation> {
    let id = uuid::Uuid::from_bytes(u.arbitrary()?).to_string();
    Ok(Invocation {
        id: InvocationId::parse(&id).expect("a UUID is an id"),
        function: function_ref(u)?,
        method: method(u)?,
        path: format!("/{}", u.arbitrary::<String>()?),
        query: u.arbitrary()?,
        forwarded_prefix: u.arbitrary()?,
        headers: header_map(u)?,
        body: Bytes::from(u.arbitrary::<Vec<u8>>()?),
        deadline: UNIX_EPOCH + Duration::from_millis(u.arbitrary()?),
        traceparent: u.arbitrary()?,
    })
}

pub fn response(u: &mut Unstructured) -> Result<InvocationResponse> {
    Ok(InvocationResponse {
        status: StatusCode::from_u16(u.int_in_range(100..=999)?).expect("100–999 is a status"),
        headers: header_map(u)?,
        body: Bytes::from(u.arbitrary::<Vec<u8>>()?),
    })
}
