use base64::Engine as _;
use http::{Method, StatusCode};

use crate::harness::{Backend, Recorder, TestGateway, conformance, stored_header, stored_headers};

/// `echo`, and `counted`: misbehave allowed to call `recorder`.
pub(crate) fn functions(recorder: &Recorder) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: echo }}
spec:
  module: {{ file: "{{echo}}" }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: counted }}
spec:
  module: {{ file: "{{misbehave}}" }}
  allowedOutboundHosts: [ "{origin}" ]
"#,
        origin = recorder.origin()
    )
}

async fn an_async_invocation_is_accepted_then_polled_to_its_stored_response(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &functions(&recorder)).await;
    let reply = gw
        .send(Method::POST, "/async/fn/default/echo/x?k=v", &[], "payload")
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let location = reply.header("location").to_owned();
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/invocations/{id}"));

    let record = gw.wait_final(&id).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["function"], "default/echo");
    assert_eq!(record["attempts"], 1);
    let response = &record["response"];
    assert_eq!(response["status"], 200);
    assert_eq!(stored_header(&record, "x-echo-path"), "/x?k=v");
    let body = base64::engine::general_purpose::STANDARD
        .decode(response["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"payload");
}

async fn a_callback_receives_the_final_record_with_the_invocation_id(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &functions(&recorder)).await;
    let callback = format!("{}/done", recorder.origin());
    let id = gw
        .submit(
            "/async/fn/default/echo/",
            &[("x-callback-url", &callback)],
            "cb",
        )
        .await;

    let delivered = recorder.wait_for("/done", 1).await;
    assert_eq!(delivered[0].headers["x-sluice-invocation-id"], id.as_str());
    let record: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["response"]["body"], "Y2I=");
}

async fn the_same_idempotency_key_twice_runs_the_function_once(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &functions(&recorder)).await;
    let path = format!(
        "/async/fn/default/counted/call?url={}/hit",
        recorder.origin()
    );
    let first = gw
        .send(Method::POST, &path, &[("idempotency-key", "order-42")], "")
        .await;
    let second = gw
        .send(Method::POST, &path, &[("idempotency-key", "order-42")], "")
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(first.header("location"), second.header("location"));
    assert_eq!(first.json()["duplicate"], false);
    assert_eq!(second.json()["duplicate"], true);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(gw.wait_final(&id).await["state"], "succeeded");

    // A different key is a different invocation.
    let third = gw
        .send(Method::POST, &path, &[("idempotency-key", "order-43")], "")
        .await;
    let third_id = third.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(third_id, id);
    assert_eq!(gw.wait_final(&third_id).await["state"], "succeeded");
    assert_eq!(
        recorder.received("/hit").len(),
        2,
        "order-42 ran once, order-43 once"
    );
}

async fn async_invocations_need_post_and_a_usable_callback_url(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &functions(&recorder)).await;
    let reply = gw.get("/async/fn/default/echo/").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), "POST");
    assert_eq!(reply.json()["error"], "method_not_allowed");
    let reply = gw
        .send(
            Method::POST,
            "/async/fn/default/echo/",
            &[("x-callback-url", "not a url")],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("X-Callback-Url")
    );
}

async fn unknown_invocations_are_404_and_bad_waits_400(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &functions(&recorder)).await;
    let reply = gw
        .get("/invocations/6f1f8a3e-52b8-4c86-9d0e-7d0b3c8f6a11")
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"], "unknown_invocation");
    assert_eq!(
        gw.get("/invocations/nonsense").await.status,
        StatusCode::NOT_FOUND
    );
    let reply = gw
        .send(Method::POST, "/async/fn/default/echo/", &[], "")
        .await;
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let reply = gw.get(&format!("/invocations/{id}?wait=forever")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

/// Repeated fields stay apart and bytes that are not UTF-8 survive, in
/// the record and in the callback's copy of it alike.
async fn a_stored_response_keeps_every_field_line_and_its_bytes(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &functions(&recorder)).await;
    let callback = format!("{}/stored", recorder.origin());
    let id = gw
        .submit(
            "/async/fn/default/counted/cookies",
            &[("x-callback-url", &callback)],
            "",
        )
        .await;
    let polled = gw.wait_final(&id).await;
    let delivered = recorder.wait_for("/stored", 1).await;
    let called_back: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
    let sync = gw.get("/fn/default/counted/cookies").await;
    for headers in [
        stored_headers(&polled),
        stored_headers(&called_back),
        sync.headers,
    ] {
        let cookies: Vec<&[u8]> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2; Path=/"], "{polled}");
        assert_eq!(headers["x-latin1"].as_bytes(), b"caf\xe9", "{polled}");
    }
    let entries = polled["response"]["headers"].as_array().unwrap();
    assert!(
        entries.contains(&serde_json::json!({ "name": "x-latin1", "valueBase64": "Y2Fm6Q==" })),
        "{polled}"
    );
}

conformance!(
    a_stored_response_keeps_every_field_line_and_its_bytes,
    an_async_invocation_is_accepted_then_polled_to_its_stored_response,
    a_callback_receives_the_final_record_with_the_invocation_id,
    the_same_idempotency_key_twice_runs_the_function_once,
    async_invocations_need_post_and_a_usable_callback_url,
    unknown_invocations_are_404_and_bad_waits_400,
);

/// Local mode holds accepted invocations only in memory: a stopping gateway
/// runs them, and delivers their callbacks, before it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_local_gateway_finishes_what_it_accepted() {
    let recorder = Recorder::start().await;
    let mut gw = TestGateway::start(
        Backend::Local,
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: slow }
spec:
  module: { file: "{misbehave}" }
  concurrency: 1
"#,
    )
    .await;
    let accepted = 4;
    for i in 0..accepted {
        let callback = format!("{}/done/{i}", recorder.origin());
        gw.submit(
            "/async/fn/default/slow/sleep/150",
            &[("x-callback-url", &callback)],
            "",
        )
        .await;
    }
    gw.gateway.take().unwrap().shutdown().await;
    for i in 0..accepted {
        let delivered = recorder.received(&format!("/done/{i}"));
        assert_eq!(delivered.len(), 1, "callback {i} of {accepted}");
        let record: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
        assert_eq!(record["state"], "succeeded", "{record}");
    }
}

/// Local mode keeps records in memory: past `max_finished_records` the
/// oldest finished ones go before their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_keeps_at_most_max_finished_records() {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start_with(&functions(&recorder), |c| {
        c.queue.max_finished_records = 2;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = gw.submit("/async/fn/default/echo/", &[], "r").await;
        assert_eq!(gw.wait_final(&id).await["state"], "succeeded");
        ids.push(id);
    }
    let oldest = format!("/invocations/{}", ids[0]);
    gw.wait_answer(&oldest, |r| r.status == StatusCode::NOT_FOUND)
        .await;
    assert_eq!(
        gw.get(&format!("/invocations/{}", ids[1])).await.status,
        StatusCode::NOT_FOUND
    );
    for id in &ids[2..] {
        assert_eq!(
            gw.get(&format!("/invocations/{id}")).await.status,
            StatusCode::OK
        );
    }
}

/// A key's duplicate window (1 s here) is shorter than its record's life:
/// the record itself answers a retry after it.
const SHORT_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// After the duplicate window, the same key and request are still the same
/// invocation (no second run); the same key with another body is 422.
async fn a_key_is_honoured_for_as_long_as_its_record_lives(gw: TestGateway, recorder: Recorder) {
    let path = format!(
        "/async/fn/default/counted/call?url={}/hit",
        recorder.origin()
    );
    let key = [("idempotency-key", "order-77")];
    let first = gw.send(Method::POST, &path, &key, "the order").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    assert_eq!(first.json()["duplicate"], false);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(gw.wait_final(&id).await["state"], "succeeded");
    // Past the window: only the record remembers the key.
    tokio::time::sleep(SHORT_WINDOW * 2).await;

    let again = gw.send(Method::POST, &path, &key, "the order").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text());
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.header("location"), first.header("location"));

    let other = gw.send(Method::POST, &path, &key, "another order").await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text()
    );
    assert_eq!(other.json()["error"], "idempotency_key_reused");
    assert!(other.text().contains(&id), "{}", other.text());
    assert_eq!(recorder.received("/hit").len(), 1, "it ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_a_key_is_honoured_for_as_long_as_its_record_lives() {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start_with(&functions(&recorder), |c| {
        c.queue.dedupe_window = SHORT_WINDOW;
    })
    .await;
    a_key_is_honoured_for_as_long_as_its_record_lives(gw, recorder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_key_is_honoured_for_as_long_as_its_record_lives() {
    let recorder = Recorder::start().await;
    let mut stack = crate::harness::NatsStack::on_server(
        sluice_testing::NatsServer::start(),
        sluice_nats::LayoutConfig {
            duplicate_window: SHORT_WINDOW,
            ..Default::default()
        },
    )
    .await;
    stack.start_runtime().await;
    let dir = crate::harness::manifest_dir(&functions(&recorder));
    stack.publish_dir(dir.path()).await;
    let gw = TestGateway::on_nats(stack, dir).await;
    gw.wait_routed("default/counted").await;
    a_key_is_honoured_for_as_long_as_its_record_lives(gw, recorder).await;
}
