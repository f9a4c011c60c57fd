//! The manifest parsers on any text: never panic; the Functions
//! `parse_functions` accepts, written back (as JSON, which is YAML), parse
//! to the same Functions; the Secrets `parse_secrets` accepts (local
//! mode's API keys), written back with base64 `data`, to the same Secrets.

#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sluice_api::manifest::{parse_functions, parse_secrets};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(secrets) = parse_secrets(text) {
        let written: Vec<String> = secrets
            .iter()
            .map(|s| {
                let data: serde_json::Map<String, serde_json::Value> = s
                    .data
                    .iter()
                    .map(|(k, v)| {
                        let encoded = base64::engine::general_purpose::STANDARD.encode(v);
                        (k.clone(), encoded.into())
                    })
                    .collect();
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": s.name, "namespace": s.namespace },
                    "data": data,
                })
                .to_string()
            })
            .collect();
        let again = parse_secrets(&written.join("\n---\n"));
        assert_eq!(again.as_ref(), Ok(&secrets), "written: {written:?}");
    }
    let Ok(functions) = parse_functions(text) else {
        return;
    };
    let written: Vec<String> = functions
        .iter()
        .map(|f| serde_json::to_string(f).expect("a manifest serializes"))
        .collect();
    let again = parse_functions(&written.join("\n---\n"));
    assert_eq!(again.as_ref(), Ok(&functions), "written: {written:?}");
});
