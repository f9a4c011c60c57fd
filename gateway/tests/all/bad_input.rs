use http::{Method, StatusCode};

use crate::harness::{Backend, Recorder, TestGateway, conformance};

const FUNCTIONS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo }
spec:
  module: { file: "{echo}" }
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: misbehave }
spec:
  module: { file: "{misbehave}" }
  timeout: 300ms
"#;

async fn an_unknown_function_gets_404_with_a_json_body(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    for path in ["/fn/default/nope", "/fn/default/nope/x", "/fn/BAD/name"] {
        let reply = gw.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.json()["error"], "unknown_function", "{path}");
    }
    let reply = gw
        .send(Method::POST, "/async/fn/default/nope/", &[], "")
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = gw.get("/somewhere/else").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"], "no_route");
}

async fn a_body_over_the_default_1mib_limit_gets_413(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    let at_limit = vec![7u8; 1 << 20];
    let reply = gw
        .send(Method::POST, "/fn/default/echo/", &[], at_limit)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let over = vec![7u8; (1 << 20) + 1];
    let reply = gw
        .send(Method::POST, "/fn/default/echo/", &[], over.clone())
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"], "body_too_large");
    let reply = gw
        .send(Method::POST, "/async/fn/default/echo/", &[], over)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A client that stops sending its body gets 408 when the body timeout
/// passes, and its connection is not held.
#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let gw = TestGateway::start_with(FUNCTIONS, |c| {
        c.http.body_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /fn/default/echo/ HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nten bytes!",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the gateway answers and closes")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let gw = TestGateway::start_with(FUNCTIONS, |c| c.http.max_request_body = 1024).await;
    assert_eq!(
        gw.send(Method::POST, "/fn/default/echo/", &[], vec![1u8; 1024])
            .await
            .status,
        StatusCode::OK
    );
    let reply = gw
        .send(Method::POST, "/fn/default/echo/", &[], vec![1u8; 1025])
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["message"].as_str().unwrap().contains("1024"));
}

async fn a_function_that_outlives_its_timeout_gets_504(backend: Backend) {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    // Blocked in a host call (sleep) and busy in guest code (loop): both cut.
    for path in [
        "/fn/default/misbehave/sleep/5000",
        "/fn/default/misbehave/loop",
    ] {
        let reply = gw.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{path}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["error"], "timeout");
        // Cut at its timeout, or (on a busy machine, in NATS mode) taken
        // from the queue only after the caller's deadline.
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("timeout") || message.contains("deadline"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_response_over_the_limit_fails_with_502_and_a_reason() {
    let gw = TestGateway::start_with(FUNCTIONS, |c| c.runtime.max_response_body = 64 << 10).await;
    assert_eq!(
        gw.get("/fn/default/misbehave/big/65536").await.status,
        StatusCode::OK
    );
    let reply = gw.get("/fn/default/misbehave/big/65537").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"], "response_too_large");
}

async fn outbound_http_is_refused_unless_the_origin_is_allowed(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    let reply = gw
        .get(&format!(
            "/fn/default/misbehave/call?url={}/x",
            recorder.origin()
        ))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_GATEWAY,
        "the guest reports the refusal"
    );
    assert!(
        reply.text().contains("HttpRequestDenied"),
        "{}",
        reply.text()
    );
    assert!(
        recorder.received("/x").is_empty(),
        "nothing left the sandbox"
    );
}

conformance!(
    an_unknown_function_gets_404_with_a_json_body,
    a_body_over_the_default_1mib_limit_gets_413,
    a_function_that_outlives_its_timeout_gets_504,
    outbound_http_is_refused_unless_the_origin_is_allowed,
);
