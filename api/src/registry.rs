//! What the `sluice-functions` KV bucket holds for each function: its spec
//! with the module resolved to a digest in the `sluice-modules` object
//! store. Gateways and runtimes need nothing else to serve it.

use serde::{Deserialize, Serialize};

use crate::auth::ApiKeyDigest;
use crate::digest::ModuleDigest;
use crate::function::{FunctionSpec, SpecError};
use crate::names::FunctionRef;

/// One function as published to the registry, under
/// [`FunctionRef::registry_key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryEntry {
    pub function: FunctionRef,
    pub spec: FunctionSpec,
    /// The component; its object in the module store is
    /// [`ModuleDigest::object_key`].
    pub module_digest: ModuleDigest,
    /// The digests of the keys in `spec.auth.apiKeys`'s Secret, resolved
    /// by whoever publishes the entry: the keys themselves never reach
    /// NATS. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeyDigest>,
    /// When the Function was created (its `metadata.creationTimestamp`,
    /// RFC 3339 UTC), which decides who keeps a custom path claimed twice
    /// ([`crate::ClaimOrder`]). Default: unknown (local mode and
    /// `sluice-gateway publish`), which yields to every dated claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// Why a stored registry entry cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RegistryEntryError {
    #[error("not a registry entry: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the entry under {key}'s key names {named}")]
    WrongFunction {
        key: FunctionRef,
        named: FunctionRef,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

impl RegistryEntry {
    /// Reads the entry stored under `function`'s key, checked: it must name
    /// that function and hold a valid spec.
    pub fn parse(function: &FunctionRef, value: &[u8]) -> Result<Self, RegistryEntryError> {
        let entry: Self = serde_json::from_slice(value).map_err(RegistryEntryError::Json)?;
        if entry.function != *function {
            return Err(RegistryEntryError::WrongFunction {
                key: function.clone(),
                named: entry.function,
            });
        }
        entry.spec.validate(function)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_round_trip_as_json() {
        let spec: FunctionSpec = serde_json::from_value(
            serde_json::json!({ "module": { "file": "x.wasm" }, "timeout": "5s" }),
        )
        .unwrap();
        let entry = RegistryEntry {
            function: "default/hello".parse().unwrap(),
            spec,
            module_digest: ModuleDigest::of(b"component"),
            api_keys: Vec::new(),
            created: Some("2026-12-06T07:05:12Z".into()),
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["function"], "default/hello");
        assert_eq!(json["spec"]["timeout"], "5s");
        assert_eq!(
            serde_json::from_value::<RegistryEntry>(json.clone()).unwrap(),
            entry
        );
        let bytes = serde_json::to_vec(&json).unwrap();
        assert_eq!(
            RegistryEntry::parse(&entry.function, &bytes).unwrap(),
            entry
        );
        let other = "default/other".parse().unwrap();
        assert!(
            RegistryEntry::parse(&other, &bytes)
                .unwrap_err()
                .to_string()
                .contains("names default/hello")
        );
        assert!(RegistryEntry::parse(&other, b"{").is_err());
    }
}
