//! Dead letters: invocations given up on, with why. On NATS a dead letter is
//! the original message, republished on the function's dead-letter subject
//! with the headers below added; in local mode the queue keeps the same
//! record in memory.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::invocation::{
    FUNCTION_HEADER, ID_HEADER, InvocationId, METHOD_HEADER, PATH_HEADER, QUERY_HEADER, unix_millis,
};
use crate::names::FunctionRef;
use crate::outcome::reason_line;

/// Why the message was dead-lettered.
pub const REASON_HEADER: &str = "Sluice-Dead-Letter-Reason";
/// Attempts made (deliveries, for a message that never ran).
pub const ATTEMPTS_HEADER: &str = "Sluice-Attempts";
/// Unix time in milliseconds.
pub const AT_HEADER: &str = "Sluice-Dead-Lettered-At";
/// The subject the message was first published on.
pub const ORIGINAL_SUBJECT_HEADER: &str = "Sluice-Original-Subject";
/// Present when the dead letter is not the whole original message: what
/// was left out, and why (it would not fit one NATS message).
pub const TRUNCATED_HEADER: &str = "Sluice-Dead-Letter-Truncated";

/// An invocation given up on, as `GET /dead-letters/<ns>/<name>` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Absent when the message was too broken to carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<InvocationId>,
    pub function: FunctionRef,
    pub reason: String,
    pub attempts: u32,
    /// What the stored dead letter lacks of the original message, and why
    /// (see [`TRUNCATED_HEADER`]); absent when it is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path and query, as the function saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Unix time in milliseconds.
    pub dead_lettered_at: u64,
}

impl DeadLetter {
    /// The headers added to the original message when it is dead-lettered;
    /// the reason as [`reason_line`] makes it, as in local mode.
    pub fn headers(
        reason: &str,
        attempts: u32,
        original_subject: &str,
    ) -> [(&'static str, String); 4] {
        [
            (REASON_HEADER, reason_line(reason)),
            (ATTEMPTS_HEADER, attempts.to_string()),
            (AT_HEADER, unix_millis(SystemTime::now()).to_string()),
            (ORIGINAL_SUBJECT_HEADER, original_subject.to_owned()),
        ]
    }

    /// Reads a dead-lettered message's headers back. Whatever the original
    /// message lacked stays empty; `function` is the owner of the subject.
    pub fn from_headers<'a>(
        function: FunctionRef,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut letter = Self {
            id: None,
            function,
            reason: String::new(),
            attempts: 0,
            truncated: None,
            method: None,
            path: None,
            dead_lettered_at: 0,
        };
        let mut query = None;
        for (name, value) in headers {
            let is = |h: &str| name.eq_ignore_ascii_case(h);
            if is(ID_HEADER) {
                letter.id = InvocationId::parse(value);
            } else if is(FUNCTION_HEADER) {
                if let Ok(f) = value.parse() {
                    letter.function = f;
                }
            } else if is(REASON_HEADER) {
                letter.reason = value.to_owned();
            } else if is(TRUNCATED_HEADER) {
                letter.truncated = Some(value.to_owned());
            } else if is(ATTEMPTS_HEADER) {
                letter.attempts = value.parse().unwrap_or(0);
            } else if is(AT_HEADER) {
                letter.dead_lettered_at = value.parse().unwrap_or(0);
            } else if is(METHOD_HEADER) {
                letter.method = Some(value.to_owned());
            } else if is(PATH_HEADER) {
                letter.path = Some(value.to_owned());
            } else if is(QUERY_HEADER) {
                query = Some(value.to_owned());
            }
        }
        if let (Some(path), Some(query)) = (&mut letter.path, query) {
            path.push('?');
            path.push_str(&query);
        }
        letter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Invocation;

    #[test]
    fn a_dead_lettered_message_reads_back_with_its_reason() {
        let invocation = Invocation {
            id: InvocationId::random(),
            function: "default/echo".parse().unwrap(),
            method: http::Method::POST,
            path: "/x".into(),
            query: Some("a=1".into()),
            forwarded_prefix: String::new(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
            deadline: SystemTime::now(),
            traceparent: None,
        };
        let (mut wire, _) = invocation.to_wire();
        for (name, value) in
            DeadLetter::headers("gave up\nafter 3", 3, "sluice.invoke.default.echo")
        {
            wire.push((name.to_owned(), value));
        }
        let letter = DeadLetter::from_headers(
            "default/other".parse().unwrap(),
            wire.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        );
        assert_eq!(letter.id, Some(invocation.id));
        assert_eq!(letter.function, invocation.function);
        assert_eq!(letter.reason, "gave up after 3");
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.method.as_deref(), Some("POST"));
        assert_eq!(letter.path.as_deref(), Some("/x?a=1"));
        assert!(letter.dead_lettered_at > 0);
    }

    #[test]
    fn a_broken_message_still_reads_as_a_dead_letter_of_its_subject() {
        let letter = DeadLetter::from_headers(
            "default/echo".parse().unwrap(),
            [(
                REASON_HEADER,
                "malformed invocation: missing header Sluice-Version",
            )],
        );
        assert_eq!(letter.id, None);
        assert_eq!(letter.function.to_string(), "default/echo");
        assert!(letter.reason.starts_with("malformed"));
    }
}
