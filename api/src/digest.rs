//! The one name of a component: the SHA-256 of its bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// SHA-256 of a component's bytes, written as 64 lowercase hex digits. It
/// keys the compiled-component cache, the precompiled artifacts on disk and
/// the module store (as `sha256-<hex>`, [`ModuleDigest::object_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleDigest(String);

/// Text that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 digest: expected 64 lowercase hex digits")]
pub struct BadDigest(String);

impl ModuleDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sha256-<hex>`: the component's key in the `sluice-modules` object
    /// store.
    pub fn object_key(&self) -> String {
        format!("sha256-{}", self.0)
    }
}

impl fmt::Display for ModuleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ModuleDigest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadDigest(s.to_owned()))
        }
    }
}

impl TryFrom<String> for ModuleDigest {
    type Error = BadDigest;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ModuleDigest> for String {
    fn from(d: ModuleDigest) -> Self {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_names_bytes_and_their_object() {
        let d = ModuleDigest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.object_key(), format!("sha256-{d}"));
        assert_eq!(d.as_str().parse::<ModuleDigest>(), Ok(d.clone()));
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!(d.as_str())
        );
    }

    #[test]
    fn text_that_is_no_digest_is_refused() {
        for bad in [
            "",
            "ab12",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<ModuleDigest>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ModuleDigest>("\"ab\"").is_err());
    }
}
