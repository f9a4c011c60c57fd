//! The quantity parsers: a duration (`1m30s`) and a byte size (`64Mi`)
//! from any text never panic; what parses prints in a form that parses to
//! the same value, and printing is canonical. Any whole number of
//! milliseconds or bytes prints and parses back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_api::{ByteSize, Duration};

fuzz_target!(|data: &[u8]| {
    if let Some(number) = data.get(..8) {
        let n = u64::from_le_bytes(number.try_into().expect("8 bytes"));
        let size = ByteSize(n);
        assert_eq!(size.to_string().parse(), Ok(size), "{n}");
        let duration = Duration::from_millis(n);
        assert_eq!(duration.to_string().parse(), Ok(duration), "{n}");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = text.parse::<Duration>() {
        let printed = duration.to_string();
        assert_eq!(
            printed.parse(),
            Ok(duration),
            "{text:?} printed {printed:?}"
        );
    }
    if let Ok(size) = text.parse::<ByteSize>() {
        let printed = size.to_string();
        assert_eq!(printed.parse(), Ok(size), "{text:?} printed {printed:?}");
    }
});
