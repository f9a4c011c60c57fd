//! `spec.auth.apiKeys`: the digests of a Secret's values, which the
//! registry entry carries in place of the keys.

use k8s_openapi::api::core::v1::Secret;
use sluice_api::FunctionSpec;
use sluice_api::auth::{ApiKeyDigest, ApiKeyError, api_key_digests};

use crate::module::ModuleError;
use crate::module::error::kubernetes_api;

/// Why a Function's API keys cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeysError {
    #[error(
        "spec.auth.apiKeys.secretName: Secret {namespace}/{name} is not found; no API key is accepted until it exists"
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "spec.auth.apiKeys.secretName: Secret {namespace}/{name} {source}; no API key is accepted until it is fixed"
    )]
    Invalid {
        namespace: String,
        name: String,
        #[source]
        source: ApiKeyError,
    },
    #[error("spec.auth.apiKeys.secretName: {0}")]
    Kubernetes(#[source] ModuleError),
}

impl ApiKeysError {
    /// A CamelCase reason for the condition and the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "ApiKeySecretNotFound",
            Self::Invalid { source, .. } => source.reason(),
            Self::Kubernetes(e) => e.reason(),
        }
    }

    /// Whether retrying soon may succeed without anyone changing
    /// anything; a missing or bad Secret is watched instead.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kubernetes(e) if e.is_transient())
    }
}

/// The digests of the keys `spec.auth.apiKeys` names; none when the spec
/// names no API keys.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    spec: &FunctionSpec,
) -> Result<Vec<ApiKeyDigest>, ApiKeysError> {
    let Some(keys) = spec.auth.as_ref().and_then(|a| a.api_keys.as_ref()) else {
        return Ok(Vec::new());
    };
    let name = &keys.secret_name;
    let api = kube::Api::<Secret>::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(ApiKeysError::NotFound {
                namespace: namespace.to_owned(),
                name: name.clone(),
            });
        }
        Err(e) => {
            return Err(ApiKeysError::Kubernetes(kubernetes_api(
                "Secret", "secrets", namespace, name, e,
            )));
        }
    };
    digests(&secret).map_err(|source| ApiKeysError::Invalid {
        namespace: namespace.to_owned(),
        name: name.clone(),
        source,
    })
}

/// The digests of a Secret's `data` (the API server folds `stringData`
/// into it).
pub fn digests(secret: &Secret) -> Result<Vec<ApiKeyDigest>, ApiKeyError> {
    let data = secret.data.clone().unwrap_or_default();
    api_key_digests(data.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn a_secrets_values_become_digests_and_never_appear_in_them() {
        let key = "0123456789abcdef0123456789abcdef";
        let secret = Secret {
            data: Some([("ci".to_owned(), ByteString(key.as_bytes().to_vec()))].into()),
            ..Secret::default()
        };
        let found = digests(&secret).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "ci");
        assert!(!serde_json::to_string(&found).unwrap().contains(key));
        assert_eq!(digests(&Secret::default()), Err(ApiKeyError::Empty));
    }
}
