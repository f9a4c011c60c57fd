//! Delivers finished invocation records to `X-Callback-Url`.

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
static TLS: LazyLock<ClientConfig> = LazyLock::new(|| {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring implements the default TLS versions")
        .with_root_certificates(trusted_roots())
        .with_no_client_auth()
});

fn client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(TLS.clone())
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
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

/// Posts records to callback URLs, retrying failed deliveries a few times.
/// Deliveries run in the background; [`Callbacks::drain`] waits for them
/// before the process exits, since the record's message is already acked
/// and nothing would send it again.
#[derive(Clone, Debug)]
pub struct Callbacks {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    deliveries: TaskTracker,
}

impl Default for Callbacks {
    fn default() -> Self {
        Self {
            client: client(),
            deliveries: TaskTracker::new(),
        }
    }
}

impl Callbacks {
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
        self.deliveries.spawn(async move {
            let Ok(uri) = validate_url(&url) else { return };
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
                    Ok(Ok(resp)) => format!("receiver answered {}", resp.status()),
                    Ok(Err(e)) => with_causes(&e),
                    Err(_) => format!("no answer within {TIMEOUT:?}"),
                };
                tracing::warn!(invocation = %record.id, %url, attempt, %error, "callback delivery failed");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
        });
    }
}
