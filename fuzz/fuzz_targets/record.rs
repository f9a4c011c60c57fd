//! The invocation record as JSON (`GET /invocations/<id>`, callbacks, the
//! results bucket): reading any bytes never panics; a record that reads
//! writes and reads back the same; its stored response's body and headers
//! decode without panicking. And any response, stored and read back,
//! gives back its status, every header field line and its body.
//!
//! The first byte chooses: even, the rest is JSON; odd, it makes a
//! response.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use sluice_api::{InvocationRecord, StoredResponse};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(record) = serde_json::from_slice::<InvocationRecord>(rest) else {
            return;
        };
        let json = serde_json::to_vec(&record).expect("a record serializes");
        let again: InvocationRecord =
            serde_json::from_slice(&json).expect("what was written reads");
        assert_eq!(again, record);
        if let Some(response) = &record.response {
            let _ = response.body_bytes();
            if let Some(headers) = response.header_map() {
                // Field lines come back in order, names as `http` writes them.
                assert_eq!(headers.len(), response.headers.len());
            }
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(response) = sluice_fuzz::response(&mut u) else {
        return;
    };
    let stored = StoredResponse::from(&response);
    let json = serde_json::to_vec(&stored).expect("a stored response serializes");
    let back: StoredResponse = serde_json::from_slice(&json).expect("what was written reads");
    assert_eq!(back.status, response.status.as_u16());
    assert_eq!(back.body_bytes().as_deref(), Some(&response.body[..]));
    assert_eq!(back.header_map().as_ref(), Some(&response.headers));
});
