//! How fast the autoscaler acts and what its ticks cost, against a real
//! control plane (etcd, kube-apiserver with RBAC, kube-controller-manager)
//! and a real nats-server on loopback, with the operator run as a process
//! under its own ServiceAccount and RBAC, without leader election.
//!
//! 1. **From the first invocation at zero to the scale written**: T
//!    (default 100) dedicated Functions of `hello`, with `scaleDownDelay`
//!    and `scaleToZeroAfter` of `0s`, are created and left to reach zero
//!    replicas. Then each gets one invocation in turn (a JetStream publish
//!    on its subject, 200 ms apart), timed from just before the publish
//!    until a watch on Deployments delivers the function's Deployment at
//!    `spec.replicas: 1` (pushed by the API server, so no polling interval
//!    is added; the watch's own delivery is included). With the operator's
//!    tick at 1 s, what the scale waits on is the subscription it holds
//!    while a function is at zero, not the tick.
//! 2. **A tick's cost with N Functions**: N (default 1,000) more Functions
//!    (pool placement: registered, no Deployment) join them; then for S
//!    (default 30) seconds the operator is left to tick. Reported: the
//!    requests it sent to NATS per tick (nats-server's `in_msgs` from its
//!    monitoring endpoint over the operator's own tick count: the paged
//!    consumer listing, and anything else it sent meanwhile) and its CPU
//!    as a share of one core (ticks and everything else it did: watches,
//!    its admin server).
//!
//! Run with `cargo bench -p sluice-operator --bench autoscale`; it needs
//! what the `reconcile` bench needs (`SLUICE_KUBE_BIN`,
//! `SLUICE_NATS_SERVER`). Knobs: `SLUICE_BENCH_TRIALS` (T),
//! `SLUICE_BENCH_FUNCTIONS` (N), `SLUICE_BENCH_SECONDS` (S),
//! `SLUICE_OPERATOR_BIN`, `SLUICE_BENCH_OPERATOR_LOG`,
//! `SLUICE_BENCH_LOG_DIR`.
//!
//! Not a test: nothing here asserts a time; it fails only when the setup
//! does. Every process it starts is stopped when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use sluice_api::Function;
use sluice_api::names::FunctionRef;
use sluice_testing::{ControlPlane, NatsServer};
use tokio::sync::Notify;

mod common;
use common::*;

/// How long the setup may take at any step before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(600);

/// A Function of `placement` that goes to zero as soon as it is idle.
fn function(name: &str, placement: &str) -> Function {
    hello_function(
        name,
        serde_json::json!({
            "placement": placement,
            "scaling": { "scaleDownDelay": "0s", "scaleToZeroAfter": "0s" },
        }),
    )
}

fn main() {
    let trials = setting("SLUICE_BENCH_TRIALS", 100).max(1);
    let registered = setting("SLUICE_BENCH_FUNCTIONS", 1000);
    let seconds = setting("SLUICE_BENCH_SECONDS", 30).max(1);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cluster = ControlPlane::start();
    let monitoring = free_port();
    let nats =
        NatsServer::with_config(&format!("max_payload: 8MB\nhttp: 127.0.0.1:{monitoring}\n"));
    let operator_kubeconfig = cluster.install_sluice();
    let client = tokio.block_on(admin_client(&cluster.kubeconfig));
    tokio.block_on(warm_up(&client, &function("warm-up", "pool")));
    let operator = Operator::start(
        &operator_kubeconfig,
        &nats.url,
        &["--autoscale-interval", "1s"],
    );
    let pids = Pids {
        operator: operator.pid(),
        apiserver: None,
        etcd: None,
        controller_manager: None,
        nats: None,
        bench: None,
    };
    tokio.block_on(async {
        create_config_map(&client).await;
        operator.wait_ready().await;
        let deployments = Scales::watch(Api::namespaced(client.clone(), NAMESPACE)).await;
        let functions: Api<Function> = Api::namespaced(client.clone(), NAMESPACE);
        let nats_client = async_nats::connect(&nats.url).await.expect("NATS");
        let js = async_nats::jetstream::new(nats_client);

        // 1. Scale from zero.
        let names: Vec<String> = (0..trials).map(|i| format!("wake-{i:03}")).collect();
        create_all(&functions, &names, "dedicated").await;
        let runtimes: Vec<String> = names.iter().map(|n| format!("{n}-runtime")).collect();
        tokio::time::timeout(PATIENCE, deployments.all_at(&runtimes, 0))
            .await
            .unwrap_or_else(|_| operator.fail("the dedicated Deployments did not reach zero"));
        let mut latencies = Vec::with_capacity(trials);
        for (name, runtime) in names.iter().zip(&runtimes) {
            let subject = FunctionRef::new(NAMESPACE, name)
                .expect("a function name")
                .invoke_subject();
            let started = Instant::now();
            js.publish(subject, "bench".into())
                .await
                .expect("a publish")
                .await
                .expect("stored");
            let at = tokio::time::timeout(PATIENCE, deployments.at(runtime, 1))
                .await
                .unwrap_or_else(|_| operator.fail(&format!("{runtime} was not scaled up")));
            latencies.push(at.saturating_duration_since(started));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (wakes, wake_seconds) = operator_histogram(
            &operator,
            "sluice_autoscaler_decision_latency_seconds",
            r#"trigger="wake""#,
        );

        // 2. A tick's cost.
        let pool: Vec<String> = (0..registered).map(|i| format!("pool-{i:04}")).collect();
        create_all(&functions, &pool, "pool").await;
        wait_registered(&js, trials + registered, &operator).await;
        // Let the creations' reconciles finish before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ticks_before = operator_histogram(&operator, "sluice_autoscaler_tick_duration_seconds", "");
        let msgs_before = in_msgs(monitoring);
        let cpu_before = pids.cpu();
        tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
        let cpu = pids.cpu().since(&cpu_before).0[0];
        let msgs = in_msgs(monitoring) - msgs_before;
        let ticks_after = operator_histogram(&operator, "sluice_autoscaler_tick_duration_seconds", "");
        let ticks = ticks_after.0 - ticks_before.0;
        let tick_seconds = ticks_after.1 - ticks_before.1;

        latencies.sort();
        println!("sluice-operator autoscale bench ({})", operator.binary.display());
        println!(
            "machine: {} CPUs",
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        println!();
        println!(
            "1. first invocation at zero → Deployment scaled to 1 (publish → watch event), {trials} trials"
        );
        println!(
            "   p50 {}   p90 {}   p99 {}   max {}",
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 90.0)),
            ms(percentile(&latencies, 99.0)),
            ms(latencies[latencies.len() - 1]),
        );
        if wakes > 0.0 {
            println!(
                "   the operator's own account: {wakes} woken by their first invocation, {} from it to the scale written on average",
                ms(Duration::from_secs_f64(wake_seconds / wakes))
            );
        }
        println!();
        println!(
            "2. ticks with {} Functions registered, over {seconds} s",
            trials + registered
        );
        if ticks > 0.0 {
            println!(
                "   {ticks} ticks, {:.1} requests to NATS per tick, {} per tick on average",
                msgs as f64 / ticks,
                ms(Duration::from_secs_f64(tick_seconds / ticks))
            );
        }
        println!(
            "   operator CPU {:.2} % of one core",
            cpu / seconds as f64 * 100.0
        );
    });
    drop(operator);
}

/// Creates `names`, 16 at a time.
async fn create_all(functions: &Api<Function>, names: &[String], placement: &str) {
    futures::stream::iter(names)
        .map(|name| {
            let functions = functions.clone();
            async move {
                functions
                    .create(&PostParams::default(), &function(name, placement))
                    .await
                    .unwrap_or_else(|e| panic!("cannot create Function {name}: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// Waits until the invocation stream has `count` consumers (every function
/// registered).
async fn wait_registered(js: &async_nats::jetstream::Context, count: usize, operator: &Operator) {
    let started = Instant::now();
    loop {
        let stream = js
            .get_stream(sluice_api::names::INVOCATION_STREAM)
            .await
            .expect("the invocation stream");
        let consumers = stream.consumer_names().count().await;
        if consumers >= count {
            return;
        }
        if started.elapsed() > PATIENCE {
            operator.fail(&format!("{consumers} of {count} functions registered"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `(count, sum)` of one of the operator's histograms, summed over the
/// series whose labels contain `labels`.
fn operator_histogram(operator: &Operator, name: &str, labels: &str) -> (f64, f64) {
    let (_, text) = sluice_testing::http::get(operator.admin, "/metrics").unwrap_or_default();
    let value = |suffix: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{suffix}")) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("_count"), value("_sum"))
}

/// nats-server's count of messages received from clients.
fn in_msgs(monitoring: u16) -> u64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], monitoring));
    let (_, body) = sluice_testing::http::get(addr, "/varz").expect("nats-server's /varz");
    // Sent chunked: the JSON is between the chunk framing.
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .map_or("", |(start, end)| &body[start..=end]);
    let varz: serde_json::Value = serde_json::from_str(json).expect("JSON");
    varz["in_msgs"].as_u64().expect("in_msgs")
}

/// Every Deployment's `spec.replicas`, and when the watch delivered each
/// change, from one watch on the namespace.
#[derive(Default)]
struct Scales {
    seen: Mutex<HashMap<String, (i32, Instant)>>,
    changed: Notify,
}

impl Scales {
    async fn watch(api: Api<Deployment>) -> Arc<Self> {
        let scales = Arc::new(Self::default());
        let recorder = scales.clone();
        watch_applied(api, move |d: Deployment, now| {
            let replicas = d.spec.replicas.unwrap_or(1);
            let mut seen = recorder.seen.lock().unwrap_or_else(|p| p.into_inner());
            let entry = seen.entry(d.name_any()).or_insert((replicas, now));
            if entry.0 != replicas {
                *entry = (replicas, now);
            }
            drop(seen);
            recorder.changed.notify_waiters();
        })
        .await;
        scales
    }

    /// When Deployment `name` was last seen changing to `replicas`, once
    /// it is at them.
    async fn at(&self, name: &str, replicas: i32) -> Instant {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some((r, at)) = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                && *r == replicas
            {
                return *at;
            }
            notified.await;
        }
    }

    /// Once every one of `names` is at `replicas`.
    async fn all_at(&self, names: &[String], replicas: i32) {
        for name in names {
            self.at(name, replicas).await;
        }
    }
}
