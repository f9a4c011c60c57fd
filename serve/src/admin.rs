//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::registry::Registry;

/// What a process's admin port serves: `/healthz` (always 200 while the
/// process serves), `/readyz` (200 once [`Admin::set_ready`], else 503)
/// and `/metrics` (the registry in the OpenMetrics text format).
#[derive(Debug)]
pub struct Admin {
    /// Behind a lock so that metrics whose source exists only later (the
    /// NATS connection, the engine) join the registry after the admin port
    /// serves, which it does while a process still waits for NATS.
    registry: RwLock<Registry>,
    ready: AtomicBool,
}

impl Admin {
    /// Serves `registry`'s metrics; not ready until told.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: RwLock::new(registry),
            ready: AtomicBool::new(false),
        }
    }

    /// Adds metrics to the registry already served (its prefix applies).
    pub fn register(&self, add: impl FnOnce(&mut Registry)) {
        add(&mut self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner));
    }

    /// Whether `/readyz` answers 200.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition of the registry.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Serves the admin endpoints on `listener` in the background until the
    /// returned service is shut down.
    pub fn spawn(self: Arc<Self>, listener: tokio::net::TcpListener) -> crate::Service {
        self.spawn_with_tls(listener, None)
    }

    /// The same over TLS when `tls` is given.
    pub fn spawn_with_tls(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<crate::ServerTls>,
    ) -> crate::Service {
        crate::Service::spawn(|stop| async move {
            self.serve(listener, tls, async {
                let _ = stop.await;
            })
            .await;
        })
    }

    /// Serves the admin endpoints on `listener` (over TLS when `tls` is
    /// given) until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<crate::ServerTls>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        crate::server::serve(
            listener,
            tls,
            Arc::new(move |request| {
                let response = self.handle(&request);
                async move { response }
            }),
            None,
            None,
            shutdown,
        )
        .await;
    }

    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match request.uri().path() {
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            "/readyz" if self.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready\n".to_owned(),
            ),
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.encode_metrics(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    }
}
