//! The sync-reply codec (`sluice_nats::reply`): any outcome survives
//! `encode` then `decode` (a response as itself, a failure as itself), and
//! `decode` of any message never panics; a response it reads encodes and
//! decodes to the same response.
//!
//! The first byte chooses: even, the rest is a message (see
//! `sluice_fuzz::Message`) to decode; odd, the rest makes an outcome.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use sluice_api::{Failure, FailureKind, Outcome};
use sluice_fuzz::Message;
use sluice_nats::reply::{decode, encode};

const KINDS: [FailureKind; 8] = [
    FailureKind::Timeout,
    FailureKind::Expired,
    FailureKind::Trap,
    FailureKind::MemoryLimit,
    FailureKind::ResponseTooLarge,
    FailureKind::NoResponse,
    FailureKind::BadInvocation,
    FailureKind::Internal,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Some(message) = Message::read(rest) else {
            return;
        };
        let headers = message.nats_headers();
        if let Ok(response) = decode(Some(&headers), message.body.clone()) {
            let (headers, body) = encode(&Outcome::Responded(response.clone()));
            assert_eq!(decode(Some(&headers), body), Ok(response));
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(responded) = u.arbitrary::<bool>() else {
        return;
    };
    if responded {
        let Ok(response) = sluice_fuzz::response(&mut u) else {
            return;
        };
        let (headers, body) = encode(&Outcome::Responded(response.clone()));
        assert_eq!(decode(Some(&headers), body), Ok(response));
    } else {
        let (Ok(kind), Ok(reason)) = (u.choose(&KINDS), u.arbitrary::<String>()) else {
            return;
        };
        let failure = Failure {
            kind: *kind,
            reason,
        };
        let (headers, body) = encode(&Outcome::Failed(failure.clone()));
        assert_eq!(decode(Some(&headers), body), Err(failure));
    }
});
