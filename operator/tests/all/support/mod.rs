//! The operator's integration harness: a real control plane and
//! nats-server per test, the CRD and the operator's RBAC applied from the
//! repository, the operator run as a process under its ServiceAccount (so
//! a missing permission fails a test), and real gateway and runtime
//! processes to invoke what it registers. Everything listens on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use sluice_testing::{
    ControlPlane, Kubelet, NatsServer, NatsUser, SLUICE_NAMESPACE, SecureNats, repo_root,
};

pub mod http;
pub mod monitoring_crds;
pub mod registry;

/// Namespace of the operator's ServiceAccount and Lease.
pub const OPERATOR_NAMESPACE: &str = SLUICE_NAMESPACE;

/// Control planes running at once in this test binary: each holds an
/// etcd, an API server and a controller-manager on a 2-core machine.
const CONCURRENT_CLUSTERS: usize = 2;
static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// A place among [`CONCURRENT_CLUSTERS`], given back when dropped.
pub struct Slot;

impl Slot {
    /// Waits for a place; hold it as long as the control plane runs.
    pub fn take() -> Self {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= CONCURRENT_CLUSTERS {
            running = FREED.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// Polls `check` until it gives `Some`, at most `limit`; panics naming
/// `what` otherwise.
pub fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process, killed when dropped; its stderr goes to a log file.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
    /// Where it serves `/metrics`, when the harness chose it.
    pub admin: Option<SocketAddr>,
}

impl Process {
    /// Starts `command`, its stderr into `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("a log file");
        let child = command
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("cannot start a Sluice binary");
        Self {
            child: Some(child),
            log,
            admin: None,
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit code once the process has exited (`-1` for a signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok()??;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The path of a Sluice binary built with the tests.
pub fn binary(name: &str) -> PathBuf {
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_sluice-operator"));
    if name == "sluice-operator" {
        return operator;
    }
    // Built beside it: their packages have integration tests, so
    // `cargo test --workspace` builds them.
    let path = operator.with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p sluice-gateway -p sluice-runtime`",
        path.display()
    );
    path
}

pub use sluice_testing::free_port;

/// A cluster with Sluice's CRD and RBAC, and a NATS server, for one test.
pub struct Sluice {
    pub cluster: ControlPlane,
    pub nats: NatsServer,
    /// The NATS credentials and TLS files of each part (the environment
    /// behind its `--nats-*` flags), by part; empty for a plain server.
    nats_env: Vec<(&'static str, Vec<(String, String)>)>,
    /// The operator's ServiceAccount kubeconfig.
    operator_kubeconfig: PathBuf,
    logs: tempfile::TempDir,
    _slot: Slot,
}

impl Sluice {
    pub fn start() -> Self {
        Self::on(NatsServer::start(), Vec::new())
    }

    /// The same with NATS as a careful deployment runs it: TLS with client
    /// certificates, and the operator, gateway and runtime each its own
    /// user with its set from `charts/sluice/files/nats-permissions.conf`.
    pub fn start_secure() -> Self {
        let parts = [
            ("operator", "$SLUICE_OPERATOR"),
            ("gateway", "$SLUICE_GATEWAY"),
            ("events", "$SLUICE_EVENTS"),
            ("runtime", "$SLUICE_RUNTIME"),
        ]
        .map(|(name, permissions)| NatsUser {
            name,
            permissions: Some(permissions),
        });
        let nats = SecureNats::start(
            &repo_root().join("charts/sluice/files/nats-permissions.conf"),
            &parts,
        );
        let env = parts.map(|part| (part.name, nats.env(part.name)));
        Self::on(nats.server, env.to_vec())
    }

    fn on(nats: NatsServer, nats_env: Vec<(&'static str, Vec<(String, String)>)>) -> Self {
        let slot = Slot::take();
        let cluster = ControlPlane::start();
        let operator_kubeconfig = cluster.install_sluice();
        Self {
            cluster,
            nats,
            nats_env,
            operator_kubeconfig,
            logs: tempfile::tempdir().expect("a temporary folder"),
            _slot: slot,
        }
    }

    /// Starts `sluice-operator` as its ServiceAccount, with a short Lease
    /// (`lease` seconds) so that takeovers are quick, plus `extra` flags
    /// (`--nats` among them replaces this test's server).
    pub fn operator(&self, name: &str, lease: u64, extra: &[&str]) -> Process {
        let mut command = Command::new(binary("sluice-operator"));
        command.envs(self.nats_env_of("operator"));
        if !extra.contains(&"--nats") {
            command.args(["--nats", &self.nats.url]);
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        command
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("POD_NAME", name)
            .args(["--admin-listen", &admin.to_string()])
            .args(["--lease-namespace", OPERATOR_NAMESPACE])
            .args(["--lease-duration", &format!("{lease}s")])
            .args(["--gateway-url", "http://gateway.test:8080"])
            .args(["--runtime-image", "registry.test/sluice-runtime:test"])
            .args(extra);
        let mut process = Process::spawn(command, self.logs.path().join(format!("{name}.log")));
        process.admin = Some(admin);
        process
    }

    /// Starts a NATS-mode gateway; returns it (its `/metrics` address in
    /// `admin`) and its invocation address.
    pub fn gateway(&self) -> (Process, SocketAddr) {
        self.gateway_named("gateway")
    }

    /// The same, logging to `<name>.log`, for a test running more than
    /// one.
    pub fn gateway_named(&self, name: &str) -> (Process, SocketAddr) {
        self.start_gateway(name, &self.nats.url, &[])
    }

    /// [`Sluice::gateway`] on the NATS servers of `nats` (comma-separated),
    /// plus `extra` flags.
    pub fn gateway_on(&self, nats: &str, extra: &[&str]) -> (Process, SocketAddr) {
        self.start_gateway("gateway", nats, extra)
    }

    fn start_gateway(&self, name: &str, nats: &str, extra: &[&str]) -> (Process, SocketAddr) {
        let port = free_port();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(binary("sluice-gateway"));
        command
            .envs(self.nats_env_of("gateway"))
            .args(["--nats", nats])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &admin.to_string()])
            .args(extra);
        let mut process = Process::spawn(command, self.logs.path().join(format!("{name}.log")));
        process.admin = Some(admin);
        (process, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The NATS environment of `part`.
    fn nats_env_of(&self, part: &str) -> Vec<(String, String)> {
        self.nats_env
            .iter()
            .find(|(name, _)| *name == part)
            .map(|(_, env)| env.clone())
            .unwrap_or_default()
    }

    /// Plays the kubelet for the runtime Deployments (the operator's
    /// dedicated ones, and any other labelled
    /// `app.kubernetes.io/name=sluice-runtime`): real `sluice-runtime`
    /// processes, each serving `start_delay` after it is asked for.
    pub fn kubelet(&self, start_delay: Duration) -> Kubelet {
        let dir = self.logs.path().join("kubelet");
        std::fs::create_dir_all(&dir).expect("a kubelet folder");
        Kubelet::start(
            &self.cluster,
            "app.kubernetes.io/name=sluice-runtime",
            &binary("sluice-runtime"),
            start_delay,
            &dir,
        )
    }

    /// Starts a pool runtime (every pool function), its `/metrics` address
    /// in `admin`.
    pub fn runtime(&self) -> Process {
        self.runtime_with(&[])
    }

    /// The same with `args` added.
    pub fn runtime_with(&self, args: &[&str]) -> Process {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(binary("sluice-runtime"));
        command
            .envs(self.nats_env_of("runtime"))
            .args(["--nats", &self.nats.url])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--artifacts")
            .arg(self.logs.path().join("artifacts"))
            .args(args);
        let mut process = Process::spawn(command, self.logs.path().join("runtime.log"));
        process.admin = Some(admin);
        process
    }

    /// Example component `name` in ConfigMap `default/<name>-wasm`, key
    /// `<name>.wasm`, as the tests' Functions name it.
    pub fn component_config_map(&self, name: &str) {
        self.config_map(
            "default",
            &format!("{name}-wasm"),
            &format!("{name}.wasm"),
            &component(name),
        );
    }

    /// `kubectl create configmap NAME --from-file=KEY=PATH` in `namespace`.
    pub fn config_map(&self, namespace: &str, name: &str, key: &str, file: &Path) {
        let from = format!("--from-file={key}={}", file.display());
        let yaml = self.cluster.kubectl_ok(&[
            "create",
            "configmap",
            name,
            "-n",
            namespace,
            &from,
            "--dry-run=client",
            "-o",
            "yaml",
        ]);
        let applied = self.cluster.kubectl_with(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &yaml,
        );
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }

    /// `kubectl apply` of a manifest; panics with kubectl's words when it
    /// is refused. Returns kubectl's stderr (warnings).
    pub fn apply(&self, yaml: &str) -> String {
        let output = self.cluster.apply(yaml);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "kubectl apply refused it:\n{stderr}"
        );
        stderr
    }

    /// A field of Function `namespace/name`, by a kubectl JSONPath such as
    /// `{.status.moduleDigest}`; empty when unset.
    pub fn field(&self, namespace: &str, name: &str, path: &str) -> String {
        let jsonpath = format!("jsonpath={path}");
        self.cluster
            .kubectl_ok(&["get", "fn", name, "-n", namespace, "-o", &jsonpath])
    }

    /// A condition of Function `namespace/name`: (status, reason, message).
    pub fn condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
    ) -> Option<(String, String, String)> {
        let output = self
            .cluster
            .kubectl_with(&["get", "fn", name, "-n", namespace, "-o", "json"], "");
        let function: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let condition = function["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?
            .clone();
        Some((
            condition["status"].as_str()?.to_owned(),
            condition["reason"].as_str()?.to_owned(),
            condition["message"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// Waits until Function `namespace/name`'s Ready is `status` with
    /// `reason`; returns its message.
    pub fn wait_ready(&self, namespace: &str, name: &str, status: &str, reason: &str) -> String {
        eventually(
            &format!("{namespace}/{name} Ready={status} ({reason})"),
            Duration::from_secs(60),
            || {
                let (s, r, m) = self.condition(namespace, name, "Ready")?;
                (s == status && r == reason).then_some(m)
            },
        )
    }

    /// The reasons of the Events about Function `namespace/name`.
    pub fn event_reasons(&self, namespace: &str, name: &str) -> Vec<String> {
        let output = self.cluster.kubectl_with(
            &["get", "events.events.k8s.io", "-n", namespace, "-o", "json"],
            "",
        );
        let events: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        events["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|e| {
                        e["regarding"]["kind"] == "Function" && e["regarding"]["name"] == name
                    })
                    .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub use sluice_testing::http::{get as http_get, get_within as http_get_within, post as http_post};

/// The `/metrics` text of `process` (an operator or a runtime started
/// with an admin address); empty when it does not answer.
pub fn metrics(process: &Process) -> String {
    let admin = process.admin.expect("an admin address");
    http_get(admin, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Waits until `GET path` answers `status` with a body containing `text`.
pub fn wait_answer(addr: SocketAddr, path: &str, status: u16, text: &str) -> String {
    eventually(
        &format!("GET {path} answering {status} with {text:?}"),
        Duration::from_secs(60),
        || {
            let (s, body) = http_get(addr, path)?;
            (s == status && body.contains(text)).then_some(body)
        },
    )
}

/// Waits until the record of invocation `id` is final; its state.
pub fn settled(gateway: std::net::SocketAddr, id: &str) -> String {
    eventually(
        &format!("invocation {id} settled"),
        Duration::from_secs(120),
        || {
            let (status, body) = http_get_within(
                gateway,
                &format!("/invocations/{id}?wait=10s"),
                Duration::from_secs(15),
            )?;
            let record: serde_json::Value = serde_json::from_str(&body).ok()?;
            let state = record["state"].as_str()?.to_owned();
            (status == 200 && state != "queued" && state != "running").then_some(state)
        },
    )
}

/// `count` async invocations of `path`; their ids.
pub fn post_async(gateway: std::net::SocketAddr, path: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let (status, body) = http_post(gateway, path).expect("the gateway answers");
            assert_eq!(status, 202, "{body}");
            let accepted: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            accepted["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

/// A component built from the examples, as a file.
pub fn component(name: &str) -> PathBuf {
    sluice_examples::component(name)
}

/// A cluster manifest from `examples/cluster/`.
pub fn example(name: &str) -> String {
    std::fs::read_to_string(
        repo_root()
            .join("examples/cluster")
            .join(format!("{name}.yaml")),
    )
    .expect("an example manifest")
}
