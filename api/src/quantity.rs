//! Human-readable durations (`30s`, `1m30s`, `250ms`) and byte sizes
//! (`64Mi`), as written in manifests.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a sequence of `<integer><unit>` with units
/// `ms`, `s`, `m`, `h` (for example `1m30s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration or size did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a valid {what}: expected {expected}")]
pub struct QuantityError {
    value: String,
    what: &'static str,
    expected: &'static str,
}

const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";
const BYTE_SIZE_PATTERN: &str = "^[0-9]+(Ki|Mi|Gi|k|M|G)?$";

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }
}

impl FromStr for Duration {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || QuantityError {
            value: s.to_owned(),
            what: "duration",
            expected: "digits followed by ms, s, m or h, e.g. 30s or 1m30s",
        };
        let mut total = std::time::Duration::ZERO;
        let mut rest = s;
        if rest.is_empty() {
            return Err(error());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(error)?;
            if digits == 0 {
                return Err(error());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| error())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => std::time::Duration::from_millis(n),
                "s" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_secs(n.checked_mul(60).ok_or_else(error)?),
                "h" => std::time::Duration::from_secs(n.checked_mul(3600).ok_or_else(error)?),
                _ => return Err(error()),
            };
            total = total.checked_add(part).ok_or_else(error)?;
            rest = &rest[unit_len..];
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        let (h, rem) = (millis / 3_600_000, millis % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// An amount of memory, written like a Kubernetes quantity: `64Mi`, `1Gi`,
/// `512Ki`, `100M` or a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mebibytes(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
}

impl FromStr for ByteSize {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || QuantityError {
            value: s.to_owned(),
            what: "memory size",
            expected: "digits with an optional Ki, Mi, Gi, k, M or G suffix, e.g. 64Mi",
        };
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits == 0 {
            return Err(error());
        }
        let n: u64 = s[..digits].parse().map_err(|_| error())?;
        let multiplier: u64 = match &s[digits..] {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            _ => return Err(error()),
        };
        n.checked_mul(multiplier).map(Self).ok_or_else(error)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

macro_rules! string_quantity {
    ($ty:ty, $name:literal, $pattern:expr, $description:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Cow::<str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $description,
                })
            }
        }
    };
}

string_quantity!(
    Duration,
    "Duration",
    DURATION_PATTERN,
    "A duration such as 500ms, 30s, 1m30s or 2h."
);
string_quantity!(
    ByteSize,
    "ByteSize",
    BYTE_SIZE_PATTERN,
    "A size such as 64Mi, 1Gi or 512Ki."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_compactly() {
        for (text, millis, printed) in [
            ("30s", 30_000, "30s"),
            ("1m30s", 90_000, "1m30s"),
            ("90s", 90_000, "1m30s"),
            ("250ms", 250, "250ms"),
            ("2h", 7_200_000, "2h"),
            ("0s", 0, "0s"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), millis, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_the_value() {
        for text in ["", "30", "s", "1.5s", "10x", "-1s", "1m 30s"] {
            let err = text.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        for (text, bytes, printed) in [
            ("64Mi", 64 << 20, "64Mi"),
            ("1Gi", 1 << 30, "1Gi"),
            ("1024Mi", 1 << 30, "1Gi"),
            ("100M", 100_000_000, "100000000"),
            ("4096", 4096, "4Ki"),
        ] {
            let b: ByteSize = text.parse().unwrap();
            assert_eq!(b.0, bytes, "{text}");
            assert_eq!(b.to_string(), printed, "{text}");
        }
        for text in ["", "Mi", "64MiB", "1.5Gi", "99999999999999999999"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
    }
}
