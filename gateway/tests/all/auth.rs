//! `spec.auth`: API keys from a Secret, JWTs from a static key or a JWKS
//! URL, public functions, and `--auth-required`; on both backends. The
//! JWKS server listens on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::harness::{Backend, Reply, TestGateway, conformance, metric};

const KEY: &str = "key-for-keyed-0123456789abcdef0123456789";
const OTHER_KEY: &str = "key-for-other-0123456789abcdef0123456789";
const ISSUER: &str = "https://login.example.test/";

/// An ES256 signing key and its public half.
struct Signer {
    encoding: EncodingKey,
    public_pem: String,
    /// The public key as a JWK with `kid` `k1`.
    jwk: serde_json::Value,
}

impl Signer {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        });
        Self {
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            public_pem: pair.public_key_pem(),
            jwk,
        }
    }

    /// A token for `aud`, expiring `expires_in` seconds from now
    /// (negative: already expired, past the 60 s leeway).
    fn token(&self, aud: &str, expires_in: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": aud, "sub": "alice", "exp": now + expires_in,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

/// Serves `jwks` at `/jwks.json` on loopback; counts the fetches.
async fn jwks_server(jwks: serde_json::Value) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let count = fetches.clone();
    let body = Bytes::from(jwks.to_string());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, body) = (count.clone(), body.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, fetches)
}

fn manifests(signer: &Signer, jwks_url: &str) -> String {
    let pem = signer.public_pem.replace('\n', "\n        ");
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{ name: keyed-keys }}
stringData: {{ ci: "{KEY}" }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: other-keys }}
data: {{ ci: "{other}" }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: keyed }}
spec:
  module: {{ file: "{{echo}}" }}
  auth: {{ apiKeys: {{ secretName: keyed-keys }} }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: other }}
spec:
  module: {{ file: "{{echo}}" }}
  auth: {{ apiKeys: {{ secretName: other-keys }} }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: jwt }}
spec:
  module: {{ file: "{{echo}}" }}
  auth:
    jwt:
      issuer: "{ISSUER}"
      audiences: [jwt-api]
      publicKey: |
        {pem}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: jwks }}
spec:
  module: {{ file: "{{echo}}" }}
  auth:
    jwt: {{ issuer: "{ISSUER}", audiences: [jwks-api], jwksUrl: "{jwks_url}" }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: open }}
spec:
  module: {{ file: "{{echo}}" }}
  auth: {{ public: true }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: plain }}
spec:
  module: {{ file: "{{echo}}" }}
"#,
        other = base64::engine::general_purpose::STANDARD.encode(OTHER_KEY),
    )
}

async fn call(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    gw.send(Method::POST, path, headers, "hi").await
}

fn assert_refused(reply: &Reply, status: StatusCode, code: &str, challenge: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.json()["error"], code, "{}", reply.text());
    let sent = reply
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap());
    assert_eq!(sent, challenge, "{}", reply.text());
}

const CHALLENGE: Option<&str> = Some(r#"Bearer realm="sluice""#);
const INVALID: Option<&str> = Some(r#"Bearer realm="sluice", error="invalid_token""#);

async fn api_keys(backend: Backend) {
    let signer = Signer::new();
    let gw = TestGateway::start(backend, &manifests(&signer, "http://127.0.0.1:9/")).await;
    let path = "/fn/default/keyed/x";
    assert_refused(
        &call(&gw, path, &[]).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        CHALLENGE,
    );
    let wrong = "Bearer wrong-0123456789abcdef0123456789abcdef";
    assert_refused(
        &call(&gw, path, &[("authorization", wrong)]).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        INVALID,
    );
    assert_refused(
        &call(&gw, path, &[("authorization", "Basic dXNlcjpwYXNz")]).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        INVALID,
    );
    let other = format!("Bearer {OTHER_KEY}");
    assert_refused(
        &call(&gw, path, &[("authorization", &other)]).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let ok = call(&gw, path, &[("authorization", &format!("Bearer {KEY}"))]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    // The key is taken off the request: it is neither queued nor shown to
    // the function.
    assert!(ok.headers.get("x-echo-h-authorization").is_none());
    let ok = call(&gw, path, &[("x-api-key", KEY), ("x-other", "kept")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert!(ok.headers.get("x-echo-h-x-api-key").is_none());
    assert_eq!(ok.header("x-echo-h-x-other"), "kept");
    // The other function takes its own key and refuses this one.
    let ok = call(&gw, "/fn/default/other/", &[("x-api-key", OTHER_KEY)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_refused(
        &call(&gw, "/fn/default/other/", &[("x-api-key", KEY)]).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );

    // Async results and dead letters: only for callers who may invoke.
    let id = gw
        .submit("/async/fn/default/keyed/", &[("x-api-key", KEY)], "later")
        .await;
    assert_refused(
        &call(&gw, "/async/fn/default/keyed/", &[]).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        CHALLENGE,
    );
    // Without the function's credential, an invocation is as unknown as
    // one that never was: its id (maybe a guessable Idempotency-Key) is no
    // existence oracle.
    let status = format!("/invocations/{id}?wait=10s");
    let never = format!("/invocations/{}", sluice_api::InvocationId::random());
    for reply in [
        gw.get(&status).await,
        gw.get_with(&status, &[("x-api-key", OTHER_KEY)]).await,
        gw.get(&never).await,
    ] {
        assert_refused(&reply, StatusCode::NOT_FOUND, "unknown_invocation", None);
    }
    let record = gw.get_with(&status, &[("x-api-key", KEY)]).await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.text());
    assert_eq!(record.json()["function"], "default/keyed");
    let letters = "/dead-letters/default/keyed";
    assert_refused(
        &gw.get(letters).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        CHALLENGE,
    );
    let letters = gw.get_with(letters, &[("x-api-key", KEY)]).await;
    assert_eq!(letters.status, StatusCode::OK, "{}", letters.text());

    // Without spec.auth on a gateway that does not require it, and with
    // public: true, anyone may invoke.
    for path in ["/fn/default/plain/", "/fn/default/open/"] {
        let reply = call(&gw, path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    }

    let metrics = gw.admin_get("/metrics").await.text();
    for (code, least) in [("unauthenticated", 6.0), ("forbidden", 2.0)] {
        let series =
            format!(r#"sluice_auth_failures_total{{function="default/keyed",code="{code}"}}"#);
        assert!(metric(&metrics, &series) >= least, "{series} in\n{metrics}");
    }
    assert!(!metrics.contains(KEY));
}

async fn jwts(backend: Backend) {
    let signer = Signer::new();
    let (jwks_url, fetches) = jwks_server(serde_json::json!({ "keys": [signer.jwk] })).await;
    let gw = TestGateway::start(backend, &manifests(&signer, &jwks_url)).await;
    for (function, aud) in [("jwt", "jwt-api"), ("jwks", "jwks-api")] {
        let path = format!("/fn/default/{function}/");
        let bearer = |token: String| format!("Bearer {token}");
        let ok = call(
            &gw,
            &path,
            &[("authorization", &bearer(signer.token(aud, 300)))],
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{function}: {}", ok.text());
        // A JWT is the caller's identity: the function sees it.
        assert!(ok.header("x-echo-h-authorization").starts_with("Bearer "));
        assert_refused(
            &call(&gw, &path, &[]).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            CHALLENGE,
        );
        let expired = call(
            &gw,
            &path,
            &[("authorization", &bearer(signer.token(aud, -120)))],
        )
        .await;
        assert_refused(
            &expired,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            INVALID,
        );
        assert!(
            expired.json()["message"]
                .as_str()
                .unwrap()
                .contains("expired")
        );
        let forged = Signer::new().token(aud, 300);
        assert_refused(
            &call(&gw, &path, &[("authorization", &bearer(forged))]).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            INVALID,
        );
        let elsewhere = signer.token("another-api", 300);
        assert_refused(
            &call(&gw, &path, &[("authorization", &bearer(elsewhere))]).await,
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        );
        // An API key is no JWT.
        assert_refused(
            &call(&gw, &path, &[("x-api-key", KEY)]).await,
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        );
    }
    // Fetched once, not per request: the forged token names k1 too.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

async fn required_auth_refuses_functions_without_it() {
    let signer = Signer::new();
    let gw = TestGateway::start_with(&manifests(&signer, "http://127.0.0.1:9/"), |c| {
        c.http.auth_required = true;
    })
    .await;
    let refused = call(&gw, "/fn/default/plain/", &[]).await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden", None);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("spec.auth")
    );
    let open = call(&gw, "/fn/default/open/", &[]).await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.text());
    let keyed = call(&gw, "/fn/default/keyed/", &[("x-api-key", KEY)]).await;
    assert_eq!(keyed.status, StatusCode::OK, "{}", keyed.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_requiring_auth_refuses_functions_without_spec_auth() {
    required_auth_refuses_functions_without_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_secret_missing_from_the_folder_is_named_at_start_up() {
    let manifests = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: keyed }
spec:
  module: { file: "{echo}" }
  auth: { apiKeys: { secretName: nowhere } }
"#;
    let dir = crate::harness::manifest_dir(manifests);
    let error = sluice_gateway::local::load_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("spec.auth.apiKeys.secretName"), "{error}");
    assert!(error.contains("default/nowhere"), "{error}");
    let short = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: nowhere }}\nstringData: {{ a: short }}\n---\n{manifests}"
    );
    let dir = crate::harness::manifest_dir(&short);
    let error = sluice_gateway::local::load_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("at least 32"), "{error}");
}

conformance!(api_keys, jwts);
