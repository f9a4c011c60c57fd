//! Delivers finished invocation records to `X-Callback-Url`.
//!
//! Receivers are chosen by callers, so every delivery goes through the
//! egress guard (`sluice_serve::egress`): the connector's resolver refuses
//! names resolving to non-public addresses (unless the operator allow-lists
//! them) and connects only to the addresses it checked; an IP-address host
//! is checked before the request. Redirects are never followed: a 3xx
//! answer is a failed delivery, not retried, since following it would send
//! the record to an address the caller named after the checks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use sluice_api::InvocationRecord;
use sluice_api::callback::validate_url;
use sluice_api::egress::EgressPolicy;
use sluice_serve::egress::{
    EgressError, GuardedConnector, check_literal, guarded_connector, redact_query,
};
use sluice_serve::with_causes;
use tokio_util::task::TaskTracker;

/// Attempts per callback, with 1s, 2s, … between them.
const ATTEMPTS: u32 = 3;
/// The pause after a first failed delivery, doubling after each further one.
const CALLBACK_BACKOFF: Duration = Duration::from_secs(1);
/// Longest a callback receiver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries under way at once; past it a callback is dropped (counted
/// and logged): its record stays in `sluice-results` for the caller to
/// read, while a queue without bound would grow with every unreachable
/// receiver (each delivery may take ~40 s of attempts).
pub const MAX_PENDING: usize = 1024;

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
    /// Callbacks dropped at [`MAX_PENDING`].
    dropped: Counter,
}

impl Callbacks {
    /// Deliveries to the destinations `policy` allows.
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .build(guarded_connector(policy.clone(), None)),
            policy,
            deliveries: TaskTracker::new(),
            dropped: Counter::default(),
        }
    }

    /// Callbacks dropped because [`MAX_PENDING`] were under way (to
    /// register as a metric).
    pub fn dropped(&self) -> Counter {
        self.dropped.clone()
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

    /// Delivers `record` to `url` in the background, unless
    /// [`MAX_PENDING`] deliveries are under way.
    pub fn deliver(&self, url: String, record: InvocationRecord) {
        if self.deliveries.len() >= MAX_PENDING {
            self.dropped.inc();
            tracing::warn!(invocation = %record.id, %url, "callback dropped: {MAX_PENDING} deliveries are under way; the record stays readable at /invocations/<id>");
            return;
        }
        let client = self.client.clone();
        let policy = self.policy.clone();
        self.deliveries.spawn(async move {
            let Ok(uri) = validate_url(&url) else { return };
            let url = redact_query(&uri);
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
                tokio::time::sleep(sluice_api::backoff::doubling(
                    CALLBACK_BACKOFF,
                    Duration::MAX,
                    attempt,
                ))
                .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::InvocationId;
    use sluice_api::names::FunctionRef;

    use super::*;

    /// On a current-thread runtime no delivery runs before the test yields:
    /// all of them are under way at once.
    #[tokio::test]
    async fn past_max_pending_deliveries_a_callback_is_dropped_and_counted() {
        let callbacks = Callbacks::new(Arc::new(EgressPolicy::default()));
        let function = FunctionRef::new("default", "f").unwrap();
        for _ in 0..MAX_PENDING + 2 {
            let record = InvocationRecord::queued(InvocationId::random(), function.clone());
            callbacks.deliver("http://127.0.0.1:9/".into(), record);
        }
        assert_eq!(callbacks.deliveries.len(), MAX_PENDING);
        assert_eq!(callbacks.dropped().get(), 2);
    }
}
