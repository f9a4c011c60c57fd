//! NATS mode as it is deployed: `sluice-gateway --nats` and `sluice-runtime`
//! as separate processes around a real nats-server, with runtimes and the
//! server killed, stopped and restarted under load.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use http::{Method, StatusCode};
use sluice_gateway::events::event_invocation_id;
use sluice_nats::layout::LayoutConfig;
use tokio::sync::Mutex;

use crate::harness::{
    ECHO_ON_ORDERS, HELLO, NatsStack, REFUSED_TWICE, Recorder, TestGateway, eventually,
    manifest_dir, stored_body,
};
use sluice_testing::NatsServer;

/// The gateway's JSON log line with the address it serves.
const GATEWAY_SERVING: &str = r#""message":"serving","addr""#;

/// A child process, killed when dropped; its stderr goes to a log file.
pub(crate) struct Process {
    child: Child,
    log: PathBuf,
}

/// Where the tests' callback receivers listen, refused unless allowed.
const LOOPBACK: &str = "127.0.0.0/8";

pub(crate) fn gateway_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice-gateway"))
}

/// `sluice-runtime` is built next to `sluice-gateway` (its package has
/// integration tests, so `cargo test --workspace` builds it).
pub(crate) fn runtime_binary() -> PathBuf {
    let path = gateway_binary().with_file_name("sluice-runtime");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p sluice-runtime`",
        path.display()
    );
    path
}

impl Process {
    pub(crate) fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub(crate) fn runtime(nats: &str, dir: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(runtime_binary());
        command
            .envs(env.iter().copied())
            .args([
                "--nats",
                nats,
                "--admin-listen",
                "127.0.0.1:0",
                "--egress-allow",
                LOOPBACK,
                "--log-json",
            ])
            .arg("--artifacts")
            .arg(dir.join("artifacts"));
        Self::spawn(command, dir.join(format!("{name}.log")))
    }

    /// Starts a gateway and returns it with the address it serves.
    pub(crate) async fn gateway(
        nats: &str,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> (Self, SocketAddr) {
        let mut command = Command::new(gateway_binary());
        command.envs(env.iter().copied()).args([
            "--nats",
            nats,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--egress-allow",
            LOOPBACK,
            "--log-json",
        ]);
        let process = Self::spawn(command, dir.join("gateway.log"));
        let line = process.wait_for_log(GATEWAY_SERVING).await;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = json["fields"]["addr"].as_str().unwrap().parse().unwrap();
        (process, addr)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 30s for a log line containing `needle`.
    pub(crate) async fn wait_for_log(&self, needle: &str) -> String {
        eventually(
            &format!("{} has a line with {needle}", self.log.display()),
            Duration::from_secs(30),
            async || {
                let text = self.log_text();
                let line = text.lines().find(|l| l.contains(needle)).map(str::to_owned);
                line.ok_or(text)
            },
        )
        .await
    }

    /// Waits up to `limit` for the process to exit.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let log = self.log.clone();
        let child = &mut self.child;
        eventually("the process exits", limit, async || {
            child
                .try_wait()
                .unwrap()
                .ok_or_else(|| std::fs::read_to_string(&log).unwrap_or_default())
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sleeps `/sleep/<ms>`: long enough that a runtime always holds some.
pub(crate) const SLOW: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: slow }
spec:
  module: { file: "{misbehave}" }
  timeout: 2s
  concurrency: 16
"#;

/// A nats-server with `manifests` published, runtime processes and a
/// gateway process, and a client of that gateway.
struct Cluster {
    stack: NatsStack,
    runtimes: Vec<Process>,
    _gateway: Process,
    gw: Arc<TestGateway>,
    _work: tempfile::TempDir,
}

impl Cluster {
    /// Starts `runtimes` runtimes and a gateway; returns once `function` is
    /// routed and served.
    async fn start(manifest: &str, runtimes: usize, function: &str) -> Self {
        Self::start_with_env(manifest, runtimes, function, &[]).await
    }

    /// The same, with `env` set for every process.
    async fn start_with_env(
        manifest: &str,
        runtimes: usize,
        function: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
        let work = tempfile::tempdir().unwrap();
        stack.publish_dir(manifest_dir(manifest).path()).await;
        let runtimes: Vec<Process> = (0..runtimes)
            .map(|i| {
                let name = format!("runtime-{i}");
                Process::runtime(&stack.server.url, work.path(), &name, env)
            })
            .collect();
        let (gateway, addr) = Process::gateway(&stack.server.url, work.path(), env).await;
        let gw = Arc::new(TestGateway::remote(addr));
        gw.wait_routed(function).await;
        for runtime in &runtimes {
            runtime.wait_for_log("\"message\":\"serving\"").await;
        }
        Self {
            stack,
            runtimes,
            _gateway: gateway,
            gw,
            _work: work,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_two_runtimes_serve_events_and_functions_added_later() {
    let cluster = Cluster::start(ECHO_ON_ORDERS, 2, "default/echo").await;
    let gw = &cluster.gw;
    // Core NATS drops what nobody subscribes to yet, so the event is sent
    // until it shows up; its id makes the copies one invocation.
    let client = async_nats::connect(&cluster.stack.server.url)
        .await
        .unwrap();
    let id = event_invocation_id(
        &"default/echo".parse().unwrap(),
        "orders.created",
        "order-17",
    );
    eventually(
        "the event is recorded",
        Duration::from_secs(30),
        async || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "order-17");
            headers.insert("Content-Type", "application/json");
            client
                .publish_with_headers("orders.created", headers, r#"{"order":17}"#.into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            match gw.get(&format!("/invocations/{id}")).await {
                reply if reply.status == StatusCode::OK => Ok(()),
                reply => Err(format!("{} {}", reply.status, reply.text())),
            }
        },
    )
    .await;
    let record = gw.wait_record(id.as_str()).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let seen = |name: &str| crate::harness::stored_header(&record, name);
    assert_eq!(seen("x-echo-method"), "POST", "{record}");
    assert_eq!(seen("x-echo-path"), "/", "{record}");
    assert_eq!(seen("x-echo-h-ce-specversion"), "1.0");
    assert_eq!(seen("x-echo-h-ce-id"), "order-17");
    assert_eq!(seen("x-echo-h-ce-type"), "dev.sluice.nats.message");
    assert_eq!(seen("x-echo-h-ce-subject"), "orders.created");
    let source = seen("x-echo-h-ce-source");
    assert!(
        source.starts_with("nats://127.0.0.1:") && source.ends_with("/orders.created"),
        "{source}"
    );
    let time = seen("x-echo-h-ce-time");
    assert!(humantime::parse_rfc3339(&time).is_ok(), "{time}");
    assert_eq!(seen("x-echo-h-content-type"), "application/json");
    let body = stored_body(&record);
    assert_eq!(body, br#"{"order":17}"#);

    // A function published while everything runs becomes callable.
    assert_eq!(
        gw.get("/fn/default/hello").await.status,
        StatusCode::NOT_FOUND
    );
    cluster.stack.publish_dir(manifest_dir(HELLO).path()).await;
    let reply = gw
        .wait_answer("/fn/default/hello", |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(reply.text(), "Hello from Sluice!\n");
}

/// Submits `total` async invocations of `path` from 16 concurrent clients
/// and returns the ids of those accepted (202). Requests refused while
/// NATS is away are sent again; `during` runs once `trigger_at` are
/// accepted. Gives up after 90s.
async fn submit_all(
    gw: Arc<TestGateway>,
    path: &'static str,
    total: usize,
    trigger_at: usize,
    during: impl FnOnce() + Send + 'static,
) -> Vec<String> {
    submit_all_with(vec![gw], path, total, vec![(trigger_at, Box::new(during))]).await
}

/// Something done to the system under load once so many are accepted.
pub(crate) type During = (usize, Box<dyn FnOnce() + Send>);

/// [`submit_all`] through any of `gateways` (a request one of them does
/// not take goes to the next), with any number of things done during it,
/// each on a blocking thread of its own once its count of accepted is
/// reached.
pub(crate) async fn submit_all_with(
    gateways: Vec<Arc<TestGateway>>,
    path: &'static str,
    total: usize,
    during: Vec<During>,
) -> Vec<String> {
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let issued = Arc::new(AtomicUsize::new(0));
    let during = Arc::new(std::sync::Mutex::new(during));
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let (gateways, accepted, issued, during) = (
                gateways.clone(),
                accepted.clone(),
                issued.clone(),
                during.clone(),
            );
            tokio::spawn(async move {
                let mut sent = client;
                while issued.fetch_add(1, Ordering::SeqCst) < total {
                    loop {
                        assert!(
                            started.elapsed() < Duration::from_secs(90),
                            "submitting took over 90s"
                        );
                        sent += 1;
                        let gw = &gateways[sent % gateways.len()];
                        let Some(reply) = gw.try_send(Method::POST, path, &[], "").await else {
                            // A gateway killed under load refuses the connection.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        match reply.status {
                            StatusCode::ACCEPTED => {
                                let id = reply.json()["id"].as_str().unwrap().to_owned();
                                let mut ids = accepted.lock().await;
                                ids.push(id);
                                let count = ids.len();
                                let mut waiting = during.lock().unwrap();
                                while let Some(at) = waiting.iter().position(|(at, _)| *at == count)
                                {
                                    let (_, run) = waiting.swap_remove(at);
                                    tokio::task::spawn_blocking(run);
                                }
                                break;
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            other => panic!("unexpected {other}: {}", reply.text()),
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    Arc::try_unwrap(accepted).unwrap().into_inner()
}

/// Waits until every id is final, checks that each has its own record and
/// succeeded, and returns the records.
pub(crate) async fn all_succeeded(gw: &TestGateway, ids: &[String]) -> Vec<serde_json::Value> {
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        records.push(gw.wait_record(id).await);
    }
    let distinct: HashSet<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "every accepted invocation has a record"
    );
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r["state"] != "succeeded")
        .collect();
    assert!(
        failed.is_empty(),
        "{} not succeeded, e.g. {}",
        failed.len(),
        failed[0]
    );
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_invocation_is_lost_when_a_runtime_is_killed() {
    let cluster = Cluster::start(SLOW, 2, "default/slow").await;
    let gw = cluster.gw.clone();
    let pid = cluster.runtimes[0].child.id().to_string();
    let ids = submit_all(
        gw.clone(),
        "/async/fn/default/slow/sleep/20",
        2000,
        700,
        move || {
            Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        },
    )
    .await;
    assert_eq!(ids.len(), 2000);
    let records = all_succeeded(&gw, &ids).await;
    // The kill really cut work short: what the victim held came back.
    let redelivered = records
        .iter()
        .filter(|r| r["attempts"].as_u64() > Some(1))
        .count();
    assert!(
        redelivered > 0,
        "the killed runtime held nothing; the test proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_invocation_is_lost_when_nats_restarts() {
    let mut cluster = Cluster::start(SLOW, 1, "default/slow").await;
    let gw = cluster.gw.clone();
    // The server is restarted from the test's thread pool while submits go on.
    let server = Arc::new(std::sync::Mutex::new(std::mem::replace(
        &mut cluster.stack.server,
        NatsServer::start(),
    )));
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (server2, restarted2) = (server.clone(), restarted.clone());
    let ids = submit_all(
        gw.clone(),
        "/async/fn/default/slow/sleep/5",
        2000,
        700,
        move || {
            server2.lock().unwrap().restart();
            restarted2.store(true, Ordering::SeqCst);
        },
    )
    .await;
    assert!(restarted.load(Ordering::SeqCst), "the server was restarted");
    assert_eq!(ids.len(), 2000);
    all_succeeded(&gw, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_stopped_under_load_finishes_what_it_holds_and_exits_0() {
    let mut cluster = Cluster::start(SLOW, 2, "default/slow").await;
    let gw = cluster.gw.clone();
    let stopped = &mut cluster.runtimes[0];
    let pid = stopped.child.id().to_string();
    let ids = submit_all(
        gw.clone(),
        "/async/fn/default/slow/sleep/50",
        600,
        200,
        move || {
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        },
    )
    .await;
    let status = stopped.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit {status}:\n{}", stopped.log_text());
    let records = all_succeeded(&gw, &ids).await;
    let redelivered: Vec<_> = records.iter().filter(|r| r["attempts"] != 1).collect();
    assert!(
        redelivered.is_empty(),
        "{} redelivered because of the shutdown, e.g. {}",
        redelivered.len(),
        redelivered[0]
    );
    let log = stopped.log_text();
    assert!(log.contains("draining"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_runtime_still_retries_the_callbacks_of_what_it_finished() {
    let recorder = Recorder::start().await;
    let mut cluster = Cluster::start(ECHO_ON_ORDERS, 1, "default/echo").await;
    let callback = format!("{}{REFUSED_TWICE}done", recorder.origin());
    let id = cluster
        .gw
        .submit(
            "/async/fn/default/echo/",
            &[("x-callback-url", &callback)],
            "cb",
        )
        .await;
    let path = format!("{REFUSED_TWICE}done");
    // The first two deliveries are refused; retries come 1s and 2s apart,
    // and the runtime is told to stop right after the first (it would
    // otherwise be gone in about a second).
    recorder.wait_for(&path, 1).await;
    let runtime = &mut cluster.runtimes[0];
    Command::new("kill")
        .args(["-TERM", &runtime.child.id().to_string()])
        .status()
        .unwrap();
    let status = runtime.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status}:\n{}", runtime.log_text());
    let delivered = recorder.received(&path);
    assert_eq!(
        delivered.len(),
        3,
        "the refused callback is retried until delivered before the runtime exits:\n{}",
        runtime.log_text()
    );
    let record: serde_json::Value = serde_json::from_slice(&delivered[2].body).unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_callbacks_reach_receivers_whose_ca_is_trusted_and_no_others() {
    let (trusted, ca) = Recorder::start_tls().await;
    let (untrusted, _) = Recorder::start_tls().await;
    let certs = tempfile::tempdir().unwrap();
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let cluster = Cluster::start_with_env(
        ECHO_ON_ORDERS,
        1,
        "default/echo",
        &[("SSL_CERT_FILE", ca_file)],
    )
    .await;
    let mut ids = Vec::new();
    for receiver in [&trusted, &untrusted] {
        let callback = format!("{}/done", receiver.origin());
        assert!(callback.starts_with("https://127.0.0.1:"), "{callback}");
        let id = cluster
            .gw
            .submit(
                "/async/fn/default/echo/",
                &[("x-callback-url", &callback)],
                "over tls",
            )
            .await;
        ids.push(id);
    }

    let delivered = trusted.wait_for("/done", 1).await;
    let record: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(record["id"], ids[0].as_str());
    assert_eq!(record["state"], "succeeded");
    let runtime = &cluster.runtimes[0];
    let refused = runtime.wait_for_log(&ids[1]).await;
    assert!(
        refused.contains("callback delivery failed") && refused.contains("certificate"),
        "{refused}"
    );
    assert!(untrusted.received("/done").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_dead_lettered_with_its_reason_and_serving_goes_on() {
    let gw = TestGateway::start(crate::harness::Backend::Nats, ECHO_ON_ORDERS).await;
    let stack = gw.nats.as_ref().unwrap();
    let js = jetstream::new(async_nats::connect(&stack.server.url).await.unwrap());
    js.publish("sluice.invoke.default.echo", "not an invocation".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let letters = gw
        .wait_answer("/dead-letters/default/echo", |r| {
            !r.json().as_array().unwrap().is_empty()
        })
        .await
        .json();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    assert_eq!(
        letters[0]["reason"],
        "malformed invocation message: missing header Sluice-Version"
    );
    assert_eq!(letters[0]["function"], "default/echo");
    assert!(letters[0].get("id").is_none(), "{letters}");
    // The stored letter keeps the original body.
    let dlq = js.get_stream("SLUICE_DEAD_LETTERS").await.unwrap();
    let raw = dlq
        .get_last_raw_message_by_subject("sluice.dlq.default.echo")
        .await
        .unwrap();
    assert_eq!(raw.payload.as_ref(), b"not an invocation");

    let reply = gw
        .send(Method::POST, "/fn/default/echo/", &[], "still here")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_gets_429_nats_down_503_and_the_gateway_recovers_by_itself() {
    let layout = LayoutConfig {
        max_queue_depth: 3,
        ..LayoutConfig::default()
    };
    let stack = NatsStack::without_runtime(layout).await;
    let dir = manifest_dir(HELLO);
    stack.publish_dir(dir.path()).await;
    let mut gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/hello").await;

    // No runtime takes anything: the fourth queued invocation is refused.
    for _ in 0..3 {
        let reply = gw
            .send(Method::POST, "/async/fn/default/hello", &[], "")
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    }
    let full = gw
        .send(Method::POST, "/async/fn/default/hello", &[], "")
        .await;
    assert_eq!(
        full.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        full.text()
    );
    assert_eq!(full.json()["error"], "queue_full");
    assert_eq!(full.json()["bound"], "depth");

    gw.nats.as_mut().unwrap().server.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for path in ["/async/fn/default/hello", "/fn/default/hello"] {
        let down = gw.send(Method::POST, path, &[], "").await;
        assert_eq!(
            down.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            down.text()
        );
        assert_eq!(down.json()["error"], "unavailable");
        assert!(down.json()["message"].as_str().unwrap().contains("NATS"));
    }

    gw.nats.as_mut().unwrap().server.restart();
    // Back with the queue as it was (file storage): full again.
    eventually(
        "the gateway reaches NATS again",
        Duration::from_secs(20),
        async || {
            let reply = gw
                .send(Method::POST, "/async/fn/default/hello", &[], "")
                .await;
            match reply.status {
                StatusCode::TOO_MANY_REQUESTS => Ok(()),
                StatusCode::SERVICE_UNAVAILABLE => Err(reply.text()),
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_on_nats_runs_a_folder_in_one_process_queued_on_the_server() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let dir = manifest_dir(HELLO);
    let mut command = Command::new(gateway_binary());
    command
        .args(["--nats", &nats.url, "--local"])
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-json",
        ]);
    let gateway = Process::spawn(command, work.path().join("gateway.log"));
    let line = gateway.wait_for_log(GATEWAY_SERVING).await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    let gw = TestGateway::remote(json["fields"]["addr"].as_str().unwrap().parse().unwrap());
    let reply = gw
        .wait_answer("/fn/default/hello", |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(reply.text(), "Hello from Sluice!\n");
    // It went through the server: the function's consumer exists there.
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let stream = js.get_stream("SLUICE_INVOCATIONS").await.unwrap();
    assert!(stream.consumer_info("fn_default_hello").await.is_ok());
}

/// A span as an OTLP collector received it.
#[derive(Clone, Debug)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP trace collector on loopback that keeps every span.
struct Collector {
    addr: SocketAddr,
    spans: Arc<std::sync::Mutex<Vec<ExportedSpan>>>,
}

impl Collector {
    async fn start() -> Self {
        use http_body_util::{BodyExt as _, Full};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use prost::Message as _;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<std::sync::Mutex<Vec<ExportedSpan>>> = Arc::default();
        let kept = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for resource in export.resource_spans {
                                    let service = resource
                                        .resource
                                        .iter()
                                        .flat_map(|r| &r.attributes)
                                        .find(|a| a.key == "service.name")
                                        .and_then(|a| a.value.as_ref()?.value.as_ref())
                                        .map(|v| match v {
                                            Value::StringValue(s) => s.clone(),
                                            other => format!("{other:?}"),
                                        })
                                        .unwrap_or_default();
                                    for span in
                                        resource.scope_spans.into_iter().flat_map(|s| s.spans)
                                    {
                                        kept.lock().unwrap().push(ExportedSpan {
                                            service: service.clone(),
                                            name: span.name,
                                            trace_id: hex::encode(span.trace_id),
                                            span_id: hex::encode(span.span_id),
                                            parent_span_id: hex::encode(span.parent_span_id),
                                        });
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    bytes::Bytes::new(),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, spans }
    }

    fn span(&self, service: &str, name: &str, trace_id: &str) -> Result<ExportedSpan, String> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .find(|s| s.service == service && s.name == name && s.trace_id == trace_id)
            .cloned()
            .ok_or_else(|| format!("no {service} span {name:?} in trace {trace_id}: {spans:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_runs_from_the_caller_through_gateway_and_runtime_into_the_function() {
    let collector = Collector::start().await;
    let endpoint = format!("http://{}", collector.addr);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let cluster = Cluster::start_with_env(ECHO_ON_ORDERS, 1, "default/echo", &env).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = cluster
        .gw
        .send(
            Method::GET,
            "/fn/default/echo/traced",
            &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.header("x-echo-h-traceparent").to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], trace_id, "the function is in the caller's trace");

    let (gateway, attempt) = eventually(
        "both spans are exported",
        Duration::from_secs(20),
        async || {
            Ok((
                collector.span("sluice-gateway", "invocation", trace_id)?,
                collector.span("sluice-runtime", "attempt", trace_id)?,
            ))
        },
    )
    .await;
    assert_eq!(gateway.parent_span_id, caller_span, "{gateway:?}");
    assert_eq!(attempt.parent_span_id, gateway.span_id, "{attempt:?}");
    assert_eq!(
        parts[2], attempt.span_id,
        "the function's parent is the attempt"
    );
}

/// A gateway started before its NATS server (as in a cluster where the
/// server's pod is slower) waits for it, alive and not ready, saying why,
/// then serves: no restart.
#[test]
fn a_gateway_started_before_nats_waits_for_it_and_then_serves() {
    let late = sluice_testing::LateNats::new();
    let dir = tempfile::tempdir().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], sluice_testing::free_port()));
    let mut command = Command::new(gateway_binary());
    command.args([
        "--nats",
        &late.url,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &admin.to_string(),
    ]);
    let mut gateway = Process::spawn(command, dir.path().join("gateway.log"));
    let log = gateway.log.clone();
    let _nats = late.check_waiting_then_start(
        admin,
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || {
            gateway
                .child
                .try_wait()
                .unwrap()
                .map(|status| status.code().unwrap_or(-1))
        },
    );
    assert!(
        gateway.log_text().contains("serving"),
        "{}",
        gateway.log_text()
    );
}
