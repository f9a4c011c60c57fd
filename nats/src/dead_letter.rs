//! Dead letters on NATS: the original message republished on the
//! function's dead-letter subject (in `SLUICE_DEAD_LETTERS`) with why it
//! was given up (the headers of [`sluice_api::dead_letter`]), and read back
//! for `GET /dead-letters/<ns>/<name>`.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use sluice_api::DeadLetter;
use sluice_api::dead_letter::TRUNCATED_HEADER;
use sluice_api::invocation::{self, MAX_HEADER_BLOCK, header_block_len};
use sluice_api::names::{DEAD_LETTER_STREAM, FunctionRef};
use sluice_api::{Invocation, WireError};

/// Why a dead letter could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot publish the dead letter on {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: jetstream::context::PublishError,
    },
    #[error("cannot read the dead letters on {subject}: {source}")]
    Read {
        subject: String,
        #[source]
        source: stream::RawMessageError,
    },
    #[error("cannot remove dead letter {sequence} of {DEAD_LETTER_STREAM}: {source}")]
    Delete {
        sequence: u64,
        #[source]
        source: stream::DeleteMessageError,
    },
}

/// What was given up on, and why.
#[derive(Debug, Clone, Copy)]
pub struct GivenUp<'a> {
    /// The reason, in words a person can act on (made one line).
    pub reason: &'a str,
    /// Attempts made; 0 for a message that never ran.
    pub attempts: u32,
    /// The subject the message was first published on.
    pub original_subject: &'a str,
}

/// How much of the original message a stored dead letter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Headers and body.
    Whole,
    /// The headers; the body was left out.
    WithoutBody,
    /// Only the invocation's identity (id, function, method, path, query,
    /// each cut to [`IDENTITY_VALUE_MAX`] bytes) besides why.
    Identity,
}

/// Longest value of an identity header a [`Kept::Identity`] dead letter
/// keeps; it bounds that dead letter, so it always fits.
pub const IDENTITY_VALUE_MAX: usize = 1024;

/// The headers a [`Kept::Identity`] dead letter keeps of the original.
const IDENTITY_HEADERS: [&str; 6] = [
    invocation::VERSION_HEADER,
    invocation::ID_HEADER,
    invocation::FUNCTION_HEADER,
    invocation::METHOD_HEADER,
    invocation::PATH_HEADER,
    invocation::QUERY_HEADER,
];

/// Publishes the original message (`headers` and `payload`) plus the
/// dead-letter headers on `subject`, and waits for the stream to store it.
///
/// Giving up must always end, so a dead letter that would not fit one NATS
/// message (the original was near `max_payload`, or its header block near
/// JetStream's 64 KiB) is stored without its body, or else with only the
/// invocation's identity, and says so in [`TRUNCATED_HEADER`]. Any other
/// failure is returned, for the caller to retry.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    headers: &async_nats::HeaderMap,
    payload: Bytes,
    given_up: GivenUp<'_>,
) -> Result<Kept, DeadLetterError> {
    let max_payload = js.client().server_info().max_payload;
    let original = crate::header_pairs(Some(headers));
    let why = DeadLetter::headers(
        given_up.reason,
        given_up.attempts,
        given_up.original_subject,
    );
    for kept in [Kept::Whole, Kept::WithoutBody, Kept::Identity] {
        let (letter, body) = shape(kept, &original, &payload, &why, max_payload);
        let last = kept == Kept::Identity;
        if !last && !fits(&letter, body.len(), max_payload) {
            continue;
        }
        match publish_once(js, subject, &letter, body).await {
            Ok(()) => return Ok(kept),
            Err(e) if !last && crate::oversize(&e).is_some() => continue,
            Err(source) => {
                return Err(DeadLetterError::Publish {
                    subject: subject.to_owned(),
                    source,
                });
            }
        }
    }
    unreachable!("the last shape returns")
}

/// The headers and body of a dead letter keeping `kept` of the original.
fn shape(
    kept: Kept,
    original: &[(&str, &str)],
    payload: &Bytes,
    why: &[(&'static str, String)],
    max_payload: usize,
) -> (Vec<(String, String)>, Bytes) {
    let mut letter: Vec<(String, String)> = match kept {
        Kept::Whole | Kept::WithoutBody => original
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        Kept::Identity => original
            .iter()
            .filter(|(n, _)| IDENTITY_HEADERS.iter().any(|h| n.eq_ignore_ascii_case(h)))
            .map(|(n, v)| ((*n).to_owned(), cut(v, IDENTITY_VALUE_MAX)))
            .collect(),
    };
    letter.extend(why.iter().map(|(n, v)| ((*n).to_owned(), v.clone())));
    let left_out = match kept {
        Kept::Whole => return (letter, payload.clone()),
        Kept::WithoutBody => "its body",
        Kept::Identity => "its body and all headers but the invocation's identity",
    };
    letter.push((
        TRUNCATED_HEADER.to_owned(),
        format!(
            "{left_out} left out ({} body bytes, {} header bytes): the whole message would not fit one NATS message (max_payload {max_payload} bytes, header block at most {MAX_HEADER_BLOCK})",
            payload.len(),
            header_block_len(original.iter().copied()),
        ),
    ));
    (letter, Bytes::new())
}

/// Whether a message of `headers` and a body of `body_len` bytes passes
/// the client's `max_payload` check and JetStream's header limit.
fn fits(headers: &[(String, String)], body_len: usize, max_payload: usize) -> bool {
    let block = header_block_len(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    block <= MAX_HEADER_BLOCK && block + body_len <= max_payload
}

fn cut(value: &str, max: usize) -> String {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

async fn publish_once(
    js: &jetstream::Context,
    subject: &str,
    headers: &[(String, String)],
    payload: Bytes,
) -> Result<(), jetstream::context::PublishError> {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    js.publish_with_headers(subject.to_owned(), map, payload)
        .await?
        .await?;
    Ok(())
}

/// The dead letters of `function` kept on `subject`, oldest first, at most
/// `max` of them.
pub async fn list(
    dead_letters: &stream::Stream,
    function: &FunctionRef,
    subject: &str,
    max: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    Ok(read(dead_letters, function, subject, max)
        .await?
        .into_iter()
        .map(|stored| stored.letter)
        .collect())
}

/// A dead letter as the stream holds it.
#[derive(Debug)]
pub struct Stored {
    pub letter: DeadLetter,
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    pub message: jetstream::message::StreamMessage,
}

impl Stored {
    /// The invocation it holds (id, function, request, callback) with a
    /// new `deadline`, to queue again as a fresh attempt.
    pub fn invocation(&self) -> Result<(Invocation, Option<String>), WireError> {
        let pairs = crate::header_pairs(Some(&self.message.headers));
        let callback = pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(invocation::CALLBACK_HEADER))
            .map(|(_, v)| (*v).to_owned());
        let invocation = Invocation::from_wire(pairs, self.message.payload.clone())?;
        Ok((invocation, callback))
    }
}

/// Removes the dead letter at `sequence`.
pub async fn delete(dead_letters: &stream::Stream, sequence: u64) -> Result<(), DeadLetterError> {
    dead_letters
        .delete_message(sequence)
        .await
        .map(drop)
        .map_err(|source| DeadLetterError::Delete { sequence, source })
}

/// [`list`], with each dead letter's message and sequence.
pub async fn read(
    dead_letters: &stream::Stream,
    function: &FunctionRef,
    subject: &str,
    max: usize,
) -> Result<Vec<Stored>, DeadLetterError> {
    let mut letters = Vec::new();
    let mut next = 1;
    while letters.len() < max {
        let message = match dead_letters
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject.to_owned())
            .send()
            .await
        {
            Ok(message) => message,
            Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => break,
            Err(source) => {
                return Err(DeadLetterError::Read {
                    subject: subject.to_owned(),
                    source,
                });
            }
        };
        next = message.sequence + 1;
        letters.push(Stored {
            letter: DeadLetter::from_headers(
                function.clone(),
                crate::header_pairs(Some(&message.headers)),
            ),
            sequence: message.sequence,
            message,
        });
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use sluice_api::invocation::HEADER_BLOCK_RESERVE;
    use sluice_api::outcome::MAX_REASON_BYTES;

    use super::*;

    fn owned(headers: &[(String, String)]) -> Vec<(&str, &str)> {
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// The longest reason and subject a dead letter can carry.
    fn longest_why() -> Vec<(&'static str, String)> {
        let subject = format!("sluice.invoke.{}.{}", "n".repeat(63), "f".repeat(253));
        DeadLetter::headers(&"é".repeat(MAX_REASON_BYTES), u32::MAX, &subject).to_vec()
    }

    #[test]
    fn the_dead_letter_headers_fit_the_room_the_request_limit_leaves() {
        let why = longest_why();
        let mut extra: Vec<(String, String)> = why
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        // What the queue adds after the gateway's check.
        extra.push((
            "Sluice-Reply-To".into(),
            format!("_INBOX.{}.{}", "i".repeat(22), "u".repeat(36)),
        ));
        extra.push(("Nats-Msg-Id".into(), "u".repeat(36)));
        let added = header_block_len(owned(&extra)) - header_block_len([]);
        assert!(
            added <= HEADER_BLOCK_RESERVE,
            "{added} > {HEADER_BLOCK_RESERVE}"
        );
    }

    #[test]
    fn a_dead_letter_too_large_for_one_message_leaves_out_what_it_must() {
        let max_payload = 1 << 20;
        let why = longest_why();
        let small = [("Sluice-Invocation-Id", "id"), ("Sluice-H-x", "y")];
        let body = Bytes::from(vec![b'b'; 1000]);
        let (letter, kept_body) = shape(Kept::Whole, &small, &body, &why, max_payload);
        assert!(fits(&letter, kept_body.len(), max_payload));
        assert_eq!(kept_body.len(), 1000);
        assert!(!letter.iter().any(|(n, _)| n == TRUNCATED_HEADER));

        // A message at max_payload: the dead-letter headers push it over.
        let full = Bytes::from(vec![b'b'; max_payload - header_block_len(small)]);
        let (letter, kept_body) = shape(Kept::Whole, &small, &full, &why, max_payload);
        assert!(!fits(&letter, kept_body.len(), max_payload));
        let (letter, kept_body) = shape(Kept::WithoutBody, &small, &full, &why, max_payload);
        assert!(fits(&letter, kept_body.len(), max_payload));
        assert!(kept_body.is_empty());
        assert!(letter.contains(&("Sluice-H-x".into(), "y".into())));
        let note = &letter
            .iter()
            .find(|(n, _)| n == TRUNCATED_HEADER)
            .unwrap()
            .1;
        assert!(note.starts_with("its body left out"), "{note}");

        // A header block at JetStream's limit: only the identity is kept,
        // and that always fits.
        let huge = "h".repeat(MAX_HEADER_BLOCK);
        let path = "/p".repeat(MAX_HEADER_BLOCK);
        let at_limit = [
            ("Sluice-Invocation-Id", "id"),
            ("Sluice-Path", path.as_str()),
            ("Sluice-H-x", huge.as_str()),
        ];
        let (letter, _) = shape(Kept::WithoutBody, &at_limit, &full, &why, max_payload);
        assert!(!fits(&letter, 0, max_payload));
        let (letter, kept_body) = shape(Kept::Identity, &at_limit, &full, &why, max_payload);
        assert!(fits(&letter, kept_body.len(), max_payload));
        assert!(!letter.iter().any(|(n, _)| n == "Sluice-H-x"));
        let path_kept = &letter.iter().find(|(n, _)| n == "Sluice-Path").unwrap().1;
        assert_eq!(path_kept.len(), IDENTITY_VALUE_MAX);
    }
}
