//! Logs that outlive the pod: each attempt's stdout/stderr kept and
//! served per invocation and per function (followed live too), cut to
//! the per-attempt bound, outliving the runtime that ran it, readable
//! only by who may read the function; on both queues.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_api::logs::{DEFAULT_ATTEMPT_LOG_BYTES, LINE_OVERHEAD};

use crate::harness::{
    Backend, GUARDED_KEY, GUARDED_PAIR, OTHER_KEY, TestGateway, conformance, eventually,
};

const KEY: &str = GUARDED_KEY;
const OTHER: &str = OTHER_KEY;

const MANIFESTS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: talker }
spec:
  module: { file: "{misbehave}" }
  timeout: 60s
"#;

/// The lines (`stream`, `line`) of every attempt of invocation `id`.
async fn invocation_lines(gw: &TestGateway, id: &str) -> serde_json::Value {
    let reply = gw.get(&format!("/invocations/{id}/logs")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

async fn a_line_per_invocation_is_kept_served_and_followed(backend: Backend) {
    let gw = TestGateway::start(backend, MANIFESTS).await;
    let id = gw
        .submit("/async/fn/default/talker/say/first-line", &[], "")
        .await;
    gw.wait_succeeded(&id).await;
    let logs = invocation_lines(&gw, &id).await;
    assert_eq!(logs["id"], id.as_str());
    assert_eq!(logs["function"], "default/talker");
    let attempt = &logs["attempts"][0];
    assert_eq!(attempt["attempt"], 1, "{logs}");
    assert_eq!(attempt["lines"][0]["stream"], "stdout", "{logs}");
    assert_eq!(attempt["lines"][0]["line"], "first-line", "{logs}");
    assert!(
        attempt["lines"][0]["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{logs}"
    );

    // Recent lines of the function, one JSON object a line.
    let recent = gw.get("/logs/default/talker?since=10m").await;
    assert_eq!(recent.status, StatusCode::OK, "{}", recent.text());
    assert_eq!(recent.header("content-type"), "application/x-ndjson");
    let lines: Vec<serde_json::Value> = recent
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["line"] == "first-line" && l["invocation"] == id.as_str()),
        "{lines:?}"
    );

    // Following: a line written after the request started arrives.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(format!(
        "http://{}/logs/default/talker?since=1s&follow=1",
        gw.addr
    ))
    .body(Empty::new())
    .unwrap();
    let response = client.request(request).await.expect("the follow starts");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let sync = gw.get("/fn/default/talker/say/after-the-follow").await;
    assert_eq!(sync.status, StatusCode::OK, "{}", sync.text());
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.contains("after-the-follow") {
            let frame = body
                .frame()
                .await
                .expect("the follow goes on")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line after the follow started within 30s: {seen:?}"));
    let line: serde_json::Value = serde_json::from_str(
        seen.lines()
            .find(|l| l.contains("after-the-follow"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["stream"], "stdout");
    assert_eq!(line["attempt"], 1);
}

async fn a_guest_writing_100_mib_is_cut_to_the_per_attempt_bound_and_says_so(backend: Backend) {
    let gw = TestGateway::start(backend, MANIFESTS).await;
    let flood = 100 << 20;
    let id = gw
        .submit(&format!("/async/fn/default/talker/flood/{flood}"), &[], "")
        .await;
    gw.wait_succeeded(&id).await;
    let logs = invocation_lines(&gw, &id).await;
    let attempt = &logs["attempts"][0];
    let lines = attempt["lines"].as_array().unwrap();
    let kept: usize = lines
        .iter()
        .map(|l| l["line"].as_str().unwrap().len())
        .sum();
    assert_eq!(
        kept,
        DEFAULT_ATTEMPT_LOG_BYTES - LINE_OVERHEAD,
        "one line, cut at the bound"
    );
    let dropped = attempt["dropped"]["stdout"].as_u64().unwrap();
    assert_eq!(dropped as usize, flood - kept, "{}", attempt["dropped"]);
    let recent = gw.get("/logs/default/talker?since=10m").await;
    assert!(
        recent.text().contains(&format!("\"dropped\":{dropped}")),
        "the function's log says so too"
    );
}

async fn only_who_may_read_a_function_reads_its_logs(backend: Backend) {
    let gw = TestGateway::start(backend, GUARDED_PAIR).await;
    let id = gw
        .submit(
            "/async/fn/default/guarded/say/secret",
            &[("x-api-key", KEY)],
            "",
        )
        .await;
    let logs = format!("/invocations/{id}/logs");
    for (who, headers) in [
        ("no credential", vec![]),
        ("another function's key", vec![("x-api-key", OTHER)]),
    ] {
        let reply = gw.get_with(&logs, &headers).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{who}: {}",
            reply.text()
        );
        assert!(!reply.text().contains("secret"), "{who}");
    }
    let owner = [("x-api-key", KEY)];
    let reply = eventually(
        "the owner reads the line",
        Duration::from_secs(30),
        async || {
            let reply = gw.get_with(&logs, &owner).await;
            if reply.status == StatusCode::OK && reply.text().contains("secret") {
                Ok(reply)
            } else {
                Err(format!("{} {}", reply.status, reply.text()))
            }
        },
    )
    .await;
    assert_eq!(reply.json()["attempts"][0]["lines"][0]["line"], "secret");

    let function_logs = "/logs/default/guarded?since=10m";
    let reply = gw.get(function_logs).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    let reply = gw.get_with(function_logs, &[("x-api-key", OTHER)]).await;
    assert!(
        [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&reply.status),
        "{} {}",
        reply.status,
        reply.text()
    );
    assert!(!reply.text().contains("secret"));
    let reply = gw.get_with(function_logs, &owner).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.text().contains("secret"));
    let reply = gw.get("/logs/default/missing").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = gw
        .get_with("/logs/default/guarded?since=soon", &owner)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("since"), "{}", reply.text());
}

conformance!(
    a_line_per_invocation_is_kept_served_and_followed,
    a_guest_writing_100_mib_is_cut_to_the_per_attempt_bound_and_says_so,
    only_who_may_read_a_function_reads_its_logs,
);

/// The runtime that ran an invocation stops (scaled to zero, or its pod
/// restarted): its log is still served, from JetStream, and a new
/// runtime's attempts add to the same function's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_outlive_the_runtime_that_ran_the_invocation() {
    let mut gw = TestGateway::start(Backend::Nats, MANIFESTS).await;
    let id = gw
        .submit("/async/fn/default/talker/say/before-the-stop", &[], "")
        .await;
    gw.wait_succeeded(&id).await;
    let stack = gw.nats.as_mut().unwrap();
    stack.node.take().expect("a runtime").shutdown().await;
    let logs = invocation_lines(&gw, &id).await;
    assert_eq!(
        logs["attempts"][0]["lines"][0]["line"], "before-the-stop",
        "{logs}"
    );

    // A new runtime process.
    let stack = gw.nats.as_mut().unwrap();
    stack.start_runtime().await;
    let second = gw
        .submit("/async/fn/default/talker/say/after-the-restart", &[], "")
        .await;
    gw.wait_succeeded(&second).await;
    eventually(
        "both lines in the function's log",
        Duration::from_secs(30),
        async || {
            let text = gw.get("/logs/default/talker?since=10m").await.text();
            (text.contains("before-the-stop") && text.contains("after-the-restart"))
                .then_some(())
                .ok_or(text)
        },
    )
    .await;
}

/// A response following a function's logs ends when the gateway stops,
/// rather than holding its shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_ends_when_the_gateway_stops() {
    let mut gw = TestGateway::start(Backend::Local, MANIFESTS).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(format!("http://{}/logs/default/talker?follow=1", gw.addr))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.expect("the follow starts");
    assert_eq!(response.status(), StatusCode::OK);
    let stopping = gw.gateway.take().expect("a gateway").shutdown();
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the gateway stops within 30s though a follow was open");
    let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .expect("the follow ends");
    assert!(body.is_ok_and(|b| b.to_bytes().is_empty()));
}
