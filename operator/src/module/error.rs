//! Why a module could not be resolved, in words a person can act on, with
//! the Kubernetes condition reason and whether trying again soon may help.

use sluice_api::{ModuleDigest, SpecError};

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why [`ModuleFetcher::fetch`](super::ModuleFetcher::fetch) or
/// [`check_component`](super::check_component) failed. Every message names
/// the ConfigMap, Secret, URL or reference involved; [`Self::reason`] is
/// the `Ready` condition's reason and [`Self::is_transient`] tells a retry
/// soon from waiting for the Function (or what it names) to change.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// `spec.module` is malformed: no source, several, a bad `sha256` or a
    /// reference or URL that does not parse. The API server's validation
    /// normally keeps such specs out.
    #[error("{0}")]
    InvalidSource(#[source] SpecError),
    /// The ConfigMap named by `spec.module.configMap` does not exist.
    #[error(
        "ConfigMap {namespace}/{name} does not exist; create it with the component under binaryData key {key:?}"
    )]
    ConfigMapNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    /// The ConfigMap exists but holds no such key.
    #[error(
        "ConfigMap {namespace}/{name} has no key {key:?} in binaryData or data (it has {})",
        list_or_none(.present)
    )]
    ConfigMapKeyNotFound {
        namespace: String,
        name: String,
        key: String,
        /// The keys it has, binaryData's and data's, sorted.
        present: Vec<String>,
    },
    /// The component is larger than
    /// [`FetcherConfig::max_module_bytes`](super::FetcherConfig::max_module_bytes).
    #[error(
        "{origin} is {}, over the operator's limit of {limit} bytes per component",
        size_text(*.size)
    )]
    ModuleTooLarge {
        origin: String,
        /// The limit, in bytes.
        limit: usize,
        /// The size announced (Content-Length, OCI descriptor), or `None`
        /// when the body was cut at the limit.
        size: Option<u64>,
    },
    /// Downloading `spec.module.url` failed: the server's status, or the
    /// cause chain of a connection or timeout failure.
    #[error("cannot download {url}: {problem}")]
    ModuleDownloadFailed {
        url: String,
        problem: String,
        /// The HTTP status answered, when there was one.
        status: Option<u16>,
        #[source]
        source: Option<Cause>,
    },
    /// `spec.module.url` (or a redirect from it) names an address the
    /// egress guard refuses: a Function's author may not make the operator
    /// reach the cluster's own services.
    #[error(
        "cannot download {url}: {reason}, refused unless the operator allow-lists it (--runtime-egress-allow, the chart's egress.allow)"
    )]
    ModuleDownloadRefused { url: String, reason: String },
    /// The component's SHA-256 is not the one expected, by
    /// `spec.module.sha256` or by the OCI layer descriptor.
    #[error(
        "{origin} has SHA-256 {actual}, but {expected_by} says {expected}; fix one or the other"
    )]
    ModuleDigestMismatch {
        origin: String,
        /// What set the expectation: `spec.module.sha256` or the layer
        /// descriptor.
        expected_by: &'static str,
        expected: ModuleDigest,
        actual: ModuleDigest,
    },
    /// `spec.module.oci`'s registry, or a host the pull was sent on to (a
    /// token realm, a redirect), is an address the egress guard refuses
    /// and the admin did not name as a registry. Its condition reason is
    /// `ModuleDownloadRefused`, as for a URL.
    #[error(
        "cannot pull {reference}: {reason}, refused unless the operator allow-lists it (--runtime-egress-allow, the chart's egress.allow) or names the registry (--insecure-registry, the chart's operator.insecureRegistries)"
    )]
    OciPullRefused { reference: String, reason: String },
    /// Pulling `spec.module.oci` failed: the registry's answer, the cause
    /// chain of a network failure, or an artifact that is not a Wasm
    /// component artifact.
    #[error("cannot pull {reference}: {problem}")]
    OciPullFailed {
        reference: String,
        problem: String,
        /// Whether the failure may pass by itself (network, 5xx, 429).
        transient: bool,
        #[source]
        source: Option<Cause>,
    },
    /// The Secret named by `spec.module.pullSecret` does not exist.
    #[error(
        "pull secret {namespace}/{name} does not exist; create it with `kubectl create secret docker-registry {name} -n {namespace} --docker-server=… --docker-username=… --docker-password=…`"
    )]
    PullSecretNotFound { namespace: String, name: String },
    /// The Secret exists but yields no credentials for the registry.
    #[error("pull secret {namespace}/{name} is unusable: {problem}")]
    PullSecretInvalid {
        namespace: String,
        name: String,
        problem: String,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("{origin} is not a WebAssembly component: {problem}")]
    NotAComponent { origin: String, problem: String },
    /// The component does not export `wasi:http/incoming-handler@0.2.x`.
    #[error(
        "{origin} does not export wasi:http/incoming-handler@0.2.x, so it cannot serve HTTP (build it for wasi:http/proxy); it exports {}",
        list_or_none(.exports)
    )]
    NotAnHttpHandler {
        origin: String,
        /// The component's top-level exports.
        exports: Vec<String>,
    },
    /// `spec.module.file` names a local path, which means nothing in a
    /// cluster.
    #[error("spec.module.file is for local mode only; use configMap, url or oci")]
    FileSourceInCluster,
    /// The Kubernetes API refused or failed a read other than with a 404.
    #[error("cannot {action}: {problem}")]
    KubernetesApi {
        /// What was attempted, e.g. `get ConfigMap default/hello-wasm`.
        action: String,
        problem: String,
        /// The API's status code, when it answered.
        status: Option<u16>,
        #[source]
        source: kube::Error,
    },
}

impl ModuleError {
    /// The reason of the Function's `Ready` condition, in CamelCase: the
    /// variant's name, `InvalidModuleSource` for
    /// [`ModuleError::InvalidSource`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSource(_) => "InvalidModuleSource",
            Self::ConfigMapNotFound { .. } => "ConfigMapNotFound",
            Self::ConfigMapKeyNotFound { .. } => "ConfigMapKeyNotFound",
            Self::ModuleTooLarge { .. } => "ModuleTooLarge",
            Self::ModuleDownloadFailed { .. } => "ModuleDownloadFailed",
            Self::ModuleDownloadRefused { .. } | Self::OciPullRefused { .. } => {
                "ModuleDownloadRefused"
            }
            Self::ModuleDigestMismatch { .. } => "ModuleDigestMismatch",
            Self::OciPullFailed { .. } => "OciPullFailed",
            Self::PullSecretNotFound { .. } => "PullSecretNotFound",
            Self::PullSecretInvalid { .. } => "PullSecretInvalid",
            Self::NotAComponent { .. } => "NotAComponent",
            Self::NotAnHttpHandler { .. } => "NotAnHttpHandler",
            Self::FileSourceInCluster => "FileSourceInCluster",
            Self::KubernetesApi { .. } => "KubernetesApi",
        }
    }

    /// Whether the same fetch may succeed soon without anything changing:
    /// network failures, timeouts, 5xx, 408 and 429 from a server or
    /// registry, and Kubernetes API failures that are not a refusal of the
    /// request itself (401 and 403 included: a token is refreshed, RBAC
    /// gets fixed, and no event announces either). Everything else (a
    /// missing ConfigMap, a 404 URL, a digest mismatch, a bad component)
    /// waits for the Function or the object it names to change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::ModuleDownloadFailed { status, .. } => status.is_none_or(retryable_status),
            Self::OciPullFailed { transient, .. } => *transient,
            Self::KubernetesApi { status, .. } => {
                status.is_none_or(|code| retryable_status(code) || matches!(code, 401 | 403))
            }
            Self::InvalidSource(_)
            | Self::ConfigMapNotFound { .. }
            | Self::ConfigMapKeyNotFound { .. }
            | Self::ModuleTooLarge { .. }
            | Self::ModuleDownloadRefused { .. }
            | Self::OciPullRefused { .. }
            | Self::ModuleDigestMismatch { .. }
            | Self::PullSecretNotFound { .. }
            | Self::PullSecretInvalid { .. }
            | Self::NotAComponent { .. }
            | Self::NotAnHttpHandler { .. }
            | Self::FileSourceInCluster => false,
        }
    }

    /// Names `origin` as where the bytes came from, in the errors of
    /// [`check_component`](super::check_component), which knows only the
    /// bytes.
    pub(crate) fn with_origin(self, origin: &str) -> Self {
        match self {
            Self::NotAComponent { problem, .. } => Self::NotAComponent {
                origin: origin.to_owned(),
                problem,
            },
            Self::NotAnHttpHandler { exports, .. } => Self::NotAnHttpHandler {
                origin: origin.to_owned(),
                exports,
            },
            other => other,
        }
    }
}

/// Statuses after which the same request may succeed: the server's
/// trouble, a timeout, or rate limiting.
pub(crate) fn retryable_status(code: u16) -> bool {
    code >= 500 || code == 408 || code == 429
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn size_text(size: Option<u64>) -> String {
    match size {
        Some(size) => format!("{size} bytes"),
        None => "larger".to_owned(),
    }
}

/// A Kubernetes API failure reading `kind` `namespace/name` (resource
/// `resource` for RBAC), other than a 404.
pub(crate) fn kubernetes_api(
    kind: &str,
    resource: &str,
    namespace: &str,
    name: &str,
    error: kube::Error,
) -> ModuleError {
    let (status, problem) = match &error {
        kube::Error::Api(status) if status.code == 403 => (
            Some(403),
            format!(
                "forbidden: the operator's service account needs RBAC permission to get {resource} in namespace {namespace} ({})",
                status.message
            ),
        ),
        kube::Error::Api(status) => (
            Some(status.code),
            format!(
                "the API server answered {} {}: {}",
                status.code, status.reason, status.message
            ),
        ),
        other => (None, sluice_serve::with_causes(other)),
    };
    ModuleError::KubernetesApi {
        action: format!("get {kind} {namespace}/{name}"),
        problem,
        status,
        source: error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_bytes_or_as_cut() {
        let announced = ModuleError::ModuleTooLarge {
            origin: "https://example.com/a.wasm".into(),
            limit: 10,
            size: Some(11),
        };
        assert_eq!(
            announced.to_string(),
            "https://example.com/a.wasm is 11 bytes, over the operator's limit of 10 bytes per component"
        );
        let cut = ModuleError::ModuleTooLarge {
            origin: "x".into(),
            limit: 10,
            size: None,
        };
        assert!(cut.to_string().starts_with("x is larger, over"), "{cut}");
    }

    #[test]
    fn downloads_are_retried_after_network_trouble_and_server_errors_only() {
        let failed = |status| ModuleError::ModuleDownloadFailed {
            url: "u".into(),
            problem: "p".into(),
            status,
            source: None,
        };
        for (status, transient) in [
            (None, true),
            (Some(500), true),
            (Some(503), true),
            (Some(429), true),
            (Some(408), true),
            (Some(404), false),
            (Some(403), false),
            (Some(410), false),
        ] {
            let error = failed(status);
            assert_eq!(error.is_transient(), transient, "{status:?}");
            assert_eq!(error.reason(), "ModuleDownloadFailed");
        }
        assert!(
            !ModuleError::ModuleDigestMismatch {
                origin: "u".into(),
                expected_by: "spec.module.sha256",
                expected: ModuleDigest::of(b"a"),
                actual: ModuleDigest::of(b"b"),
            }
            .is_transient()
        );
        assert!(!ModuleError::FileSourceInCluster.is_transient());
    }

    #[test]
    fn errors_can_cross_tasks() {
        // kube-runtime's controller and anyhow want this of errors.
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<ModuleError>();
    }
}
