//! Resolves a Function's `spec.module` into the bytes of a checked
//! component: read from a ConfigMap, downloaded from a URL or pulled from
//! an OCI registry, size-capped, digest-checked, and validated as a
//! component exporting the `wasi:http` handler. The operator publishes
//! what [`ModuleFetcher::fetch`] returns; each failure is a
//! [`ModuleError`] whose [`reason`](ModuleError::reason) goes on the
//! Function's `Ready` condition.

mod component;
mod config_map;
mod credentials;
mod download;
pub(crate) mod error;
mod guard_proxy;
mod oci;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use sluice_api::egress::EgressPolicy;
use sluice_api::{ConfigMapKey, ModuleDigest, ModuleSource, SpecError};

pub use component::check_component;
pub use error::ModuleError;

/// Default of [`FetcherConfig::max_module_bytes`]: 64 MiB, room for real
/// components (hello is 62 KiB; one embedding a language interpreter is
/// tens of MiB) while bounding what one Function makes the operator hold.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 64 << 20;

/// How a [`ModuleFetcher`] fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetcherConfig {
    /// Largest component accepted, in bytes, from any source. Default:
    /// [`DEFAULT_MAX_MODULE_BYTES`] (64 MiB).
    pub max_module_bytes: usize,
    /// Registries (`host:port`, as written in references) reached over
    /// plain HTTP instead of HTTPS, such as a registry on loopback. The
    /// admin named them, so the egress guard lets pulls reach them
    /// whatever their address. Default: none.
    pub insecure_registries: Vec<String>,
    /// What `spec.module.url` downloads and `spec.module.oci` pulls
    /// (registries, token realms, redirects) may reach: public addresses,
    /// the ranges allowed here, and for pulls the registries named in
    /// `insecure_registries`. Default: public only.
    pub egress: Arc<EgressPolicy>,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        Self {
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            insecure_registries: Vec::new(),
            egress: Arc::default(),
        }
    }
}

/// A component's bytes, their digest and their origin, before the check.
type Resolved = (Vec<u8>, ModuleDigest, String);

/// A component fetched and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The component's bytes, at most
    /// [`FetcherConfig::max_module_bytes`]; empty when the caller took a
    /// [`Known`] module from the store instead of fetching it.
    pub wasm: Vec<u8>,
    /// SHA-256 of `wasm`.
    pub digest: ModuleDigest,
    /// Where it came from, for people: `configMap hello-wasm key
    /// hello.wasm`, the URL, or `registry/repository@sha256:<manifest>`
    /// (the manifest pulled, whatever tag named it).
    pub origin: String,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("wasm", &format_args!("{} bytes", self.wasm.len()))
            .field("digest", &self.digest)
            .field("origin", &self.origin)
            .finish()
    }
}

/// A module fetched before: its digest and origin, by the identity of
/// its source ([`ModuleFetcher::identity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub digest: ModuleDigest,
    pub origin: String,
}

/// Sources remembered at most; past it the memory starts again (a source
/// is fetched once more, nothing worse).
const KNOWN_SOURCES: usize = 4096;

/// Fetches modules: one per operator. Downloads share one HTTP client;
/// every OCI pull gets its own client (see [`Self::fetch`]).
#[derive(Clone, Debug)]
pub struct ModuleFetcher {
    config: FetcherConfig,
    http: reqwest::Client,
    /// What each source identity resolved to when last fetched.
    known: Arc<tokio::sync::Mutex<HashMap<String, Known>>>,
}

impl ModuleFetcher {
    /// A fetcher with `config`. Installs ring as the process's rustls
    /// provider unless one is installed already, and reads the system's CA
    /// certificates (Mozilla's where there are none) once per process.
    pub fn new(config: FetcherConfig) -> Self {
        tls::install_ring();
        Self {
            http: download::client(config.egress.clone()),
            config,
            known: Arc::default(),
        }
    }

    /// What `source` resolves to when this fetcher fetched the very same
    /// thing before, without fetching its bytes: a `url` by its URL and
    /// `sha256`; an `oci` reference by the manifest its tag (or digest)
    /// names now, resolved with the namespace's pull credentials (one
    /// manifest request, no blob, access checked each time). `None` for a
    /// `configMap` (read from the API server each time), for what was
    /// never fetched, and for an image index.
    ///
    /// # Errors
    ///
    /// A [`ModuleError`] when the manifest cannot be resolved.
    pub async fn known(
        &self,
        kube: &kube::Client,
        namespace: &str,
        source: &ModuleSource,
    ) -> Result<Option<Known>, ModuleError> {
        let Some(identity) = self.identity(kube, namespace, source).await? else {
            return Ok(None);
        };
        let known = self.known.lock().await.get(&identity).cloned();
        // A `sha256` the known digest does not match: the fetch says so.
        let expected = expected_digest(source)?;
        Ok(known.filter(|k| expected.as_ref().is_none_or(|e| *e == k.digest)))
    }

    /// The key [`Self::known`] remembers a source by: for OCI the
    /// namespace and pull secret too, so that one namespace's credentials
    /// never vouch for another's.
    async fn identity(
        &self,
        kube: &kube::Client,
        namespace: &str,
        source: &ModuleSource,
    ) -> Result<Option<String>, ModuleError> {
        if let (Some(url), Some(sha256)) = (&source.url, &source.sha256) {
            return Ok(Some(format!("url {url} sha256:{sha256}")));
        }
        let Some(reference) = &source.oci else {
            return Ok(None);
        };
        let (reference, auth) = self
            .registry_access(kube, namespace, reference, source.pull_secret.as_deref())
            .await?;
        let manifest = oci::resolve(
            &reference,
            &auth,
            &self.config.insecure_registries,
            self.config.egress.clone(),
        )
        .await?;
        Ok(Some(oci_identity(
            namespace,
            source.pull_secret.as_deref(),
            &manifest,
        )))
    }

    /// Remembers what `source` resolved to, after a fetch.
    async fn remember(&self, namespace: &str, source: &ModuleSource, fetched: &Fetched) {
        let identity = if let (Some(url), Some(sha256)) = (&source.url, &source.sha256) {
            format!("url {url} sha256:{sha256}")
        } else if source.oci.is_some() {
            oci_identity(namespace, source.pull_secret.as_deref(), &fetched.origin)
        } else {
            return;
        };
        let mut known = self.known.lock().await;
        if known.len() >= KNOWN_SOURCES {
            known.clear();
        }
        known.insert(
            identity,
            Known {
                digest: fetched.digest.clone(),
                origin: fetched.origin.clone(),
            },
        );
    }

    /// The bytes of the component `source` names, for a Function in
    /// `namespace`, checked by [`check_component`] and, when
    /// `source.sha256` is set, against it:
    ///
    /// - `configMap`: the key of a ConfigMap in `namespace`, `binaryData`
    ///   or else `data`;
    /// - `url`: downloaded over http or https (connect timeout 10 s, 60 s
    ///   in all), `sha256` required;
    /// - `oci`: pulled from a registry (tag or digest; 10 s to connect,
    ///   60 s in all) anonymously or with the `pullSecret` Secret's
    ///   credentials for the reference's registry, every connection
    ///   through the egress guard;
    /// - `file`: refused, it is for local mode.
    ///
    /// Nothing is larger than [`FetcherConfig::max_module_bytes`], and
    /// nothing larger is read: a download stops at the limit, a pull
    /// checks the layer's size first.
    ///
    /// # Errors
    ///
    /// A [`ModuleError`] naming what failed and where; see its variants.
    pub async fn fetch(
        &self,
        kube: &kube::Client,
        namespace: &str,
        source: &ModuleSource,
    ) -> Result<Fetched, ModuleError> {
        // Exactly one source, and sha256 with url: the API server's
        // validation says so too, but a Function may predate it.
        source.kind().map_err(ModuleError::InvalidSource)?;
        let expected = expected_digest(source)?;
        let (wasm, digest, origin) = if let Some(key) = &source.config_map {
            self.read_config_map(kube, namespace, key).await?
        } else if let Some(url) = &source.url {
            self.download(url).await?
        } else if let Some(reference) = &source.oci {
            self.pull(kube, namespace, reference, source.pull_secret.as_deref())
                .await?
        } else {
            return Err(ModuleError::FileSourceInCluster);
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(ModuleError::ModuleDigestMismatch {
                origin,
                expected_by: "spec.module.sha256",
                expected,
                actual: digest,
            });
        }
        let wasm = off_the_runtime(move || check_component(&wasm).map(|()| wasm))
            .await
            .map_err(|e| e.with_origin(&origin))?;
        tracing::debug!(%origin, %digest, bytes = wasm.len(), "fetched module");
        let fetched = Fetched {
            wasm,
            digest,
            origin,
        };
        self.remember(namespace, source, &fetched).await;
        Ok(fetched)
    }

    async fn read_config_map(
        &self,
        kube: &kube::Client,
        namespace: &str,
        key: &ConfigMapKey,
    ) -> Result<Resolved, ModuleError> {
        let origin = format!("configMap {} key {}", key.name, key.key);
        let wasm = config_map::fetch(kube, namespace, key).await?;
        let limit = self.config.max_module_bytes;
        if wasm.len() > limit {
            return Err(ModuleError::ModuleTooLarge {
                origin,
                limit,
                size: Some(wasm.len() as u64),
            });
        }
        let (wasm, digest) = hash(wasm).await;
        Ok((wasm, digest, origin))
    }

    async fn download(&self, url: &str) -> Result<Resolved, ModuleError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            ModuleError::InvalidSource(SpecError::new(
                "spec.module.url",
                format!("is not a URL: {e}"),
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ModuleError::InvalidSource(SpecError::new(
                "spec.module.url",
                format!("must be http or https, not {}", parsed.scheme()),
            )));
        }
        let wasm = download::download(
            &self.http,
            &self.config.egress,
            url,
            self.config.max_module_bytes,
        )
        .await?;
        let (wasm, digest) = hash(wasm).await;
        Ok((wasm, digest, url.to_owned()))
    }

    async fn pull(
        &self,
        kube: &kube::Client,
        namespace: &str,
        reference: &str,
        pull_secret: Option<&str>,
    ) -> Result<Resolved, ModuleError> {
        let (reference, auth) = self
            .registry_access(kube, namespace, reference, pull_secret)
            .await?;
        let pulled = oci::pull(
            &reference,
            &auth,
            &self.config.insecure_registries,
            self.config.egress.clone(),
            self.config.max_module_bytes,
        )
        .await?;
        let (wasm, digest) = hash(pulled.wasm).await;
        // Checked here whatever oci-client verified, so that the bytes
        // published are those the manifest names.
        if digest != pulled.layer_digest {
            return Err(ModuleError::ModuleDigestMismatch {
                origin: pulled.origin,
                expected_by: "the layer descriptor of its manifest",
                expected: pulled.layer_digest,
                actual: digest,
            });
        }
        Ok((wasm, digest, pulled.origin))
    }

    /// `reference` parsed, and the credentials for its registry.
    async fn registry_access(
        &self,
        kube: &kube::Client,
        namespace: &str,
        reference: &str,
        pull_secret: Option<&str>,
    ) -> Result<(Reference, RegistryAuth), ModuleError> {
        let reference = Reference::try_from(reference).map_err(|e| {
            ModuleError::InvalidSource(SpecError::new(
                "spec.module.oci",
                format!("is not an OCI reference: {e}"),
            ))
        })?;
        let auth = match pull_secret {
            Some(secret) => {
                credentials::fetch(
                    kube,
                    namespace,
                    secret,
                    reference.registry(),
                    reference.repository(),
                )
                .await?
            }
            None => RegistryAuth::Anonymous,
        };
        Ok((reference, auth))
    }
}

/// The identity of an OCI source: the manifest it names now, seen from
/// `namespace` with `pull_secret`.
fn oci_identity(namespace: &str, pull_secret: Option<&str>, manifest: &str) -> String {
    format!(
        "oci {manifest} from {namespace} with {}",
        pull_secret.unwrap_or("no pull secret")
    )
}

/// `spec.module.sha256`, when set.
fn expected_digest(source: &ModuleSource) -> Result<Option<ModuleDigest>, ModuleError> {
    source
        .sha256
        .as_deref()
        .map(|hex| {
            hex.parse().map_err(|_| {
                ModuleError::InvalidSource(SpecError::new(
                    "spec.module.sha256",
                    format!("is not 64 lowercase hex digits: {hex:?}"),
                ))
            })
        })
        .transpose()
}

/// The bytes and their digest; hashing tens of MiB takes a while, so not
/// on the async runtime's threads.
async fn hash(wasm: Vec<u8>) -> (Vec<u8>, ModuleDigest) {
    off_the_runtime(move || {
        let digest = ModuleDigest::of(&wasm);
        (wasm, digest)
    })
    .await
}

/// Runs `work` (hashing, validating: milliseconds per MiB) on the blocking
/// pool instead of holding up the runtime's workers.
async fn off_the_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        // The work panicked: the panic is the caller's.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Blocking tasks are cancelled only by a runtime shutting down,
        // which drops this future too.
        Err(e) => panic!("module check cancelled: {e}"),
    }
}
