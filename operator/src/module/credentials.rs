//! Registry credentials from a `kubernetes.io/dockerconfigjson` Secret, as
//! `imagePullSecrets` hold them.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::ModuleError;
use super::error::kubernetes_api;

/// The Secret key holding the Docker config JSON.
const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

/// Reads the Secret `name` in `namespace` and takes its credentials for
/// `registry` (`host[:port]`, as in the reference) and `repository`.
pub(crate) async fn fetch(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    registry: &str,
    repository: &str,
) -> Result<RegistryAuth, ModuleError> {
    let api = kube::Api::<Secret>::namespaced(kube.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => credentials(&secret, registry, repository).map_err(|problem| {
            ModuleError::PullSecretInvalid {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                problem,
            }
        }),
        Ok(None) => Err(ModuleError::PullSecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        Err(e) => Err(kubernetes_api("Secret", "secrets", namespace, name, e)),
    }
}

/// `.dockerconfigjson`: `{"auths": {"<registry>": {...}}}`.
#[derive(Deserialize)]
struct DockerConfig {
    auths: BTreeMap<String, AuthEntry>,
}

/// One registry's entry. Docker writes `auth` (base64 of
/// `user:password`); `kubectl create secret docker-registry` writes it and
/// `username` and `password` too; `registrytoken` is a bearer token.
#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The credentials `secret` holds for `repository` on `registry`: the entry
/// whose key names the registry's `host[:port]` (Docker Hub under any of
/// its names) and, when the key has a path, a prefix of the repository;
/// the longest such path wins. `Err` says what is wrong with the Secret.
pub(crate) fn credentials(
    secret: &Secret,
    registry: &str,
    repository: &str,
) -> Result<RegistryAuth, String> {
    let Some(json) = secret
        .data
        .as_ref()
        .and_then(|data| data.get(DOCKER_CONFIG_KEY))
    else {
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flat_map(|data| data.keys())
            .map(String::as_str)
            .collect();
        return Err(format!(
            "it has no {DOCKER_CONFIG_KEY} key (type {}, keys: {}); make one with `kubectl create secret docker-registry`",
            secret.type_.as_deref().unwrap_or("Opaque"),
            if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            }
        ));
    };
    let config: DockerConfig = serde_json::from_slice(&json.0).map_err(|e| {
        format!("its {DOCKER_CONFIG_KEY} is not a Docker config with an \"auths\" object: {e}")
    })?;
    let registry_host = normalize_host(registry);
    let (key, entry) = config
        .auths
        .iter()
        .filter_map(|(key, entry)| {
            let (host, path) = split_key(key);
            let matches = host == registry_host
                && (path.is_empty()
                    || repository == path
                    || repository
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.starts_with('/')));
            matches.then_some((path.len(), key, entry))
        })
        .max_by_key(|(path_len, _, _)| *path_len)
        .map(|(_, key, entry)| (key, entry))
        .ok_or_else(|| {
            let keys: Vec<&str> = config.auths.keys().map(String::as_str).collect();
            format!(
                "it has no credentials for registry {registry} (it has: {})",
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            )
        })?;
    entry_auth(key, entry)
}

fn entry_auth(key: &str, entry: &AuthEntry) -> Result<RegistryAuth, String> {
    if let Some(auth) = entry.auth.as_deref().filter(|auth| !auth.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("the auth of {key:?} is not base64: {e}"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| format!("the auth of {key:?} is not UTF-8 text"))?;
        let (username, password) = text.split_once(':').ok_or_else(|| {
            format!("the auth of {key:?} is not base64 of username:password (no colon)")
        })?;
        return Ok(RegistryAuth::Basic(
            username.to_owned(),
            password.to_owned(),
        ));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(username.clone(), password.clone()));
    }
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::Bearer(token.to_owned()));
    }
    Err(format!(
        "the entry for {key:?} has neither auth nor username and password"
    ))
}

/// Docker Hub's names, all meaning the same registry.
const DOCKER_HUB: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

fn normalize_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB.contains(&host.as_str()) {
        DOCKER_HUB[0].to_owned()
    } else {
        host
    }
}

/// A config key's registry `host[:port]` and repository path prefix. Keys
/// come as `host`, `host/path`, or URLs such as Docker's
/// `https://index.docker.io/v1/`, whose `/v1/` or `/v2/` is the API version,
/// not a path.
fn split_key(key: &str) -> (String, &str) {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_matches('/');
    let path = match path {
        "v1" | "v2" => "",
        _ => path,
    };
    (normalize_host(host), path)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn secret(json: &str) -> Secret {
        Secret {
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(BTreeMap::from([(
                DOCKER_CONFIG_KEY.to_owned(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn basic(user: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Basic(user.into(), password.into())
    }

    /// base64("alice:s3cret:with:colons")
    const ALICE: &str = "YWxpY2U6czNjcmV0OndpdGg6Y29sb25z";

    #[test]
    fn credentials_are_found_for_the_registry_of_the_reference() {
        let alice = basic("alice", "s3cret:with:colons");
        let cases: [(&str, &str, &str, Result<RegistryAuth, &str>); 14] = [
            (
                "ghcr.io",
                "acme/hello",
                &format!(r#"{{"auths":{{"ghcr.io":{{"auth":"{ALICE}"}}}}}}"#),
                Ok(alice.clone()),
            ),
            (
                "ghcr.io",
                "acme/hello",
                r#"{"auths":{"https://ghcr.io":{"username":"bob","password":"pw"}}}"#,
                Ok(basic("bob", "pw")),
            ),
            // kubectl writes all three; auth wins.
            (
                "127.0.0.1:5000",
                "hello",
                &format!(
                    r#"{{"auths":{{"127.0.0.1:5000":{{"username":"x","password":"y","email":"e","auth":"{ALICE}"}}}}}}"#
                ),
                Ok(alice.clone()),
            ),
            (
                "docker.io",
                "library/hello",
                &format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{ALICE}"}}}}}}"#),
                Ok(alice.clone()),
            ),
            (
                "ghcr.io",
                "acme/hello",
                r#"{"auths":{"ghcr.io":{"registrytoken":"tok"}}}"#,
                Ok(RegistryAuth::Bearer("tok".into())),
            ),
            // The longest matching path wins; another org's does not match.
            (
                "ghcr.io",
                "acme/hello",
                r#"{"auths":{"ghcr.io":{"username":"any","password":"1"},"ghcr.io/acme":{"username":"acme","password":"2"},"ghcr.io/acmex":{"username":"acmex","password":"3"}}}"#,
                Ok(basic("acme", "2")),
            ),
            (
                "GHCR.io",
                "acme/hello",
                r#"{"auths":{"ghcr.io":{"username":"u","password":"p"}}}"#,
                Ok(basic("u", "p")),
            ),
            (
                "ghcr.io",
                "acme/hello",
                r#"{"auths":{"quay.io":{"auth":"eDp5"},"127.0.0.1:5000":{"auth":"eDp5"}}}"#,
                Err("it has no credentials for registry ghcr.io (it has: 127.0.0.1:5000, quay.io)"),
            ),
            // A port is part of the registry's name.
            (
                "127.0.0.1:5001",
                "hello",
                r#"{"auths":{"127.0.0.1:5000":{"auth":"eDp5"}}}"#,
                Err("no credentials for registry 127.0.0.1:5001"),
            ),
            (
                "ghcr.io",
                "acme/hello",
                r#"{"auths":{"ghcr.io":{"auth":"not base64!"}}}"#,
                Err("the auth of \"ghcr.io\" is not base64"),
            ),
            (
                "ghcr.io",
                "acme/hello",
                // base64("nocolon")
                r#"{"auths":{"ghcr.io":{"auth":"bm9jb2xvbg=="}}}"#,
                Err("is not base64 of username:password (no colon)"),
            ),
            (
                "ghcr.io",
                "acme/hello",
                r#"{"auths":{"ghcr.io":{"email":"a@b"}}}"#,
                Err("has neither auth nor username and password"),
            ),
            (
                "ghcr.io",
                "acme/hello",
                r#"{"ghcr.io":{"auth":"eDp5"}}"#,
                Err("is not a Docker config with an \"auths\" object"),
            ),
            (
                "ghcr.io",
                "acme/hello",
                "not json",
                Err("is not a Docker config"),
            ),
        ];
        for (registry, repository, json, expected) in cases {
            let got = credentials(&secret(json), registry, repository);
            match (&got, &expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{json}"),
                (Err(got), Err(text)) => assert!(got.contains(text), "{json}: {got}"),
                _ => panic!("{json}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_secret_without_docker_config_says_what_it_has() {
        let opaque = Secret {
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([
                ("username".to_owned(), ByteString(b"u".to_vec())),
                ("password".to_owned(), ByteString(b"p".to_vec())),
            ])),
            ..Secret::default()
        };
        assert_eq!(
            credentials(&opaque, "ghcr.io", "a/b").unwrap_err(),
            "it has no .dockerconfigjson key (type Opaque, keys: password, username); \
             make one with `kubectl create secret docker-registry`"
        );
        assert!(
            credentials(&Secret::default(), "ghcr.io", "a/b")
                .unwrap_err()
                .contains("keys: none")
        );
    }
}
