//! Ordering keys: invocations of one function that carry the same key run
//! one at a time, in the order they were accepted, a failing one holding
//! its key through its retries (README, "Ordering keys").
//!
//! A key is hashed to one of [`ORDERING_BUCKETS`] buckets per function;
//! each bucket is a subject of the invocation stream
//! (`sluice.invoke.<ns>.<fn>.k.<bucket>`, [`crate::names::FunctionRef::keyed_subject`])
//! with its own consumer that lets one message out at a time
//! (`max_ack_pending: 1`). Keys sharing a bucket therefore also wait for
//! each other: order per key is exact, parallelism across keys is at most
//! the number of buckets (and the function's concurrency).

use http::HeaderMap;
use sha2::{Digest as _, Sha256};

/// The request header that carries an invocation's ordering key (HTTP,
/// sync and async). The gateway also sets it on an event's invocation from
/// the CloudEvents `partitionkey` extension, so the component sees it.
pub const ORDERING_KEY_HEADER: &str = "sluice-ordering-key";
/// The CloudEvents extension attribute that orders events (binary mode:
/// the `ce-partitionkey` header; structured mode: `partitionkey` in the
/// envelope).
pub const PARTITION_KEY_ATTRIBUTE: &str = "partitionkey";
/// Longest ordering key, in bytes.
pub const MAX_ORDERING_KEY_LEN: usize = 256;
/// Buckets per function that keys are hashed into: a function's keyed
/// invocations run at most this many at once (fewer when keys collide or
/// the function's concurrency is lower). Fixed: changing it would move
/// keys between buckets and break the order of what is queued.
pub const ORDERING_BUCKETS: u16 = 32;

/// Why a request's ordering key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOrderingKey {
    #[error("the {0} header is empty; omit it for an unordered invocation")]
    Empty(&'static str),
    #[error("the {name} header is {len} bytes long; at most {MAX_ORDERING_KEY_LEN} are allowed")]
    TooLong { name: &'static str, len: usize },
    #[error(
        "the {0} header may hold only printable ASCII (letters, digits, punctuation and spaces)"
    )]
    Unprintable(&'static str),
    #[error("the {0} header is given more than once")]
    Repeated(&'static str),
}

/// The ordering key `value` (of the header or attribute `name`), checked:
/// 1 to [`MAX_ORDERING_KEY_LEN`] bytes of printable ASCII (space to `~`),
/// so that it travels unchanged in HTTP and NATS headers.
pub fn check(name: &'static str, value: &[u8]) -> Result<String, BadOrderingKey> {
    if value.is_empty() {
        return Err(BadOrderingKey::Empty(name));
    }
    if value.len() > MAX_ORDERING_KEY_LEN {
        return Err(BadOrderingKey::TooLong {
            name,
            len: value.len(),
        });
    }
    if !value.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(BadOrderingKey::Unprintable(name));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

/// The ordering key of a request's headers, checked ([`check`]); `None`
/// without [`ORDERING_KEY_HEADER`].
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, BadOrderingKey> {
    let mut values = headers.get_all(ORDERING_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadOrderingKey::Repeated("Sluice-Ordering-Key"));
    }
    check("Sluice-Ordering-Key", value.as_bytes()).map(Some)
}

/// The bucket of `key`: the first two bytes of its sha256, modulo
/// [`ORDERING_BUCKETS`]. Stable across versions and processes, so every
/// gateway queues a key in the same bucket.
pub fn bucket_of(key: &str) -> u16 {
    let digest = Sha256::digest(key.as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]) % ORDERING_BUCKETS
}

impl crate::Invocation {
    /// The invocation's ordering key: its [`ORDERING_KEY_HEADER`], which
    /// the gateway checked ([`from_headers`]) before accepting it. `None`
    /// without one (or, defensively, with one that is not text).
    pub fn ordering_key(&self) -> Option<&str> {
        self.headers
            .get(ORDERING_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|key| !key.is_empty())
    }

    /// The subject the invocation queues on: with an ordering key, the
    /// key's bucket's; else its lane's, the `sync` lane for a synchronous
    /// call (`sync`) and its class's for the rest.
    pub fn queue_subject(&self, sync: bool) -> String {
        match self.ordering_key() {
            Some(key) => self.function.keyed_subject(bucket_of(key)),
            None => self
                .function
                .lane_subject(crate::Lane::of(sync, self.priority())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_each_problem_names_the_header() {
        let name = "Sluice-Ordering-Key";
        let table: [(&[u8], Result<&str, BadOrderingKey>); 6] = [
            (b"customer-17", Ok("customer-17")),
            (b"a b/c:d", Ok("a b/c:d")),
            (b"", Err(BadOrderingKey::Empty(name))),
            (b"tab\there", Err(BadOrderingKey::Unprintable(name))),
            (
                "gr\u{f6}\u{df}e".as_bytes(),
                Err(BadOrderingKey::Unprintable(name)),
            ),
            (
                &[b'k'; MAX_ORDERING_KEY_LEN + 1],
                Err(BadOrderingKey::TooLong {
                    name,
                    len: MAX_ORDERING_KEY_LEN + 1,
                }),
            ),
        ];
        for (value, want) in table {
            assert_eq!(
                check(name, value),
                want.map(str::to_owned),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(check(name, &[b'k'; MAX_ORDERING_KEY_LEN]).is_ok());
        let message = check(name, &[b'k'; 300]).unwrap_err().to_string();
        assert!(message.contains("Sluice-Ordering-Key"), "{message}");
    }

    #[test]
    fn the_header_is_read_once() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), Ok(None));
        headers.insert(ORDERING_KEY_HEADER, "k1".parse().unwrap());
        assert_eq!(from_headers(&headers), Ok(Some("k1".to_owned())));
        headers.append(ORDERING_KEY_HEADER, "k2".parse().unwrap());
        assert!(matches!(
            from_headers(&headers),
            Err(BadOrderingKey::Repeated(_))
        ));
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: a change would reorder what is queued across an
        // upgrade.
        assert_eq!(bucket_of("customer-17"), 15);
        let used: std::collections::BTreeSet<u16> =
            (0..200).map(|i| bucket_of(&format!("key-{i}"))).collect();
        assert_eq!(used.len(), usize::from(ORDERING_BUCKETS));
        assert!(used.iter().all(|b| *b < ORDERING_BUCKETS));
    }
}
