//! Fills the NATS registry (`sluice-functions`) and module store
//! (`sluice-modules`). `sluice-gateway publish --nats URL <dir>` does it with
//! no Kubernetes involved; the operator publishes the same entries once it
//! has resolved a module.

use bytes::Bytes;
use sluice_api::auth::ApiKeyDigest;
use sluice_api::names::FunctionRef;
use sluice_api::{FunctionSpec, ModuleDigest, RegistryEntry};

use crate::layout::Layout;

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot store the component of {function}: {source}")]
    Module {
        function: FunctionRef,
        #[source]
        source: Cause,
    },
    #[error("cannot write the registry entry of {function}: {source}")]
    Registry {
        function: FunctionRef,
        #[source]
        source: Cause,
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
    pub digest: ModuleDigest,
    /// False when the store already held the component.
    pub uploaded_module: bool,
}

impl Publisher {
    pub fn new(layout: Layout) -> Self {
        Self { layout }
    }

    /// Stores the component (once per digest), then the registry entry, so
    /// that a watcher never sees an entry whose module is missing.
    /// `api_keys` are the digests of `spec.auth.apiKeys`'s Secret.
    pub async fn publish(
        &self,
        function: &FunctionRef,
        spec: &FunctionSpec,
        api_keys: &[ApiKeyDigest],
        wasm: &[u8],
    ) -> Result<Published, PublishError> {
        let entry = RegistryEntry {
            function: function.clone(),
            spec: spec.clone(),
            module_digest: ModuleDigest::of(wasm),
            api_keys: api_keys.to_vec(),
            created: None,
        };
        self.publish_entry(&entry, wasm).await
    }

    /// [`Publisher::publish`] for a caller that already holds the entry,
    /// with the digest of `wasm` (the operator checked it when it fetched
    /// the module): a module of up to tens of MiB is not hashed twice.
    pub async fn publish_entry(
        &self,
        entry: &RegistryEntry,
        wasm: &[u8],
    ) -> Result<Published, PublishError> {
        let function = &entry.function;
        let digest = entry.module_digest.clone();
        let uploaded_module =
            self.store_module(&digest, wasm)
                .await
                .map_err(|source| PublishError::Module {
                    function: function.clone(),
                    source,
                })?;
        self.put_entry(entry)
            .await
            .map_err(|source| PublishError::Registry {
                function: function.clone(),
                source,
            })?;
        Ok(Published {
            function: function.clone(),
            digest,
            uploaded_module,
        })
    }

    /// Stores `wasm` under its digest unless the store holds it already;
    /// true when it was uploaded.
    async fn store_module(&self, digest: &ModuleDigest, wasm: &[u8]) -> Result<bool, Cause> {
        if self.layout.has_module(digest).await? {
            return Ok(false);
        }
        self.layout
            .modules
            .put(digest.object_key().as_str(), &mut &wasm[..])
            .await?;
        Ok(true)
    }

    async fn put_entry(&self, entry: &RegistryEntry) -> Result<(), Cause> {
        let json = serde_json::to_vec(entry)?;
        self.layout
            .functions
            .put(entry.function.registry_key(), Bytes::from(json))
            .await?;
        Ok(())
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
                source: e.into(),
            })
    }
}
