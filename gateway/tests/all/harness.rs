//! Starting gateways from inline manifests, and talking HTTP to them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_gateway::local::{self, LocalConfig, LocalGateway};
use tokio::net::TcpListener;

/// Manifests may say `{hello}`, `{echo}` or `{misbehave}` where a
/// component path goes.
pub fn with_components(manifests: &str) -> String {
    ["hello", "echo", "misbehave"]
        .iter()
        .fold(manifests.to_owned(), |text, name| {
            text.replace(
                &format!("{{{name}}}"),
                &sluice_examples::component(name).display().to_string(),
            )
        })
}

pub fn loopback_config(dir: &std::path::Path) -> LocalConfig {
    let mut config = LocalConfig::new(dir);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

pub struct TestGateway {
    pub gateway: Option<LocalGateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

impl TestGateway {
    /// Starts a gateway serving `manifests` (see [`with_components`]).
    pub async fn start(manifests: &str) -> Self {
        Self::start_with(manifests, |_| {}).await
    }

    pub async fn start_with(manifests: &str, configure: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("functions.yaml"),
            with_components(manifests),
        )
        .unwrap();
        let mut config = loopback_config(dir.path());
        configure(&mut config);
        let gateway = local::start(config).await.expect("gateway starts");
        Self {
            addr: gateway.addr,
            admin: gateway.admin_addr,
            gateway: Some(gateway),
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.send_to(self.addr, method, path, headers, body).await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.send_to(self.admin, Method::GET, path, &[], Bytes::new())
            .await
    }

    async fn send_to(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .expect("the gateway answers within a minute")
            .expect("the request goes through");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    /// Polls an invocation until it is final (long-polling), at most 30s.
    pub async fn wait_final(&self, id: &str) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let reply = self.get(&format!("/invocations/{id}?wait=5s")).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let record = reply.json();
            let state = record["state"].as_str().unwrap().to_owned();
            if !["queued", "running"].contains(&state.as_str()) {
                return record;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "still {state} after 30s: {record}"
            );
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            tokio::spawn(gateway.shutdown());
        }
    }
}

/// A request a [`Recorder`] received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP server on loopback that records every request and answers 200.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                let at = Instant::now();
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                log.lock().unwrap().push(Recorded {
                                    at,
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    body,
                                });
                                Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, requests }
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self, path: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits up to 30s for `count` requests to `path`.
    pub async fn wait_for(&self, path: &str, count: usize) -> Vec<Recorded> {
        let started = Instant::now();
        loop {
            let got = self.received(path);
            if got.len() >= count {
                return got;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} of {count} requests to {path} after 30s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Counts metric samples by their full name-and-labels line prefix.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
