//! Dead letters on NATS: the original message republished on the
//! function's dead-letter subject (in `SLUICE_DEAD_LETTERS`) with why it
//! was given up (the headers of [`sluice_api::dead_letter`]), and read back
//! for `GET /dead-letters/<ns>/<name>`.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use sluice_api::DeadLetter;
use sluice_api::names::FunctionRef;

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

/// Publishes `payload` with `headers` (the original message's) plus the
/// dead-letter headers on `subject`, and waits for the stream to store it.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    mut headers: async_nats::HeaderMap,
    payload: Bytes,
    given_up: GivenUp<'_>,
) -> Result<(), DeadLetterError> {
    for (name, value) in DeadLetter::headers(
        given_up.reason,
        given_up.attempts,
        given_up.original_subject,
    ) {
        headers.insert(name, value.as_str());
    }
    let error = |source| DeadLetterError::Publish {
        subject: subject.to_owned(),
        source,
    };
    js.publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(error)?
        .await
        .map_err(error)?;
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
        letters.push(DeadLetter::from_headers(
            function.clone(),
            crate::header_pairs(Some(&message.headers)),
        ));
    }
    Ok(letters)
}
