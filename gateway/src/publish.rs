//! Fills the NATS registry (`sluice-functions`) and module store
//! (`sluice-modules`) from Function manifests, with no Kubernetes involved:
//! `sluice-gateway publish --nats URL <dir>`. The operator publishes the
//! same entries once it has resolved a module.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use sluice_api::RegistryEntry;
use sluice_api::names::{FUNCTIONS_BUCKET, FunctionRef, MODULES_BUCKET, module_key};

use crate::local::LocalFunction;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot open the {bucket} bucket: {reason}")]
    Bucket {
        bucket: &'static str,
        reason: String,
    },
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

/// A connection to the registry bucket and module store.
#[derive(Clone)]
pub struct Publisher {
    registry: kv::Store,
    modules: object_store::ObjectStore,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
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
    /// Connects and opens both buckets, creating them when missing.
    pub async fn connect(url: &str) -> Result<Self, PublishError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|source| PublishError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let js = jetstream::new(client);
        let registry = match js.get_key_value(FUNCTIONS_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: FUNCTIONS_BUCKET.to_owned(),
                    description: "Sluice functions: resolved specs by <ns>.<fn>".to_owned(),
                    history: 5,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| bucket_error(FUNCTIONS_BUCKET, e))?,
        };
        let modules = match js.get_object_store(MODULES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: MODULES_BUCKET.to_owned(),
                    description: Some("Sluice components by sha256-<hex>".to_owned()),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| bucket_error(MODULES_BUCKET, e))?,
        };
        Ok(Self { registry, modules })
    }

    /// Stores the component (once per digest), then the registry entry, so
    /// that a watcher never sees an entry whose module is missing.
    pub async fn publish(&self, function: &LocalFunction) -> Result<Published, PublishError> {
        let digest = hex::encode(Sha256::digest(&function.wasm));
        let key = module_key(&digest);
        let module_error = |reason: String| PublishError::Module {
            function: function.function.clone(),
            reason,
        };
        let uploaded_module = match self.modules.info(&key).await {
            Ok(_) => false,
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {
                self.modules
                    .put(key.as_str(), &mut function.wasm.as_slice())
                    .await
                    .map_err(|e| module_error(e.to_string()))?;
                true
            }
            Err(e) => return Err(module_error(e.to_string())),
        };
        let entry = RegistryEntry {
            function: function.function.clone(),
            spec: function.spec.clone(),
            module_digest: digest.clone(),
        };
        let json = serde_json::to_vec(&entry).map_err(|e| PublishError::Registry {
            function: function.function.clone(),
            reason: e.to_string(),
        })?;
        self.registry
            .put(function.function.registry_key(), Bytes::from(json))
            .await
            .map_err(|e| PublishError::Registry {
                function: function.function.clone(),
                reason: e.to_string(),
            })?;
        Ok(Published {
            function: function.function.clone(),
            digest,
            uploaded_module,
        })
    }
}

fn bucket_error(bucket: &'static str, e: impl std::fmt::Display) -> PublishError {
    PublishError::Bucket {
        bucket,
        reason: e.to_string(),
    }
}
