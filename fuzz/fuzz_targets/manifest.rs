//! The manifest parser (`parse_functions`) on any text: never panics, and
//! the Functions it accepts, written back (as JSON, which is YAML), parse
//! to the same Functions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_api::manifest::parse_functions;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
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
