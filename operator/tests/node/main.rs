//! Sluice installed with Helm on a real single-node cluster
//! (`scripts/k8s/cluster.sh`: kubelet, containerd and runc, the CNI bridge,
//! kube-proxy, CoreDNS and a registry, all on this machine), from the images
//! `scripts/images.sh` builds: the pods really pull, start under their
//! security context, are probed and restarted by kubelet, and talk through
//! Services and cluster DNS. Needs root (kubelet, containerd).
//!
//! One cluster and one release serve the whole binary, so the release's
//! life runs as one test whose steps follow each other: install, functions,
//! scaling with real pods, faults, upgrade, uninstall. Each step prints how
//! long it took; those lines are the numbers the README quotes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testing::http::{get, get_within, post};
use sluice_testing::{ControlPlane, Node, TestCa, repo_root, run_with_stdin, succeeded as ok};

const RELEASE: &str = "sluice";
const NAMESPACE: &str = "sluice-system";
/// Where the test's Functions live.
const FUNCTIONS: &str = "e2e";

fn cluster() -> &'static ControlPlane {
    static CLUSTER: OnceLock<ControlPlane> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let started = Instant::now();
        let cluster = ControlPlane::start_with_node();
        report("cluster start (control plane, node Ready)", started);
        cluster
    })
}

fn node() -> &'static Node {
    cluster().node.as_ref().expect("cluster.sh names its node")
}

/// Prints a step's duration in the form the README's table is made from.
fn report(step: &str, since: Instant) -> Duration {
    let took = since.elapsed();
    println!("NODE-TIMING {step}: {} ms", took.as_millis());
    took
}

fn kubectl(args: &[&str]) -> String {
    cluster().kubectl_ok(args)
}

fn apply(yaml: &str) {
    ok(cluster().apply(yaml), "kubectl apply");
}

fn helm(args: &[&str]) -> String {
    let mut helm = cluster().helm();
    helm.args(args);
    let output = run_with_stdin(helm, "");
    // `helm --wait` says only which resources were not ready; why is in
    // the pods, the events and the node's conditions.
    let what = if output.status.success() {
        format!("helm {}", args.join(" "))
    } else {
        format!("helm {}\n{}", args.join(" "), diagnostics())
    };
    ok(output, &what)
}

/// Polls `check` every 100 ms until it gives `Some`, at most `limit`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        // For a person debugging a failure: the node stays up (its
        // watchdog waits for this process) for 15 minutes to look at.
        if started.elapsed() >= limit && std::env::var_os("SLUICE_NODE_PAUSE").is_some() {
            eprintln!("PAUSED: {what}");
            thread::sleep(Duration::from_secs(900));
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            diagnostics()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// What the cluster looks like, for a failure message.
fn diagnostics() -> String {
    let pods = cluster().kubectl_with(&["get", "pods", "-A", "-o", "wide"], "");
    let events = cluster().kubectl_with(&["get", "events", "-A", "--sort-by=.lastTimestamp"], "");
    let tail: Vec<&str> = std::str::from_utf8(&events.stdout)
        .unwrap_or_default()
        .lines()
        .rev()
        .take(40)
        .collect();
    // The last words of every container that restarted.
    let mut previous = String::new();
    for (namespace, pod) in restarted_pods() {
        let logs = cluster().kubectl_with(
            &[
                "logs",
                &pod,
                "-n",
                &namespace,
                "--previous",
                "--all-containers",
                "--tail=15",
            ],
            "",
        );
        previous += &format!(
            "--- {namespace}/{pod}, before its last restart:\n{}",
            String::from_utf8_lossy(&logs.stdout)
        );
    }
    // A pressure condition taints the node and leaves every new pod
    // Pending; the node's line says so before forty events do.
    let node = cluster().kubectl_with(
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} taints={.spec.taints} {range .status.conditions[*]}{.type}={.status} {end}{\"\\n\"}{end}",
        ],
        "",
    );
    format!(
        "nodes:\n{}pods:\n{}\nlast events:\n{}\n{previous}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&pods.stdout),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// (namespace, name) of every pod a container of which restarted.
fn restarted_pods() -> Vec<(String, String)> {
    let output = cluster().kubectl_with(&["get", "pods", "-A", "-o", "json"], "");
    let all: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| {
            pod["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["restartCount"].as_u64() > Some(0)))
        })
        .filter_map(|pod| {
            Some((
                pod["metadata"]["namespace"].as_str()?.to_owned(),
                pod["metadata"]["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all)).expect("kubectl's JSON")
}

/// The pods of `namespace` (optionally by label selector).
fn pods(namespace: &str, selector: Option<&str>) -> Vec<Value> {
    let mut args = vec!["get", "pods", "-n", namespace];
    if let Some(selector) = selector {
        args.extend(["-l", selector]);
    }
    json(&args)["items"].as_array().cloned().unwrap_or_default()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// No container of a pod in [`NAMESPACE`] has restarted (`when` says
/// during what, for the message).
fn no_restarts(when: &str) {
    let restarted: BTreeMap<_, _> = restarts(NAMESPACE)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        restarted.is_empty(),
        "pods restarted {when}: {restarted:?}\n{}",
        diagnostics()
    );
}

/// Container restarts of every pod in `namespace`, by pod name.
fn restarts(namespace: &str) -> BTreeMap<String, u64> {
    pods(namespace, None)
        .iter()
        .map(|pod| {
            let count = pod["status"]["containerStatuses"]
                .as_array()
                .map_or(0, |cs| {
                    cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
                });
            (
                pod["metadata"]["name"].as_str().unwrap_or("?").to_owned(),
                count,
            )
        })
        .collect()
}

/// The ClusterIP address of Service `namespace/name` at `port`: reached
/// from this machine through kube-proxy's rules.
fn service(namespace: &str, name: &str, port: u16) -> SocketAddr {
    let ip = kubectl(&[
        "get",
        "service",
        name,
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    SocketAddr::new(ip.trim().parse().expect("a ClusterIP"), port)
}

fn gateway() -> SocketAddr {
    service(NAMESPACE, "sluice-gateway", 8080)
}

/// The values that point the chart at the node's registry; the rest are
/// the chart's defaults.
fn node_values() -> Vec<String> {
    let node = node();
    [
        format!("image.registry={}", node.registry),
        format!("nats.bundled.image.repository={}/nats", node.registry),
        format!("nats.bundled.image.tag={}", node.nats_version),
        format!("tests.image={}/wget:1", node.registry),
        format!("operator.insecureRegistries[0]={}", node.registry),
        // The operator pulls OCI modules from the registry on the node's
        // bridge, a private address the egress guard refuses by default.
        format!("egress.allow[0]={}/32", node.ip),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_owned(), v])
    .collect()
}

/// `helm VERB sluice CHART -n sluice-system --wait` with [`node_values`].
fn release_args(verb: &str, chart: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        verb,
        RELEASE,
        chart,
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "5m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(node_values());
    args
}

/// [`release_args`] for this repository's chart, with its values files
/// `values` (paths under `charts/sluice/`, e.g. `ci/…`) in order.
fn chart_args(verb: &str, values: &[&str]) -> Vec<String> {
    let chart = repo_root().join("charts/sluice");
    let mut args = release_args(verb, &chart.display().to_string());
    for file in values {
        args.extend(["-f".to_owned(), chart.join(file).display().to_string()]);
    }
    args
}

/// [`helm`] with owned arguments.
fn helm_with(args: &[String]) -> String {
    helm(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `helm uninstall --wait` of the release.
fn helm_uninstall() {
    helm(&[
        "uninstall",
        RELEASE,
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "3m",
    ]);
}

/// The release's pods but the pool's, each asserted Ready (kubelet
/// refuses a root image under `runAsNonRoot`: Ready also proves the
/// restricted context held).
fn parts_ready() -> Vec<Value> {
    let parts: Vec<Value> = pods(NAMESPACE, None)
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] != "sluice-runtime")
        .collect();
    for pod in &parts {
        assert!(
            ready(pod),
            "{} not Ready\n{}",
            pod["metadata"]["name"],
            diagnostics()
        );
    }
    parts
}

/// Waits for the pool at zero with no pod left (the autoscaler takes an
/// idle pool there, from the one replica a Deployment without `replicas`
/// starts with).
fn wait_pool_at_zero() {
    eventually("the pool at zero", Duration::from_secs(60), || {
        let (spec, _) = deployment_replicas(NAMESPACE, "sluice-runtime");
        (spec == 0 && pods(NAMESPACE, Some(POOL)).is_empty()).then_some(())
    });
}

/// A pool pod's `/metrics` text, from its admin port on the pod network.
fn metrics_of(pod: &Value) -> Option<String> {
    let ip: std::net::IpAddr = pod["status"]["podIP"].as_str()?.parse().ok()?;
    get(SocketAddr::new(ip, 9091), "/metrics").map(|(_, text)| text)
}

/// Every part connects as its own NATS user with exactly its permission
/// set: the server has refused none of them anything (it logs each
/// refusal as a `Permissions Violation`).
fn no_permission_violations(when: &str) {
    let log = kubectl(&["logs", "sluice-nats-0", "-n", NAMESPACE]);
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        refused.is_empty(),
        "NATS refused a part something {when}:\n{}",
        refused.join("\n")
    );
}

/// The bundled NATS's volume: a hostPath PersistentVolume that its claim
/// binds to (the node has no dynamic provisioner), writable by the
/// server's user.
fn nats_volume() {
    nats_volume_named("nats-0");
}

/// A volume as [`nats_volume`]'s, PersistentVolume `sluice-<name>` on
/// folder `volumes/<name>`.
fn nats_volume_named(name: &str) {
    let path = cluster().dir().join("volumes").join(name);
    std::fs::create_dir_all(&path).expect("the volume's folder");
    std::os::unix::fs::chown(&path, Some(1000), Some(1000)).expect("chown the volume");
    apply(&format!(
        "apiVersion: v1
kind: PersistentVolume
metadata: {{ name: sluice-{name} }}
spec:
  capacity: {{ storage: 10Gi }}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{ path: {}, type: Directory }}
",
        path.display()
    ));
}

fn component(name: &str) -> std::path::PathBuf {
    sluice_examples::component(name)
}

/// `kubectl create configmap NAME --from-file=KEY=FILE` in [`FUNCTIONS`].
fn config_map(name: &str, key: &str, file: &Path) {
    let yaml = kubectl(&[
        "create",
        "configmap",
        name,
        "-n",
        FUNCTIONS,
        &format!("--from-file={key}={}", file.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    apply(&yaml);
}

/// A cluster example as committed, moved into [`FUNCTIONS`].
fn example(name: &str) -> String {
    std::fs::read_to_string(repo_root().join(format!("examples/cluster/{name}.yaml")))
        .expect("the example")
        .replace("namespace: default", &format!("namespace: {FUNCTIONS}"))
}

/// The reasons of the Events about Function `name` in [`FUNCTIONS`].
fn ready_reasons(name: &str) -> Vec<String> {
    let events: serde_json::Value = serde_json::from_str(&kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        FUNCTIONS,
        "-o",
        "json",
    ]))
    .unwrap_or_default();
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["kind"] == "Function" && e["regarding"]["name"] == name)
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

fn wait_ready(name: &str) {
    wait_ready_in(FUNCTIONS, name);
}

/// Waits as a user does, `kubectl wait --for=condition=Ready` (a watch,
/// not a poll, so the time is the status's), for at most 120 s.
fn wait_ready_in(namespace: &str, name: &str) {
    let waited = cluster().kubectl_with(
        &[
            "wait",
            "--for=condition=Ready",
            &format!("functions.sluice.dev/{name}"),
            "-n",
            namespace,
            "--timeout=120s",
        ],
        "",
    );
    assert!(
        waited.status.success(),
        "Function {namespace}/{name} Ready: {}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        diagnostics()
    );
}

/// The first 200 from `path`, retried (a sync call that found no runtime
/// yet may time out while a pod starts).
fn first_200(path: &str, text: &str) -> String {
    first_200_timed(path, text).body
}

/// A [`first_200_timed`]'s answer.
struct First200 {
    body: String,
    /// From the first try's send to the 200 (no Service lookup in it).
    since_first_try: Duration,
    /// What the tries before it got (a 404 while the gateway's registry
    /// watch has yet to see a new Function, a timeout while a pod starts),
    /// each with its time.
    tries: Vec<String>,
}

/// [`first_200`], timed.
fn first_200_timed(path: &str, text: &str) -> First200 {
    let gateway = gateway();
    let mut tries = Vec::new();
    let first_try = Instant::now();
    let body = eventually(
        &format!("200 from {path}"),
        Duration::from_secs(120),
        || {
            let sent = Instant::now();
            let Some((status, body)) = get_within(gateway, path, Duration::from_secs(30)) else {
                tries.push(format!("no answer {} ms", sent.elapsed().as_millis()));
                return None;
            };
            if status == 200 && body.contains(text) {
                return Some(body);
            }
            tries.push(format!("{status} {} ms", sent.elapsed().as_millis()));
            None
        },
    );
    First200 {
        body,
        since_first_try: first_try.elapsed(),
        tries,
    }
}

fn deployment_replicas(namespace: &str, name: &str) -> (u64, u64) {
    let d = json(&["get", "deployment", name, "-n", namespace]);
    (
        d["spec"]["replicas"].as_u64().unwrap_or(0),
        d["status"]["readyReplicas"].as_u64().unwrap_or(0),
    )
}

/// Posts `count` async invocations of `path`, retrying a 503 (NATS
/// restarting) as a client should; the accepted ids.
fn post_async(path: &str, count: usize) -> Vec<String> {
    let gateway = gateway();
    (0..count)
        .map(|_| {
            eventually("202 from the gateway", Duration::from_secs(120), || {
                let (status, body) = post(gateway, path)?;
                if status != 202 {
                    assert!(status == 503, "{status}: {body}");
                    thread::sleep(Duration::from_millis(200));
                    return None;
                }
                let accepted: Value = serde_json::from_str(&body).ok()?;
                accepted["id"].as_str().map(str::to_owned)
            })
        })
        .collect()
}

/// The final state of invocation `id`.
fn settled(id: &str) -> String {
    let gateway = gateway();
    eventually(
        &format!("invocation {id} settled"),
        Duration::from_secs(300),
        || {
            let (status, body) = get_within(
                gateway,
                &format!("/invocations/{id}?wait=10s"),
                Duration::from_secs(15),
            )?;
            let record: Value = serde_json::from_str(&body).ok()?;
            let state = record["state"].as_str()?.to_owned();
            (status == 200 && state != "queued" && state != "running").then_some(state)
        },
    )
}

fn all_succeeded(ids: &[String]) {
    let failed: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), settled(id)))
        .filter(|(_, state)| state != "succeeded")
        .collect();
    assert!(failed.is_empty(), "not succeeded: {failed:?}");
}

/// The median of 20 sequential GETs of `path` through the gateway's
/// ClusterIP, each answered 200.
fn warm_p50(path: &str) -> Duration {
    let gateway = gateway();
    let warm: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let (status, _) = get(gateway, path).expect("an answer");
            assert_eq!(status, 200);
            t.elapsed()
        })
        .collect();
    median(warm)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn a_release_lives_its_whole_life_on_a_real_node() {
    install_with_every_pod_ready_and_no_restarts();
    runtime_credentials_for_dedicated_functions();
    helm_test_passes();
    let (hello, echo) = cluster_examples_are_served();
    a_pod_reaches_the_gateway_by_its_dns_name(&hello);
    a_function_at_zero_in_the_warm_pool();
    a_dedicated_function_wakes_from_zero_surges_to_max_and_returns_to_zero();
    a_schedule_wakes_a_dedicated_function_at_zero();
    no_permission_violations("before the faults");
    faults_lose_no_accepted_invocation(&echo);
    upgrade_keeps_serving(&hello);
    no_permission_violations("after the NATS pod's replacement and the upgrades");
    uninstall_completes_and_keeps_the_crd();
    leftover_functions_released_then_the_crd_deleted();
    the_ci_values_install_on_an_external_nats_with_mutual_tls();
    a_nats_cluster_install_survives_a_server_killed();
}

/// The README's numbers from the real node as a bench, not a test:
/// `scripts/bench-node.sh [ROUNDS]` runs it. Each round installs the
/// release on the defaults, applies a ConfigMap Function with the pool at
/// zero, then one more in the warm pool once the pool has compiled it
/// ahead, and removes everything; it prints each round's times, then the
/// median and p90 of each over the rounds (`SLUICE_NODE_BENCH_ROUNDS`,
/// default 5).
#[test]
#[ignore = "a bench: scripts/bench-node.sh"]
fn bench_install_and_first_requests() {
    let rounds: usize = std::env::var("SLUICE_NODE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut sample = |what: &'static str, took: Duration| {
        println!("NODE-BENCH {what}: {:.1} ms", took.as_secs_f64() * 1e3);
        samples.entry(what).or_default().push(took);
    };
    for round in 0..rounds {
        kubectl(&["create", "namespace", NAMESPACE]);
        kubectl(&["create", "namespace", FUNCTIONS]);
        let volume = format!("nats-bench-{round}");
        nats_volume_named(&volume);
        let started = Instant::now();
        helm_with(&chart_args("install", &[]));
        sample("helm install --wait to every pod Ready", started.elapsed());
        no_restarts("during the install");
        wait_pool_at_zero();

        config_map("hello-wasm", "module.wasm", &component("hello"));
        let applied = Instant::now();
        pool_function("hello");
        sample(
            "kubectl apply of a ConfigMap Function to Ready",
            applied.elapsed(),
        );
        let first = first_200_timed(&format!("/fn/{FUNCTIONS}/hello/"), "Hello");
        println!("NODE-BENCH the tries before that 200: {:?}", first.tries);
        sample(
            "kubectl apply of a ConfigMap Function to its first 200, the pool at zero",
            applied.elapsed(),
        );

        // A component of its own each round, so the pool has not held it.
        pool_function_compiled_ahead("echo", &format!("bench round {round}"));
        let path = format!("/fn/{FUNCTIONS}/echo/");
        let first = first_200_timed(&path, "");
        let warm = warm_p50(&path);
        sample(
            "a function at zero in the warm pool (compiled ahead): first request",
            first.since_first_try,
        );
        sample("the same function warm, p50 of 20", warm);

        // What a user does: kubectl apply, kubectl wait, curl, with a
        // component new to the warm pool (misbehave's, its own each round).
        config_map(
            "fresh-wasm",
            "module.wasm",
            &marked("misbehave", "fresh", &format!("bench round {round}")),
        );
        let (applied, applied_at) = (Instant::now(), jiff::Timestamp::now());
        pool_function("fresh");
        sample(
            "a new component in the warm pool: kubectl apply to Ready",
            applied.elapsed(),
        );
        let first = first_200_timed(&format!("/fn/{FUNCTIONS}/fresh/status/200"), "");
        sample(
            "the same: its first request, sent as it is Ready",
            first.since_first_try,
        );
        sample(
            "the same: kubectl apply to its first 200",
            applied.elapsed(),
        );
        compile_wait_breakdown("fresh", applied_at);

        let removed = Instant::now();
        kubectl(&[
            "delete",
            "functions.sluice.dev",
            "--all",
            "-n",
            FUNCTIONS,
            "--wait",
            "--timeout=120s",
        ]);
        helm_uninstall();
        sample(
            "Functions deleted, then helm uninstall --wait",
            removed.elapsed(),
        );
        kubectl(&["delete", "crd", "functions.sluice.dev", "--timeout=60s"]);
        for namespace in [NAMESPACE, FUNCTIONS] {
            kubectl(&["delete", "namespace", namespace, "--wait", "--timeout=120s"]);
        }
        kubectl(&["delete", "pv", &format!("sluice-{volume}")]);
    }
    println!("NODE-BENCH {rounds} rounds: median, p90, slowest (ms)");
    for (what, mut all) in samples {
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1];
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        println!(
            "NODE-BENCH | {what} | {} | {} | {} |",
            ms(at(0.5)),
            ms(at(0.9)),
            ms(all[all.len() - 1])
        );
    }
}

fn install_with_every_pod_ready_and_no_restarts() {
    let started = Instant::now();
    kubectl(&["create", "namespace", NAMESPACE]);
    kubectl(&["create", "namespace", FUNCTIONS]);
    nats_volume();
    helm_with(&chart_args("install", &[]));
    report("helm install --wait (every pod Ready)", started);

    // The defaults: NATS, two gateways, the operator; the pool at zero.
    let parts = parts_ready();
    let names: Vec<&str> = parts
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(parts.len(), 4, "{names:?}");
    for pod in &parts {
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{names:?}");
        for container in spec["containers"].as_array().into_iter().flatten() {
            let context = &container["securityContext"];
            assert_eq!(
                context["readOnlyRootFilesystem"], true,
                "{}",
                container["name"]
            );
            assert_eq!(
                context["allowPrivilegeEscalation"], false,
                "{}",
                container["name"]
            );
        }
    }
    let pvc = json(&["get", "pvc", "-n", NAMESPACE]);
    assert_eq!(pvc["items"][0]["status"]["phase"], "Bound", "{pvc}");
    no_restarts("during the install");
    wait_pool_at_zero();
}

/// Copies the runtime's NATS credentials into [`FUNCTIONS`], as the
/// README asks of a namespace with dedicated functions (a pod mounts
/// Secrets of its own namespace only).
/// First a dedicated Function in a namespace without them: Ready=False,
/// naming the Secret, until it is copied.
fn runtime_credentials_for_dedicated_functions() {
    config_map("hello-wasm", "hello.wasm", &component("hello"));
    apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: needs-secret, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: hello-wasm, key: hello.wasm }} }}
  placement: dedicated
"
    ));
    eventually("RuntimeSecretMissing", Duration::from_secs(60), || {
        let reason = kubectl(&[
            "get",
            "function",
            "needs-secret",
            "-n",
            FUNCTIONS,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"QueueReady\")].reason}",
        ]);
        (reason.trim() == "RuntimeSecretMissing").then_some(())
    });
    let mut secret = json(&["get", "secret", "sluice-nats-runtime", "-n", NAMESPACE]);
    let metadata = secret["metadata"].as_object_mut().expect("metadata");
    metadata.retain(|key, _| key == "name");
    metadata.insert("namespace".into(), FUNCTIONS.into());
    apply(&secret.to_string());
    wait_ready("needs-secret");
    kubectl(&["delete", "function", "needs-secret", "-n", FUNCTIONS]);
}

/// A function the running pool has never served: its first request after
/// Ready against its warm latency. `echo`'s component the pool already
/// holds (for `secured-echo`); `misbehave`'s it compiles ahead as the
/// Function is registered, and the Function is Ready once that compile is
/// stored (`CompilingAhead` until then), so the request right after Ready
/// finds it compiled. Then the case of a function registered a while
/// before its first call: a component new to the pool, its compile ahead
/// ended.
fn a_function_at_zero_in_the_warm_pool() {
    for (component_name, path) in [("echo", "/"), ("misbehave", "/status/200")] {
        let name = format!("{component_name}-pool");
        config_map(
            &format!("{name}-wasm"),
            "module.wasm",
            &component(component_name),
        );
        let started = Instant::now();
        pool_function(&name);
        let took = started.elapsed();
        println!(
            "NODE-TIMING {component_name} at zero in the warm pool, kubectl apply to Ready (waited for the compile ahead: {}): {} ms",
            ready_reasons(&name).iter().any(|r| r == "CompilingAhead"),
            took.as_millis()
        );
        first_request_in_the_warm_pool(
            &format!(
                "{component_name} at zero in the warm pool, first request sent as the Function is Ready"
            ),
            &name,
            path,
        );
    }
    a_function_compiled_ahead_in_the_warm_pool();
}

/// A component no runtime has compiled (echo's, with a custom section of
/// its own, so a digest of its own), registered in the warm pool; its
/// first request is sent once the pool has compiled it ahead and stored
/// the artifact. The pod that compiled it holds it in memory, the others
/// fetch and hold it, so the request pays only its worker's start (a
/// `cold start` log line means a pod did not hold it and loaded it).
fn a_function_compiled_ahead_in_the_warm_pool() {
    pool_function_compiled_ahead("echo-ahead", "compiled ahead");
    first_request_in_the_warm_pool(
        "a component compiled ahead in the warm pool, first request",
        "echo-ahead",
        "/",
    );
}

/// Pool Function `name` running echo's component with a custom section
/// holding `mark` (so a digest no runtime has compiled), applied, Ready
/// (its artifact stored: `Ready` waits for it), and compiled ahead by the
/// pool.
fn pool_function_compiled_ahead(name: &str, mark: &str) {
    config_map(
        &format!("{name}-wasm"),
        "module.wasm",
        &marked("echo", name, mark),
    );
    let before = pool_compiles_ahead();
    pool_function(name);
    eventually(
        &format!("the pool compiled {name} ahead"),
        Duration::from_secs(60),
        || {
            // One pod compiles it; the others find its artifact stored.
            let now = pool_compiles_ahead();
            let started = |all: &BTreeMap<String, (u64, u64)>| -> u64 {
                all.values().map(|(started, _)| started).sum()
            };
            (started(&now) > started(&before) && now.values().all(|(_, under_way)| *under_way == 0))
                .then_some(())
        },
    );
}

/// Where pool Function `name`'s wait for Ready went, in ms after
/// `applied`: the pool pods' compile ahead of its component and its store
/// (their log lines' times) and the Function's Events (their
/// `eventTime`s), as `NODE-BENCH-BREAKDOWN` lines.
fn compile_wait_breakdown(name: &str, applied: jiff::Timestamp) {
    let after = |time: &str| -> String {
        time.parse::<jiff::Timestamp>().map_or_else(
            |_| format!("? ({time})"),
            |t| {
                format!(
                    "{:.0}",
                    (t - applied)
                        .total(jiff::Unit::Millisecond)
                        .unwrap_or(f64::NAN)
                )
            },
        )
    };
    let digest = kubectl(&[
        "get",
        "function",
        name,
        "-n",
        FUNCTIONS,
        "-o",
        "jsonpath={.status.moduleDigest}",
    ]);
    let digest = digest.trim().trim_start_matches("sha256:");
    let lines = if digest.is_empty() {
        Vec::new()
    } else {
        pool_log_lines(digest)
    };
    for (pod, line) in lines {
        let line: Value = serde_json::from_str(&line).unwrap_or_default();
        println!(
            "NODE-BENCH-BREAKDOWN {pod}: {} at +{} ms",
            line["fields"]["message"].as_str().unwrap_or_default(),
            after(line["timestamp"].as_str().unwrap_or_default())
        );
    }
    let events = json(&["get", "events.events.k8s.io", "-n", FUNCTIONS]);
    for event in events["items"].as_array().into_iter().flatten() {
        if event["regarding"]["kind"] == "Function" && event["regarding"]["name"] == name {
            println!(
                "NODE-BENCH-BREAKDOWN Event {} at +{} ms",
                event["reason"].as_str().unwrap_or_default(),
                after(event["eventTime"].as_str().unwrap_or_default())
            );
        }
    }
}

/// Component `component_name` with a custom section holding `mark`, so a
/// digest no runtime has compiled, written as `<name>.wasm` in the
/// cluster's folder.
fn marked(component_name: &str, name: &str, mark: &str) -> std::path::PathBuf {
    let mut wasm = std::fs::read(component(component_name)).expect("the component");
    let section = b"sluice-node-test";
    // A custom section: id 0, its size, then its name and bytes (each
    // size a one-byte LEB128 here).
    wasm.push(0);
    wasm.push((1 + section.len() + mark.len()) as u8);
    wasm.push(section.len() as u8);
    wasm.extend_from_slice(section);
    wasm.extend_from_slice(mark.as_bytes());
    let file = cluster().dir().join(format!("{name}.wasm"));
    std::fs::write(&file, &wasm).expect("write the component");
    file
}

/// A public pool Function `name` whose component is key `module.wasm` of
/// ConfigMap `<name>-wasm`, applied and Ready.
fn pool_function(name: &str) {
    apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: {name}, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: {name}-wasm, key: module.wasm }} }}
"
    ));
    wait_ready(name);
}

/// Times the first request to `path` of pool Function `name` (to its 200,
/// with what the tries before it got) against its warm latency, printed
/// as a `NODE-TIMING` line labelled `what`, then the pool's log lines
/// about it.
fn first_request_in_the_warm_pool(what: &str, name: &str, path: &str) {
    let url = format!("/fn/{FUNCTIONS}/{name}{path}");
    let first = first_200_timed(&url, "");
    println!(
        "NODE-TIMING {what}: its 200 in {} ms ({:?} before it), warm p50 {} us",
        first.since_first_try.as_millis(),
        first.tries,
        warm_p50(&url).as_micros()
    );
    pool_log(name);
}

/// The pool pods' log lines that name `function`, beside the
/// `NODE-TIMING` lines: when its worker started and where its component
/// came from.
fn pool_log(function: &str) {
    for (pod, line) in pool_log_lines(&format!("{FUNCTIONS}/{function}\"")) {
        println!("NODE-BREAKDOWN {pod} log: {line}");
    }
}

/// The pool pods' log lines that contain `text`, each with its pod's name.
fn pool_log_lines(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for pod in pods(NAMESPACE, Some(POOL)) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let logs = cluster().kubectl_with(&["logs", name, "-n", NAMESPACE], "");
        found.extend(
            String::from_utf8_lossy(&logs.stdout)
                .lines()
                .filter(|l| l.contains(text))
                .map(|l| (name.to_owned(), l.to_owned())),
        );
    }
    found
}

/// Each running pool pod's compiles ahead: (started, under way), by pod.
fn pool_compiles_ahead() -> BTreeMap<String, (u64, u64)> {
    let value = |text: &str, metric: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{metric}{{trigger=\"ahead\"}} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    pods(NAMESPACE, Some(POOL))
        .iter()
        .filter(|pod| ready(pod))
        .filter_map(|pod| {
            let text = metrics_of(pod)?;
            Some((
                pod["metadata"]["name"].as_str()?.to_owned(),
                (
                    value(&text, "sluice_runtime_compiles_total"),
                    value(&text, "sluice_runtime_compiles_in_progress"),
                ),
            ))
        })
        .collect()
}

fn helm_test_passes() {
    let started = Instant::now();
    helm(&["test", RELEASE, "-n", NAMESPACE, "--timeout", "2m"]);
    report("helm test", started);
}

/// The ConfigMap and OCI examples (pool) and a dedicated one: each Ready
/// and answering through the gateway's ClusterIP. Returns the paths of a
/// pool function and of a dedicated echo.
fn cluster_examples_are_served() -> (String, String) {
    // A ConfigMap function, applied with the pool at zero: its first
    // answer includes the pool's first pod starting.
    config_map("hello-wasm", "hello.wasm", &component("hello"));
    let started = Instant::now();
    apply(&example("hello"));
    wait_ready("hello");
    report("kubectl apply of a ConfigMap Function to Ready", started);
    let hello = format!("/fn/{FUNCTIONS}/hello/");
    first_200(&hello, "Hello");
    report(
        "kubectl apply to first 200, pool at zero (pool pod start)",
        started,
    );
    let (replicas, _) = deployment_replicas(NAMESPACE, "sluice-runtime");
    assert!(replicas >= 1, "the pool woke");
    the_pool_at_zero_answers_its_first_request(&hello);

    // Warm: the pool runs.
    let gateway = gateway();
    println!(
        "NODE-TIMING warm pool request p50: {} us",
        warm_p50(&hello).as_micros()
    );

    // An OCI module from the node's registry, in the warm pool.
    let wasm = std::fs::read(component("hello")).expect("the hello component");
    let reference = format!("{}/sluice-examples/hello-oci:1.0.0", node().registry);
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(registry::push_artifact(
            &reference,
            &oci_client::secrets::RegistryAuth::Anonymous,
            registry::WASM_CONFIG,
            &[(&wasm, registry::WASM_LAYER)],
        ))
        .unwrap_or_else(|e| panic!("push {reference}: {e}"));
    let started = Instant::now();
    apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: hello-oci, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ oci: \"{reference}\" }}
  env: [ {{ name: GREETING, value: Hi }} ]
"
    ));
    wait_ready("hello-oci");
    first_200(&format!("/fn/{FUNCTIONS}/hello-oci/"), "Hi");
    report(
        "kubectl apply of an OCI Function to first 200, warm pool",
        started,
    );

    // The secured example: 401 without its key, 200 with it.
    let key = "e2e-key-0123456789abcdef0123456789abcdef";
    apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: secured-echo-keys, namespace: {FUNCTIONS} }}\nstringData: {{ ci: {key} }}\n"
    ));
    config_map("echo-wasm", "echo.wasm", &component("echo"));
    apply(&example("secured-echo"));
    wait_ready("secured-echo");
    let path = format!("/fn/{FUNCTIONS}/secured-echo/x");
    eventually("401 without a key", Duration::from_secs(30), || {
        (get(gateway, &path)?.0 == 401).then_some(())
    });
    eventually("200 with the key", Duration::from_secs(30), || {
        let (status, _) =
            sluice_testing::http::get_with(gateway, &path, &[&format!("X-Api-Key: {key}")])?;
        (status == 200).then_some(())
    });

    // A dedicated function at zero: its first answer includes its own
    // Deployment's pod start.
    apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: echo, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: echo-wasm, key: echo.wasm }} }}
  placement: dedicated
  timeout: 10s
  scaling: {{ minReplicas: 0, maxReplicas: 2, scaleDownDelay: 2s, scaleToZeroAfter: 3s }}
"
    ));
    wait_ready("echo");
    let echo = format!("/fn/{FUNCTIONS}/echo/");
    // echo answers a GET with its (empty) body.
    first_requests_at_zero(
        "dedicated function",
        &echo,
        "",
        (FUNCTIONS, "echo-runtime"),
        "sluice.dev/function=echo",
    );
    (hello, echo)
}

/// The pool's wake from zero, five times: `hello`, the pool's only
/// function, idles out in seconds instead of a minute, each request waits
/// for the pool Deployment at zero with no pod left, and its time to a 200
/// includes the pool pod's start. Then `hello` gets its default scaling
/// back, so the steps after this find the pool warm as a user would.
fn the_pool_at_zero_answers_its_first_request(hello: &str) {
    let scaling = |value: &str| {
        kubectl(&[
            "patch",
            "function",
            "hello",
            "-n",
            FUNCTIONS,
            "--type",
            "merge",
            "-p",
            &format!("{{\"spec\":{{\"scaling\":{value}}}}}"),
        ])
    };
    scaling(r#"{"scaleDownDelay":"2s","scaleToZeroAfter":"3s"}"#);
    first_requests_at_zero("pool", hello, "Hello", (NAMESPACE, "sluice-runtime"), POOL);
    scaling("null");
}

/// Five first requests to `path`, each sent once `deployment` (namespace,
/// name) is at zero with no pod of `selector` left; prints their median,
/// slowest and all, and where each woken pod's start went.
fn first_requests_at_zero(
    what: &str,
    path: &str,
    text: &str,
    deployment: (&str, &str),
    selector: &str,
) {
    let (namespace, name) = deployment;
    let mut cold = Vec::new();
    let first_sent = jiff::Timestamp::now();
    for _ in 0..5 {
        eventually(
            &format!("the {what} at zero"),
            Duration::from_secs(120),
            || {
                let (spec, _) = deployment_replicas(namespace, name);
                let running = pods(namespace, Some(selector)).len();
                (spec == 0 && running == 0).then_some(())
            },
        );
        println!(
            "NODE-BREAKDOWN {what} request sent {}",
            jiff::Timestamp::now()
        );
        let first = first_200_timed(path, text);
        if !first.tries.is_empty() {
            // A slow wake's tries say whether the time went to the
            // connection (no answer at the 2 s connect timeout) or not.
            println!(
                "NODE-BREAKDOWN {what} 200 after {} ms, tries before it: {:?}",
                first.since_first_try.as_millis(),
                first.tries
            );
        }
        cold.push(first.since_first_try);
        pod_start_breakdown(namespace, selector);
    }
    // When the autoscaler wrote each scale, to set beside the sends.
    let operator = cluster().kubectl_with(
        &[
            "logs",
            "deployment/sluice-operator",
            "-n",
            NAMESPACE,
            &format!("--since-time={first_sent}"),
        ],
        "",
    );
    for line in String::from_utf8_lossy(&operator.stdout)
        .lines()
        .filter(|l| l.contains("replica"))
    {
        println!("NODE-BREAKDOWN operator log: {line}");
    }
    let mut sorted = cold.clone();
    sorted.sort();
    println!(
        "NODE-TIMING {what} at zero, first request p50 of {}: {} ms, slowest {} ms ({:?})",
        cold.len(),
        median(cold.clone()).as_millis(),
        sorted.last().map_or(0, Duration::as_millis),
        cold.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
}

/// The pool runtime's pods.
const POOL: &str = "app.kubernetes.io/name=sluice-runtime";

/// Where a woken runtime's start went: the pod's own timestamps (whole
/// seconds) and the runtime's log lines (microseconds) up to its first
/// invocation taken, printed beside the `NODE-TIMING` lines.
fn pod_start_breakdown(namespace: &str, selector: &str) {
    let pods = pods(namespace, Some(selector));
    let Some(pod) = pods.first() else { return };
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let conditions: Vec<String> = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {}",
                c["type"].as_str().unwrap_or("?"),
                c["lastTransitionTime"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "NODE-BREAKDOWN {name}: created {}, {}, container started {}",
        pod["metadata"]["creationTimestamp"].as_str().unwrap_or("?"),
        conditions.join(", "),
        pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or("?"),
    );
    let logs = cluster().kubectl_with(&["logs", name, "-n", namespace], "");
    for line in String::from_utf8_lossy(&logs.stdout).lines().take(16) {
        println!("NODE-BREAKDOWN {name} log: {line}");
    }
}

/// A pod resolves the gateway's Service by its cluster DNS name and gets
/// an answer through it.
fn a_pod_reaches_the_gateway_by_its_dns_name(hello: &str) {
    let url = format!("http://sluice-gateway.{NAMESPACE}.svc.cluster.local:8080{hello}");
    apply(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{ name: dns-client, namespace: {FUNCTIONS} }}
spec:
  restartPolicy: Never
  securityContext: {{ runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{ type: RuntimeDefault }} }}
  containers:
    - name: wget
      image: {}/wget:1
      command: [wget, -q, -O-, -T, \"10\", \"{url}\"]
      securityContext: {{ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{ drop: [ALL] }} }}
",
        node().registry
    ));
    eventually(
        "the DNS client pod succeeded",
        Duration::from_secs(60),
        || {
            let phase = kubectl(&[
                "get",
                "pod",
                "dns-client",
                "-n",
                FUNCTIONS,
                "-o",
                "jsonpath={.status.phase}",
            ]);
            assert_ne!(
                phase.trim(),
                "Failed",
                "{}",
                kubectl(&["logs", "dns-client", "-n", FUNCTIONS])
            );
            (phase.trim() == "Succeeded").then_some(())
        },
    );
    let answer = kubectl(&["logs", "dns-client", "-n", FUNCTIONS]);
    assert!(answer.contains("Hello"), "{answer}");
}

fn a_dedicated_function_wakes_from_zero_surges_to_max_and_returns_to_zero() {
    config_map("misbehave-wasm", "misbehave.wasm", &component("misbehave"));
    apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: surge, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: misbehave-wasm, key: misbehave.wasm }} }}
  placement: dedicated
  timeout: 30s
  concurrency: 10
  scaling: {{ minReplicas: 0, maxReplicas: 3, targetQueueDepth: 10, scaleDownDelay: 2s, scaleToZeroAfter: 3s }}
"
    ));
    wait_ready("surge");
    let started = Instant::now();
    // 200 × 1 s at 10 per replica: 20 s of work for one replica, so three
    // replicas' containers run for several seconds (a surge of 200 ms
    // calls was once over before a poll saw all three). Their readiness
    // probe may not pass in that time: runtimes take work from NATS, not
    // from a Service, so Running is what serves.
    let ids = post_async("/async/fn/e2e/surge/sleep/1000", 200);
    // One that writes a line, to read after its pod is gone.
    let said = post_async("/async/fn/e2e/surge/say/before-zero", 1);
    eventually("surge at maxReplicas", Duration::from_secs(120), || {
        let (spec, _) = deployment_replicas(FUNCTIONS, "surge-runtime");
        let running = pods(FUNCTIONS, Some("sluice.dev/function=surge"))
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (spec == 3 && running == 3).then_some(())
    });
    report("200 async at zero to 3 running replicas", started);
    all_succeeded(&ids);
    report("200 async at zero, all succeeded", started);
    assert_eq!(settled(&said[0]), "succeeded");
    eventually("the surge back at zero", Duration::from_secs(120), || {
        let (spec, _) = deployment_replicas(FUNCTIONS, "surge-runtime");
        let running = pods(FUNCTIONS, Some("sluice.dev/function=surge")).len();
        (spec == 0 && running == 0).then_some(())
    });
    logs_outlive_the_pod(&said[0]);
}

/// A dedicated Function at zero with a schedule of every second: both
/// gateways fire each tick (queued once, by the tick's id), the queued
/// ticks wake its Deployment from zero, and its pod runs them.
fn a_schedule_wakes_a_dedicated_function_at_zero() {
    let ticking = |triggers: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: ticking, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: misbehave-wasm, key: misbehave.wasm }} }}
  placement: dedicated
  scaling: {{ scaleDownDelay: 0s, scaleToZeroAfter: 2s }}
  triggers: {triggers}
"
        )
    };
    apply(&ticking("{}"));
    wait_ready("ticking");
    eventually("ticking at zero", Duration::from_secs(120), || {
        let (spec, _) = deployment_replicas(FUNCTIONS, "ticking-runtime");
        let running = pods(FUNCTIONS, Some("sluice.dev/function=ticking")).len();
        (spec == 0 && running == 0).then_some(())
    });
    let from = jiff::Timestamp::now();
    let started = Instant::now();
    apply(&ticking(
        "{ schedule: [ { name: every-second, cron: \"* * * * * *\", path: /status/200 } ] }",
    ));
    let function = sluice_api::names::FunctionRef::new(FUNCTIONS, "ticking").expect("a name");
    let gateway = gateway();
    eventually("three ticks run", Duration::from_secs(120), || {
        let mut tick = jiff::Timestamp::from_second(from.as_second()).ok()?;
        let now = jiff::Timestamp::now();
        let mut succeeded = 0;
        while tick <= now {
            let id = sluice_api::schedule::tick_invocation_id(&function, "every-second", tick);
            let (status, body) = get(gateway, &format!("/invocations/{id}"))?;
            let record: Value = serde_json::from_str(&body).unwrap_or_default();
            if status == 200 && record["state"] == "succeeded" {
                succeeded += 1;
            }
            tick += jiff::SignedDuration::from_secs(1);
        }
        (succeeded >= 3).then_some(())
    });
    report("a schedule at zero: applied to three ticks run", started);
    kubectl(&["delete", "function", "ticking", "-n", FUNCTIONS]);
}

/// What invocation `id` of `surge` wrote (`before-zero` on stdout) is
/// served by id and by function after every pod of `surge` is gone: logs
/// are kept in NATS, not in the pod.
fn logs_outlive_the_pod(id: &str) {
    let gateway = gateway();
    let (status, body) = get(gateway, &format!("/invocations/{id}/logs")).expect("an answer");
    assert_eq!(status, 200, "{body}");
    let logs: Value = serde_json::from_str(&body).expect("JSON");
    let line = &logs["attempts"][0]["lines"][0];
    assert_eq!(
        (line["line"].as_str(), line["stream"].as_str()),
        (Some("before-zero"), Some("stdout")),
        "{logs}"
    );
    let (status, body) =
        get(gateway, &format!("/logs/{FUNCTIONS}/surge?since=10m")).expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("before-zero"), "{body}");
}

/// The NATS pod, a runtime pod and the operator's pod are deleted while
/// async work is in flight: the StatefulSet brings NATS back on its
/// volume, runtimes' work is redelivered, a new operator takes over; every
/// accepted invocation succeeds.
fn faults_lose_no_accepted_invocation(echo: &str) {
    let path = format!("/async{echo}fault");
    let mut ids = post_async(&path, 100);
    let started = Instant::now();
    kubectl(&[
        "delete",
        "pod",
        "sluice-nats-0",
        "-n",
        NAMESPACE,
        "--wait=false",
    ]);
    ids.extend(post_async(&path, 100));
    eventually("NATS back", Duration::from_secs(180), || {
        pods(NAMESPACE, Some("app.kubernetes.io/name=sluice-nats"))
            .first()
            .is_some_and(ready)
            .then_some(())
    });
    report("NATS pod deleted to Ready again", started);
    all_succeeded(&ids);

    let mut ids = post_async("/async/fn/e2e/surge/sleep/500", 60);
    let runtime = eventually("a surge runtime pod", Duration::from_secs(120), || {
        pods(FUNCTIONS, Some("sluice.dev/function=surge"))
            .into_iter()
            .find(ready)
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
    });
    kubectl(&["delete", "pod", &runtime, "-n", FUNCTIONS, "--wait=false"]);
    ids.extend(post_async("/async/fn/e2e/surge/sleep/100", 20));
    all_succeeded(&ids);

    let operator = pods(NAMESPACE, Some("app.kubernetes.io/name=sluice-operator"));
    let name = operator[0]["metadata"]["name"]
        .as_str()
        .expect("its name")
        .to_owned();
    let started = Instant::now();
    kubectl(&["delete", "pod", &name, "-n", NAMESPACE, "--wait=false"]);
    apply(&format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: after-operator, namespace: {FUNCTIONS} }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: hello-wasm, key: hello.wasm }} }}
"
    ));
    wait_ready("after-operator");
    first_200(&format!("/fn/{FUNCTIONS}/after-operator/"), "Hello");
    report("operator pod deleted to a new Function served", started);
}

/// `helm upgrade` with a changed value, then to a new chart version, while
/// a client keeps calling: every call answers (a 503 while a gateway is
/// replaced is retried, as the Service moves the next one).
fn upgrade_keeps_serving(hello: &str) {
    let chart = repo_root().join("charts/sluice").display().to_string();
    let nats_before = json(&["get", "statefulset", "sluice-nats", "-n", NAMESPACE]);
    let gateway = gateway();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        let hello = hello.to_owned();
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get_within(gateway, &hello, Duration::from_secs(15)) {
                    Some((200, _)) => ok += 1,
                    other => failed.push(other.map(|(s, _)| s)),
                }
                thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        })
    };
    let started = Instant::now();
    let mut args = release_args("upgrade", &chart);
    args.extend(["--set".to_owned(), "gateway.maxQueueDepth=5000".to_owned()]);
    helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    report("helm upgrade with a changed value", started);

    // A new chart version: the same chart with its version raised.
    let next = cluster().dir().join("chart-next");
    copy_dir(Path::new(&chart), &next);
    let manifest = next.join("Chart.yaml");
    let text = std::fs::read_to_string(&manifest).expect("Chart.yaml");
    std::fs::write(
        &manifest,
        text.replace("\nversion: ", "\nversion: 0.0.1-next."),
    )
    .expect("write Chart.yaml");
    args[2] = next.display().to_string();
    let started = Instant::now();
    helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    report("helm upgrade to a new chart version", started);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = caller.join().expect("the caller");
    assert!(served > 0);
    let unanswered: Vec<_> = failed.iter().filter(|s| s.is_none()).collect();
    assert!(
        unanswered.is_empty() && failed.len() <= 2,
        "calls during the upgrades: {served} answered 200, others {failed:?}"
    );
    let nats_after = json(&["get", "statefulset", "sluice-nats", "-n", NAMESPACE]);
    assert_eq!(
        nats_before["spec"]["template"], nats_after["spec"]["template"],
        "an upgrade must not restart NATS"
    );
    let restarted: BTreeMap<_, _> = restarts(NAMESPACE)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(restarted.is_empty(), "restarts: {restarted:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a folder");
    for entry in std::fs::read_dir(from).expect("a chart folder") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("a copy");
        }
    }
}

fn uninstall_completes_and_keeps_the_crd() {
    let started = Instant::now();
    helm_uninstall();
    report("helm uninstall", started);
    eventually("the release's pods gone", Duration::from_secs(120), || {
        pods(NAMESPACE, None).is_empty().then_some(())
    });
    // crds.keep: the CRD, and with it the Functions, stay.
    kubectl(&["get", "crd", "functions.sluice.dev"]);
}

/// The README's way out for Functions an uninstall left behind (their
/// finalizer has no operator left to remove it): release each by hand,
/// then delete the CRD, which then completes.
fn leftover_functions_released_then_the_crd_deleted() {
    let left = kubectl(&[
        "get",
        "functions.sluice.dev",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name}{\"\\n\"}{end}",
    ]);
    assert!(!left.trim().is_empty(), "crds.keep kept the Functions");
    for line in left.lines() {
        let (namespace, name) = line.split_once(' ').expect("namespace and name");
        kubectl(&[
            "patch",
            "functions.sluice.dev",
            "-n",
            namespace,
            name,
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
    let started = Instant::now();
    // kubectl waits for the deletion and fails past the timeout: the bound.
    kubectl(&["delete", "crd", "functions.sluice.dev", "--timeout=60s"]);
    report("kubectl delete crd, the Functions released", started);
}

/// A Secret of `type` in `namespace` holding `entries` as written.
fn secret(namespace: &str, name: &str, kind: &str, entries: &[(&str, &str)]) {
    let data: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(key, value)| (key.to_string(), Value::from(*value)))
        .collect();
    apply(
        &json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": name, "namespace": namespace },
            "type": kind,
            "stringData": data,
        })
        .to_string(),
    );
}

const PARTS: [&str; 4] = ["gateway", "events", "runtime", "operator"];

/// A NATS run elsewhere, as `ci/external-nats-values.yaml` expects it at
/// `tls://nats.nats.svc.cluster.local:4222`: mutual TLS with a private CA,
/// a user per part with exactly its set from the chart's permissions file,
/// JetStream on an emptyDir. Returns the CA.
fn external_nats(nats_version: &str) -> TestCa {
    let ca = TestCa::new();
    let (server_cert, server_key) = ca.leaf(&["nats.nats.svc.cluster.local", "nats.nats.svc"]);
    kubectl(&["create", "namespace", "nats"]);
    let users: Vec<String> = PARTS
        .iter()
        .map(|part| {
            format!(
                "    {{ user: sluice-{part}, password: \"{}\", permissions: $SLUICE_{} }}",
                password(part),
                part.to_uppercase()
            )
        })
        .collect();
    // JetStream reserves each stream's max_bytes: room for the layout's
    // default bounds (8.06 GiB in all).
    let config = format!(
        "port: 4222\nhttp_port: 8222\nmax_payload: 8MB\n\
         jetstream {{ store_dir: /data, max_file_store: 10G }}\n\
         tls {{\n  cert_file: /etc/nats/server.pem\n  key_file: /etc/nats/server-key.pem\n  \
         ca_file: /etc/nats/ca.pem\n  verify: true\n  timeout: 5\n}}\n\
         include \"permissions.conf\"\nauthorization {{\n  users: [\n{}\n  ]\n}}\n",
        users.join("\n")
    );
    let permissions =
        std::fs::read_to_string(repo_root().join("charts/sluice/files/nats-permissions.conf"))
            .expect("the chart's permissions file");
    secret(
        "nats",
        "nats",
        "Opaque",
        &[
            ("nats.conf", &config),
            ("permissions.conf", &permissions),
            ("server.pem", &server_cert),
            ("server-key.pem", &server_key),
            ("ca.pem", &ca.pem()),
        ],
    );
    let registry = &node().registry;
    apply(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{ name: nats, namespace: nats }}
spec:
  selector: {{ app: nats }}
  ports: [{{ name: client, port: 4222 }}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: nats, namespace: nats }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: nats }} }}
  template:
    metadata: {{ labels: {{ app: nats }} }}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        runAsGroup: 1000
        seccompProfile: {{ type: RuntimeDefault }}
      containers:
        - name: nats
          image: {registry}/nats:{nats_version}
          args: [--config, /etc/nats/nats.conf]
          ports: [{{ name: client, containerPort: 4222 }}, {{ name: monitor, containerPort: 8222 }}]
          readinessProbe:
            httpGet: {{ path: "/healthz?js-enabled-only=true", port: monitor }}
            periodSeconds: 2
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{ drop: [ALL] }}
          volumeMounts:
            - {{ name: config, mountPath: /etc/nats }}
            - {{ name: data, mountPath: /data }}
      volumes:
        - {{ name: config, secret: {{ secretName: nats }} }}
        - {{ name: data, emptyDir: {{}} }}
"#
    ));
    ca
}

/// Each part's password on the external NATS (the test's own; a real one
/// comes from a secret store).
fn password(part: &str) -> String {
    format!("{part}-{}-password", std::process::id())
}

/// `helm install` with `ci/external-nats-values.yaml` as committed: NATS
/// elsewhere over mutual TLS with a user per part, two operators watching
/// two namespaces with namespaced Roles, trigger subjects scoped per
/// namespace, HTTPS on the invocation API, NetworkPolicies on. Every pod
/// Ready with no restart, `helm test` passes, a pool and a dedicated
/// function in a watched namespace answer over HTTPS, and the documented
/// full removal (Functions deleted while the operator runs, uninstall, CRD
/// deleted) completes.
///
/// The node's bridge CNI does not enforce NetworkPolicies: this proves the
/// policies admit what Sluice needs only where a CNI ignores them.
fn the_ci_values_install_on_an_external_nats_with_mutual_tls() {
    let started = Instant::now();
    let ca = external_nats(&node().nats_version);
    for namespace in ["shop", "tenant-b"] {
        kubectl(&["create", "namespace", namespace]);
    }
    let (client_cert, client_key) = ca.leaf(&["sluice"]);
    let gateway_host = format!("sluice-gateway.{NAMESPACE}.svc");
    let (gateway_cert, gateway_key) = ca.leaf(&[&gateway_host]);
    // The runtime's files go to the dedicated namespace as well.
    for namespace in [NAMESPACE, "shop"] {
        for part in PARTS {
            if namespace == "shop" && part != "runtime" {
                continue;
            }
            secret(
                namespace,
                &format!("sluice-nats-{part}"),
                "Opaque",
                &[
                    ("user", &format!("sluice-{part}")),
                    ("password", &password(part)),
                ],
            );
        }
        secret(
            namespace,
            "sluice-nats-ca",
            "Opaque",
            &[("ca.crt", &ca.pem())],
        );
        secret(
            namespace,
            "sluice-nats-client",
            "kubernetes.io/tls",
            &[("tls.crt", &client_cert), ("tls.key", &client_key)],
        );
    }
    secret(
        NAMESPACE,
        "sluice-gateway-tls",
        "kubernetes.io/tls",
        &[("tls.crt", &gateway_cert), ("tls.key", &gateway_key)],
    );
    eventually("the external NATS Ready", Duration::from_secs(120), || {
        pods("nats", None).iter().any(ready).then_some(())
    });
    helm_with(&chart_args("install", &["ci/external-nats-values.yaml"]));
    report("helm install --wait, ci/external-nats-values.yaml", started);
    // The pool's pod may be on its way out: the autoscaler takes an idle
    // pool to zero.
    parts_ready();
    no_restarts("during the install");
    helm_test_passes();

    let ca_file = cluster().dir().join("external-nats-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("the CA file");
    let gateway = gateway();
    let https_get = |path: &str| -> Option<(u16, String)> {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&ca_file)
            .args([
                "--resolve",
                &format!("{gateway_host}:{}:{}", gateway.port(), gateway.ip()),
                "-w",
                "\n%{http_code}",
                &format!("https://{gateway_host}:{}{path}", gateway.port()),
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            println!("curl: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let (body, status) = text.rsplit_once('\n')?;
        Some((status.trim().parse().ok()?, body.to_owned()))
    };
    let kubectl_shop = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", "shop"]);
        kubectl(&all);
    };
    let wasm = component("hello");
    kubectl_shop(&[
        "create",
        "configmap",
        "hello-wasm",
        &format!("--from-file=hello.wasm={}", wasm.display()),
    ]);
    for (name, placement) in [("hello", "pool"), ("hello-dedicated", "dedicated")] {
        apply(&format!(
            "apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: {name}, namespace: shop }}
spec:
  auth: {{ public: true }}
  module: {{ configMap: {{ name: hello-wasm, key: hello.wasm }} }}
  placement: {placement}
"
        ));
        wait_ready_in("shop", name);
        let path = format!("/fn/shop/{name}/");
        let served = Instant::now();
        let mut last = None;
        eventually(
            &format!("200 over HTTPS from {path}"),
            Duration::from_secs(180),
            || {
                let answer = https_get(&path);
                if answer != last {
                    println!("{path} over HTTPS: {answer:?}");
                    last = answer.clone();
                }
                let (status, body) = answer?;
                (status == 200 && body.contains("Hello")).then_some(())
            },
        );
        report(
            &format!("{placement} Function to first 200 over HTTPS"),
            served,
        );
    }
    // Plain HTTP is not served on the HTTPS listener.
    assert!(
        get(gateway, "/fn/shop/hello/").is_none_or(|(status, _)| status != 200),
        "the gateway answered plain HTTP"
    );
    no_external_nats_violations();

    // ci/monitoring-values.yaml on top: a ServiceMonitor, the dashboards and
    // alerts (prometheus-operator's CRDs stood in for), NetworkPolicies
    // that let Prometheus scrape, the gateway behind a LoadBalancer
    // Service (which nothing here provisions: it keeps its ClusterIP).
    for crd in [
        monitoring_crds::SERVICE_MONITOR_CRD,
        monitoring_crds::PROMETHEUS_RULE_CRD,
    ] {
        apply(crd);
    }
    for crd in ["servicemonitors", "prometheusrules"] {
        kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}.monitoring.coreos.com"),
            "--timeout=60s",
        ]);
    }
    let upgraded = Instant::now();
    helm_with(&chart_args(
        "upgrade",
        &["ci/external-nats-values.yaml", "ci/monitoring-values.yaml"],
    ));
    report("helm upgrade --wait, + ci/monitoring-values.yaml", upgraded);
    for kind in ["servicemonitor", "prometheusrule"] {
        let made = kubectl(&["get", kind, "-n", NAMESPACE, "-o", "name"]);
        assert!(!made.trim().is_empty(), "no {kind} rendered");
    }
    helm_test_passes();
    eventually(
        "a 200 over HTTPS after the upgrade",
        Duration::from_secs(60),
        || {
            let (status, _) = https_get("/fn/shop/hello/")?;
            (status == 200).then_some(())
        },
    );
    no_restarts("during the upgrade");

    let removed = Instant::now();
    kubectl_shop(&[
        "delete",
        "functions.sluice.dev",
        "--all",
        "--wait",
        "--timeout=120s",
    ]);
    helm_uninstall();
    kubectl(&["delete", "crd", "functions.sluice.dev", "--timeout=60s"]);
    report(
        "full removal (Functions deleted, uninstall, CRD deleted)",
        removed,
    );
}

/// `helm install` with `ci/nats-cluster-values.yaml` as committed: the
/// bundled NATS a JetStream cluster of three servers (a StatefulSet whose
/// routes go through the headless Service, a volume each), the layout
/// replicated three times. Every pod Ready with no restart, `helm test`
/// passes, a pool function answers; then the server leading the
/// invocation stream is SIGKILLed (no lame duck, no goodbye) while async
/// invocations come in: kubelet restarts it on its volume, callers retry
/// the 503s the election may cause, every accepted invocation succeeds
/// and no other pod restarts.
fn a_nats_cluster_install_survives_a_server_killed() {
    // What the releases before left in the namespace: the single server's
    // claim (whose data a new `sluice-nats-0` would otherwise pick up) and
    // the external-NATS step's own Secrets (not the chart's).
    for (namespace, wait) in [(NAMESPACE, "--wait=true"), ("nats", "--wait=false")] {
        kubectl(&[
            "delete",
            "namespace",
            namespace,
            "--ignore-not-found",
            wait,
            "--timeout=120s",
        ]);
    }
    kubectl(&["delete", "pv", "sluice-nats-0", "--ignore-not-found"]);
    kubectl(&["create", "namespace", NAMESPACE]);
    for i in 0..3 {
        nats_volume_named(&format!("nats-cluster-{i}"));
    }
    let started = Instant::now();
    helm_with(&chart_args("install", &["ci/nats-cluster-values.yaml"]));
    report(
        "helm install --wait, ci/nats-cluster-values.yaml (three NATS servers)",
        started,
    );
    let parts = parts_ready();
    let names: Vec<&str> = parts
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        parts.len(),
        6,
        "three servers, two gateways, the operator: {names:?}"
    );
    let claims = json(&["get", "pvc", "-n", NAMESPACE]);
    let bound = claims["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"]["phase"] == "Bound")
        .count();
    assert_eq!(bound, 3, "{claims}");
    no_restarts("during the install");
    helm_test_passes();

    config_map("hello-ha-wasm", "module.wasm", &component("hello"));
    pool_function("hello-ha");
    let path = format!("/fn/{FUNCTIONS}/hello-ha/");
    first_200(&path, "Hello");

    let servers = pods(NAMESPACE, Some("app.kubernetes.io/name=sluice-nats"));
    let leader = eventually(
        "the invocation stream's leader",
        Duration::from_secs(60),
        || {
            servers
                .iter()
                .find_map(|pod| stream_leader(pod, "SLUICE_INVOCATIONS"))
        },
    );
    let async_path = format!("/async{path}");
    let before = pool_successes();
    let mut ids = post_async(&async_path, 100);
    let killed = Instant::now();
    // When the pool has run all 200: its success counters, read beside the
    // posts (the status reads below take their own time, one by one).
    let ran = thread::spawn(move || {
        while killed.elapsed() < Duration::from_secs(120) {
            if pool_successes() >= before + 200.0 {
                return Some(killed.elapsed());
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    });
    sigkill_server(&leader);
    ids.extend(post_async(&async_path, 100));
    report(
        &format!("{leader} (the invocation stream's leader) SIGKILLed to 100 more accepted"),
        killed,
    );
    let (status, body) = get(gateway(), &path).expect("an answer after the kill");
    assert_eq!(status, 200, "{body}");
    match ran.join().expect("the counter's reader") {
        Some(took) => println!(
            "NODE-TIMING {leader} SIGKILLed to the pool having run all 200: {} ms",
            took.as_millis()
        ),
        None => println!("NODE-TIMING the pool's counters did not show all 200 run within 120 s"),
    }
    eventually(
        "the killed server Ready again",
        Duration::from_secs(180),
        || {
            let pod = json(&["get", "pod", &leader, "-n", NAMESPACE]);
            let restarted =
                pod["status"]["containerStatuses"][0]["restartCount"].as_u64() > Some(0);
            (restarted && ready(&pod)).then_some(())
        },
    );
    report(&format!("{leader} SIGKILLed to Ready again"), killed);
    all_succeeded(&ids);
    let twice = ids
        .iter()
        .filter(|id| {
            get(gateway(), &format!("/invocations/{id}"))
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|record| record["attempts"].as_u64() > Some(1))
        })
        .count();
    println!("NODE-TIMING of the 200, all succeeded, {twice} ran more than once (at-least-once)");
    let restarted: BTreeMap<_, _> = restarts(NAMESPACE)
        .into_iter()
        .filter(|(pod, n)| *n > 0 && *pod != leader)
        .collect();
    assert!(
        restarted.is_empty(),
        "pods restarted after a NATS server's loss: {restarted:?}\n{}",
        diagnostics()
    );
}

/// Successful attempts the pool's running pods have counted
/// (`sluice_invocation_attempts_total{outcome="success"}`, every function).
fn pool_successes() -> f64 {
    pods(NAMESPACE, Some(POOL))
        .iter()
        .filter_map(|pod| {
            let text = metrics_of(pod)?;
            Some(
                text.lines()
                    .filter(|l| {
                        l.starts_with("sluice_invocation_attempts_total{")
                            && l.contains("outcome=\"success\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>(),
            )
        })
        .sum()
}

/// The server leading `stream`, as the NATS pod `pod` reports it on its
/// monitoring port (`/jsz`), reached from this machine on the pod network.
fn stream_leader(pod: &Value, stream: &str) -> Option<String> {
    let ip = pod["status"]["podIP"].as_str()?;
    let monitor = SocketAddr::new(ip.parse().ok()?, 8222);
    let (status, body) = get(monitor, "/jsz?accounts=true&streams=true")?;
    if status != 200 {
        return None;
    }
    let jsz: Value = serde_json::from_str(&body).ok()?;
    let leader = jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == stream)?["cluster"]["leader"]
        .as_str()?
        .to_owned();
    (!leader.is_empty()).then_some(leader)
}

/// SIGKILLs the nats-server of pod `name` (its `server_name`), found on
/// this machine by the `POD_NAME` in its environment: a server lost at
/// once, as when its node dies, not stopped in lame-duck mode as a pod
/// deletion would.
fn sigkill_server(name: &str) {
    let marker = format!("POD_NAME={name}");
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            comm.trim() == "nats-server"
                && environ
                    .split(|b| *b == 0)
                    .any(|entry| entry == marker.as_bytes())
        })
        .unwrap_or_else(|| panic!("no nats-server process of {name} on this machine"));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -KILL {pid}");
}

/// The external server refused no part anything.
fn no_external_nats_violations() {
    let log = kubectl(&["logs", "deployment/nats", "-n", "nats"]);
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        refused.is_empty(),
        "the external NATS refused a part something:\n{}",
        refused.join("\n")
    );
}

#[path = "../all/support/monitoring_crds.rs"]
mod monitoring_crds;

#[path = "../all/support/registry.rs"]
#[allow(dead_code)]
mod registry;
