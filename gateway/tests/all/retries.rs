use std::time::Duration;

use http::{Method, StatusCode};

use crate::harness::{Backend, Recorder, TestGateway, conformance};

fn flaky(recorder: &Recorder) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: flaky }}
spec:
  module: {{ file: "{{misbehave}}" }}
  allowedOutboundHosts: [ "{origin}" ]
  retry: {{ maxAttempts: 4, backoff: {{ initial: 100ms, max: 300ms }} }}
"#,
        origin = recorder.origin()
    )
}

async fn a_500_is_attempted_max_attempts_times_with_growing_delays_then_dead_lettered(
    backend: Backend,
) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &flaky(&recorder)).await;
    let path = format!(
        "/async/fn/default/flaky/call?url={}/attempt&status=500",
        recorder.origin()
    );
    let reply = gw.send(Method::POST, &path, &[], "").await;
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    let record = gw.wait_final(&id).await;
    assert_eq!(record["state"], "dead-lettered", "{record}");
    assert_eq!(record["attempts"], 4);
    let error = record["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 4 attempts") && error.contains("500"),
        "{error}"
    );
    assert_eq!(
        record["response"]["status"], 500,
        "the last response is kept"
    );

    let attempts = recorder.received("/attempt");
    assert_eq!(attempts.len(), 4, "exactly maxAttempts attempts");
    // Backoff doubles from 100ms and is capped at 300ms, and jitter cuts
    // each delay by up to a quarter. A delay can run long on a busy machine
    // but never short, so only lower bounds hold.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, least) in gaps.iter().zip([75, 150, 225]) {
        assert!(*gap >= Duration::from_millis(least), "gaps {gaps:?}");
    }

    let letters = gw.get("/dead-letters/default/flaky").await;
    assert_eq!(letters.status, StatusCode::OK);
    let letters = letters.json();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    assert_eq!(letters[0]["id"], id.as_str());
    assert_eq!(letters[0]["attempts"], 4);
    assert!(letters[0]["reason"].as_str().unwrap().contains("500"));
    assert_eq!(letters[0]["method"], "POST");
}

/// A failure whose cause spans lines (a host error with the guest's wasm
/// backtrace) is dead-lettered with one capped line, the same on both
/// queues and in the record.
async fn a_dead_letter_reason_is_one_capped_line_as_in_the_record(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &flaky(&recorder)).await;
    let id = gw.submit("/async/fn/default/flaky/hoard", &[], "").await;
    let record = gw.wait_final(&id).await;
    assert_eq!(record["state"], "dead-lettered", "{record}");
    let error = record["error"].as_str().unwrap();
    let letters = gw.get("/dead-letters/default/flaky").await.json();
    let reason = letters[0]["reason"].as_str().unwrap();
    assert_eq!(reason, error, "{letters}");
    assert!(
        reason.contains("resource table has no free keys"),
        "{reason}"
    );
    assert!(!reason.contains(['\n', '\r']), "{reason:?}");
    assert!(
        reason.len() <= sluice_api::outcome::MAX_REASON_BYTES + 32,
        "{reason}"
    );
}

async fn a_4xx_is_a_permanent_failure_and_not_retried(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &flaky(&recorder)).await;
    let path = format!(
        "/async/fn/default/flaky/call?url={}/attempt&status=422",
        recorder.origin()
    );
    let reply = gw.send(Method::POST, &path, &[], "").await;
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    let record = gw.wait_final(&id).await;
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["response"]["status"], 422);
    assert_eq!(recorder.received("/attempt").len(), 1);
    assert_eq!(
        gw.get("/dead-letters/default/flaky").await.json(),
        serde_json::json!([])
    );
}

async fn a_sync_call_is_attempted_once_and_answers_what_the_function_said(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &flaky(&recorder)).await;
    let path = format!(
        "/fn/default/flaky/call?url={}/attempt&status=503",
        recorder.origin()
    );
    let reply = gw.get(&path).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "called\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.received("/attempt").len(), 1);
}

conformance!(
    a_dead_letter_reason_is_one_capped_line_as_in_the_record,
    a_500_is_attempted_max_attempts_times_with_growing_delays_then_dead_lettered,
    a_4xx_is_a_permanent_failure_and_not_retried,
    a_sync_call_is_attempted_once_and_answers_what_the_function_said,
);
