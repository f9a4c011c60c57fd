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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use sluice_api::Function;
use sluice_testing::{ControlPlane, NatsServer};
use tokio::sync::Notify;

mod common;
use common::*;

/// How long one Function may take to become Ready before the bench gives
/// up (and how long the whole burst may take).
const PATIENCE: Duration = Duration::from_secs(600);

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
    tokio.block_on(warm_up(&client, &function("warm-up")));
    let operator = Operator::start(&operator_kubeconfig, &nats.url, &[]);
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

/// A pool Function running `hello` from the ConfigMap.
fn function(name: &str) -> Function {
    hello_function(
        name,
        serde_json::json!({ "env": [ { "name": "GREETING", "value": "Hello" } ] }),
    )
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
        let recorder = times.clone();
        watch_applied(functions, move |f, now| recorder.observe(&f, now)).await;
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
