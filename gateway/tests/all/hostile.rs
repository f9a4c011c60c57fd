//! Hostile guests fail only their own invocation.

use std::time::Duration;

use http::StatusCode;

use crate::harness::{Backend, TestGateway, conformance};

const FUNCTIONS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: "{hello}" }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hostile }
spec:
  module: { file: "{misbehave}" }
  timeout: 2s
  limits: { memory: 16Mi }
"#;

async fn hostile_guests_fail_alone_while_hello_keeps_answering(backend: Backend) {
    let gw = std::sync::Arc::new(TestGateway::start(backend, FUNCTIONS).await);

    let hostile = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..2 {
                for path in ["loop", "bomb", "recurse", "hoard"] {
                    let reply = gw.get(&format!("/fn/default/hostile/{path}")).await;
                    replies.push((path, reply.status, reply.json()));
                }
            }
            replies
        })
    };
    // Hello keeps answering while the hostile calls run.
    let mut hello_answers = 0;
    while !hostile.is_finished() {
        let reply = gw.get("/fn/default/hello").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "hello failed during hostile calls"
        );
        hello_answers += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hello_answers > 0);

    for (path, status, body) in hostile.await.unwrap() {
        let (expected_status, expected_code, words) = match path {
            "loop" => (StatusCode::GATEWAY_TIMEOUT, "timeout", "timeout"),
            "bomb" => (
                StatusCode::BAD_GATEWAY,
                "memory_limit",
                "memory limit of 16Mi",
            ),
            // Header maps live in the host: their bound is a trap, before
            // the timeout and long before the host runs out of memory.
            "hoard" => (
                StatusCode::BAD_GATEWAY,
                "function_failed",
                "resource table has no free keys",
            ),
            // Rust guests keep their stack in linear memory, so unbounded
            // recursion ends in an out-of-bounds access rather than wasm's
            // own stack-overflow trap: what the README says a caller sees.
            _ => (
                StatusCode::BAD_GATEWAY,
                "function_failed",
                "out of bounds memory access",
            ),
        };
        assert_eq!(status, expected_status, "{path}: {body}");
        assert_eq!(body["error"], expected_code, "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(words), "{path}: {body}");
        assert!(!message.contains('\n'), "one line: {path}: {body}");
    }
    // And after.
    let reply = gw.get("/fn/default/hello").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "Hello from Sluice!\n");
}

conformance!(hostile_guests_fail_alone_while_hello_keeps_answering,);
