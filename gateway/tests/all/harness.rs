//! Starting gateways from inline manifests, and talking HTTP to them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_api::egress::EgressPolicy;
use sluice_api::names::FunctionRef;
use sluice_gateway::local::{self, LocalConfig};
use sluice_gateway::nats::{self as nats_mode, NatsConfig};
use sluice_gateway::running::RunningGateway;
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_nats::publish::Publisher;
use sluice_runtime::node::{self, Node, NodeConfig};
use tokio::net::TcpListener;

use sluice_testing::NatsServer;

/// Calls `check` every 50ms until it succeeds, for at most `limit`; then
/// fails naming `what` and the last state `check` reported.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(
                started.elapsed() < limit,
                "{what}: not after {limit:?}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `hello`, with nothing but its component.
pub const HELLO: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: "{hello}" }
"#;

/// `echo`, also triggered by NATS messages on `orders.created`.
pub const ECHO_ON_ORDERS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo }
spec:
  module: { file: "{echo}" }
  triggers: { nats: [ { subject: orders.created } ] }
"#;

/// Which queue a test gateway runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Local mode: in-process queue and runtime.
    Local,
    /// NATS mode: a real nats-server, the gateway and a runtime node (in
    /// this process) talking only through it.
    Nats,
    /// NATS mode on a stock nats-server: 1 MiB `max_payload`, as most
    /// clusters run it (the other NATS tests use 8 MB).
    NatsStock,
}

impl Backend {
    /// The largest request body the gateway takes on this backend: the
    /// default, or in NATS mode what the server's `max_payload` carries
    /// besides the headers.
    pub fn max_request_body(self) -> usize {
        let default = sluice_gateway::http::DEFAULT_MAX_REQUEST_BODY;
        match self {
            Self::Local | Self::Nats => default,
            Self::NatsStock => default.min(STOCK_MAX_PAYLOAD - sluice_nats::PAYLOAD_HEADROOM),
        }
    }
}

/// nats-server's default `max_payload`.
pub const STOCK_MAX_PAYLOAD: usize = 1 << 20;

/// Runs each named `async fn(Backend)` once per backend: the conformance
/// suite, same cases and same expected outcomes on both queues. Cases
/// listed after `sizes:` run on a stock (1 MiB `max_payload`) nats-server
/// too, where the limits are tighter.
macro_rules! conformance {
    (sizes: $($case:ident),* $(,)?) => {
        $crate::harness::conformance!(@on [local Local, nats Nats, nats_stock NatsStock] $($case),*);
    };
    (@on $backends:tt $($case:ident),*) => {$(
        mod $case {
            $crate::harness::conformance!(@tests $case $backends);
        }
    )*};
    (@tests $case:ident [$($test:ident $backend:ident),*]) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            super::$case($crate::harness::Backend::$backend).await
        }
    )*};
    ($($case:ident),* $(,)?) => {
        $crate::harness::conformance!(@on [local Local, nats Nats] $($case),*);
    };
}
pub(crate) use conformance;

/// The egress policy of test gateways and runtimes unless a test says
/// otherwise: their callback receivers and outbound targets listen on
/// loopback, which the default policy refuses.
pub fn loopback_egress() -> Arc<EgressPolicy> {
    Arc::new(EgressPolicy::parse(&["127.0.0.0/8", "::1"], &[]).unwrap())
}

/// The NATS side of a NATS-mode test gateway.
pub struct NatsStack {
    pub server: NatsServer,
    pub node: Option<Node>,
    pub publisher: Publisher,
    pub layout: Layout,
    /// The layout's settings, which gateways on it get too.
    pub settings: LayoutConfig,
    /// The egress policy of gateways on it (and of its runtime node, unless
    /// changed after it started). Default: [`loopback_egress`].
    pub egress: Arc<EgressPolicy>,
    /// Whether its runtime node compiles registered components ahead of
    /// their first invocation ([`NodeConfig::precompile_registered`]).
    /// Default: true, as the runtime's.
    pub precompile: bool,
    _artifacts: tempfile::TempDir,
}

impl NatsStack {
    /// Starts a nats-server and a runtime node serving its registry.
    pub async fn start() -> Self {
        Self::with_runtime(NatsServer::start()).await
    }

    /// The same on `server`.
    pub async fn with_runtime(server: NatsServer) -> Self {
        Self::with_runtime_egress(server, loopback_egress()).await
    }

    /// The same with `egress` for the runtime and the gateways.
    pub async fn with_runtime_egress(server: NatsServer, egress: Arc<EgressPolicy>) -> Self {
        let mut stack = Self::on_server(server, LayoutConfig::default()).await;
        stack.egress = egress;
        stack.start_runtime().await;
        stack
    }

    /// Starts a runtime node serving the registry, with the stack's egress
    /// policy.
    pub async fn start_runtime(&mut self) {
        let mut config = NodeConfig::new(&self.server.url);
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.artifacts = Some(self._artifacts.path().to_owned());
        config.precompile_registered = self.precompile;
        config.runtime.egress = self.egress.clone();
        // Boxed: a test's future sits on its thread's stack, and the node's
        // start is large in a debug build.
        self.node = Some(
            Box::pin(node::start(config))
                .await
                .expect("the runtime node starts"),
        );
    }

    /// Starts a nats-server and creates the layout with `layout`'s limits;
    /// no runtime serves anything.
    pub async fn without_runtime(layout: LayoutConfig) -> Self {
        Self::on_server(NatsServer::start(), layout).await
    }

    /// The same on `server`.
    pub async fn on_server(server: NatsServer, layout: LayoutConfig) -> Self {
        let artifacts = tempfile::tempdir().unwrap();
        let client = sluice_nats::connect(&server.url, "test-publisher", &Default::default())
            .await
            .unwrap();
        let settings = layout;
        let layout = Layout::reconcile(client, &settings).await.unwrap().layout;
        Self {
            server,
            node: None,
            publisher: Publisher::new(layout.clone()),
            layout,
            settings,
            egress: loopback_egress(),
            precompile: true,
            _artifacts: artifacts,
        }
    }

    pub async fn publish_dir(&self, dir: &std::path::Path) {
        publish_dir(&self.publisher, dir).await;
    }

    /// Waits up to 30s until this stack's runtime serves `function`.
    pub async fn wait_serving(&self, function: &FunctionRef) {
        wait_serving(
            self.node.as_ref().expect("a runtime in this stack"),
            function,
        )
        .await;
    }
}

/// Waits up to 30s until `node` serves `function` (its worker starts at
/// the function's first invocation).
pub async fn wait_serving(node: &Node, function: &FunctionRef) {
    eventually(
        &format!("a runtime serves {function}"),
        Duration::from_secs(30),
        async || {
            node.serves(function)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
}

/// Publishes the functions of the manifests in `dir` with `publisher`.
pub async fn publish_dir(publisher: &Publisher, dir: &std::path::Path) {
    for f in local::load_dir(dir).expect("the manifests load") {
        publisher
            .publish(&f.function, &f.spec, &f.api_keys, &f.wasm)
            .await
            .expect("the function publishes");
    }
}

/// Manifests may say `{hello}`, `{echo}` or `{misbehave}`, or one of the
/// Python and JavaScript examples (`{hello-py}`, `{events-py}`,
/// `{hello-js}`), where a component path goes.
pub fn with_components(manifests: &str) -> String {
    let rust = ["hello", "echo", "misbehave"]
        .iter()
        .fold(manifests.to_owned(), |text, name| {
            text.replace(
                &format!("{{{name}}}"),
                &sluice_examples::component(name).display().to_string(),
            )
        });
    sluice_examples::POLYGLOT.iter().fold(rust, |text, name| {
        let placeholder = format!("{{{name}}}");
        if !text.contains(&placeholder) {
            return text;
        }
        text.replace(
            &placeholder,
            &sluice_examples::polyglot_component(name)
                .display()
                .to_string(),
        )
    })
}

pub fn loopback_config(dir: &std::path::Path) -> LocalConfig {
    let mut config = LocalConfig::new(dir);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.egress = loopback_egress();
    config.runtime.egress = loopback_egress();
    config
}

pub struct TestGateway {
    pub gateway: Option<RunningGateway>,
    pub nats: Option<NatsStack>,
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

/// A folder holding `manifests` (see [`with_components`]) as a manifest file.
pub fn manifest_dir(manifests: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("functions.yaml"),
        with_components(manifests),
    )
    .unwrap();
    dir
}

impl TestGateway {
    /// Starts a gateway serving `manifests` (see [`with_components`]) on
    /// `backend`. In NATS mode it returns once the gateway routes every
    /// function; invocations sent before a runtime pulls wait in the stream.
    pub async fn start(backend: Backend, manifests: &str) -> Self {
        Self::start_egress(backend, manifests, loopback_egress(), loopback_egress()).await
    }

    /// The same with `gateway` as the gateway's egress policy (checked at
    /// submit) and `runtime` as the runtime's (checked when connecting).
    pub async fn start_egress(
        backend: Backend,
        manifests: &str,
        gateway: Arc<EgressPolicy>,
        runtime: Arc<EgressPolicy>,
    ) -> Self {
        match backend {
            Backend::Local => {
                Self::start_with(manifests, |c| {
                    c.http.egress = gateway;
                    c.runtime.egress = runtime;
                })
                .await
            }
            Backend::Nats | Backend::NatsStock => {
                let dir = manifest_dir(manifests);
                let server = if backend == Backend::NatsStock {
                    NatsServer::with_config("")
                } else {
                    NatsServer::start()
                };
                let mut stack = NatsStack::with_runtime_egress(server, runtime).await;
                stack.egress = gateway;
                stack.publish_dir(dir.path()).await;
                let gateway = Self::on_nats(stack, dir).await;
                for f in local::load_dir(gateway._dir.path()).unwrap() {
                    gateway.wait_routed(&f.function.to_string()).await;
                    if let Some(stack) = &gateway.nats {
                        stack.wait_serving(&f.function).await;
                    }
                }
                gateway
            }
        }
    }

    /// A client of a gateway running elsewhere (another process).
    pub fn remote(addr: SocketAddr) -> Self {
        Self {
            addr,
            admin: addr,
            gateway: None,
            nats: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A NATS-mode gateway on `stack`'s server.
    pub async fn on_nats(stack: NatsStack, dir: tempfile::TempDir) -> Self {
        // Boxed: the test's future sits on its thread's stack.
        Box::pin(Self::on_nats_with(stack, dir, |_| {})).await
    }

    /// The same with adjusted settings.
    pub async fn on_nats_with(
        stack: NatsStack,
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut NatsConfig),
    ) -> Self {
        let mut config = NatsConfig::new(&stack.server.url);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.egress = stack.egress.clone();
        // The stack made the layout with the test's settings and owns it.
        config.own_layout = false;
        config.layout = stack.settings.clone();
        configure(&mut config);
        let gateway = Box::pin(nats_mode::start(config))
            .await
            .expect("gateway starts");
        Self {
            addr: gateway.addr,
            admin: gateway.admin_addr,
            gateway: Some(gateway),
            nats: Some(stack),
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }

    /// A local-mode gateway with adjusted settings.
    pub async fn start_with(manifests: &str, configure: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = manifest_dir(manifests);
        let mut config = loopback_config(dir.path());
        configure(&mut config);
        let gateway = local::start(config).await.expect("gateway starts");
        Self {
            addr: gateway.addr,
            admin: gateway.admin_addr,
            gateway: Some(gateway),
            nats: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }

    /// Waits up to 30s until the gateway routes `function` (`ns/name`).
    pub async fn wait_routed(&self, function: &str) {
        self.wait_routed_within(function, Duration::from_secs(30))
            .await;
    }

    /// Waits up to `limit` until the gateway routes `function`.
    pub async fn wait_routed_within(&self, function: &str, limit: Duration) {
        let path = format!("/dead-letters/{function}");
        eventually(
            &format!("the gateway routes {function}"),
            limit,
            // A function behind spec.auth answers 401 when routed.
            async || match self.get(&path).await {
                reply if reply.status == StatusCode::OK => Ok(()),
                reply if reply.status == StatusCode::UNAUTHORIZED => Ok(()),
                reply => Err(format!("{} {}", reply.status, reply.text())),
            },
        )
        .await;
    }

    /// Waits up to 10s until a sync `GET path` (which must answer 200) goes
    /// straight to a warm runtime, leaving the invocation stream untouched:
    /// a worker subscribes for direct calls after its first pull, which
    /// the first call through the stream brings. NATS mode only.
    pub async fn wait_direct(&self, path: &str) {
        let mut invocations = self.nats.as_ref().unwrap().layout.invocations.clone();
        eventually(
            "a sync call passes the stream by",
            Duration::from_secs(10),
            async || {
                let before = invocations.info().await.unwrap().state.last_sequence;
                let reply = self.get(path).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                let after = invocations.info().await.unwrap().state.last_sequence;
                (after == before)
                    .then_some(())
                    .ok_or(format!("queued: sequence {before} -> {after}"))
            },
        )
        .await;
    }

    /// Waits up to 30s until `GET path` answers what `done` accepts.
    pub async fn wait_answer(&self, path: &str, done: impl Fn(&Reply) -> bool) -> Reply {
        eventually(
            &format!("GET {path} gives the expected answer"),
            Duration::from_secs(30),
            async || match self.get(path).await {
                reply if done(&reply) => Ok(reply),
                reply => Err(format!("{} {}", reply.status, reply.text())),
            },
        )
        .await
    }

    /// Waits up to 30s until the invocation `id` exists and is final; unlike
    /// [`Self::wait_final`], a 404 (not accepted yet) is waited out.
    pub async fn wait_record(&self, id: &str) -> serde_json::Value {
        self.wait_answer(&format!("/invocations/{id}?wait=5s"), |reply| {
            reply.status == StatusCode::OK
                && !["queued", "running"].contains(&reply.json()["state"].as_str().unwrap_or(""))
        })
        .await
        .json()
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

    /// POSTs an asynchronous invocation to `path`, checks the 202 and
    /// returns the invocation id.
    pub async fn submit(&self, path: &str, headers: &[(&str, &str)], body: &str) -> String {
        let reply = self
            .send(Method::POST, path, headers, body.to_owned())
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
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
        self.try_send_to(addr, method, path, headers, body)
            .await
            .expect("the request goes through")
    }

    /// [`Self::send`] to a gateway that may be gone: `None` when the
    /// request or its answer does not go through (refused, reset).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Option<Reply> {
        self.try_send_to(self.addr, method, path, headers, body)
            .await
    }

    async fn try_send_to(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Option<Reply> {
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
            .ok()?;
        let (parts, body) = response.into_parts();
        Some(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.ok()?.to_bytes(),
        })
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    /// Waits up to 10 minutes for the async invocation `id` to succeed:
    /// a runtime compiles a component on its first use, which takes
    /// minutes for a large one on a busy machine with a debug build.
    pub async fn wait_succeeded(&self, id: &str) -> serde_json::Value {
        let record = eventually(
            &format!("invocation {id} finishes"),
            Duration::from_secs(600),
            async || {
                let reply = self.get(&format!("/invocations/{id}?wait=20s")).await;
                let record = reply.json();
                match record["state"].as_str() {
                    Some("queued" | "running") | None => Err(reply.text()),
                    Some(_) => Ok(record),
                }
            },
        )
        .await;
        assert_eq!(record["state"], "succeeded", "{record}");
        record
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
        if let Some(node) = self.nats.as_mut().and_then(|n| n.node.take()) {
            tokio::spawn(node.shutdown());
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

/// The first two requests to a path under this prefix get 503, later ones
/// 200.
pub const REFUSED_TWICE: &str = "/refused-twice/";

/// A request to `/redirect/<host:port>/<path>` gets 302 with `Location:
/// http://<host:port>/<path>`.
pub const REDIRECT: &str = "/redirect/";

/// Requests to a path under this prefix are recorded as they arrive and
/// answered 10 ms later: a function calling one takes that long.
pub const SLOW: &str = "/slow/";

/// Requests to a path under this prefix get 503 until [`Recorder::fix`].
pub const BROKEN_UNTIL_FIXED: &str = "/broken-until-fixed/";

/// An HTTP server on loopback that records every request and answers 200
/// (see [`REFUSED_TWICE`] and [`REDIRECT`]).
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    scheme: &'static str,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    fixed: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    pub async fn start() -> Self {
        Self::serve(Ipv4Addr::LOCALHOST, None).await
    }

    /// The same on another loopback address, such as 127.0.0.2.
    pub async fn start_on(ip: Ipv4Addr) -> Self {
        assert!(ip.is_loopback(), "tests listen on loopback only");
        Self::serve(ip, None).await
    }

    /// The same over TLS, with a certificate for 127.0.0.1 from a CA of its
    /// own; returns it with that CA's certificate (PEM).
    pub async fn start_tls() -> (Self, String) {
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ca.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ca.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (
            Self::serve(Ipv4Addr::LOCALHOST, Some(acceptor)).await,
            ca.cert.pem(),
        )
    }

    async fn serve(ip: Ipv4Addr, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let fixed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let log = requests.clone();
        let switch = fixed.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let tls = tls.clone();
                let fixed = switch.clone();
                tokio::spawn(async move {
                    match tls {
                        None => record_connection(stream, log, fixed).await,
                        // A client that refuses the certificate ends here.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                record_connection(stream, log, fixed).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            scheme,
            requests,
            fixed,
        }
    }

    /// From now on, [`BROKEN_UNTIL_FIXED`] paths answer 200.
    pub fn fix(&self) {
        self.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
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

async fn record_connection(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    log: Arc<Mutex<Vec<Recorded>>>,
    fixed: Arc<std::sync::atomic::AtomicBool>,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let log = log.clone();
        let broken = !fixed.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            let at = Instant::now();
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let path = parts.uri.path().to_owned();
            let slow = path.starts_with(SLOW);
            let (status, location) = {
                let mut log = log.lock().unwrap();
                let seen = log.iter().filter(|r| r.path == path).count();
                let status = if seen < 2 && path.starts_with(REFUSED_TWICE)
                    || broken && path.starts_with(BROKEN_UNTIL_FIXED)
                {
                    StatusCode::SERVICE_UNAVAILABLE
                } else if path.starts_with(REDIRECT) {
                    StatusCode::FOUND
                } else {
                    StatusCode::OK
                };
                let location = path
                    .strip_prefix(REDIRECT)
                    .map(|target| format!("http://{target}"));
                log.push(Recorded {
                    at,
                    path,
                    headers: parts.headers,
                    body,
                });
                (status, location)
            };
            if slow {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            *response.status_mut() = status;
            if let Some(location) = location {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location.parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The response headers of an invocation record (JSON), as the function
/// sent them.
pub fn stored_headers(record: &serde_json::Value) -> HeaderMap {
    let response: sluice_api::StoredResponse = serde_json::from_value(record["response"].clone())
        .unwrap_or_else(|e| panic!("{e}: {record}"));
    response.header_map().expect("stored headers are valid")
}

/// The response body of an invocation record (JSON), as the function sent
/// it.
pub fn stored_body(record: &serde_json::Value) -> Vec<u8> {
    let response: sluice_api::StoredResponse = serde_json::from_value(record["response"].clone())
        .unwrap_or_else(|e| panic!("{e}: {record}"));
    response
        .body_bytes()
        .unwrap_or_else(|| panic!("the stored body is not base64: {record}"))
}

/// One stored response header as text ("" when absent).
pub fn stored_header(record: &serde_json::Value, name: &str) -> String {
    stored_headers(record)
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
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

/// The API key of [`GUARDED_PAIR`]'s `guarded`.
pub const GUARDED_KEY: &str = "key-for-guarded-0123456789abcdef012345678";
/// The API key of [`GUARDED_PAIR`]'s `other`.
pub const OTHER_KEY: &str = "key-for-other-0123456789abcdef0123456789a";

/// Two `misbehave` functions, `guarded` and `other`, each behind its own
/// API key ([`GUARDED_KEY`], [`OTHER_KEY`]): for the cases where a
/// caller of one must not reach the other.
pub const GUARDED_PAIR: &str = r#"
apiVersion: v1
kind: Secret
metadata: { name: guarded-keys }
stringData: { ci: "key-for-guarded-0123456789abcdef012345678" }
---
apiVersion: v1
kind: Secret
metadata: { name: other-keys }
stringData: { ci: "key-for-other-0123456789abcdef0123456789a" }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: guarded }
spec:
  module: { file: "{misbehave}" }
  auth: { apiKeys: { secretName: guarded-keys } }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: other }
spec:
  module: { file: "{misbehave}" }
  auth: { apiKeys: { secretName: other-keys } }
"#;
