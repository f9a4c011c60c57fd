//! What the `sluice-functions` KV bucket holds for each function: its spec
//! with the module resolved to a digest in the `sluice-modules` object
//! store. Gateways and runtimes need nothing else to serve it.

use serde::{Deserialize, Serialize};

use crate::function::FunctionSpec;
use crate::names::FunctionRef;

/// One function as published to the registry, under
/// [`FunctionRef::registry_key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryEntry {
    pub function: FunctionRef,
    pub spec: FunctionSpec,
    /// Hex SHA-256 of the component; its object is
    /// [`crate::names::module_key`] of it.
    pub module_digest: String,
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
            module_digest: "ab".repeat(32),
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["function"], "default/hello");
        assert_eq!(json["spec"]["timeout"], "5s");
        assert_eq!(
            serde_json::from_value::<RegistryEntry>(json).unwrap(),
            entry
        );
    }
}
