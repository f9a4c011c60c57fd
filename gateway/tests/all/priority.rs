//! A sync call has its caller waiting on the connection: it starts before
//! its function's async backlog (`sluice_api::priority`), and a queue full
//! of async work leaves it room. The backlogs here would take longer than
//! the call's 5s timeout, so a call queued behind them would get 504.

use std::time::Duration;

use http::StatusCode;
use sluice_api::names::FunctionRef;
use sluice_nats::layout::LayoutConfig;

use crate::harness::{NatsStack, TestGateway, manifest_dir};

/// `slow` (misbehave), one at a time, 5s per attempt.
const SLOW: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: slow }
spec:
  module: { file: "{misbehave}" }
  concurrency: 1
  timeout: 5s
"#;

/// Each backlog invocation sleeps this long, one at a time.
const BACKLOG_SLEEP: &str = "/async/fn/default/slow/sleep/700";

/// Submits to `slow` until `count` are accepted or the queue refuses;
/// returns the accepted ids and whether it refused.
async fn backlog(gw: &TestGateway, count: usize) -> (Vec<String>, bool) {
    let mut accepted = Vec::new();
    while accepted.len() < count {
        let reply = gw.send(http::Method::POST, BACKLOG_SLEEP, &[], "").await;
        match reply.status {
            StatusCode::ACCEPTED => accepted.push(reply.json()["id"].as_str().unwrap().to_owned()),
            StatusCode::TOO_MANY_REQUESTS => return (accepted, true),
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    (accepted, false)
}

/// A sync call answers 200 (not 429 nor 504) while the backlog waits; then
/// every invocation of the backlog succeeds (it was not starved).
async fn a_sync_call_is_answered_before(gw: &TestGateway, backlog: &[String]) {
    let reply = gw.get("/fn/default/slow/sleep/10").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mut still_queued = 0;
    for id in backlog {
        let record = gw.get(&format!("/invocations/{id}")).await.json();
        still_queued += usize::from(record["state"] == "queued");
    }
    assert!(
        still_queued >= 3,
        "the call was answered after the backlog ({still_queued} still queued)"
    );
    for id in backlog {
        assert_eq!(gw.wait_record(id).await["state"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_a_sync_call_behind_a_full_async_queue_is_answered_first() {
    let gw = TestGateway::start_with(SLOW, |c| c.queue.max_depth = 10).await;
    let (accepted, refused) = backlog(&gw, 50).await;
    assert!(refused, "a queue of 10 took 50");
    assert!(accepted.len() >= 10, "{} accepted", accepted.len());
    a_sync_call_is_answered_before(&gw, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_sync_call_behind_an_async_backlog_is_answered_first() {
    let mut stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let dir = manifest_dir(SLOW);
    stack.publish_dir(dir.path()).await;
    stack.start_runtime().await;
    stack
        .wait_serving(&"default/slow".parse::<FunctionRef>().unwrap())
        .await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/slow").await;
    gw.wait_direct("/fn/default/slow/sleep/0").await;
    let (accepted, refused) = backlog(&gw, 12).await;
    assert!(!refused);
    // The runtime is busy with the first of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_sync_call_is_answered_before(&gw, &accepted).await;
}
