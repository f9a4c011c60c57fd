//! Delivers finished invocation records to `X-Callback-Url`.
//!
//! Receivers are chosen by callers, so every delivery goes through the
//! egress guard (`sluice_serve::egress`): the connector's resolver refuses
//! names resolving to non-public addresses (unless the operator allow-lists
//! them) and connects only to the addresses it checked; an IP-address host
//! is checked before the request. Redirects are never followed: a 3xx
//! answer is a failed delivery, not retried, since following it would send
//! the record to an address the caller named after the checks.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use sluice_api::InvocationRecord;
use sluice_api::callback::validate_url;
use sluice_api::egress::EgressPolicy;
use sluice_serve::egress::{EgressError, GuardedResolver, check_literal};
use tokio_util::task::TaskTracker;

/// Attempts per callback, with 1s, 2s, … between them.
const ATTEMPTS: u32 = 3;
/// Longest a callback receiver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate authorities https callbacks are checked against: the
/// system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace them, as for
/// OpenSSL), or Mozilla's bundled roots where the system has none, as in a
/// distroless image.
fn trusted_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "skipping unreadable CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "skipping CA certificates rustls cannot use");
    }
    if added == 0 {
        tracing::info!("no system CA certificates; trusting Mozilla's roots for https callbacks");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// Reading and parsing the system's CA certificates takes milliseconds:
/// done once per process, however many queues deliver callbacks.
pub(crate) static TLS: LazyLock<ClientConfig> = LazyLock::new(|| {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring implements the default TLS versions")
        .with_root_certificates(trusted_roots())
        .with_no_client_auth()
});

/// The connector of every caller-chosen destination: TLS with
/// [`TLS`]'s roots, names resolved by the egress guard, and
/// `connect_timeout` when given.
pub(crate) type GuardedConnector = HttpsConnector<HttpConnector<GuardedResolver>>;

pub(crate) fn guarded_connector(
    policy: Arc<EgressPolicy>,
    connect_timeout: Option<Duration>,
) -> GuardedConnector {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy));
    // hyper-rustls needs the connector to accept https:// URIs.
    http.enforce_http(false);
    http.set_connect_timeout(connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(TLS.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// hyper's client errors say only "client error (Connect)"; the reason a
/// receiver was unreachable, such as its certificate, is in their sources.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Posts records to callback URLs, retrying failed deliveries a few times
/// (a refused destination or a redirect never). Deliveries run in the
/// background; [`Callbacks::drain`] waits for them before the process
/// exits, since the record's message is already acked and nothing would
/// send it again.
#[derive(Clone, Debug)]
pub struct Callbacks {
    client: Client<GuardedConnector, Full<Bytes>>,
    policy: Arc<EgressPolicy>,
    deliveries: TaskTracker,
}

impl Callbacks {
    /// Deliveries to the destinations `policy` allows.
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .build(guarded_connector(policy.clone(), None)),
            policy,
            deliveries: TaskTracker::new(),
        }
    }

    /// Waits up to `grace` for deliveries in flight, retries included.
    /// Returns how many were still unfinished and are given up.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.deliveries.close();
        match tokio::time::timeout(grace, self.deliveries.wait()).await {
            Ok(()) => 0,
            Err(_) => self.deliveries.len(),
        }
    }

    /// Delivers `record` to `url` in the background.
    pub fn deliver(&self, url: String, record: InvocationRecord) {
        let client = self.client.clone();
        let policy = self.policy.clone();
        self.deliveries.spawn(async move {
            let Ok(uri) = validate_url(&url) else { return };
            let given_up = |attempt: u32, error: &dyn std::fmt::Display| {
                tracing::warn!(invocation = %record.id, %url, attempt, %error, retry = false, "callback delivery failed");
            };
            if let Some(Err(refused)) = uri.host().and_then(|host| check_literal(host, &policy)) {
                return given_up(0, &refused);
            }
            let body = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            for attempt in 1..=ATTEMPTS {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("x-sluice-invocation-id", record.id.as_str())
                    .body(Full::new(body.clone()));
                let Ok(request) = request else { return };
                let error = match tokio::time::timeout(TIMEOUT, client.request(request)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => return,
                    Ok(Ok(resp)) if resp.status().is_redirection() => {
                        let error = format!(
                            "receiver answered {}; callbacks do not follow redirects",
                            resp.status()
                        );
                        return given_up(attempt, &error);
                    }
                    Ok(Ok(resp)) => format!("receiver answered {}", resp.status()),
                    Ok(Err(e)) => match EgressError::find(&e) {
                        Some(refused) if refused.is_refusal() => return given_up(attempt, refused),
                        _ => with_causes(&e),
                    },
                    Err(_) => format!("no answer within {TIMEOUT:?}"),
                };
                tracing::warn!(invocation = %record.id, %url, attempt, %error, "callback delivery failed");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
        });
    }
}
