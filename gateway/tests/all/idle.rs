//! What an idle runtime costs NATS: nothing per registered function. Its
//! workers start at a function's first invocation and sleep until a new
//! one (or the periodic sweep) wakes them, so 10,000 functions and none
//! invoked make almost no messages, counted by nats-server itself, and no
//! consumers.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use sluice_api::names::FunctionRef;
use sluice_gateway::local;
use sluice_nats::layout::LayoutConfig;
use sluice_testing::NatsServer;

use crate::harness::{HELLO, NatsStack, eventually, with_components};

const FUNCTIONS: usize = 10_000;
/// The window over which the runtime's messages are counted.
const WINDOW: Duration = Duration::from_secs(10);
/// The bound: at most 10 messages a second from an idle runtime.
const MAX_MESSAGES: u64 = 10 * WINDOW.as_secs();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_runtime_with_ten_thousand_functions_sends_almost_nothing() {
    let monitor = SocketAddr::from(([127, 0, 0, 1], sluice_testing::free_port()));
    let server = NatsServer::with_config(&format!("max_payload: 8MB\nhttp: \"{monitor}\"\n"));
    let mut stack = NatsStack::on_server(server, LayoutConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.yaml"), with_components(HELLO)).unwrap();
    let hello = local::load_dir(dir.path()).unwrap().remove(0);
    let publisher = &stack.publisher;
    futures::stream::iter(0..FUNCTIONS)
        .for_each_concurrent(64, |i| {
            let hello = &hello;
            async move {
                let function = FunctionRef::new("default", &format!("f{i}")).unwrap();
                publisher
                    .publish(&function, &hello.spec, &[], &hello.wasm)
                    .await
                    .expect("the function publishes");
            }
        })
        .await;
    stack.start_runtime().await;
    let node = stack.node.as_ref().unwrap();
    let functions: Vec<FunctionRef> = (0..FUNCTIONS)
        .map(|i| FunctionRef::new("default", &format!("f{i}")).unwrap())
        .collect();
    eventually(
        "the runtime serves every function",
        Duration::from_secs(600),
        async || {
            let served = functions.iter().filter(|f| node.serves(f)).count();
            (served == FUNCTIONS)
                .then_some(())
                .ok_or_else(|| format!("{served} served"))
        },
    )
    .await;
    // Past the start's sweep.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (sent_before, cpu_before) = (runtime_messages(monitor), process_cpu());
    tokio::time::sleep(WINDOW).await;
    let (sent_after, cpu_after) = (runtime_messages(monitor), process_cpu());
    let sent = sent_after - sent_before;
    // A benchmark figure, not asserted: this process is the runtime (the
    // test itself sleeps meanwhile).
    println!(
        "idle runtime with {FUNCTIONS} functions over {WINDOW:?}: {sent} messages sent, {:.2} % of a core",
        (cpu_after - cpu_before) / WINDOW.as_secs_f64() * 100.0
    );
    assert!(
        sent <= MAX_MESSAGES,
        "an idle runtime with {FUNCTIONS} functions sent {sent} messages in {WINDOW:?}"
    );
    // Nor does it cost the server a consumer per function never invoked.
    let consumers = stack
        .layout
        .invocations
        .clone()
        .info()
        .await
        .unwrap()
        .state
        .consumer_count;
    assert_eq!(consumers, 0, "consumers opened for functions never invoked");
}

/// Messages the server received from the runtime's connection so far
/// (`in_msgs` of the connection named `sluice-runtime` in `/connz`).
fn runtime_messages(monitor: SocketAddr) -> u64 {
    let (status, body) =
        sluice_testing::http::get(monitor, "/connz?limit=1024").expect("the monitor answers");
    assert_eq!(status, 200, "{body}");
    let connz: serde_json::Value = serde_json::from_str(&body).unwrap();
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "sluice-runtime")
        .and_then(|c| c["in_msgs"].as_u64())
        .unwrap_or_else(|| panic!("no sluice-runtime connection in {body}"))
}

/// CPU seconds this process has used (user and system, from /proc).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command (in parentheses): utime and stime are the
    // 12th and 13th, in clock ticks of 1/100 s.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
