//! The per-function byte budget of the queue (`--max-queue-bytes`): a
//! flood of large invocations to one function gets 429 `queue_full` with
//! `bound: bytes` and `Retry-After`, while other functions keep accepting
//! and every invocation accepted runs.

use std::time::Duration;

use http::{Method, StatusCode};
use sluice_nats::layout::LayoutConfig;

use crate::harness::{NatsStack, Reply, TestGateway, eventually, manifest_dir, metric};

/// `slow` (misbehave, one at a time) and `echo`.
const SLOW_AND_ECHO: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: slow }
spec:
  module: { file: "{misbehave}" }
  concurrency: 1
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo }
spec:
  module: { file: "{echo}" }
"#;

/// Each flooding invocation's body: 16 KiB.
const BODY: usize = 16 * 1024;
/// The budget: four bodies and change.
const BUDGET: u64 = 70 * 1024;

/// Submits to `path` until the queue refuses; returns the accepted ids and
/// the refusal.
async fn flood(gw: &TestGateway, path: &str) -> (Vec<String>, Reply) {
    let body = "x".repeat(BODY);
    let mut accepted = Vec::new();
    for _ in 0..50 {
        let reply = gw.send(Method::POST, path, &[], body.clone()).await;
        match reply.status {
            StatusCode::ACCEPTED => accepted.push(reply.json()["id"].as_str().unwrap().to_owned()),
            StatusCode::TOO_MANY_REQUESTS => return (accepted, reply),
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    panic!("50 invocations of {BODY} bytes fit a budget of {BUDGET}");
}

fn assert_bytes_refusal(full: &Reply) {
    let body = full.json();
    assert_eq!(body["error"], "queue_full", "{body}");
    assert_eq!(body["bound"], "bytes", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--max-queue-bytes"),
        "{body}"
    );
    assert_eq!(full.header("retry-after"), "1");
}

async fn refusals(gw: &TestGateway) -> f64 {
    metric(
        &gw.admin_get("/metrics").await.text(),
        r#"sluice_queue_full_total{bound="bytes"}"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_a_flood_of_bytes_gets_429_while_other_functions_serve_and_nothing_accepted_is_lost()
{
    let gw = TestGateway::start_with(SLOW_AND_ECHO, |c| c.queue.max_bytes = BUDGET).await;
    // Each runs a second, one at a time: the flood waits in the queue.
    let (accepted, full) = flood(&gw, "/async/fn/default/slow/sleep/1000").await;
    assert_eq!(accepted.len(), 4, "70 KiB hold four 16 KiB bodies");
    assert_bytes_refusal(&full);
    assert_eq!(refusals(&gw).await, 1.0);
    // The other function is served meanwhile.
    let echoed = gw
        .send(Method::POST, "/fn/default/echo/", &[], "still here")
        .await;
    assert_eq!(echoed.status, StatusCode::OK, "{}", echoed.text());
    assert_eq!(echoed.text(), "still here");
    for id in &accepted {
        assert_eq!(gw.wait_record(id).await["state"], "succeeded");
    }
    // Done, they hold nothing: the function accepts again.
    gw.submit("/async/fn/default/slow/sleep/1", &[], "again")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_flood_of_bytes_gets_429_while_other_functions_accept_and_nothing_accepted_is_lost()
{
    let layout = LayoutConfig {
        max_queue_bytes: sluice_api::ByteSize(BUDGET),
        ..LayoutConfig::default()
    };
    let stack = NatsStack::without_runtime(layout).await;
    let dir = manifest_dir(SLOW_AND_ECHO);
    stack.publish_dir(dir.path()).await;
    let mut gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/slow").await;
    gw.wait_routed("default/echo").await;

    // No runtime takes anything yet: the flood waits in the stream.
    let (accepted, full) = flood(&gw, "/async/fn/default/slow/sleep/1").await;
    assert_eq!(accepted.len(), 4, "70 KiB hold four 16 KiB bodies");
    assert_bytes_refusal(&full);
    assert_eq!(refusals(&gw).await, 1.0);
    let other = gw
        .submit("/async/fn/default/echo/", &[], "still here")
        .await;

    gw.nats.as_mut().unwrap().start_runtime().await;
    for id in accepted.iter().chain([&other]) {
        assert_eq!(gw.wait_record(id).await["state"], "succeeded");
    }
    // Delivered, the flood holds nothing: the function accepts again.
    let body = "x".repeat(BODY);
    eventually("slow accepts again", Duration::from_secs(10), async || {
        let reply = gw
            .send(
                Method::POST,
                "/async/fn/default/slow/sleep/1",
                &[],
                body.clone(),
            )
            .await;
        match reply.status {
            StatusCode::ACCEPTED => Ok(()),
            _ => Err(reply.text()),
        }
    })
    .await;
}
