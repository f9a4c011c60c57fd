//! Fills the NATS registry (`sluice-functions`) and module store
//! (`sluice-modules`). `sluice-gateway publish --nats URL <dir>` does it with
//! no Kubernetes involved; the operator publishes the same entries once it
//! has resolved a module.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt as _;
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
    #[error("cannot collect unreferenced modules ({what}): {source}")]
    Collect {
        what: String,
        #[source]
        source: Cause,
    },
}

/// Writes functions into the registry and their components into the store.
#[derive(Clone, Debug)]
pub struct Publisher {
    layout: Layout,
    /// Held (shared) from storing a module to writing the entry that refers
    /// to it, and (exclusively) while unreferenced modules are deleted: a
    /// module found stored is not deleted before its entry is written.
    collecting: Arc<tokio::sync::RwLock<()>>,
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
        Self {
            layout,
            collecting: Arc::default(),
        }
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
        let _publishing = self.collecting.read().await;
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
    /// and runtimes stop serving it. Its component stays in the store
    /// until [`Publisher::collect_modules`] deletes it (the operator's
    /// module collection).
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

impl Publisher {
    /// Deletes the modules `pick` chooses, given the digests of every
    /// module stored (deleted ones left out) and of those some registry
    /// entry refers to. Publishing waits meanwhile. Returns what was
    /// deleted; a module that could not be deleted is logged and left for
    /// the next time.
    pub async fn collect_modules(
        &self,
        pick: impl FnOnce(&[ModuleDigest], &HashSet<ModuleDigest>) -> Vec<ModuleDigest>,
    ) -> Result<Vec<ModuleDigest>, PublishError> {
        let failed = |what: &str| {
            let what = what.to_owned();
            move |source: Cause| PublishError::Collect { what, source }
        };
        let _collecting = self.collecting.write().await;
        let stored: Vec<ModuleDigest> = self
            .layout
            .modules
            .list()
            .await
            .map_err(|e| failed("listing the module store")(e.into()))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| failed("listing the module store")(e.into()))?
            .into_iter()
            .filter(|info| !info.deleted)
            .filter_map(|info| info.name.strip_prefix("sha256-")?.parse().ok())
            .collect();
        let referenced = self.referenced_modules().await?;
        let picked = pick(&stored, &referenced);
        let mut deleted = Vec::with_capacity(picked.len());
        for digest in picked {
            match self.layout.modules.delete(digest.object_key()).await {
                Ok(()) => deleted.push(digest),
                Err(e) => {
                    tracing::warn!(module = %digest, error = %e, "cannot delete an unreferenced module; trying again later");
                }
            }
        }
        Ok(deleted)
    }

    /// The modules the registry's entries refer to now.
    async fn referenced_modules(&self) -> Result<HashSet<ModuleDigest>, PublishError> {
        let failed = |source: Cause| PublishError::Collect {
            what: "reading the registry".to_owned(),
            source,
        };
        let keys: Vec<String> = self
            .layout
            .functions
            .keys()
            .await
            .map_err(|e| failed(e.into()))?
            .try_collect()
            .await
            .map_err(|e| failed(e.into()))?;
        let mut referenced = HashSet::new();
        for key in keys {
            let Some(value) = self
                .layout
                .functions
                .get(&key)
                .await
                .map_err(|e| failed(e.into()))?
            else {
                continue;
            };
            // An entry this version cannot read still refers to its module:
            // keep every module rather than guess.
            let entry: RegistryEntry = serde_json::from_slice(&value).map_err(|e| {
                failed(format!("the registry entry {key} is unreadable: {e}").into())
            })?;
            referenced.insert(entry.module_digest);
        }
        Ok(referenced)
    }
}
