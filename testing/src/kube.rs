//! A real Kubernetes control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager) on loopback ports, one per test, stopped when
//! dropped. There is no kubelet: pods stay Pending, controllers run.
//!
//! The binaries are built from pinned Go modules by `scripts/k8s/tools.sh`
//! (which `scripts/test.sh` runs) and named in `SLUICE_KUBE_BIN`;
//! `scripts/k8s/control-plane.sh` starts and stops them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Namespace of the operator's ServiceAccount and Lease that
/// [`ControlPlane::install_sluice`] creates.
pub const SLUICE_NAMESPACE: &str = "sluice-system";

/// A control plane for one test, or with [`ControlPlane::start_with_node`]
/// a whole single-node cluster for one test binary.
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    /// The admin kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
    /// The folder of `kubectl`, `helm` and the servers.
    pub bin: PathBuf,
    /// `https://127.0.0.1:<port>`, or on the node's address with a node.
    pub server: String,
    /// What the node offers, when there is one.
    pub node: Option<Node>,
}

/// A real node's facts (`scripts/k8s/cluster.sh`): kubelet, containerd,
/// CNI bridge, kube-proxy and CoreDNS on this machine.
#[derive(Debug, Clone)]
pub struct Node {
    /// `host:port` of the registry that kubelet pulls from and pods reach,
    /// holding `pause`, `nats:<nats_version>`, `wget:1` and Sluice's images.
    pub registry: String,
    /// The node's address on its bridge (pods reach the host there).
    pub ip: String,
    /// The version tag of the registry's `nats` image.
    pub nats_version: String,
}

fn script(name: &str) -> PathBuf {
    crate::repo_root().join("scripts/k8s").join(name)
}

/// `SLUICE_KUBE_BIN`, or what `tools.sh --cached-only` names.
fn kube_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLUICE_KUBE_BIN") {
        return PathBuf::from(bin);
    }
    let output = Command::new(script("tools.sh"))
        .arg("--cached-only")
        .output()
        .expect("cannot run scripts/k8s/tools.sh");
    assert!(
        output.status.success(),
        "the Kubernetes binaries are not built: run scripts/test.sh, or scripts/k8s/tools.sh once\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("SLUICE_KUBE_BIN="))
        .map(PathBuf::from)
        .expect("tools.sh named no SLUICE_KUBE_BIN")
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits
    /// until they serve (about 4 s).
    pub fn start() -> Self {
        Self::start_script("control-plane.sh")
    }

    /// Starts a whole cluster with a real node (`scripts/k8s/cluster.sh`,
    /// which must run as root) and waits until the node is Ready (about
    /// 10 s). One per machine: keep it in a static for the test binary; a
    /// watchdog stops it once the binary exits.
    pub fn start_with_node() -> Self {
        Self::start_script("cluster.sh")
    }

    fn start_script(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let bin = kube_bin();
        let output = Command::new(script(name))
            .arg("start")
            .arg(dir.path())
            .env("SLUICE_KUBE_BIN", &bin)
            .env("SLUICE_KUBE_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/k8s/{name}: {e}"));
        assert!(
            output.status.success(),
            "scripts/k8s/{name} start failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let env: HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let node = env.get("SLUICE_NODE_REGISTRY").map(|registry| Node {
            registry: registry.clone(),
            ip: env.get("SLUICE_NODE_IP").cloned().unwrap_or_default(),
            nats_version: env
                .get("SLUICE_NODE_NATS_VERSION")
                .cloned()
                .unwrap_or_default(),
        });
        Self {
            kubeconfig: env
                .get("KUBECONFIG")
                .map_or_else(|| dir.path().join("kubeconfig"), PathBuf::from),
            server: env.get("SLUICE_KUBE_SERVER").cloned().unwrap_or_default(),
            node,
            bin,
            dir,
        }
    }

    /// The folder holding the control plane's files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The folder `control-plane.sh` keeps its PKI, logs and pids in.
    fn control_plane_dir(&self) -> &Path {
        self.kubeconfig.parent().unwrap_or(self.dir.path())
    }

    /// The process id of a running component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`), from the pid file `control-plane.sh`
    /// keeps, e.g. to read its CPU time and memory in `/proc`.
    pub fn pid(&self, component: &str) -> Option<u32> {
        std::fs::read_to_string(self.control_plane_dir().join(format!("{component}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Installs what the operator needs from the repository, as the Helm
    /// chart would: the Function CRD (server-side apply, waited until
    /// Established) and the operator's RBAC
    /// (`charts/sluice/files/operator-rbac.yaml`) bound to the
    /// ServiceAccount `sluice-operator` in [`SLUICE_NAMESPACE`]. Returns
    /// that ServiceAccount's kubeconfig, to run the operator with exactly
    /// its permissions (so a missing one fails).
    pub fn install_sluice(&self) -> PathBuf {
        let crd = crate::repo_root().join("crds/function.yaml");
        self.kubectl_ok(&["apply", "--server-side", "-f", &crd.display().to_string()]);
        // `kubectl wait` fails at once instead of waiting while the CRD has
        // no status.conditions yet (".status.conditions accessor error:
        // <nil> is of the type <nil>"), which a loaded API server can take
        // a moment to write; so it is asked again until it says yes.
        let started = Instant::now();
        loop {
            let waited = self.kubectl_with(
                &[
                    "wait",
                    "--for=condition=Established",
                    "crd/functions.sluice.dev",
                    "--timeout=60s",
                ],
                "",
            );
            if waited.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the Function CRD was not Established in 60s:\n{}",
                String::from_utf8_lossy(&waited.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let rbac = crate::repo_root().join("charts/sluice/files/operator-rbac.yaml");
        self.kubectl_ok(&["apply", "-f", &rbac.display().to_string()]);
        let bindings = format!(
            "apiVersion: v1
kind: Namespace
metadata: {{ name: {SLUICE_NAMESPACE} }}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: sluice-operator, namespace: {SLUICE_NAMESPACE} }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{ name: sluice-operator }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sluice-operator }}
subjects: [ {{ kind: ServiceAccount, name: sluice-operator, namespace: {SLUICE_NAMESPACE} }} ]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: sluice-operator-leader-election, namespace: {SLUICE_NAMESPACE} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sluice-operator-leader-election }}
subjects: [ {{ kind: ServiceAccount, name: sluice-operator, namespace: {SLUICE_NAMESPACE} }} ]
"
        );
        let applied = self.apply(&bindings);
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        self.service_account_kubeconfig(SLUICE_NAMESPACE, "sluice-operator")
    }

    /// `kubectl` against this control plane, as its admin.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// `helm` against this control plane, as its admin, its own state
    /// (repositories, cache) kept in the control plane's folder.
    pub fn helm(&self) -> Command {
        let mut command = helm();
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir().join("helm/config"))
            .env("HELM_DATA_HOME", self.dir().join("helm/data"));
        command
    }

    /// Runs `kubectl args…`, feeding `stdin`; its output, whatever it is.
    pub fn kubectl_with(&self, args: &[&str], stdin: &str) -> Output {
        let mut kubectl = self.kubectl();
        kubectl.args(args);
        run_with_stdin(kubectl, stdin)
    }

    /// Runs `kubectl args…` and returns its stdout; panics with its stderr
    /// when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl_with(args, "");
        assert!(
            output.status.success(),
            "kubectl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`; its output, whatever it is.
    pub fn apply(&self, yaml: &str) -> Output {
        self.kubectl_with(&["apply", "-f", "-"], yaml)
    }

    /// A kubeconfig for ServiceAccount `namespace/name`, authenticated by
    /// a token the API server issues (TokenRequest), to run a process with
    /// exactly that account's permissions.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"]);
        let ca = self.control_plane_dir().join("pki/ca.crt");
        let path = self.dir().join(format!("kubeconfig-{namespace}-{name}"));
        let config = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{ server: {server}, certificate-authority: {ca} }}
users:
- name: {name}
  user: {{ token: {token} }}
contexts:
- name: test
  context: {{ cluster: test, user: {name}, namespace: {namespace} }}
current-context: test
",
            server = self.server,
            ca = ca.display(),
            token = token.trim(),
        );
        std::fs::write(&path, config).expect("cannot write a kubeconfig");
        path
    }
}

/// A command's stdout; panics naming `what`, with its stdout and stderr,
/// when it failed.
pub fn succeeded(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `command`, feeding it `stdin`; its output, whatever it is.
pub fn run_with_stdin(mut command: Command, stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()));
    let mut input = child.stdin.take().expect("its stdin");
    input
        .write_all(stdin.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to {:?}: {e}", command.get_program()));
    drop(input);
    child.wait_with_output().expect("it did not finish")
}

/// `helm` (the pinned build beside `kubectl`) for what needs no cluster,
/// such as `lint` and `template`; pointed at no cluster, so it can reach
/// none.
pub fn helm() -> Command {
    let mut command = Command::new(kube_bin().join("helm"));
    command.env("KUBECONFIG", "/dev/null");
    command
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let name = if self.node.is_some() {
            "cluster.sh"
        } else {
            "control-plane.sh"
        };
        let _ = Command::new(script(name))
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
