//! How fast `sluice-operator` makes Functions Ready, and what it costs,
//! against a real control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager) and a real nats-server on loopback. The
//! operator runs as a process under its own ServiceAccount and RBAC, as in
//! its integration tests, without leader election.
//!
//! 1. **apply → Ready, one at a time**: with the `hello` component in a
//!    ConfigMap, N (default 30) Functions are created one after another; each
//!    is timed from just before its create call (through the kube API, not
//!    kubectl, so no process spawn is timed) until a watch on Functions
//!    delivers its `Ready=True` (pushed by the API server, so no polling
//!    interval is added). A first Function is created before them (1 s
//!    after the operator reports ready) and reported apart: it stores the
//!    component in NATS and warms up the operator's connections.
//! 2. **A burst**: M (default 500) Functions on the same ConfigMap created
//!    as fast as the API takes them (16 creates in flight), timed from the
//!    first create until the last of them is Ready. Alongside: the
//!    operator's memory (VmRSS before and after, VmHWM as its peak), the CPU
//!    seconds of the operator, the API server, etcd, nats-server and this
//!    bench over the burst, and the operator's reconciles from its own
//!    `/metrics`.
//!
//! Run with `cargo bench -p sluice-operator --bench reconcile`; it needs
//! the control plane's binaries (`SLUICE_KUBE_BIN`, or what
//! `scripts/k8s/tools.sh --cached-only` names) and nats-server
//! (`SLUICE_NATS_SERVER`, from `. scripts/nats-server.sh`). Knobs:
//! `SLUICE_BENCH_SEQUENTIAL` (N), `SLUICE_BENCH_BURST` (M),
//! `SLUICE_BENCH_IN_FLIGHT` (16), `SLUICE_OPERATOR_BIN` (another
//! operator binary, to compare builds), `SLUICE_BENCH_OPERATOR_LOG` (its
//! `RUST_LOG`, default `info`) and `SLUICE_BENCH_LOG_DIR` (keep its log
//! there instead of in a temporary folder).
//!
//! Not a test: nothing here asserts a time. It only fails when the setup
//! fails or a Function is not Ready within minutes. Every process it starts
//! is stopped when it ends, panics included (drop guards, and the control
//! plane's watchdog).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use sluice_api::Function;
use sluice_testing::{ControlPlane, NatsServer};
use tokio::sync::Notify;

const NAMESPACE: &str = "default";
const CONFIG_MAP: &str = "hello-wasm";
const KEY: &str = "hello.wasm";
/// How long one Function may take to become Ready before the bench gives
/// up (and how long the whole burst may take).
const PATIENCE: Duration = Duration::from_secs(600);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sequential = setting("SLUICE_BENCH_SEQUENTIAL", 30).max(1);
    let burst = setting("SLUICE_BENCH_BURST", 500).max(1);
    let in_flight = setting("SLUICE_BENCH_IN_FLIGHT", 16).max(1);
    // One thread: the bench's own client and watch should take as little
    // of the machine's CPU from the operator and the API server as they can.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let cluster = ControlPlane::start();
    let nats = NatsServer::start();
    let operator_kubeconfig = cluster.install_sluice();
    let client = tokio.block_on(admin_client(&cluster.kubeconfig));
    tokio.block_on(warm_up(&client));
    let operator = Operator::start(&operator_kubeconfig, &nats.url);
    let pids = Pids {
        operator: operator.pid(),
        apiserver: cluster.pid("kube-apiserver"),
        etcd: cluster.pid("etcd"),
        controller_manager: cluster.pid("kube-controller-manager"),
        nats: nats.pid(),
        bench: Some(std::process::id()),
    };

    tokio.block_on(async {
        let functions: Api<Function> = Api::namespaced(client.clone(), NAMESPACE);
        let ready = ReadyTimes::watch(functions.clone()).await;
        create_config_map(&client).await;
        operator.wait_ready().await;
        let startup_rss = memory(operator.pid());
        // Its watches' first lists arrive within a few hundred ms. The
        // ConfigMaps' maps hello-wasm to every Function in the store then,
        // and one that was just given its finalizer may be reconciled again
        // from a copy without it, whose finalizer patch the API server
        // refuses (422, a failed reconcile, retried): start-up, not what is
        // measured here.
        tokio::time::sleep(Duration::from_secs(1)).await;

        // The first Function: stores the component in NATS, opens the
        // operator's connections.
        let first = create_and_wait(&functions, &ready, "first", &operator).await;

        // 1. One at a time.
        let metrics_before = operator.reconciles(1).await;
        let mut latencies = Vec::with_capacity(sequential);
        for i in 0..sequential {
            let latency = create_and_wait(&functions, &ready, &format!("seq-{i}"), &operator).await;
            latencies.push(latency);
        }
        let metrics_after = operator.reconciles(1 + sequential).await;
        let sequential_reconciles = metrics_after.since(&metrics_before);

        // 2. The burst.
        let metrics_before = metrics_after;
        let memory_before = memory(operator.pid());
        let cpu_before = pids.cpu();
        let names: Vec<String> = (0..burst).map(|i| format!("burst-{i:04}")).collect();
        let started = Instant::now();
        let created_at: Vec<(String, Instant)> = futures::stream::iter(names.iter())
            .map(|name| {
                let functions = functions.clone();
                async move {
                    let at = Instant::now();
                    create(&functions, name).await;
                    (name.clone(), at)
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let all_created = started.elapsed();
        let last_ready = tokio::time::timeout(PATIENCE, ready.all(&names))
            .await
            .unwrap_or_else(|_| {
                operator.fail(&format!(
                    "{} of {burst} burst Functions Ready after {PATIENCE:?}",
                    ready.count(&names)
                ))
            });
        let all_ready = last_ready - started;
        let cpu = pids.cpu().since(&cpu_before);
        let memory_after = memory(operator.pid());
        let burst_reconciles = operator
            .reconciles(1 + sequential + burst)
            .await
            .since(&metrics_before);
        let burst_latencies: Vec<Duration> = created_at
            .iter()
            .map(|(name, at)| ready.at(name).expect("every burst Function is Ready") - *at)
            .collect();

        print_report(Report {
            operator: &operator,
            load,
            sequential,
            burst,
            in_flight,
            startup_rss,
            first,
            latencies,
            sequential_reconciles,
            all_created,
            all_ready,
            burst_latencies,
            memory_before,
            memory_after,
            cpu,
            burst_reconciles,
        });
    });
    // The operator first, before the servers it talks to go away.
    drop(operator);
}

/// A kube client as the cluster's admin, from the control plane's
/// kubeconfig.
async fn admin_client(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("the admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kube config");
    Client::try_from(config).expect("a kube client")
}

/// Lets the API server settle from the CRD's installation before anything
/// is timed: a Function created within a second or two after the CRD is
/// Established takes it about 2 s to admit (a server-side dry run too),
/// one created a few seconds later milliseconds. That is the API server's
/// start-up for a new resource type, not the operator's. A dry run waits
/// it out and stores nothing.
async fn warm_up(client: &Client) {
    Api::<Function>::namespaced(client.clone(), NAMESPACE)
        .create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            &function("warm-up"),
        )
        .await
        .expect("a dry-run create of a Function");
}

/// The `hello` component in ConfigMap `hello-wasm`, key `hello.wasm`, as
/// `kubectl create configmap --from-file` would store it.
async fn create_config_map(client: &Client) {
    let wasm = std::fs::read(sluice_examples::component("hello")).expect("the hello component");
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP.into()),
            ..ObjectMeta::default()
        },
        binary_data: Some([(KEY.to_owned(), ByteString(wasm))].into()),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &config_map)
        .await
        .expect("cannot create the ConfigMap");
}

/// A pool Function running `hello` from the ConfigMap.
fn function(name: &str) -> Function {
    serde_json::from_value(serde_json::json!({
        "apiVersion": sluice_api::API_VERSION,
        "kind": sluice_api::KIND,
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "module": { "configMap": { "name": CONFIG_MAP, "key": KEY } },
            "env": [ { "name": "GREETING", "value": "Hello" } ],
        },
    }))
    .expect("a Function")
}

async fn create(functions: &Api<Function>, name: &str) {
    functions
        .create(&PostParams::default(), &function(name))
        .await
        .unwrap_or_else(|e| panic!("cannot create Function {name}: {e}"));
}

/// Creates Function `name` and waits until it is Ready: the time from just
/// before the create call until the watch delivered `Ready=True`.
async fn create_and_wait(
    functions: &Api<Function>,
    ready: &ReadyTimes,
    name: &str,
    operator: &Operator,
) -> Duration {
    let started = Instant::now();
    create(functions, name).await;
    let at = tokio::time::timeout(PATIENCE, ready.wait(name))
        .await
        .unwrap_or_else(|_| {
            operator.fail(&format!(
                "Function {name} not Ready after {PATIENCE:?} (last Ready condition: {:?})",
                ready.last_reason(name)
            ))
        });
    at - started
}

/// When each Function was first seen `Ready=True`, from one watch on the
/// namespace's Functions.
#[derive(Debug, Default)]
struct ReadyTimes {
    state: Mutex<ReadyState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct ReadyState {
    ready: HashMap<String, Instant>,
    /// The last Ready reason seen per Function, to say why one is late.
    reasons: HashMap<String, String>,
}

impl ReadyTimes {
    /// Starts watching; returns once the watch is established, so that no
    /// Function created afterwards is missed.
    async fn watch(functions: Api<Function>) -> Arc<Self> {
        let times = Arc::new(Self::default());
        let (established, is_established) = tokio::sync::oneshot::channel();
        let recorder = times.clone();
        tokio::spawn(async move {
            let mut established = Some(established);
            let mut events = watcher(functions, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.try_next().await.ok().flatten() {
                // Taken first: the instant the event arrived.
                let now = Instant::now();
                match event {
                    watcher::Event::Apply(f) | watcher::Event::InitApply(f) => {
                        recorder.observe(&f, now);
                    }
                    watcher::Event::InitDone => {
                        if let Some(established) = established.take() {
                            let _ = established.send(());
                        }
                    }
                    watcher::Event::Init | watcher::Event::Delete(_) => {}
                }
            }
        });
        is_established
            .await
            .expect("the watch on Functions started");
        times
    }

    fn observe(&self, function: &Function, now: Instant) {
        let Some(condition) = function
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        else {
            return;
        };
        let name = function.name_any();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.reasons.insert(
            name.clone(),
            format!("{} {}", condition.status, condition.reason),
        );
        if condition.status == "True" {
            state.ready.entry(name).or_insert(now);
            drop(state);
            self.changed.notify_waiters();
        }
    }

    fn at(&self, name: &str) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.ready.get(name).copied()
    }

    fn count(&self, names: &[String]) -> usize {
        names.iter().filter(|n| self.at(n).is_some()).count()
    }

    fn last_reason(&self, name: &str) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.reasons.get(name).cloned()
    }

    /// When Function `name` became Ready, once it has.
    async fn wait(&self, name: &str) -> Instant {
        loop {
            // Registered before the check, so a notification between the
            // check and the await is not lost.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(at) = self.at(name) {
                return at;
            }
            notified.await;
        }
    }

    /// When the last of `names` became Ready, once all have.
    async fn all(&self, names: &[String]) -> Instant {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let times: Option<Vec<Instant>> = names.iter().map(|n| self.at(n)).collect();
            if let Some(last) = times.and_then(|t| t.into_iter().max()) {
                return last;
            }
            notified.await;
        }
    }
}

/// `sluice-operator` run as its ServiceAccount; killed when dropped.
#[derive(Debug)]
struct Operator {
    child: Child,
    binary: PathBuf,
    admin: SocketAddr,
    log: PathBuf,
    /// Holds the log unless `SLUICE_BENCH_LOG_DIR` keeps it.
    _logs: Option<tempfile::TempDir>,
}

impl Operator {
    fn start(kubeconfig: &Path, nats: &str) -> Self {
        let binary = std::env::var_os("SLUICE_OPERATOR_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_sluice-operator")),
            PathBuf::from,
        );
        let (logs, dir) = match std::env::var_os("SLUICE_BENCH_LOG_DIR") {
            Some(dir) => {
                std::fs::create_dir_all(&dir).expect("SLUICE_BENCH_LOG_DIR can be made");
                (None, PathBuf::from(dir))
            }
            None => {
                let temp = tempfile::tempdir().expect("a temporary folder");
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let log = dir.join("sluice-operator.log");
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(&binary)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .args(["--nats", nats])
            .args(["--admin-listen", &admin.to_string()])
            // One replica: leader election would only add the wait for the
            // Lease before the first reconcile.
            .args(["--leader-elect", "false"])
            .args(["--gateway-url", "http://gateway.bench:8080"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child,
            binary,
            admin,
            log,
            _logs: logs,
        }
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// Waits until the operator answers `/readyz` (it has connected to
    /// NATS and checked the CRD).
    async fn wait_ready(&self) {
        let started = Instant::now();
        while sluice_testing::http::get(self.admin, "/readyz")
            .is_none_or(|(status, _)| status != 200)
        {
            if started.elapsed() > Duration::from_secs(60) {
                self.fail("the operator did not become ready in 60s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its reconcile counters once they count at least `at_least` (or
    /// after 10 s): a reconcile is counted after its Events are
    /// published, a few ms after the Function's Ready is.
    async fn reconciles(&self, at_least: usize) -> Reconciles {
        let started = Instant::now();
        loop {
            let reconciles = self.metrics();
            if reconciles.count >= at_least as f64 || started.elapsed() > Duration::from_secs(10) {
                return reconciles;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its reconcile counters, from `/metrics`.
    fn metrics(&self) -> Reconciles {
        let (_, text) = sluice_testing::http::get(self.admin, "/metrics").unwrap_or_default();
        let value = |name: &str| {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        Reconciles {
            // Every result: ready, not_ready and error.
            count: value("sluice_operator_reconciles_total"),
            seconds: value("sluice_operator_reconcile_duration_seconds_sum"),
            errors: value("sluice_operator_reconciles_total{result=\"error\"}"),
        }
    }

    /// Panics with `what` and the end of the operator's log.
    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{what}; the operator's log ends:\n{}", tail.join("\n"));
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The operator's reconciles (of a Function's spec, not the finalizer's
/// first pass), from its metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Reconciles {
    count: f64,
    seconds: f64,
    errors: f64,
}

impl Reconciles {
    fn since(self, before: &Self) -> Self {
        Self {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
            errors: self.errors - before.errors,
        }
    }

    fn describe(&self) -> String {
        let mean = if self.count > 0.0 {
            self.seconds / self.count * 1e3
        } else {
            0.0
        };
        format!(
            "{} reconciles ({} failed), {mean:.1} ms each on average",
            self.count, self.errors
        )
    }
}

/// VmRSS and VmHWM of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    peak: u64,
}

fn memory(pid: Option<u32>) -> Memory {
    let status = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The processes whose CPU time the burst reports.
#[derive(Debug)]
struct Pids {
    operator: Option<u32>,
    apiserver: Option<u32>,
    etcd: Option<u32>,
    /// It watches Functions too (garbage collector, quota).
    controller_manager: Option<u32>,
    nats: Option<u32>,
    bench: Option<u32>,
}

/// CPU seconds (user + system) per process, in [`Pids`]' order.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu([f64; 6]);

const CPU_NAMES: [&str; 6] = [
    "sluice-operator",
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "nats-server",
    "bench client",
];

impl Pids {
    fn cpu(&self) -> Cpu {
        let ticks = clock_ticks();
        let seconds = |pid: Option<u32>| {
            pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
                .and_then(|stat| {
                    // Fields after the command name (which may hold
                    // spaces, so split after its closing parenthesis):
                    // utime and stime are the 14th and 15th of the line.
                    let rest = stat.rsplit_once(')')?.1;
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    let utime: f64 = fields.get(11)?.parse().ok()?;
                    let stime: f64 = fields.get(12)?.parse().ok()?;
                    Some((utime + stime) / ticks)
                })
                .unwrap_or(f64::NAN)
        };
        Cpu([
            seconds(self.operator),
            seconds(self.apiserver),
            seconds(self.etcd),
            seconds(self.controller_manager),
            seconds(self.nats),
            seconds(self.bench),
        ])
    }
}

impl Cpu {
    fn since(self, before: &Self) -> Self {
        let mut delta = self;
        for (d, b) in delta.0.iter_mut().zip(before.0) {
            *d -= b;
        }
        delta
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The nearest-rank percentile `p` (0–100) of sorted `samples`.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// min / median / p90 / max of `samples` (sorted here).
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "{:>10} {:>10} {:>10} {:>10}",
        ms(samples[0]),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 90.0)),
        ms(samples[samples.len() - 1]),
    )
}

struct Report<'a> {
    operator: &'a Operator,
    /// `/proc/loadavg`'s first three fields: how busy the machine was.
    load: String,
    sequential: usize,
    burst: usize,
    in_flight: usize,
    startup_rss: Memory,
    first: Duration,
    latencies: Vec<Duration>,
    sequential_reconciles: Reconciles,
    all_created: Duration,
    all_ready: Duration,
    burst_latencies: Vec<Duration>,
    memory_before: Memory,
    memory_after: Memory,
    cpu: Cpu,
    burst_reconciles: Reconciles,
}

fn print_report(mut r: Report<'_>) {
    println!(
        "sluice-operator reconcile bench ({})",
        r.operator.binary.display()
    );
    println!(
        "machine: {} CPUs, load average {} at the start",
        std::thread::available_parallelism().map_or(0, usize::from),
        r.load
    );
    println!();
    println!(
        "1. create → Ready, one Function at a time (create via the kube API, Ready=True from a watch)"
    );
    println!("   first Function (stores the component)   {}", ms(r.first));
    println!(
        "   {:<37} {:>10} {:>10} {:>10} {:>10}",
        "", "min", "median", "p90", "max"
    );
    println!(
        "   {:<37} {}",
        format!("next {} Functions", r.sequential),
        summary(&mut r.latencies)
    );
    println!("   operator: {}", r.sequential_reconciles.describe());
    println!();
    println!(
        "2. {} Functions created at once ({} creates in flight)",
        r.burst, r.in_flight
    );
    println!(
        "   all created after                        {:>10.2} s",
        r.all_created.as_secs_f64()
    );
    println!(
        "   all Ready after (from the first create)  {:>10.2} s",
        r.all_ready.as_secs_f64()
    );
    println!(
        "   {:<37} {:>10} {:>10} {:>10} {:>10}",
        "", "min", "median", "p90", "max"
    );
    println!(
        "   {:<37} {}",
        "each create → its Ready",
        summary(&mut r.burst_latencies)
    );
    println!("   operator: {}", r.burst_reconciles.describe());
    println!(
        "   operator memory: VmRSS {} at start, {} before the burst, {} after; peak (VmHWM) {}",
        mib(r.startup_rss.rss),
        mib(r.memory_before.rss),
        mib(r.memory_after.rss),
        mib(r.memory_after.peak),
    );
    println!("   CPU seconds over the burst (until all Ready):");
    for (name, seconds) in CPU_NAMES.iter().zip(r.cpu.0) {
        println!("     {name:<24} {seconds:>7.2} s");
    }
    // Against the wall time: how much of the machine they had.
    let total: f64 = r.cpu.0.iter().sum();
    println!(
        "     {:<24} {total:>7.2} s ({:.2} CPUs busy on average)",
        "all of these",
        total / r.all_ready.as_secs_f64()
    );
}
