//! Shared resources stay bounded under floods, with the kernel as the
//! judge: a process under test runs in a memory cgroup (v1) of its own,
//! made for the test and removed after, and must never be OOM-killed.
//! These tests need root and a v1 memory controller mounted at
//! `/sys/fs/cgroup/memory`; without them they say so and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use sluice_nats::layout::LayoutConfig;

use crate::distributed::{Process, runtime_binary};
use crate::harness::{HELLO, NatsStack, TestGateway, eventually, manifest_dir, metric};

const MEMORY_CGROUPS: &str = "/sys/fs/cgroup/memory";

/// A v1 memory cgroup with a limit, removed (its processes killed first)
/// when dropped.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// A new cgroup limited to `limit` bytes; `None` (with the reason
    /// printed) where this machine cannot make one.
    fn create(limit: u64) -> Option<Self> {
        let root = Path::new(MEMORY_CGROUPS);
        if !root.join("cgroup.procs").is_file() {
            eprintln!("SKIPPED: no cgroup v1 memory controller at {MEMORY_CGROUPS}");
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = root.join(format!("sluice-test-{}-{nanos}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!(
                "SKIPPED: cannot create a memory cgroup at {} ({e}); run as root",
                dir.display()
            );
            return None;
        }
        let cgroup = Self { dir };
        std::fs::write(cgroup.file("memory.limit_in_bytes"), limit.to_string())
            .expect("the cgroup takes a limit");
        // Without swap the limit is the limit; where swap exists, bound it too.
        let _ = std::fs::write(
            cgroup.file("memory.memsw.limit_in_bytes"),
            limit.to_string(),
        );
        Some(cgroup)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// Processes the kernel killed for want of memory in this cgroup.
    fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `program args…`, run inside this cgroup from its first instruction
    /// (a shell joins it, then becomes the program), so every byte it
    /// touches is charged here.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0" && shift && exec "$@""#)
            .arg(self.file("cgroup.procs"))
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let procs = self.read("cgroup.procs");
        for pid in procs.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        // The kernel removes a cgroup only once its processes are gone.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// A function that allocates until its 128Mi limit refuses (`/bomb`).
const HUNGRY: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hungry }
spec:
  module: { file: "{misbehave}" }
  limits: { memory: 128Mi }
  concurrency: 16
  timeout: 20s
  retry: { maxAttempts: 1 }
"#;

/// The cgroup's limit: 16 hungry instances at once would hold 2 GiB.
const RUNTIME_LIMIT: u64 = 512 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_in_a_memory_cgroup_runs_a_memory_flood_beside_a_normal_function_without_an_oom_kill()
 {
    let Some(cgroup) = MemoryCgroup::create(RUNTIME_LIMIT) else {
        return;
    };
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    stack
        .publish_dir(manifest_dir(&format!("{HUNGRY}---{HELLO}")).path())
        .await;
    let mut command = cgroup.command(&runtime_binary());
    command
        .args(["--nats", &stack.server.url])
        .args(["--admin-listen", "127.0.0.1:0", "--log-json"])
        .arg("--artifacts")
        .arg(work.path().join("artifacts"));
    let mut runtime = Process::spawn(command, work.path().join("runtime.log"));
    // The budget comes from the cgroup: 512Mi less the 128Mi reserve.
    let budget_line = runtime.wait_for_log("\"message\":\"memory budget\"").await;
    assert!(
        budget_line.contains("\"budget\":\"384Mi\""),
        "{budget_line}"
    );
    let started = runtime
        .wait_for_log("\"message\":\"runtime started\"")
        .await;
    let admin: serde_json::Value = serde_json::from_str(&started).unwrap();
    let admin = admin["fields"]["admin"].as_str().unwrap().to_owned();
    let (_gateway, addr) = Process::gateway(&stack.server.url, work.path(), &[]).await;
    let gw = TestGateway::remote(addr);
    gw.wait_routed("default/hello").await;
    gw.wait_routed("default/hungry").await;

    let hungry: Vec<String> = futures::future::join_all(
        (0..48).map(|_| gw.submit("/async/fn/default/hungry/bomb", &[], "")),
    )
    .await;
    // Meanwhile the normal function answers every call.
    for _ in 0..40 {
        let reply = gw.send(Method::GET, "/fn/default/hello/", &[], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    for id in &hungry {
        let record = gw.wait_record(id).await;
        let error = record["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("exceeded its memory limit of 128Mi"),
            "each hungry invocation fails alone, at its own limit: {record}"
        );
    }
    let metrics = runtime_metrics(&admin).await;
    assert_eq!(
        metric(&metrics, "sluice_memory_budget_bytes"),
        (384u64 << 20) as f64
    );
    assert!(
        runtime.is_running(),
        "the runtime is alive:\n{}",
        runtime.log_text()
    );
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed nothing");
    let peak: u64 = cgroup
        .read("memory.max_usage_in_bytes")
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "peak charged to the runtime's cgroup: {} MiB of {} MiB",
        peak >> 20,
        RUNTIME_LIMIT >> 20
    );
    // Every reservation came back.
    eventually(
        "the reservations are released",
        Duration::from_secs(10),
        async || {
            let text = runtime_metrics(&admin).await;
            match metric(&text, "sluice_memory_reserved_bytes") {
                0.0 => Ok(()),
                n => Err(format!("{n} bytes still reserved")),
            }
        },
    )
    .await;
}

/// The runtime's `/metrics` text.
async fn runtime_metrics(admin: &str) -> String {
    TestGateway::remote(admin.parse().unwrap())
        .get("/metrics")
        .await
        .text()
}

/// `misbehave` for large responses (`/big/<bytes>`).
const BIG: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: misbehave }
spec:
  module: { file: "{misbehave}" }
  concurrency: 64
"#;

/// The gateway's cgroup: half the chart's 512Mi, so that the floods below
/// would overrun it many times without the caps.
const GATEWAY_LIMIT: u64 = 256 << 20;

/// Opens a connection and sends the head of an upload of 1 MiB and then
/// `sent` bytes of it; returns the status of the answer, if one comes
/// within 20 s (0 when the connection closes without one).
async fn slow_upload(addr: std::net::SocketAddr, sent: usize) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let head =
        "POST /async/fn/default/hello/ HTTP/1.1\r\nhost: sluice\r\ncontent-length: 1048576\r\n\r\n";
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&vec![b'x'; sent]).await;
    let mut answer = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) => std::str::from_utf8(&answer[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        // Still waiting for the rest of the body: held, and bounded.
        Err(_) => 1,
        Ok(Err(_)) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_a_memory_cgroup_refuses_floods_past_its_caps_with_503_and_keeps_serving() {
    let Some(cgroup) = MemoryCgroup::create(GATEWAY_LIMIT) else {
        return;
    };
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    stack
        .publish_dir(manifest_dir(&format!("{BIG}---{HELLO}")).path())
        .await;
    let runtime = Process::runtime(&stack.server.url, work.path(), "runtime", &[]);
    let mut command = cgroup.command(&crate::distributed::gateway_binary());
    command.args([
        "--nats",
        &stack.server.url,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-json",
    ]);
    let mut gateway = Process::spawn(command, work.path().join("gateway.log"));
    let limits = gateway
        .wait_for_log("\"message\":\"admission limits\"")
        .await;
    // 256Mi less the 64Mi reserve: a quarter for connections at 256 KiB,
    // half for buffered bytes.
    assert!(limits.contains("\"max_connections\":\"192\""), "{limits}");
    assert!(limits.contains("\"max_buffered\":\"96Mi\""), "{limits}");
    let serving = gateway
        .wait_for_log("\"message\":\"serving\",\"addr\"")
        .await;
    let serving: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr: std::net::SocketAddr = serving["fields"]["addr"].as_str().unwrap().parse().unwrap();
    TestGateway::remote(addr).wait_routed("default/hello").await;
    runtime.wait_for_log("\"message\":\"serving\"").await;

    // 1,000 slow uploads of 256 KiB of an announced 1 MiB, held open.
    let uploads: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(slow_upload(addr, 256 << 10)))
        .collect();
    // 200 concurrent responses of 6 MB.
    let large: Vec<_> = (0..200)
        .map(|_| tokio::spawn(raw_get(addr, "/fn/default/misbehave/big/6000000")))
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for large in large {
        let (status, head, body) = large.await.unwrap();
        if status == 503 {
            assert!(
                body.contains("\"error\":\"overloaded\"") && head.contains("retry-after: 1"),
                "{head}{body}"
            );
        }
        *statuses.entry(status).or_default() += 1;
    }
    // Meanwhile (the uploads still held) normal requests are served, each
    // at once or after the Retry-After it is given.
    for _ in 0..20 {
        eventually(
            "hello is served",
            Duration::from_secs(60),
            async || match raw_get(addr, "/fn/default/hello/").await {
                (200, _, _) => Ok(()),
                (status, head, body) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Err(format!("{status} {head}{body}"))
                }
            },
        )
        .await;
    }
    let mut uploaded = std::collections::BTreeMap::<u16, usize>::new();
    for upload in uploads {
        *uploaded.entry(upload.await.unwrap()).or_default() += 1;
    }
    eprintln!("large responses by status: {statuses:?}; slow uploads by answer: {uploaded:?}");
    // Past the caps: 503, or (with the uploads holding every connection
    // and more refusals under way than are answered) closed unanswered.
    assert!(
        statuses.keys().all(|status| [0, 200, 503].contains(status))
            && statuses.get(&503).is_some_and(|n| *n > 0),
        "large responses: {statuses:?}"
    );
    // Held uploads (no answer yet) together hold at most the budget.
    let held = uploaded.get(&1).copied().unwrap_or(0);
    assert!(
        held * (256 << 10) <= 96 << 20,
        "{held} uploads held: {uploaded:?}"
    );
    assert!(
        gateway.is_running(),
        "the gateway is up:\n{}",
        gateway.log_text()
    );
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed nothing");
    let metrics = TestGateway::remote(admin_of(&gateway))
        .get("/metrics")
        .await
        .text();
    assert!(
        metric(&metrics, "sluice_connections_refused_total") > 0.0,
        "{metrics}"
    );
}

/// GETs `path` on a connection of its own; returns the status, the head
/// (lowercase) and the body as text, or status 0 when the connection ends
/// without an answer (closed unanswered past the caps).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new(), String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let read = async {
        stream.write_all(request.as_bytes()).await?;
        stream.read_to_end(&mut answer).await
    };
    if tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .is_err()
    {
        return (0, String::new(), "no answer within 60 s".into());
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        head.to_lowercase(),
        body.chars().take(300).collect(),
    )
}

/// The admin address a gateway process logged.
fn admin_of(process: &Process) -> std::net::SocketAddr {
    let text = process.log_text();
    let line = text
        .lines()
        .find(|l| l.contains("\"admin\""))
        .unwrap_or_else(|| panic!("no admin address in\n{text}"));
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    json["fields"]["admin"].as_str().unwrap().parse().unwrap()
}
