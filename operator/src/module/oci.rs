//! `spec.module.oci`: a component pulled from an OCI registry in the CNCF
//! Wasm OCI artifact layout (config `application/vnd.wasm.config.v0+json`,
//! one `application/wasm` layer).

use std::sync::Arc;

use futures::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sluice_api::ModuleDigest;
use sluice_api::egress::EgressPolicy;

use super::ModuleError;
use super::download::{CONNECT_TIMEOUT, DOWNLOAD_TIMEOUT};
use super::error::retryable_status;
use super::guard_proxy::{GuardProxy, Unreached};
use sluice_serve::with_causes;

/// Config media type of the CNCF Wasm OCI artifact layout.
pub(crate) const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the CNCF Wasm OCI artifact layout.
pub(crate) const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Config media types of the older wasm-to-oci layout, still pushed by
/// some tools.
const LEGACY_CONFIG_MEDIA_TYPES: [&str; 1] = ["application/vnd.wasm.config.v1+json"];
/// Layer media types of the older wasm-to-oci layout.
const LEGACY_LAYER_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.module.wasm.content.layer.v1+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// What a pull yields.
pub(crate) struct Pulled {
    pub(crate) wasm: Vec<u8>,
    /// The digest the manifest gives the layer, which `wasm` must have:
    /// the caller hashes it off the async runtime.
    pub(crate) layer_digest: ModuleDigest,
    /// `registry/repository@sha256:<manifest digest>`: what was pulled,
    /// whatever tag named it.
    pub(crate) origin: String,
}

/// Pulls the component of `reference` with `auth`, at most `limit` bytes,
/// within [`DOWNLOAD_TIMEOUT`] in all; registries in `insecure` are
/// reached over plain HTTP. Every connection goes through the egress
/// guard ([`GuardProxy`]): to addresses `egress` allows, or to a registry
/// in `insecure`, which the admin named. A refused destination (the
/// reference's registry, a token realm, a redirect) is
/// [`ModuleError::OciPullRefused`].
pub(crate) async fn pull(
    reference: &Reference,
    auth: &RegistryAuth,
    insecure: &[String],
    egress: Arc<EgressPolicy>,
    limit: usize,
) -> Result<Pulled, ModuleError> {
    through_guard(reference, insecure, egress, |proxy| async move {
        pull_within(reference, auth, insecure, &proxy, limit).await
    })
    .await
}

/// Runs `work` with the URL of a [`GuardProxy`] started for it, within
/// [`DOWNLOAD_TIMEOUT`]; what the proxy refused or failed to reach is the
/// error, whatever oci-client made of the proxy's answer.
async fn through_guard<T, F, Fut>(
    reference: &Reference,
    insecure: &[String],
    egress: Arc<EgressPolicy>,
    work: F,
) -> Result<T, ModuleError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, ModuleError>>,
{
    let shown = reference.whole();
    let proxy = GuardProxy::start(egress, insecure.to_vec())
        .await
        .map_err(|e| ModuleError::OciPullFailed {
            reference: shown.clone(),
            problem: format!("cannot start the egress guard's proxy on loopback: {e}"),
            transient: true,
            source: Some(e.into()),
        })?;
    let done = match tokio::time::timeout(DOWNLOAD_TIMEOUT, work(proxy.url().to_owned())).await {
        Ok(done) => done,
        Err(_) => Err(ModuleError::OciPullFailed {
            reference: shown.clone(),
            problem: format!("no complete answer within {}s", DOWNLOAD_TIMEOUT.as_secs()),
            transient: true,
            source: None,
        }),
    };
    // oci-client words what the proxy answered as a registry's answer:
    // the proxy's own account of it is the one to give.
    done.map_err(|e| match proxy.take_failure() {
        Some(Unreached::Refused(refusal)) => ModuleError::OciPullRefused {
            reference: shown,
            reason: refusal.finding(),
        },
        Some(failed @ Unreached::Failed { .. }) => ModuleError::OciPullFailed {
            reference: shown,
            problem: sluice_serve::with_causes(&failed),
            transient: true,
            source: Some(failed.into()),
        },
        None => e,
    })
}

async fn pull_within(
    reference: &Reference,
    auth: &RegistryAuth,
    insecure: &[String],
    proxy: &str,
    limit: usize,
) -> Result<Pulled, ModuleError> {
    let shown = reference.whole();
    let failed = |e: OciDistributionError| pull_failed(&shown, auth, e);
    // A client per pull: oci-client keeps the first credentials it is
    // given for a registry, so a shared one would pull a Function's module
    // with another Function's (another namespace's) pull secret.
    let client = Client::try_from(client_config(insecure, proxy)).map_err(failed)?;
    let (manifest, manifest_digest) = client
        .pull_image_manifest(reference, auth)
        .await
        .map_err(failed)?;
    let layer = wasm_layer(&manifest).map_err(|problem| ModuleError::OciPullFailed {
        reference: shown.clone(),
        problem,
        transient: false,
        source: None,
    })?;
    let origin = format!(
        "{}/{}@{manifest_digest}",
        reference.registry(),
        reference.repository()
    );
    let too_large = |size| ModuleError::ModuleTooLarge {
        origin: origin.clone(),
        limit,
        size,
    };
    let size = u64::try_from(layer.size).unwrap_or(0);
    if size > limit as u64 {
        return Err(too_large(Some(size)));
    }
    let expected = layer_digest(layer).map_err(|problem| ModuleError::OciPullFailed {
        reference: shown.clone(),
        problem,
        transient: false,
        source: None,
    })?;

    let mut blob = client
        .pull_blob_stream(reference, layer)
        .await
        .map_err(failed)?;
    // The announced size, at most the limit, sizes the buffer once.
    let mut wasm = Vec::with_capacity(size as usize);
    // oci-client checks the layer's digest at the stream's end; the cap
    // must hold before that, while the bytes arrive.
    while let Some(chunk) = blob.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // oci-client reports a digest mismatch in place of the
            // stream's end, once every byte has come: the caller's own
            // check then names both digests.
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) => break,
            Err(e) => return Err(failed(e.into())),
        };
        if wasm.len() + chunk.len() > limit {
            return Err(too_large(None));
        }
        wasm.extend_from_slice(&chunk);
    }
    Ok(Pulled {
        wasm,
        layer_digest: expected,
        origin,
    })
}

/// `registry/repository@<manifest digest>` of what `reference` names now
/// (one manifest request with `auth`, no blob), through the egress guard
/// as [`pull`] goes: the `origin` a pull of it gives, for a plain manifest.
pub(crate) async fn resolve(
    reference: &Reference,
    auth: &RegistryAuth,
    insecure: &[String],
    egress: Arc<EgressPolicy>,
) -> Result<String, ModuleError> {
    through_guard(reference, insecure, egress, |proxy| async move {
        let shown = reference.whole();
        let client = Client::try_from(client_config(insecure, &proxy))
            .map_err(|e| pull_failed(&shown, auth, e))?;
        let digest = client
            .fetch_manifest_digest(reference, auth)
            .await
            .map_err(|e| pull_failed(&shown, auth, e))?;
        Ok(format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        ))
    })
    .await
}

/// oci-client's settings: `proxy` for http and https alike (it replaces
/// the system's proxy settings, which would otherwise bypass the guard).
fn client_config(insecure: &[String], proxy: &str) -> ClientConfig {
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        http_proxy: Some(proxy.to_owned()),
        https_proxy: Some(proxy.to_owned()),
        no_proxy: None,
        tls_certs_only: sluice_serve::egress::TRUSTED_ROOTS
            .iter()
            .map(|der| Certificate {
                encoding: CertificateEncoding::Der,
                data: der.to_vec(),
            })
            .collect(),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(DOWNLOAD_TIMEOUT),
        platform_resolver: Some(Box::new(wasm_platform)),
        user_agent: concat!("sluice-operator/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    }
}

/// From an image index, the entry for the `wasm` architecture.
fn wasm_platform(manifests: &[ImageIndexEntry]) -> Option<String> {
    manifests
        .iter()
        .find(|entry| {
            entry
                .platform
                .as_ref()
                .is_some_and(|platform| platform.architecture.to_string() == "wasm")
        })
        .map(|entry| entry.digest.clone())
}

/// The one component layer of a Wasm artifact manifest, or what makes the
/// manifest something else (a container image, say).
pub(crate) fn wasm_layer(manifest: &OciImageManifest) -> Result<&OciDescriptor, String> {
    let config = manifest.config.media_type.as_str();
    let layer_types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|layer| layer.media_type.as_str())
        .collect();
    let config_ok = config == WASM_CONFIG_MEDIA_TYPE || LEGACY_CONFIG_MEDIA_TYPES.contains(&config);
    match manifest.layers.as_slice() {
        [layer]
            if config_ok
                && (layer.media_type == WASM_LAYER_MEDIA_TYPE
                    || LEGACY_LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str())) =>
        {
            Ok(layer)
        }
        _ => Err(format!(
            "it is not a WebAssembly component artifact: its config is {config} and its layers are [{}]; \
             expected config {WASM_CONFIG_MEDIA_TYPE} and one {WASM_LAYER_MEDIA_TYPE} layer \
             (push with `wkg oci push` or an equivalent)",
            layer_types.join(", ")
        )),
    }
}

/// The layer's `sha256:<hex>` digest as a [`ModuleDigest`].
fn layer_digest(layer: &OciDescriptor) -> Result<ModuleDigest, String> {
    layer
        .digest
        .strip_prefix("sha256:")
        .and_then(|hex| hex.parse().ok())
        .ok_or_else(|| {
            format!(
                "its layer digest {} is not sha256:<64 hex digits>; only SHA-256 is supported",
                layer.digest
            )
        })
}

/// An oci-client failure as a [`ModuleError::OciPullFailed`], transient
/// when the network or the registry's health is to blame, with a hint
/// when the registry wanted credentials.
fn pull_failed(reference: &str, auth: &RegistryAuth, e: OciDistributionError) -> ModuleError {
    let transient = match &e {
        OciDistributionError::RequestError(e) => {
            e.status().is_none_or(|s| retryable_status(s.as_u16()))
        }
        OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => retryable_status(*code),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|error| error.code == OciErrorCode::Toomanyrequests),
        _ => false,
    };
    let unauthorized = match &e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|error| {
                matches!(
                    error.code,
                    OciErrorCode::Unauthorized | OciErrorCode::Denied
                )
            })
        }
        _ => false,
    };
    let missing = match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|error| {
                matches!(
                    error.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            })
        }
        _ => false,
    };
    let mut problem = match &e {
        // A registry words its errors as an OCI error envelope; a body
        // that is not one is left out: it is not a registry talking.
        OciDistributionError::ServerError { code, url, .. } => {
            format!("{url} answered {code} (not an OCI registry error)")
        }
        e => with_causes(e),
    };
    if missing {
        problem.insert_str(0, "no such repository, tag or digest in the registry: ");
    }
    if unauthorized {
        problem.push_str(match auth {
            RegistryAuth::Anonymous => {
                "; the registry wants credentials: name a kubernetes.io/dockerconfigjson Secret in spec.module.pullSecret"
            }
            _ => "; the registry refused the pull secret's credentials",
        });
    }
    ModuleError::OciPullFailed {
        reference: reference.to_owned(),
        problem,
        transient,
        source: Some(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(media_type: &str, digest: &str) -> OciDescriptor {
        OciDescriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size: 3,
            ..OciDescriptor::default()
        }
    }

    fn manifest(config: &str, layers: &[&str]) -> OciImageManifest {
        OciImageManifest {
            config: descriptor(config, "sha256:00"),
            layers: layers
                .iter()
                .map(|media_type| descriptor(media_type, "sha256:11"))
                .collect(),
            ..OciImageManifest::default()
        }
    }

    #[test]
    fn only_wasm_artifacts_have_a_component_layer() {
        let cases: [(OciImageManifest, bool); 7] = [
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[WASM_LAYER_MEDIA_TYPE]),
                true,
            ),
            (
                manifest(
                    "application/vnd.wasm.config.v1+json",
                    &["application/vnd.module.wasm.content.layer.v1+wasm"],
                ),
                true,
            ),
            (
                manifest(
                    WASM_CONFIG_MEDIA_TYPE,
                    &[WASM_LAYER_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE],
                ),
                false,
            ),
            (manifest(WASM_CONFIG_MEDIA_TYPE, &[]), false),
            (
                manifest(
                    "application/vnd.oci.image.config.v1+json",
                    &["application/vnd.oci.image.layer.v1.tar+gzip"],
                ),
                false,
            ),
            (
                manifest(
                    "application/vnd.oci.image.config.v1+json",
                    &[WASM_LAYER_MEDIA_TYPE],
                ),
                false,
            ),
            (
                manifest(
                    WASM_CONFIG_MEDIA_TYPE,
                    &["application/vnd.oci.image.layer.v1.tar"],
                ),
                false,
            ),
        ];
        for (manifest, ok) in cases {
            let got = wasm_layer(&manifest);
            assert_eq!(got.is_ok(), ok, "{:?}: {got:?}", manifest.layers);
            if let Err(problem) = got {
                assert!(
                    problem.contains(&manifest.config.media_type)
                        && problem.contains("expected config application/vnd.wasm.config.v0+json"),
                    "{problem}"
                );
            }
        }
    }

    #[test]
    fn only_sha256_layer_digests_are_understood() {
        let hex = ModuleDigest::of(b"x");
        assert_eq!(
            layer_digest(&descriptor(WASM_LAYER_MEDIA_TYPE, &format!("sha256:{hex}"))),
            Ok(hex.clone())
        );
        for bad in [
            format!("sha512:{hex}"),
            hex.to_string(),
            "sha256:abc".to_owned(),
        ] {
            assert!(
                layer_digest(&descriptor(WASM_LAYER_MEDIA_TYPE, &bad)).is_err(),
                "{bad}"
            );
        }
    }
}
