//! A stand-in kubelet for runtime Deployments only: it watches the
//! Deployments of a test control plane that match a label selector and
//! keeps exactly `spec.replicas` real `sluice-runtime` processes running
//! for each, from the Deployment's own container arguments and
//! environment, each starting after a configurable delay (a pod's start),
//! stopped newest first with SIGTERM (then SIGKILL after 30 s, a pod's
//! grace period). Processes listen on loopback only.
//!
//! It also records every `spec.replicas` value each Deployment took, in
//! order, so a test can tell the story of a scale (and that it never
//! dipped).

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ControlPlane;

/// How long a stopping process may take before it is killed.
const GRACE: Duration = Duration::from_secs(30);
/// How often processes are reconciled with the Deployments.
const SYNC_EVERY: Duration = Duration::from_millis(50);

/// The pods of one Deployment, as processes.
#[derive(Default)]
struct Pods {
    /// `spec.replicas`; 0 once the Deployment is deleted.
    desired: u32,
    /// Every `spec.replicas` seen, in order, each once in a row.
    history: Vec<u32>,
    /// The container's arguments and environment.
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Starts scheduled (a pod being created), when each is due.
    starting: Vec<Instant>,
    running: Vec<Child>,
    stopping: Vec<(Child, Instant)>,
    /// Processes started so far, to name their logs.
    started: usize,
}

type Deployments = Arc<Mutex<HashMap<(String, String), Pods>>>;

/// Runtime processes for the Deployments of a control plane; all stopped
/// when dropped.
pub struct Kubelet {
    deployments: Deployments,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    watch: Arc<Mutex<Option<Child>>>,
}

impl Kubelet {
    /// Starts playing the kubelet for the Deployments matching `selector`
    /// (a label selector, e.g. `app.kubernetes.io/name=sluice-runtime`),
    /// running `runtime` (the `sluice-runtime` binary) for their pods, each
    /// serving `start_delay` after its Deployment asked for it. Logs and
    /// artifacts go under `dir`.
    pub fn start(
        cluster: &ControlPlane,
        selector: &str,
        runtime: &Path,
        start_delay: Duration,
        dir: &Path,
    ) -> Self {
        let deployments: Deployments = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let watch: Arc<Mutex<Option<Child>>> = Arc::default();
        let mut command = cluster.kubectl();
        command.args([
            "get",
            "deployments",
            "--all-namespaces",
            "--selector",
            selector,
            "--watch",
            "--output-watch-events",
            "--output",
            "json",
        ]);
        let watcher = {
            let deployments = deployments.clone();
            let stop = stop.clone();
            let watch = watch.clone();
            std::thread::spawn(move || follow(command, &deployments, &stop, &watch))
        };
        let syncer = {
            let deployments = deployments.clone();
            let stop = stop.clone();
            let runtime = runtime.to_owned();
            let dir = dir.to_owned();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sync(&deployments, &runtime, start_delay, &dir);
                    std::thread::sleep(SYNC_EVERY);
                }
            })
        };
        Self {
            deployments,
            stop,
            threads: vec![watcher, syncer],
            watch,
        }
    }

    /// Processes serving for Deployment `namespace/name` now.
    pub fn running(&self, namespace: &str, name: &str) -> usize {
        self.with(namespace, name, |pods| pods.running.len())
    }

    /// Processes alive for Deployment `namespace/name`, those stopping
    /// included.
    pub fn alive(&self, namespace: &str, name: &str) -> usize {
        self.with(namespace, name, |pods| {
            pods.running.len() + pods.stopping.len()
        })
    }

    /// Every `spec.replicas` Deployment `namespace/name` has had since the
    /// kubelet started, in order (each once in a row).
    pub fn replica_history(&self, namespace: &str, name: &str) -> Vec<u32> {
        self.with(namespace, name, |pods| pods.history.clone())
    }

    fn with<T: Default>(&self, namespace: &str, name: &str, f: impl FnOnce(&Pods) -> T) -> T {
        let deployments = self.deployments.lock().unwrap_or_else(|p| p.into_inner());
        deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(f)
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").finish_non_exhaustive()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut watch) = self.watch.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = watch.kill();
            let _ = watch.wait();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let mut deployments = self.deployments.lock().unwrap_or_else(|p| p.into_inner());
        for pods in deployments.values_mut() {
            for mut child in pods
                .running
                .drain(..)
                .chain(pods.stopping.drain(..).map(|(c, _)| c))
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Follows `kubectl get --watch` until stopped (started again if the
/// watch ends), recording each Deployment's replicas and pod template.
fn follow(
    mut command: Command,
    deployments: &Deployments,
    stop: &AtomicBool,
    watch: &Mutex<Option<Child>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut child) = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let Some(stdout) = child.stdout.take() else {
            return;
        };
        *watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        // Stopped meanwhile: the watch just stored would never be killed.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let events = serde_json::Deserializer::from_reader(BufReader::new(stdout))
            .into_iter::<serde_json::Value>();
        for event in events {
            let Ok(event) = event else { break };
            observe(deployments, &event);
        }
        if let Some(mut child) = watch.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if let Some(mut child) = watch.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Records one watch event (`{"type": …, "object": <Deployment>}`).
fn observe(deployments: &Deployments, event: &serde_json::Value) {
    let object = &event["object"];
    let (Some(namespace), Some(name)) = (
        object["metadata"]["namespace"].as_str(),
        object["metadata"]["name"].as_str(),
    ) else {
        return;
    };
    let deleted = event["type"] == "DELETED";
    let replicas = if deleted {
        0
    } else {
        object["spec"]["replicas"]
            .as_u64()
            .map_or(1, |r| u32::try_from(r).unwrap_or(u32::MAX))
    };
    let container = &object["spec"]["template"]["spec"]["containers"][0];
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = strings(&container["args"]);
    let env = container["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    Some((
                        v["name"].as_str()?.to_owned(),
                        v["value"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut deployments = deployments.lock().unwrap_or_else(|p| p.into_inner());
    let pods = deployments
        .entry((namespace.to_owned(), name.to_owned()))
        .or_default();
    if pods.history.last() != Some(&replicas) {
        pods.history.push(replicas);
    }
    pods.desired = replicas;
    if !deleted {
        pods.args = args;
        pods.env = env;
    }
}

/// Brings every Deployment's processes toward its replicas.
fn sync(deployments: &Deployments, runtime: &Path, start_delay: Duration, dir: &Path) {
    let mut deployments = deployments.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    for ((namespace, name), pods) in deployments.iter_mut() {
        // A process that exited by itself is a crashed pod: replaced.
        pods.running
            .retain_mut(|child| matches!(child.try_wait(), Ok(None)));
        pods.stopping.retain_mut(|(child, since)| {
            if since.elapsed() > GRACE {
                let _ = child.kill();
            }
            matches!(child.try_wait(), Ok(None))
        });
        let desired = pods.desired as usize;
        while pods.running.len() + pods.starting.len() < desired {
            pods.starting.push(now + start_delay);
        }
        while pods.running.len() + pods.starting.len() > desired {
            if pods.starting.pop().is_some() {
                continue;
            }
            if let Some(child) = pods.running.pop() {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                pods.stopping.push((child, now));
            }
        }
        let (due, later): (Vec<Instant>, Vec<Instant>) =
            pods.starting.iter().partition(|at| **at <= now);
        pods.starting = later;
        for _ in due {
            pods.started += 1;
            let id = format!("{namespace}.{name}.{}", pods.started);
            if let Some(child) = spawn(runtime, &pods.args, &pods.env, dir, &id) {
                pods.running.push(child);
            }
        }
    }
}

/// Starts one runtime as the pod template says, with its admin endpoint on
/// a free loopback port and its own artifacts folder.
fn spawn(
    runtime: &Path,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    id: &str,
) -> Option<Child> {
    let artifacts: PathBuf = dir.join("artifacts").join(id);
    let mut rewritten = Vec::with_capacity(args.len());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--admin-listen" => {
                args.next();
                rewritten.extend(["--admin-listen".to_owned(), "127.0.0.1:0".to_owned()]);
            }
            "--artifacts" => {
                args.next();
                rewritten.extend(["--artifacts".to_owned(), artifacts.display().to_string()]);
            }
            _ => rewritten.push(arg.clone()),
        }
    }
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).ok()?;
    Command::new(runtime)
        .args(&rewritten)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ok()
}
