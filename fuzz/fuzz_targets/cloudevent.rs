//! The event bridge's mapping of a NATS message to a CloudEvents request
//! (`CloudEvent::from_message`, then the invocation id it names) on any
//! message: never panics; in binary mode every required `ce-*` attribute
//! is there, each `ce-*` value is what the HTTP binding allows (printable
//! ASCII without `"`), and a Content-Type is set; the same message names
//! the same event (identity) every time.
//!
//! Input: the first line is the subject, the rest a message (see
//! `sluice_fuzz::Message`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_api::names::FunctionRef;
use sluice_fuzz::Message;
use sluice_gateway::events::{CloudEvent, event_invocation_id};

const REQUIRED: [&str; 5] = ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"];

fuzz_target!(|data: &[u8]| {
    let (subject, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(subject), Some(message)) = (std::str::from_utf8(subject), Message::read(rest)) else {
        return;
    };
    let headers = message.nats_headers();
    // From a stream or not (core NATS), half and half.
    let stream_id = (subject.len() % 2 == 1).then(|| subject.len().to_string());
    let map = |headers| {
        CloudEvent::from_message(
            headers,
            &message.body,
            subject,
            "127.0.0.1:4222",
            stream_id.clone(),
        )
    };
    let event = map(Some(&headers));
    // Structured mode, as the CloudEvents NATS binding defines it.
    let structured = sluice_nats::header_pairs(Some(&headers))
        .iter()
        .any(|(name, value)| {
            let media_type = value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            name.eq_ignore_ascii_case("content-type")
                && (media_type.starts_with("application/cloudevents+")
                    || media_type.starts_with("application/cloudevents-"))
        });
    if !structured {
        for name in REQUIRED {
            assert!(
                event.headers.contains_key(name),
                "{name} missing: {:?}",
                event.headers
            );
        }
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
        assert!(event.headers.contains_key(http::header::CONTENT_TYPE));
    }
    assert_eq!(
        map(Some(&headers)).identity,
        event.identity,
        "the same message names the same event"
    );
    if let Some(identity) = &event.identity {
        let function = FunctionRef::new("default", "events").expect("a function");
        assert_eq!(
            event_invocation_id(&function, subject, identity),
            event_invocation_id(&function, subject, identity)
        );
    }
    let _ = map(None);
});
