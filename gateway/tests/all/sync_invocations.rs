use http::{Method, StatusCode};

use crate::harness::{Backend, TestGateway, conformance, metric};

const FUNCTIONS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: hello }
spec:
  module: { file: "{hello}" }
  env: [ { name: GREETING, value: Howdy } ]
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo, namespace: tools }
spec:
  module: { file: "{echo}" }
  triggers: { http: { path: /echo-here } }
"#;

async fn hello_greets_with_the_environment_from_its_spec(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    let reply = gw.get("/fn/default/hello").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "Howdy from Sluice!\n");
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(reply.header("x-sluice-invocation-id").len(), 36);
}

async fn echo_sees_the_stripped_path_query_headers_and_method(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    let reply = gw
        .send(
            Method::PATCH,
            "/fn/tools/echo/a/b%20c?x=1&y=two",
            &[("x-custom", "value 1")],
            "hi",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-echo-method"), "PATCH");
    assert_eq!(reply.header("x-echo-path"), "/a/b%20c?x=1&y=two");
    assert_eq!(reply.header("x-echo-query"), "x=1&y=two");
    assert_eq!(reply.header("x-echo-h-x-custom"), "value 1");
    assert_eq!(
        reply.header("x-echo-h-x-forwarded-prefix"),
        "/fn/tools/echo"
    );
    assert_eq!(
        reply.header("x-echo-h-x-sluice-invocation-id"),
        reply.header("x-sluice-invocation-id")
    );
    assert_eq!(reply.text(), "hi");
}

async fn echo_round_trips_a_binary_body_byte_for_byte(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let reply = gw
        .send(
            Method::POST,
            "/fn/tools/echo/",
            &[("content-type", "application/octet-stream")],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/octet-stream");
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body, "the body came back changed");
}

async fn a_custom_trigger_path_reaches_its_function(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    let reply = gw.get("/echo-here/deeper/still?q=1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-echo-path"), "/deeper/still?q=1");
    assert_eq!(reply.header("x-echo-h-x-forwarded-prefix"), "/echo-here");
    assert_eq!(gw.get("/echo-here").await.header("x-echo-path"), "/");
    // A path that merely starts with the same letters is not under the route.
    assert_eq!(
        gw.get("/echo-hereafter").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn admin_endpoints_report_health_and_counted_invocations() {
    let gw = TestGateway::start(Backend::Local, FUNCTIONS).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/fn/default/hello").await.status, StatusCode::OK);
    }
    assert_eq!(gw.admin_get("/healthz").await.status, StatusCode::OK);
    assert_eq!(gw.admin_get("/readyz").await.status, StatusCode::OK);
    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_invocation_attempts_total{function="default/hello",outcome="success"}"#
        ),
        3.0,
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_invocation_duration_seconds_count{function="default/hello"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_queue_depth{function="default/hello"} 0"#),
        "{metrics}"
    );
}

conformance!(
    hello_greets_with_the_environment_from_its_spec,
    echo_sees_the_stripped_path_query_headers_and_method,
    echo_round_trips_a_binary_body_byte_for_byte,
    a_custom_trigger_path_reaches_its_function,
);
