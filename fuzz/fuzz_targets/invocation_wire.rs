//! The invocation wire decoder on any message: `Invocation::from_wire` and
//! `InvocationResponse::from_wire` never panic, and what they accept
//! encodes to wire headers that decode to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_api::{Invocation, InvocationResponse};
use sluice_fuzz::Message;

fuzz_target!(|data: &[u8]| {
    let Some(message) = Message::read(data) else {
        return;
    };
    let headers = || message.headers.iter().copied();
    if let Ok(invocation) = Invocation::from_wire(headers(), message.body.clone()) {
        let (wire, body) = invocation.to_wire();
        let again = Invocation::from_wire(wire.iter().map(|(n, v)| (&**n, &**v)), body);
        assert_eq!(again.as_ref(), Ok(&invocation), "wire: {wire:?}");
        assert_eq!(
            invocation.header_block_len(),
            sluice_api::invocation::header_block_len(wire.iter().map(|(n, v)| (&**n, &**v))),
        );
    }
    if let Ok(response) = InvocationResponse::from_wire(headers(), message.body.clone()) {
        let (wire, body) = response.to_wire();
        let again = InvocationResponse::from_wire(wire.iter().map(|(n, v)| (&**n, &**v)), body);
        assert_eq!(again.as_ref(), Ok(&response), "wire: {wire:?}");
    }
});
