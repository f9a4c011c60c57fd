//! Fills the NATS registry (`sluice-functions`) and module store
//! (`sluice-modules`) with no Kubernetes involved, so Sluice also runs on
//! plain machines with NATS: `sluice-gateway publish --nats URL <dir>`. The
//! operator publishes the same entries once it has resolved a module.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use sluice_api::names::{FunctionRef, module_key};
use sluice_api::{FunctionSpec, RegistryEntry};

use super::layout::Layout;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot store the component of {function}: {reason}")]
    Module {
        function: FunctionRef,
        reason: String,
    },
    #[error("cannot write the registry entry of {function}: {reason}")]
    Registry {
        function: FunctionRef,
        reason: String,
    },
}

/// Writes functions into the registry and their components into the store.
#[derive(Clone, Debug)]
pub struct Publisher {
    layout: Layout,
}

/// What [`Publisher::publish`] did with one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub function: FunctionRef,
    pub digest: String,
    /// False when the store already held the component.
    pub uploaded_module: bool,
}

impl Publisher {
    pub fn new(layout: Layout) -> Self {
        Self { layout }
    }

    /// Stores the component (once per digest), then the registry entry, so
    /// that a watcher never sees an entry whose module is missing.
    pub async fn publish(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        wasm: &[u8],
    ) -> Result<Published, PublishError> {
        let digest = hex::encode(Sha256::digest(wasm));
        let key = module_key(&digest);
        let module_error = |reason: String| PublishError::Module {
            function: function.clone(),
            reason,
        };
        let modules = &self.layout.modules;
        let uploaded_module = match modules.info(&key).await {
            Ok(_) => false,
            Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => {
                modules
                    .put(key.as_str(), &mut &wasm[..])
                    .await
                    .map_err(|e| module_error(e.to_string()))?;
                true
            }
            Err(e) => return Err(module_error(e.to_string())),
        };
        let entry = RegistryEntry {
            function: function.clone(),
            spec: spec.clone(),
            module_digest: digest.clone(),
        };
        let registry_error = |reason: String| PublishError::Registry {
            function: function.clone(),
            reason,
        };
        let json = serde_json::to_vec(&entry).map_err(|e| registry_error(e.to_string()))?;
        self.layout
            .functions
            .put(function.registry_key(), Bytes::from(json))
            .await
            .map_err(|e| registry_error(e.to_string()))?;
        Ok(Published {
            function: function.clone(),
            digest,
            uploaded_module,
        })
    }

    /// Removes a function from the registry; gateways stop routing to it
    /// and runtimes stop serving it. Its component stays in the store.
    pub async fn unpublish(&self, function: &FunctionRef) -> Result<(), PublishError> {
        self.layout
            .functions
            .delete(function.registry_key())
            .await
            .map_err(|e| PublishError::Registry {
                function: function.clone(),
                reason: e.to_string(),
            })
    }
}
