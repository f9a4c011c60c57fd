//! Dead letters: invocations given up on, with why. On NATS a dead letter is
//! the original message, republished on the function's dead-letter subject
//! with the headers below added; in local mode the queue keeps the same
//! record in memory.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::invocation::{
    FUNCTION_HEADER, ID_HEADER, Invocation, InvocationId, METHOD_HEADER, PATH_HEADER, QUERY_HEADER,
    unix_millis,
};
use crate::names::FunctionRef;
use crate::outcome::reason_line;
use crate::record::StoredHeader;

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

/// One dead letter in full, as `GET /dead-letters/<ns>/<name>/<id>`
/// answers it: what the list shows, plus the request as queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Absent when the dead letter does not hold a whole invocation (see
    /// `truncated`, or a message that was never one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<StoredRequest>,
}

/// A queued request: the HTTP header fields the function sees (each line
/// its own entry, as in a record's response) and its body in base64.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredRequest {
    pub headers: Vec<StoredHeader>,
    /// Base64 (standard alphabet, padded).
    pub body: String,
}

impl From<&Invocation> for StoredRequest {
    fn from(invocation: &Invocation) -> Self {
        use base64::Engine as _;
        Self {
            headers: StoredHeader::list(&invocation.headers),
            body: base64::engine::general_purpose::STANDARD.encode(&invocation.body),
        }
    }
}

/// Which dead letters `POST /dead-letters/<ns>/<name>/redrive` (and a
/// purge) selects: the JSON body, every field optional; `{}` or no body
/// selects them all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    /// Only these invocations. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<InvocationId>>,
    /// Only those whose reason contains this text (case-sensitive).
    /// Default: any reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Selection {
    /// Exactly the dead letter of invocation `id`.
    pub fn one(id: InvocationId) -> Self {
        Self {
            ids: Some(vec![id]),
            reason: None,
        }
    }

    /// Whether `letter` is selected. A dead letter without an id is
    /// selected only when no ids are named.
    pub fn selects(&self, letter: &DeadLetter) -> bool {
        let id_matches = match (&self.ids, &letter.id) {
            (None, _) => true,
            (Some(ids), Some(id)) => ids.contains(id),
            (Some(_), None) => false,
        };
        let reason_matches = self
            .reason
            .as_deref()
            .is_none_or(|text| letter.reason.contains(text));
        id_matches && reason_matches
    }
}

/// Why a selected dead letter cannot be queued again, if it cannot: it
/// must hold a whole invocation.
pub fn unredrivable(letter: &DeadLetter) -> Option<String> {
    if letter.id.is_none() {
        return Some("it holds no invocation (the message was malformed)".into());
    }
    letter
        .truncated
        .as_ref()
        .map(|what| format!("it is not the whole request: {what}"))
}

/// What a redrive did, as `POST …/redrive` answers it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Queued again, as fresh attempts of the same invocation, and removed
    /// from the dead letters.
    pub redriven: Vec<InvocationId>,
    /// Selected but left where they are, with why.
    pub skipped: Vec<Skipped>,
}

/// A selected dead letter a redrive left as it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<InvocationId>,
    pub reason: String,
}

/// What `DELETE /dead-letters/<ns>/<name>[/<id>]` removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeReport {
    pub purged: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_selection_picks_by_id_and_by_reason() {
        let id = InvocationId::random();
        let letter = |id: Option<&InvocationId>, reason: &str| DeadLetter {
            id: id.cloned(),
            function: "default/echo".parse().unwrap(),
            reason: reason.into(),
            attempts: 3,
            truncated: None,
            method: None,
            path: None,
            dead_lettered_at: 1,
        };
        let other = InvocationId::random();
        let answered_503 = letter(Some(&id), "gave up after 3 attempts: function answered 503");
        let trapped = letter(
            Some(&other),
            "gave up after 3 attempts: the function trapped",
        );
        let broken = letter(None, "malformed invocation message");
        let by_reason = Selection {
            ids: None,
            reason: Some("answered 503".into()),
        };
        let cases: [(&Selection, &DeadLetter, bool); 9] = [
            (&Selection::default(), &answered_503, true),
            (&Selection::default(), &broken, true),
            (&Selection::one(id.clone()), &answered_503, true),
            (&Selection::one(id.clone()), &trapped, false),
            (&Selection::one(id.clone()), &broken, false),
            (&by_reason, &answered_503, true),
            (&by_reason, &trapped, false),
            (
                &Selection {
                    ids: Some(vec![other.clone()]),
                    reason: Some("answered 503".into()),
                },
                &answered_503,
                false,
            ),
            (
                &Selection {
                    ids: Some(vec![other.clone()]),
                    reason: Some("trapped".into()),
                },
                &trapped,
                true,
            ),
        ];
        for (i, (selection, letter, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                selection.selects(letter),
                expected,
                "case {i}: {selection:?}"
            );
        }
        let json: Selection =
            serde_json::from_str(r#"{"reason":"503"}"#).expect("a reason alone selects");
        assert_eq!(json.reason.as_deref(), Some("503"));
        let e = serde_json::from_str::<Selection>(r#"{"reasons":"503"}"#).unwrap_err();
        assert!(e.to_string().contains("reasons"), "{e}");
    }

    #[test]
    fn only_a_whole_invocation_is_redriven() {
        let mut letter = DeadLetter::from_headers(
            "default/echo".parse().unwrap(),
            [(ID_HEADER, "6f1f8a3e-52b8-4c86-9d0e-7d0b3c8f6a11")],
        );
        assert_eq!(unredrivable(&letter), None);
        letter.truncated = Some("its body left out".into());
        assert!(unredrivable(&letter).unwrap().contains("its body left out"));
        letter.id = None;
        assert!(unredrivable(&letter).unwrap().contains("no invocation"));
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
