//! What the operator's benchmarks share: a kube client, the operator run
//! as a process under its ServiceAccount, and measures of processes (CPU
//! seconds, memory) and of samples (percentiles).

#![allow(dead_code)] // Each bench uses its part.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use sluice_api::Function;

pub const NAMESPACE: &str = "default";

/// A Function in [`NAMESPACE`] running the `hello` component from the
/// ConfigMap [`create_config_map`] makes, with `spec` (a JSON object)
/// merged over its module.
pub fn hello_function(name: &str, spec: serde_json::Value) -> Function {
    let mut full = serde_json::json!({
        "module": { "configMap": { "name": CONFIG_MAP, "key": KEY } },
    });
    if let (Some(full), serde_json::Value::Object(extra)) = (full.as_object_mut(), spec) {
        full.extend(extra);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": sluice_api::API_VERSION,
        "kind": sluice_api::KIND,
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": full,
    }))
    .expect("a Function")
}

/// A knob from the environment: `name` as a number, else `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Watches `api`, handing each object applied to `observe` with the
/// instant its event arrived; returns once the watch is established, so
/// that no change made afterwards is missed.
pub async fn watch_applied<K>(api: Api<K>, mut observe: impl FnMut(K, Instant) + Send + 'static)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    use futures::{StreamExt as _, TryStreamExt as _};
    use kube::runtime::{WatchStreamExt as _, watcher};
    let (established, is_established) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut established = Some(established);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.try_next().await.ok().flatten() {
            // Taken first: the instant the event arrived.
            let now = Instant::now();
            match event {
                watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                    observe(object, now);
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
    is_established.await.expect("the watch started");
}
pub const CONFIG_MAP: &str = "hello-wasm";
pub const KEY: &str = "hello.wasm";

/// A kube client as the cluster's admin, from the control plane's
/// kubeconfig.
pub async fn admin_client(kubeconfig: &Path) -> Client {
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
pub async fn warm_up(client: &Client, function: &Function) {
    Api::<Function>::namespaced(client.clone(), NAMESPACE)
        .create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            function,
        )
        .await
        .expect("a dry-run create of a Function");
}

/// The `hello` component in ConfigMap `hello-wasm`, key `hello.wasm`, as
/// `kubectl create configmap --from-file` would store it.
pub async fn create_config_map(client: &Client) {
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

/// `sluice-operator` run as its ServiceAccount; killed when dropped.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    pub binary: PathBuf,
    pub admin: SocketAddr,
    pub log: PathBuf,
    /// Holds the log unless `SLUICE_BENCH_LOG_DIR` keeps it.
    _logs: Option<tempfile::TempDir>,
}

impl Operator {
    pub fn start(kubeconfig: &Path, nats: &str, extra: &[&str]) -> Self {
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
            .args(extra)
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

    pub fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// Waits until the operator answers `/readyz` (it has connected to
    /// NATS and checked the CRD).
    pub async fn wait_ready(&self) {
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
    pub async fn reconciles(&self, at_least: usize) -> Reconciles {
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
    pub fn metrics(&self) -> Reconciles {
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
    pub fn fail(&self, what: &str) -> ! {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The operator's reconciles (of a Function's spec, not the finalizer's
/// first pass), from its metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reconciles {
    pub count: f64,
    pub seconds: f64,
    pub errors: f64,
}

impl Reconciles {
    pub fn since(self, before: &Self) -> Self {
        Self {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
            errors: self.errors - before.errors,
        }
    }

    pub fn describe(&self) -> String {
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
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub fn memory(pid: Option<u32>) -> Memory {
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

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The processes whose CPU time the burst reports.
#[derive(Debug)]
pub struct Pids {
    pub operator: Option<u32>,
    pub apiserver: Option<u32>,
    pub etcd: Option<u32>,
    /// It watches Functions too (garbage collector, quota).
    pub controller_manager: Option<u32>,
    pub nats: Option<u32>,
    pub bench: Option<u32>,
}

/// CPU seconds (user + system) per process, in [`Pids`]' order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu(pub [f64; 6]);

pub const CPU_NAMES: [&str; 6] = [
    "sluice-operator",
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "nats-server",
    "bench client",
];

impl Pids {
    pub fn cpu(&self) -> Cpu {
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
    pub fn since(self, before: &Self) -> Self {
        let mut delta = self;
        for (d, b) in delta.0.iter_mut().zip(before.0) {
            *d -= b;
        }
        delta
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The nearest-rank percentile `p` (0–100) of sorted `samples`.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// min / median / p90 / max of `samples` (sorted here).
pub fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "{:>10} {:>10} {:>10} {:>10}",
        ms(samples[0]),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 90.0)),
        ms(samples[samples.len() - 1]),
    )
}
