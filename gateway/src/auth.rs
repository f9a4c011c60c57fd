//! Who may invoke a function: `spec.auth` checked against the request's
//! credential (RFC 6750 bearer token or `X-Api-Key`).
//!
//! [`decide`] is the pure rule, given what the credential proved;
//! [`Access`] gathers that proof: an API key's SHA-256 among the
//! function's digests (or another function's), or a JWT verified with
//! `jsonwebtoken` against a static key or the issuer's JWKS ([`Jwks`]).

use sluice_serve::sync;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{AlgorithmFamily, DecodingKey, Validation, errors::ErrorKind};
use sluice_api::auth::{ApiKeyDigest, Auth, Jwt, token_digest};
use sluice_api::egress::EgressPolicy;
use sluice_api::names::FunctionRef;
use sluice_serve::egress::{GuardedConnector, guarded_connector};
use tokio::time::Instant;

/// Header an API key may come in instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// How long a fetched JWKS is used before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Least time between two fetches of one JWKS, so that tokens naming
/// unknown `kid`s cannot make the gateway hammer the issuer.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// Longest a JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS read.
const JWKS_MAX_BYTES: usize = 256 << 10;

/// What a request's credential proved about one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` nor `X-Api-Key`.
    Nothing,
    /// A credential the gateway cannot read (`Authorization: Basic`, two
    /// credentials, …): what is wrong with it.
    Malformed(String),
    /// One of this function's API keys, by its name in the Secret.
    ApiKey { name: String },
    /// A JWT this function's issuer signed, for one of its audiences.
    Jwt { subject: Option<String> },
    /// A JWT signed by this function's issuer, for another audience.
    JwtForOtherAudience,
    /// A token this function does not accept: `other_function` when it is
    /// another function's API key.
    Rejected {
        problem: String,
        other_function: bool,
    },
}

/// The answer to a request, by [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401: no credential, or one that proves nothing (`invalid_token`).
    Unauthenticated {
        invalid_token: bool,
        problem: String,
    },
    /// 403: a valid credential without access to this function.
    Forbidden(String),
}

/// How one function is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// `spec.auth.public: true`, or no `spec.auth` on a gateway that does
    /// not require it.
    Open,
    /// No `spec.auth` on a gateway started with `--auth-required`.
    Unconfigured,
    /// `apiKeys` and/or `jwt`.
    Credentials,
}

/// The rule: an open function takes anyone; an unconfigured one no one;
/// a protected one a credential that proves access to it. Another
/// function's valid credential is 403, anything else 401.
pub fn decide(function: &FunctionRef, protection: &Protection, presented: &Presented) -> Verdict {
    match protection {
        Protection::Open => Verdict::Allowed,
        Protection::Unconfigured => Verdict::Forbidden(format!(
            "{function} sets no spec.auth and this gateway requires authentication (--auth-required): set spec.auth to public: true, apiKeys or jwt"
        )),
        Protection::Credentials => match presented {
            Presented::ApiKey { .. } | Presented::Jwt { .. } => Verdict::Allowed,
            Presented::Nothing => Verdict::Unauthenticated {
                invalid_token: false,
                problem: format!(
                    "{function} requires a credential: send Authorization: Bearer <token> or X-Api-Key: <key>"
                ),
            },
            Presented::Malformed(problem) => Verdict::Unauthenticated {
                invalid_token: true,
                problem: problem.clone(),
            },
            Presented::JwtForOtherAudience => Verdict::Forbidden(format!(
                "the token's audience (aud) is not one {function} accepts"
            )),
            Presented::Rejected {
                other_function: true,
                ..
            } => Verdict::Forbidden(format!("the API key does not give access to {function}")),
            Presented::Rejected { problem, .. } => Verdict::Unauthenticated {
                invalid_token: true,
                problem: problem.clone(),
            },
        },
    }
}

/// The credential a request carries, and the header it came in (to be
/// dropped before the request is queued, when it was an API key).
pub fn credential(headers: &HeaderMap) -> Result<Option<(String, HeaderName)>, String> {
    let bearer = match headers.get_all(header::AUTHORIZATION).iter().count() {
        0 => None,
        1 => {
            let value = headers[header::AUTHORIZATION]
                .to_str()
                .map_err(|_| "the Authorization header is not ASCII".to_owned())?;
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(format!(
                    "the Authorization scheme {scheme:?} is not accepted; use Bearer"
                ));
            }
            let token = token.trim();
            if token.is_empty() {
                return Err("the Authorization header carries no token".into());
            }
            Some(token.to_owned())
        }
        _ => return Err("more than one Authorization header".into()),
    };
    let key = match headers.get_all(&API_KEY_HEADER).iter().count() {
        0 => None,
        1 => Some(
            headers[&API_KEY_HEADER]
                .to_str()
                .map_err(|_| "the X-Api-Key header is not ASCII".to_owned())?
                .trim()
                .to_owned(),
        ),
        _ => return Err("more than one X-Api-Key header".into()),
    };
    match (bearer, key) {
        (Some(_), Some(_)) => Err("send either Authorization or X-Api-Key, not both".into()),
        (Some(token), None) => Ok(Some((token, header::AUTHORIZATION))),
        (None, Some(key)) if key.is_empty() => Err("the X-Api-Key header is empty".into()),
        (None, Some(key)) => Ok(Some((key, API_KEY_HEADER))),
        (None, None) => Ok(None),
    }
}

/// One function's credentials.
#[derive(Debug)]
struct Protected {
    /// Digest → the key's name.
    keys: HashMap<String, String>,
    jwt: Option<JwtVerifier>,
}

/// The access rules of every routed function.
#[derive(Debug, Default)]
pub struct Access {
    functions: HashMap<FunctionRef, Option<Protected>>,
    /// Every function's API-key digests, to tell another function's key
    /// (403) from a wrong one (401).
    all_keys: std::collections::HashSet<String>,
    required: bool,
}

/// Why a credential could not be checked (the JWKS is unreachable, say):
/// the gateway's fault, not the caller's (503).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthUnavailable(pub String);

impl Access {
    /// The rules of `functions` (their `spec.auth`, and their API-key
    /// digests from the registry entry); `required` is `--auth-required`.
    /// A `publicKey` that does not parse leaves the function's JWTs all
    /// refused, and is reported.
    pub fn new<'a>(
        functions: impl IntoIterator<Item = (&'a FunctionRef, Option<&'a Auth>, &'a [ApiKeyDigest])>,
        required: bool,
        jwks: &JwksCache,
    ) -> Self {
        let mut access = Self {
            required,
            ..Self::default()
        };
        for (function, auth, digests) in functions {
            // No spec.auth: left out, so `required` decides.
            let Some(auth) = auth else { continue };
            if auth.public {
                access.functions.insert(function.clone(), None);
                continue;
            }
            let protected = Protected {
                keys: digests
                    .iter()
                    .map(|d| (d.sha256.clone(), d.name.clone()))
                    .collect(),
                jwt: auth
                    .jwt
                    .as_ref()
                    .map(|jwt| JwtVerifier::new(function, jwt, jwks)),
            };
            for digest in protected.keys.keys() {
                access.all_keys.insert(digest.clone());
            }
            access.functions.insert(function.clone(), Some(protected));
        }
        access
    }

    /// Checks `request` against `function`'s rules. On success, an API key
    /// is dropped from the request, so that it is never queued.
    pub async fn check<B>(
        &self,
        function: &FunctionRef,
        request: &mut Request<B>,
    ) -> Result<Verdict, AuthUnavailable> {
        let protected = match self.functions.get(function) {
            Some(Some(protected)) => protected,
            Some(None) => return Ok(decide(function, &Protection::Open, &Presented::Nothing)),
            None => {
                let protection = if self.required {
                    Protection::Unconfigured
                } else {
                    Protection::Open
                };
                return Ok(decide(function, &protection, &Presented::Nothing));
            }
        };
        let presented = match credential(request.headers()) {
            Err(problem) => Presented::Malformed(problem),
            Ok(None) => Presented::Nothing,
            Ok(Some((token, header))) => {
                let presented = self.prove(protected, &token).await?;
                if matches!(presented, Presented::ApiKey { .. }) {
                    request.headers_mut().remove(header);
                }
                presented
            }
        };
        Ok(decide(function, &Protection::Credentials, &presented))
    }

    async fn prove(
        &self,
        protected: &Protected,
        token: &str,
    ) -> Result<Presented, AuthUnavailable> {
        let digest = token_digest(token.as_bytes());
        if let Some(name) = protected.keys.get(&digest) {
            return Ok(Presented::ApiKey { name: name.clone() });
        }
        let looks_like_jwt = token.split('.').count() == 3;
        if let (Some(jwt), true) = (&protected.jwt, looks_like_jwt) {
            return jwt.verify(token).await;
        }
        let other_function = self.all_keys.contains(&digest);
        Ok(Presented::Rejected {
            problem: if looks_like_jwt {
                "the function accepts no JWTs".into()
            } else {
                "the token is not a valid API key".into()
            },
            other_function,
        })
    }
}

/// Checks JWTs for one function: signature, `iss`, `aud`, `exp`.
#[derive(Debug)]
struct JwtVerifier {
    validation: Validation,
    keys: Keys,
}

#[derive(Debug)]
enum Keys {
    Static(Result<DecodingKey, String>),
    Jwks(Arc<Jwks>),
}

impl JwtVerifier {
    fn new(function: &FunctionRef, jwt: &Jwt, jwks: &JwksCache) -> Self {
        let mut validation = Validation::new_for_family(AlgorithmFamily::Rsa);
        validation.set_issuer(&[&jwt.issuer]);
        validation.set_audience(&jwt.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let keys = match (&jwt.public_key, &jwt.jwks_url) {
            (Some(pem), _) => {
                let key = static_key(pem.as_bytes());
                if let Err(problem) = &key {
                    tracing::error!(%function, %problem, "spec.auth.jwt.publicKey is unusable; its JWTs are refused");
                }
                Keys::Static(key)
            }
            (None, Some(url)) => Keys::Jwks(jwks.get(url)),
            (None, None) => Keys::Static(Err("spec.auth.jwt names no key".into())),
        };
        Self { validation, keys }
    }

    async fn verify(&self, token: &str) -> Result<Presented, AuthUnavailable> {
        let rejected = |problem: String| Presented::Rejected {
            problem,
            other_function: false,
        };
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(e) => return Ok(rejected(format!("the token is not a JWT: {e}"))),
        };
        let key = match &self.keys {
            Keys::Static(Ok(key)) => key.clone(),
            // The function's fault, not the caller's.
            Keys::Static(Err(problem)) => {
                return Err(AuthUnavailable(format!(
                    "the function's spec.auth.jwt.publicKey is unusable: {problem}"
                )));
            }
            Keys::Jwks(jwks) => match jwks.key(header.kid.as_deref()).await? {
                Ok(key) => key,
                Err(problem) => return Ok(rejected(problem)),
            },
        };
        let mut validation = self.validation.clone();
        validation.algorithms = key.family().algorithms().to_vec();
        if key.family() == AlgorithmFamily::Hmac {
            return Ok(rejected("shared-secret (HS*) keys are not accepted".into()));
        }
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => Ok(Presented::Jwt {
                subject: data.claims.sub,
            }),
            Err(e) => Ok(match e.kind() {
                ErrorKind::InvalidAudience => Presented::JwtForOtherAudience,
                ErrorKind::ExpiredSignature => rejected("the token has expired (exp)".into()),
                ErrorKind::InvalidIssuer => {
                    rejected("the token's issuer (iss) is not accepted".into())
                }
                ErrorKind::InvalidSignature => {
                    rejected("the token's signature is not valid".into())
                }
                ErrorKind::InvalidAlgorithm => rejected(format!(
                    "the token's algorithm {:?} does not fit the issuer's key",
                    header.alg
                )),
                ErrorKind::MissingRequiredClaim(claim) => {
                    rejected(format!("the token has no {claim} claim"))
                }
                _ => rejected(format!("the token is not valid: {e}")),
            }),
        }
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
}

/// A PEM public key of any family jsonwebtoken verifies with.
fn static_key(pem: &[u8]) -> Result<DecodingKey, String> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| "not a PEM RSA, EC or Ed25519 public key".to_owned())
}

/// The JWKS of every `jwksUrl` the routed functions name, shared by the
/// functions naming the same URL and kept across registry updates.
#[derive(Debug)]
pub struct JwksCache {
    client: Client<GuardedConnector, Empty<Bytes>>,
    egress: Arc<EgressPolicy>,
    timing: JwksTiming,
    sets: Mutex<HashMap<String, Arc<Jwks>>>,
}

impl JwksCache {
    /// Fetches through the egress guard: a `jwksUrl` is chosen by a
    /// function's author, like a callback URL.
    pub fn new(egress: Arc<EgressPolicy>) -> Self {
        Self::with_timing(egress, JwksTiming::default())
    }

    fn with_timing(egress: Arc<EgressPolicy>, timing: JwksTiming) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .build(guarded_connector(egress.clone(), Some(JWKS_TIMEOUT))),
            egress,
            timing,
            sets: Mutex::default(),
        }
    }

    fn get(&self, url: &str) -> Arc<Jwks> {
        sync::lock(&self.sets)
            .entry(url.to_owned())
            .or_insert_with(|| {
                Arc::new(Jwks {
                    url: url.to_owned(),
                    client: self.client.clone(),
                    egress: self.egress.clone(),
                    timing: self.timing,
                    state: Mutex::default(),
                })
            })
            .clone()
    }
}

/// When a JWKS is fetched again.
#[derive(Clone, Copy, Debug)]
struct JwksTiming {
    /// [`JWKS_TTL`].
    ttl: Duration,
    /// [`JWKS_MIN_REFETCH`].
    min_refetch: Duration,
    /// The pause after a first failed fetch; it doubles with each failure
    /// after, up to [`JWKS_MAX_BACKOFF`].
    backoff: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        Self {
            ttl: JWKS_TTL,
            min_refetch: JWKS_MIN_REFETCH,
            backoff: JWKS_BACKOFF,
        }
    }
}

/// The pause after a first failed JWKS fetch, doubling with each failure.
const JWKS_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between failed JWKS fetches.
const JWKS_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One issuer's key set, fetched when first needed, again in the
/// background once older than [`JWKS_TTL`] (requests go on with the keys
/// at hand meanwhile: stale-while-revalidate), and early (at most every
/// [`JWKS_MIN_REFETCH`]) when a token names a `kid` it lacks: issuers
/// rotate keys by publishing the new one first. One fetch at a time; after
/// a failed one no other is tried before its backoff ends.
#[derive(Debug)]
struct Jwks {
    url: String,
    client: Client<GuardedConnector, Empty<Bytes>>,
    egress: Arc<EgressPolicy>,
    timing: JwksTiming,
    state: Mutex<JwksState>,
}

#[derive(Debug, Default)]
struct JwksState {
    fetched: Option<Arc<Fetched>>,
    /// The fetch under way, which every reader that waits shares.
    fetching: Option<futures::future::Shared<futures::future::BoxFuture<'static, ()>>>,
    /// Fetches failed in a row, and when the next may be tried.
    failures: u32,
    retry_at: Option<Instant>,
    /// Why the last fetch failed.
    problem: Option<String>,
}

#[derive(Debug)]
struct Fetched {
    at: Instant,
    /// The set's asymmetric keys by `kid`, decoded once when fetched
    /// (`None`: a key jsonwebtoken cannot use).
    keys: Vec<(Option<String>, Option<DecodingKey>)>,
}

/// What a reader of a key set must do about fetching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refetch {
    /// Use what is cached.
    No,
    /// Use what is cached; fetch again in the background.
    Behind,
    /// Nothing cached serves this reader: wait for a fetch.
    Wait,
}

/// Whether to fetch a set fetched at `fetched_at` (if ever) for a reader
/// whose key it has (`has_key`), at `now`, with fetches paused until
/// `retry_at` after failures.
fn refetch(
    timing: &JwksTiming,
    fetched_at: Option<Instant>,
    has_key: bool,
    retry_at: Option<Instant>,
    now: Instant,
) -> Refetch {
    if retry_at.is_some_and(|at| now < at) {
        return Refetch::No;
    }
    match fetched_at {
        None => Refetch::Wait,
        Some(at) if !has_key && now - at >= timing.min_refetch => Refetch::Wait,
        Some(at) if now - at >= timing.ttl => Refetch::Behind,
        Some(_) => Refetch::No,
    }
}

/// The pause after `failures` failed fetches in a row.
fn backoff(timing: &JwksTiming, failures: u32) -> Duration {
    sluice_api::backoff::doubling(timing.backoff, JWKS_MAX_BACKOFF, failures)
}

impl Jwks {
    fn state(&self) -> std::sync::MutexGuard<'_, JwksState> {
        sync::lock(&self.state)
    }

    /// The key for `kid` (or the only key, for a token without one);
    /// `Ok(Err(problem))` when the set has none. It waits for a fetch only
    /// when nothing cached can serve the token.
    async fn key(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<Result<DecodingKey, String>, AuthUnavailable> {
        let wait = {
            let mut state = self.state();
            let has_key = state
                .fetched
                .as_ref()
                .is_some_and(|f| find(&f.keys, kid).is_some());
            match refetch(
                &self.timing,
                state.fetched.as_ref().map(|f| f.at),
                has_key,
                state.retry_at,
                Instant::now(),
            ) {
                Refetch::No => None,
                Refetch::Behind => {
                    tokio::spawn(self.fetching(&mut state));
                    None
                }
                Refetch::Wait => Some(self.fetching(&mut state)),
            }
        };
        if let Some(fetch) = wait {
            fetch.await;
        }
        let state = self.state();
        let Some(fetched) = &state.fetched else {
            return Err(AuthUnavailable(format!(
                "cannot fetch the issuer's keys from {}: {}",
                self.url,
                state.problem.as_deref().unwrap_or("not fetched yet")
            )));
        };
        Ok(match find(&fetched.keys, kid) {
            Some(key) => Ok(key.clone()),
            None => Err(match kid {
                Some(kid) => format!("the issuer's JWKS has no usable key {kid:?}"),
                None => "the token names no key (kid) and the issuer's JWKS has more than one"
                    .to_owned(),
            }),
        })
    }

    /// The fetch under way, or a new one.
    fn fetching(
        self: &Arc<Self>,
        state: &mut JwksState,
    ) -> futures::future::Shared<futures::future::BoxFuture<'static, ()>> {
        use futures::FutureExt as _;
        if let Some(fetch) = &state.fetching {
            return fetch.clone();
        }
        let this = self.clone();
        let fetch = async move {
            let result = this.fetch().await;
            let mut state = this.state();
            match result {
                Ok(set) => {
                    state.fetched = Some(Arc::new(Fetched {
                        at: Instant::now(),
                        keys: usable_keys(&set),
                    }));
                    state.failures = 0;
                    state.retry_at = None;
                    state.problem = None;
                }
                Err(problem) => {
                    state.failures += 1;
                    let pause = backoff(&this.timing, state.failures);
                    tracing::warn!(url = %this.url, %problem, failures = state.failures, "cannot fetch a JWKS; the keys at hand are used meanwhile, and it is tried again in {pause:?}");
                    state.retry_at = Some(Instant::now() + pause);
                    state.problem = Some(problem);
                }
            }
            state.fetching = None;
        }
        .boxed()
        .shared();
        state.fetching = Some(fetch.clone());
        fetch
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let uri: http::Uri = self.url.parse().map_err(|e| format!("{e}"))?;
        // The connector's resolver checks names; an address is checked here.
        if let Some(host) = uri.host()
            && let Some(Err(e)) = sluice_serve::egress::check_literal(host, &self.egress)
        {
            return Err(e.to_string());
        }
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(JWKS_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {}s", JWKS_TIMEOUT.as_secs()))?
            .map_err(|e| sluice_serve::with_causes(&e))?;
        if !response.status().is_success() {
            return Err(format!("the server answered {}", response.status()));
        }
        let body = tokio::time::timeout(
            JWKS_TIMEOUT,
            Limited::new(response.into_body(), JWKS_MAX_BYTES).collect(),
        )
        .await
        .map_err(|_| format!("the body did not arrive within {}s", JWKS_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a JWK Set: {e}"))
    }
}

/// A set's asymmetric keys (shared secrets are never accepted), each with
/// its `kid`, decoded.
fn usable_keys(set: &JwkSet) -> Vec<(Option<String>, Option<DecodingKey>)> {
    set.keys
        .iter()
        .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
        .map(|k| (k.common.key_id.clone(), DecodingKey::from_jwk(k).ok()))
        .collect()
}

/// The usable key `kid` names, or the only one for a token without `kid`.
fn find<'a>(
    keys: &'a [(Option<String>, Option<DecodingKey>)],
    kid: Option<&str>,
) -> Option<&'a DecodingKey> {
    let (_, key) = match kid {
        Some(kid) => keys.iter().find(|(id, _)| id.as_deref() == Some(kid))?,
        None if keys.len() == 1 => &keys[0],
        None => return None,
    };
    key.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_set_is_used_while_it_is_fetched_again_behind_the_readers() {
        let timing = JwksTiming::default();
        let now = Instant::now();
        let ago = |d: Duration| Some(now - d);
        let s = Duration::from_secs;
        let cases = [
            // (fetched, has the key, retry at, decision)
            (None, false, None, Refetch::Wait),
            (ago(s(1)), true, None, Refetch::No),
            (ago(JWKS_TTL + s(1)), true, None, Refetch::Behind),
            // A kid it lacks: fetched again, but not more often than this.
            (ago(s(1)), false, None, Refetch::No),
            (ago(JWKS_MIN_REFETCH), false, None, Refetch::Wait),
            // After a failure nothing is fetched before its backoff ends.
            (None, false, Some(now + s(1)), Refetch::No),
            (ago(JWKS_TTL + s(1)), true, Some(now + s(1)), Refetch::No),
            (ago(JWKS_TTL + s(1)), true, Some(now), Refetch::Behind),
        ];
        for (fetched, has_key, retry_at, expected) in cases {
            assert_eq!(
                refetch(&timing, fetched, has_key, retry_at, now),
                expected,
                "{fetched:?} {has_key} {retry_at:?}"
            );
        }
        assert_eq!(backoff(&timing, 1), s(1));
        assert_eq!(backoff(&timing, 3), s(4));
        assert_eq!(backoff(&timing, 30), JWKS_MAX_BACKOFF);
    }

    /// A JWK (EC P-256) with `kid`.
    fn ec_jwk(kid: &str) -> serde_json::Value {
        use base64::Engine as _;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        })
    }

    /// A JWKS server on loopback that serves a set, or (`None`) accepts
    /// requests and never answers, as an issuer gone dark does; it counts
    /// the requests left unanswered.
    async fn jwks_server(
        set: Arc<Mutex<Option<serde_json::Value>>>,
        unanswered: Arc<std::sync::atomic::AtomicUsize>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (set, unanswered) = (set.clone(), unanswered.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_| {
                        let set = set.lock().unwrap().clone();
                        let unanswered = unanswered.clone();
                        async move {
                            let Some(set) = set else {
                                unanswered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return futures::future::pending().await;
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from(set.to_string())),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_keys_verify_while_the_issuer_is_dark_and_a_rotation_is_picked_up_when_it_returns()
     {
        let (k1, k2) = (ec_jwk("k1"), ec_jwk("k2"));
        let set = Arc::new(Mutex::new(Some(serde_json::json!({ "keys": [k1] }))));
        let unanswered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (url, server) = jwks_server(set.clone(), unanswered.clone()).await;
        let egress = Arc::new(EgressPolicy::parse(&["127.0.0.0/8"], &[]).unwrap());
        // Every read finds the set stale, so each would fetch if it could.
        let timing = JwksTiming {
            ttl: Duration::ZERO,
            min_refetch: Duration::ZERO,
            backoff: Duration::from_millis(50),
        };
        let jwks = JwksCache::with_timing(egress, timing).get(&url);
        assert!(jwks.key(Some("k1")).await.unwrap().is_ok());

        // The issuer goes dark: a fetch now hangs until JWKS_TIMEOUT. Reads
        // go on until one has started such a fetch, and past it.
        *set.lock().unwrap() = None;
        let mut reads = 0;
        while reads < 500 || unanswered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            let key = tokio::time::timeout(JWKS_TIMEOUT / 2, jwks.key(Some("k1")))
                .await
                .expect("a reader whose key is cached never waits on a fetch");
            assert!(key.unwrap().is_ok());
            reads += 1;
            assert!(reads < 100_000, "no fetch reached the dark issuer");
            tokio::task::yield_now().await;
        }
        // One fetch at a time: the readers did not each start one.
        assert_eq!(unanswered.load(std::sync::atomic::Ordering::SeqCst), 1);

        // It comes back with a new key: a token naming it is verified.
        *set.lock().unwrap() = Some(serde_json::json!({ "keys": [k1, k2] }));
        let started = Instant::now();
        loop {
            match jwks.key(Some("k2")).await {
                Ok(Ok(_)) => break,
                other => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "k2 is not picked up: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(jwks.key(Some("k1")).await.unwrap().is_ok());
        server.abort();
    }

    #[test]
    fn the_rule() {
        let f: FunctionRef = "default/f".parse().unwrap();
        let rejected = |other_function| Presented::Rejected {
            problem: "no".into(),
            other_function,
        };
        let key = Presented::ApiKey { name: "ci".into() };
        let jwt = Presented::Jwt { subject: None };
        // 200, 401 (with invalid_token?), 403.
        let class = |v: &Verdict| match v {
            Verdict::Allowed => "200",
            Verdict::Unauthenticated {
                invalid_token: false,
                ..
            } => "401",
            Verdict::Unauthenticated { .. } => "401 invalid_token",
            Verdict::Forbidden(_) => "403",
        };
        let cases = [
            (Protection::Open, Presented::Nothing, "200"),
            (Protection::Open, rejected(false), "200"),
            (Protection::Open, Presented::JwtForOtherAudience, "200"),
            (Protection::Unconfigured, Presented::Nothing, "403"),
            (Protection::Unconfigured, key.clone(), "403"),
            (Protection::Credentials, key, "200"),
            (Protection::Credentials, jwt, "200"),
            (Protection::Credentials, Presented::Nothing, "401"),
            (
                Protection::Credentials,
                Presented::Malformed("x".into()),
                "401 invalid_token",
            ),
            (
                Protection::Credentials,
                rejected(false),
                "401 invalid_token",
            ),
            (Protection::Credentials, rejected(true), "403"),
            (
                Protection::Credentials,
                Presented::JwtForOtherAudience,
                "403",
            ),
        ];
        for (protection, presented, expected) in cases {
            let verdict = decide(&f, &protection, &presented);
            assert_eq!(
                class(&verdict),
                expected,
                "{protection:?} {presented:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn credentials_come_from_one_header() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            map
        };
        let token = |pairs: &[(&str, &str)]| {
            credential(&headers(pairs)).map(|c| c.map(|(t, h)| (t, h.to_string())))
        };
        assert_eq!(token(&[]), Ok(None));
        assert_eq!(
            token(&[("authorization", "Bearer abc")]),
            Ok(Some(("abc".into(), "authorization".into())))
        );
        assert_eq!(
            token(&[("authorization", "bearer  abc ")]),
            Ok(Some(("abc".into(), "authorization".into())))
        );
        assert_eq!(
            token(&[("x-api-key", "k")]),
            Ok(Some(("k".into(), "x-api-key".into())))
        );
        for bad in [
            &[("authorization", "Basic dTpw")][..],
            &[("authorization", "Bearer")],
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
            &[("authorization", "Bearer a"), ("x-api-key", "b")],
            &[("x-api-key", "")],
        ] {
            assert!(token(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn static_keys_verify_signature_issuer_audience_and_expiry() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing =
            jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let jwt = Jwt {
            issuer: "iss".into(),
            audiences: vec!["a".into()],
            jwks_url: None,
            public_key: Some(pair.public_key_pem()),
        };
        let f: FunctionRef = "default/f".parse().unwrap();
        let verifier = JwtVerifier::new(&f, &jwt, &JwksCache::new(Arc::default()));
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = |iss: &str, aud: &str, exp: i64| {
            let claims = serde_json::json!({ "iss": iss, "aud": aud, "exp": exp, "sub": "s" });
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
                &claims,
                &signing,
            )
            .unwrap()
        };
        assert_eq!(
            verifier.verify(&token("iss", "a", now + 60)).await.unwrap(),
            Presented::Jwt {
                subject: Some("s".into())
            }
        );
        assert_eq!(
            verifier.verify(&token("iss", "b", now + 60)).await.unwrap(),
            Presented::JwtForOtherAudience
        );
        // A key that does not parse is the function's fault: 503, not 401.
        let broken = Jwt {
            public_key: Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()),
            ..jwt.clone()
        };
        let broken = JwtVerifier::new(&f, &broken, &JwksCache::new(Arc::default()));
        let error = broken
            .verify(&token("iss", "a", now + 60))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("publicKey is unusable"),
            "{error}"
        );
        for (bad, problem) in [
            (token("other", "a", now + 60), "issuer"),
            (token("iss", "a", now - 120), "expired"),
            ("a.b.c".to_owned(), "not a JWT"),
        ] {
            match verifier.verify(&bad).await.unwrap() {
                Presented::Rejected {
                    problem: p,
                    other_function: false,
                } => {
                    assert!(p.contains(problem), "{p}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
