use http::{Method, StatusCode};

use sluice_api::invocation::MAX_REQUEST_HEADER_BLOCK;
use sluice_serve::{MAX_HEADER_FIELDS, MAX_REQUEST_HEAD};

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

/// The gateway serving [`FUNCTIONS`] with `misbehave` already loaded. In
/// NATS mode a runtime compiles a component on its first call, inside that
/// call's deadline, and `misbehave`'s 300 ms is less than a compile takes
/// on a loaded machine: these tests are about limits, not cold starts.
async fn start_warm(backend: Backend) -> TestGateway {
    let gw = TestGateway::start(backend, FUNCTIONS).await;
    gw.wait_answer("/fn/default/misbehave/status/200", |r| {
        r.status == StatusCode::OK
    })
    .await;
    gw
}

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

async fn a_body_over_the_request_limit_gets_413(backend: Backend) {
    let gw = start_warm(backend).await;
    let limit = backend.max_request_body();
    // Not echoed back: on a stock server a response that large is over
    // what the reply carries.
    let at_limit = vec![7u8; limit];
    let reply = gw
        .send(
            Method::POST,
            "/fn/default/misbehave/status/200",
            &[],
            at_limit,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let over = vec![7u8; limit + 1];
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

/// Headers up to the limit pass with a body at its limit, and reach a guest
/// that copies them; over it (what no queue carries, or what a guest could
/// not copy) they get 431 with the JSON error before anything runs, never
/// 503 or 202; hyper's own refusals get the same JSON body.
async fn headers_up_to_the_limit_pass_and_over_it_get_431(backend: Backend) {
    let gw = start_warm(backend).await;
    // Sluice's own wire headers and the client's take under 1 KiB.
    let under = "v".repeat(MAX_REQUEST_HEADER_BLOCK - 1024);
    let body = vec![7u8; backend.max_request_body()];
    let reply = gw
        .send(
            Method::POST,
            "/fn/default/misbehave/status/200",
            &[("x-pad", &under)],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let id = gw
        .submit(
            "/async/fn/default/misbehave/status/200",
            &[("x-pad", &under)],
            &"b".repeat(backend.max_request_body()),
        )
        .await;
    assert_eq!(gw.wait_final(&id).await["state"], "succeeded");

    // Spread over as many fields as a request may have, a guest can still
    // copy them into a field map of its own.
    let fields: Vec<(String, String)> = (0..90)
        .map(|i| {
            (
                format!("x-field-{i:02}"),
                "f".repeat((MAX_REQUEST_HEADER_BLOCK - 2048) / 90 - 24),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let reply = gw.get_with("/fn/default/misbehave/headers", &refs).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply.text().parse::<usize>().unwrap() >= 90,
        "{}",
        reply.text()
    );

    let over = "v".repeat(MAX_REQUEST_HEADER_BLOCK);
    for (method, path) in [
        (Method::GET, "/fn/default/echo/"),
        (Method::POST, "/fn/default/echo/"),
        (Method::POST, "/async/fn/default/echo/"),
    ] {
        let reply = gw
            .send(method.clone(), path, &[("x-pad", &over)], body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{method} {path}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["error"], "headers_too_large");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains(&MAX_REQUEST_HEADER_BLOCK.to_string())
        );
    }

    // Past what hyper reads: too many fields, or a header section over
    // its buffer. The same JSON error, from the same place.
    let many: Vec<(String, String)> = (0..=MAX_HEADER_FIELDS)
        .map(|i| (format!("x-many-{i}"), "m".into()))
        .collect();
    let huge = "h".repeat(2 * MAX_REQUEST_HEAD);
    let cases: [Vec<(&str, &str)>; 2] = [
        many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
        vec![("x-huge", huge.as_str())],
    ];
    for headers in cases {
        let reply = gw.get_with("/fn/default/echo/", &headers).await;
        assert_eq!(
            reply.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{} fields: {}",
            headers.len(),
            reply.text()
        );
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(
            reply.json()["error"],
            "headers_too_large",
            "{}",
            reply.text()
        );
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("larger than this server reads"),
            "{message}"
        );
    }
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
    let gw = start_warm(backend).await;
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
    sizes: a_body_over_the_request_limit_gets_413,
    headers_up_to_the_limit_pass_and_over_it_get_431,
);

conformance!(
    an_unknown_function_gets_404_with_a_json_body,
    a_function_that_outlives_its_timeout_gets_504,
    outbound_http_is_refused_unless_the_origin_is_allowed,
);
