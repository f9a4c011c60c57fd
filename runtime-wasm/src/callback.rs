//! Delivers finished invocation records to `X-Callback-Url`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_api::InvocationRecord;
use tokio_util::task::TaskTracker;

/// Attempts per callback, with 1s, 2s, … between them.
const ATTEMPTS: u32 = 3;
/// Longest a callback receiver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a callback URL when the invocation is submitted, so that a bad
/// one is a 400 rather than a silent loss later.
pub fn validate_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("X-Callback-Url {url:?} is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => Err(format!(
            "X-Callback-Url {url:?}: https callbacks are not supported yet; use http"
        )),
        _ => Err(format!(
            "X-Callback-Url {url:?} must be an absolute http:// URL"
        )),
    }
}

/// Posts records to callback URLs, retrying failed deliveries a few times.
/// Deliveries run in the background; [`Callbacks::drain`] waits for them
/// before the process exits, since the record's message is already acked
/// and nothing would send it again.
#[derive(Clone, Debug)]
pub struct Callbacks {
    client: Client<HttpConnector, Full<Bytes>>,
    deliveries: TaskTracker,
}

impl Default for Callbacks {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
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
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {TIMEOUT:?}"),
                };
                tracing::warn!(invocation = %record.id, %url, attempt, %error, "callback delivery failed");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
        });
    }
}
