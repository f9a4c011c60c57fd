//! Who may invoke a function over HTTP: `spec.auth` on the Function, and
//! the API-key digests the registry carries in place of the keys.
//!
//! Credentials travel as RFC 6750 bearer tokens (`Authorization: Bearer
//! <token>`) or in `X-Api-Key`. A token is accepted when its SHA-256 is
//! one of the function's API-key digests, or when it is a JWT (RFC 7519)
//! signed by the function's issuer for one of its audiences.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::function::SpecError;

/// Shortest API key accepted, in bytes. Keys are stored as unsalted
/// SHA-256 digests, which is safe only for keys a person did not choose:
/// 32 random characters are past any guessing. (Password hashes such as
/// argon2 would cost tens of milliseconds on every request.)
pub const MIN_API_KEY_LEN: usize = 32;

/// `spec.auth`: who may invoke the function, read its asynchronous
/// results (`/invocations/<id>`) and its dead letters
/// (`/dead-letters/<ns>/<name>`). Either `public: true`, or one or both
/// of `apiKeys` and `jwt` (a request passing either is let in).
/// Default (no `spec.auth`): public on a gateway started without
/// `--auth-required` (local mode), refused with 403 on one started with it
/// (the Helm chart's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.public) && self.public) != (has(self.apiKeys) || has(self.jwt))",
        "message": "set either public: true, or apiKeys and/or jwt"
    }
]))]
pub struct Auth {
    /// Anyone may invoke, without a credential. Default: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// Bearer tokens or API keys: the values of a Secret. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    /// JSON Web Tokens from an issuer. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

/// API keys held in a Secret of the function's namespace: every value
/// under `data` (or `stringData`) is one key, at least
/// [`MIN_API_KEY_LEN`] bytes long; the keys under which they sit name them
/// in metrics and logs. The operator (or local mode, from a Secret
/// manifest in the same folder) hashes them into the registry entry; the
/// keys themselves never leave the Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeys {
    /// Name of the Secret, in the function's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// JWTs accepted: signed by `issuer`'s keys (`jwksUrl` or `publicKey`,
/// exactly one), carrying `iss` equal to `issuer`, an `aud` among
/// `audiences`, and an unexpired `exp` (60 s of clock skew allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.jwksUrl) != has(self.publicKey)",
        "message": "set exactly one of jwksUrl or publicKey"
    }
]))]
pub struct Jwt {
    /// The `iss` claim required, e.g. `https://login.example.com/`.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// `aud` values accepted; a token must carry at least one.
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,
    /// HTTPS (or HTTP) URL of the issuer's JSON Web Key Set (RFC 7517),
    /// fetched by the gateway through the egress guard and cached for 5
    /// minutes (at once again for an unknown `kid`, at most every 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub jwks_url: Option<String>,
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519) that signs the
    /// tokens. Public keys are not secret, so it is written inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub public_key: Option<String>,
}

impl Auth {
    /// Checks what the schema's rules cannot say alone, naming the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let methods = self.api_keys.is_some() || self.jwt.is_some();
        if self.public && methods {
            return Err(SpecError::new(
                "spec.auth.public",
                "cannot be true together with apiKeys or jwt: a public function takes no credential",
            ));
        }
        if !self.public && !methods {
            return Err(SpecError::new(
                "spec.auth",
                "names no method: set public: true, or apiKeys and/or jwt",
            ));
        }
        if let Some(keys) = &self.api_keys
            && keys.secret_name.is_empty()
        {
            return Err(SpecError::new(
                "spec.auth.apiKeys.secretName",
                "must name a Secret",
            ));
        }
        if let Some(jwt) = &self.jwt {
            if jwt.issuer.is_empty() {
                return Err(SpecError::new("spec.auth.jwt.issuer", "must not be empty"));
            }
            if jwt.audiences.is_empty() {
                return Err(SpecError::new(
                    "spec.auth.jwt.audiences",
                    "must name at least one audience",
                ));
            }
            match (&jwt.jwks_url, &jwt.public_key) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(SpecError::new(
                        "spec.auth.jwt",
                        "set exactly one of jwksUrl or publicKey",
                    ));
                }
                (Some(url), None) => {
                    let uri: http::Uri = url.parse().map_err(|e| {
                        SpecError::new("spec.auth.jwt.jwksUrl", format!("{url:?}: {e}"))
                    })?;
                    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                        return Err(SpecError::new(
                            "spec.auth.jwt.jwksUrl",
                            format!("{url:?} is not an absolute http(s) URL"),
                        ));
                    }
                }
                (None, Some(pem)) => check_public_pem(pem)?,
            }
        }
        Ok(())
    }
}

/// Catches the usual mistakes in `jwt.publicKey` before any token meets
/// it: not PEM at all, a private key, a certificate. (The key itself is
/// parsed by the gateway; what gets past this and still does not parse is
/// answered 503 there.)
fn check_public_pem(pem: &str) -> Result<(), SpecError> {
    let field = "spec.auth.jwt.publicKey";
    let label = pem
        .trim_start()
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .map(|(label, _)| label);
    match label {
        Some("PUBLIC KEY" | "RSA PUBLIC KEY") => Ok(()),
        Some(label) if label.contains("PRIVATE KEY") => Err(SpecError::new(
            field,
            format!(
                "holds a {label}: write the public half (`openssl pkey -pubout`), never the private key"
            ),
        )),
        Some("CERTIFICATE") => Err(SpecError::new(
            field,
            "holds a CERTIFICATE: write its public key (`openssl x509 -pubkey -noout`)",
        )),
        Some(label) => Err(SpecError::new(
            field,
            format!("holds a PEM {label}, not a PUBLIC KEY"),
        )),
        None => Err(SpecError::new(
            field,
            "is not PEM: it must start with -----BEGIN PUBLIC KEY-----",
        )),
    }
}

/// One API key as the registry keeps it: the Secret's key that names it,
/// and the hex SHA-256 of its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyDigest {
    pub name: String,
    pub sha256: String,
}

/// Why a Secret's values cannot serve as API keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("holds no keys: add at least one value under data or stringData")]
    Empty,
    #[error(
        "key {name:?} is {len} bytes long; API keys must be at least {MIN_API_KEY_LEN} (e.g. `openssl rand -hex 32`)"
    )]
    TooShort { name: String, len: usize },
}

impl ApiKeyError {
    /// A CamelCase reason for a condition or an Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "ApiKeySecretEmpty",
            Self::TooShort { .. } => "ApiKeyTooShort",
        }
    }
}

/// The digests of a Secret's values, in name order. Surrounding
/// whitespace (a newline left by `echo` or an editor) is not part of a key.
pub fn api_key_digests<'a>(
    values: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<ApiKeyDigest>, ApiKeyError> {
    let mut digests = Vec::new();
    for (name, value) in values {
        let key = value.trim_ascii();
        if key.len() < MIN_API_KEY_LEN {
            return Err(ApiKeyError::TooShort {
                name: name.to_owned(),
                len: key.len(),
            });
        }
        digests.push(ApiKeyDigest {
            name: name.to_owned(),
            sha256: token_digest(key),
        });
    }
    if digests.is_empty() {
        return Err(ApiKeyError::Empty);
    }
    digests.sort();
    Ok(digests)
}

/// The hex SHA-256 of a presented token, as [`ApiKeyDigest::sha256`].
pub fn token_digest(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";

    fn auth(json: serde_json::Value) -> Auth {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn exactly_public_or_some_method() {
        let cases = [
            (serde_json::json!({ "public": true }), None),
            (
                serde_json::json!({ "apiKeys": { "secretName": "k" } }),
                None,
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": ["a"], "publicKey": PEM } }),
                None,
            ),
            (serde_json::json!({}), Some("spec.auth")),
            (serde_json::json!({ "public": false }), Some("spec.auth")),
            (
                serde_json::json!({ "public": true, "apiKeys": { "secretName": "k" } }),
                Some("spec.auth.public"),
            ),
            (
                serde_json::json!({ "apiKeys": { "secretName": "" } }),
                Some("spec.auth.apiKeys.secretName"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": [], "publicKey": PEM } }),
                Some("spec.auth.jwt.audiences"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": ["a"] } }),
                Some("spec.auth.jwt"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": ["a"], "publicKey": PEM, "jwksUrl": "https://x/" } }),
                Some("spec.auth.jwt"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": ["a"], "jwksUrl": "/keys" } }),
                Some("spec.auth.jwt.jwksUrl"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "", "audiences": ["a"], "publicKey": PEM } }),
                Some("spec.auth.jwt.issuer"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": ["a"], "publicKey": "not a pem" } }),
                Some("spec.auth.jwt.publicKey"),
            ),
            (
                serde_json::json!({ "jwt": { "issuer": "i", "audiences": ["a"], "publicKey": "-----BEGIN PRIVATE KEY-----\nx\n" } }),
                Some("spec.auth.jwt.publicKey"),
            ),
        ];
        for (json, field) in cases {
            let result = auth(json.clone()).validate();
            assert_eq!(
                result.err().map(|e| e.field),
                field.map(str::to_owned),
                "{json}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_value::<Auth>(serde_json::json!({ "apiKey": { "secretName": "k" } }))
                .is_err()
        );
    }

    #[test]
    fn secrets_become_sorted_digests_of_trimmed_values() {
        let long = "k".repeat(MIN_API_KEY_LEN);
        let digests = api_key_digests([
            ("second", format!("{long}\n").as_bytes()),
            ("first", long.as_bytes()),
        ])
        .unwrap();
        assert_eq!(digests[0].name, "first");
        assert_eq!(digests[0].sha256, digests[1].sha256);
        assert_eq!(digests[0].sha256, token_digest(long.as_bytes()));
        assert_eq!(digests[0].sha256.len(), 64);
        assert!(!digests[0].sha256.contains(&long));
        assert_eq!(
            api_key_digests([("short", b"abc".as_slice())]),
            Err(ApiKeyError::TooShort {
                name: "short".into(),
                len: 3
            })
        );
        assert_eq!(api_key_digests([]), Err(ApiKeyError::Empty));
    }
}
