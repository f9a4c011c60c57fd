//! Any invocation and any response survive the wire format, as a list of
//! pairs and as NATS carries it (async-nats' header map, which groups
//! values by name): `from_wire(to_wire(x)) == x`; and `header_block_len`
//! counts the block `to_wire` writes.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use sluice_api::invocation::header_block_len;
use sluice_api::{Invocation, InvocationResponse};

/// The wire headers as a NATS message delivers them, or `None` when a
/// value holds a line break, which no header block can (the gateway never
/// makes one: its paths, queries and header values have none).
fn over_nats(wire: &[(String, String)]) -> Option<async_nats::HeaderMap> {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in wire {
        let name: async_nats::HeaderName = name.parse().expect("wire names are header names");
        map.append(name, value.parse::<async_nats::HeaderValue>().ok()?);
    }
    Some(map)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(invocation) = sluice_fuzz::invocation(&mut u) {
        let (wire, body) = invocation.to_wire();
        let pairs = || wire.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        assert_eq!(
            Invocation::from_wire(pairs(), body.clone()).as_ref(),
            Ok(&invocation),
            "wire: {wire:?}"
        );
        assert_eq!(invocation.header_block_len(), header_block_len(pairs()));
        if let Some(nats) = over_nats(&wire) {
            let pairs = sluice_nats::header_pairs(Some(&nats));
            assert_eq!(
                Invocation::from_wire(pairs, body).as_ref(),
                Ok(&invocation),
                "over NATS: {nats:?}"
            );
        }
    }
    if let Ok(response) = sluice_fuzz::response(&mut u) {
        let (wire, body) = response.to_wire();
        let pairs = wire.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        assert_eq!(
            InvocationResponse::from_wire(pairs, body.clone()).as_ref(),
            Ok(&response),
            "wire: {wire:?}"
        );
        let nats = over_nats(&wire).expect("a response's wire headers hold no line break");
        assert_eq!(
            InvocationResponse::from_wire(sluice_nats::header_pairs(Some(&nats)), body).as_ref(),
            Ok(&response),
            "over NATS: {nats:?}"
        );
    }
});
