//! The life of an async invocation past submit: cancel (queued, running,
//! finished, by whom), dead letters shown, redriven and purged, and what
//! each attempt used; on both queues.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::harness::{
    BROKEN_UNTIL_FIXED, Backend, GUARDED_KEY, GUARDED_PAIR, OTHER_KEY, Recorder, TestGateway,
    conformance, eventually, metric,
};

/// `misbehave` three ways: `slow` runs one invocation at a time, `meter`
/// is cut after 200 ms, `fragile` gives up after two attempts.
fn manifests(recorder: &Recorder) -> String {
    let origin = recorder.origin();
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: slow }}
spec:
  module: {{ file: "{{misbehave}}" }}
  allowedOutboundHosts: [ "{origin}" ]
  concurrency: 1
  timeout: 30s
  retry: {{ maxAttempts: 3, backoff: {{ initial: 100ms, max: 200ms }} }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: meter }}
spec:
  module: {{ file: "{{misbehave}}" }}
  timeout: 200ms
  limits: {{ memory: 64Mi }}
  retry: {{ maxAttempts: 1 }}
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: fragile }}
spec:
  module: {{ file: "{{misbehave}}" }}
  allowedOutboundHosts: [ "{origin}" ]
  retry: {{ maxAttempts: 2, backoff: {{ initial: 50ms, max: 100ms }} }}
"#
    )
}

async fn delete(gw: &TestGateway, path: &str) -> crate::harness::Reply {
    gw.send(Method::DELETE, path, &[], "").await
}

/// Waits until the record at `path` (read with `headers`) is `cancelled`.
async fn wait_cancelled(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    eventually(
        "the invocation ends cancelled",
        Duration::from_secs(10),
        async || {
            let record = gw.get_with(path, headers).await.json();
            match record["state"].as_str() {
                Some("cancelled") => Ok(record),
                _ => Err(record.to_string()),
            }
        },
    )
    .await
}

/// Checks that `callback` received the cancelled record, once: a callback
/// of an invocation that ran after it arrives, and it was not repeated.
async fn called_back_once_cancelled(gw: &TestGateway, recorder: &Recorder, callback: &str) {
    let calls = recorder.wait_for(callback, 1).await;
    let body: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(body["state"], "cancelled", "{body}");
    let marker = gw
        .submit(
            "/async/fn/default/slow/status/200",
            &[(
                "x-callback-url",
                &format!("{}/callback/marker", recorder.origin()),
            )],
            "",
        )
        .await;
    assert_eq!(gw.wait_final(&marker).await["state"], "succeeded");
    recorder.wait_for("/callback/marker", 1).await;
    assert_eq!(recorder.received(callback).len(), 1);
}

/// A queued invocation behind a slow one is cancelled: it never runs, its
/// callback gets the cancelled record once, and cancelling again changes
/// nothing; a finished one is 409 and an unknown id 404.
async fn a_queued_invocation_cancelled_never_runs_and_calls_back_once(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &manifests(&recorder)).await;
    let origin = recorder.origin();
    let slow = gw
        .submit("/async/fn/default/slow/sleep/1500", &[], "")
        .await;
    gw.wait_answer(&format!("/invocations/{slow}"), |r| {
        r.json()["state"] == "running"
    })
    .await;
    let callback = format!("{origin}/callback/queued");
    let queued = gw
        .submit(
            &format!("/async/fn/default/slow/call?url={origin}/ran/queued"),
            &[("x-callback-url", &callback)],
            "",
        )
        .await;

    let reply = delete(&gw, &format!("/invocations/{queued}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["state"], "cancelled", "{}", reply.text());
    let again = delete(&gw, &format!("/invocations/{queued}")).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "cancelling twice is idempotent"
    );
    assert_eq!(again.json()["state"], "cancelled");

    // What is queued behind it runs after the slow one: by then the
    // cancelled one had its turn, one at a time, in order.
    let after = gw
        .submit(
            &format!("/async/fn/default/slow/call?url={origin}/ran/after"),
            &[],
            "",
        )
        .await;
    assert_eq!(gw.wait_final(&slow).await["state"], "succeeded");
    assert_eq!(gw.wait_final(&after).await["state"], "succeeded");
    assert!(recorder.received("/ran/queued").is_empty(), "it never ran");
    let record = gw.wait_final(&queued).await;
    assert_eq!(record["state"], "cancelled", "{record}");
    assert_eq!(record["attempts"], 0, "{record}");

    called_back_once_cancelled(&gw, &recorder, "/callback/queued").await;

    let finished = delete(&gw, &format!("/invocations/{slow}")).await;
    assert_eq!(finished.status, StatusCode::CONFLICT, "{}", finished.text());
    assert_eq!(finished.json()["error"], "already_finished");
    assert_eq!(
        gw.wait_final(&slow).await["state"],
        "succeeded",
        "left as it was"
    );
    let unknown = delete(
        &gw,
        &format!("/invocations/{}", sluice_api::InvocationId::random()),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"], "unknown_invocation");
}

/// A running invocation (spinning in wasm) is interrupted: it ends
/// `cancelled` long before its 30 s timeout, is not retried, and its
/// callback fires once.
async fn a_running_invocation_cancelled_ends_cancelled_and_is_not_retried(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &manifests(&recorder)).await;
    let origin = recorder.origin();
    // Loaded first (components load on first use): "running" then means
    // spinning in wasm, not compiling, which a cancel would end before
    // any instance ran.
    assert_eq!(
        gw.get("/fn/default/slow/status/200").await.status,
        StatusCode::OK
    );
    let id = gw
        .submit(
            "/async/fn/default/slow/loop",
            &[("x-callback-url", &format!("{origin}/callback/loop"))],
            "",
        )
        .await;
    gw.wait_answer(&format!("/invocations/{id}"), |r| {
        r.json()["state"] == "running"
    })
    .await;
    let reply = delete(&gw, &format!("/invocations/{id}")).await;
    assert!(
        [StatusCode::ACCEPTED, StatusCode::OK].contains(&reply.status),
        "{} {}",
        reply.status,
        reply.text()
    );
    // Far less than the 30 s timeout: it is cut at its next epoch tick.
    let record = wait_cancelled(&gw, &format!("/invocations/{id}"), &[]).await;
    assert_eq!(record["attempts"], 1, "not retried: {record}");
    assert!(
        record["usage"]["guestCpuMs"].as_u64().unwrap() > 0,
        "it spun: {record}"
    );
    // The function serves again (its one slot is free).
    called_back_once_cancelled(&gw, &recorder, "/callback/loop").await;
    assert_eq!(gw.wait_final(&id).await["attempts"], 1, "still not retried");
}

/// Dead letters of a function that fails until a switch flips: shown in
/// full, redriven by reason after the flip (each succeeds, as the same
/// invocation), redriven twice to no effect, the rest purged.
async fn dead_letters_are_shown_redriven_by_reason_once_and_purged(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &manifests(&recorder)).await;
    let origin = recorder.origin();
    let mut broken = Vec::new();
    for n in 0..3 {
        let path = format!("/async/fn/default/fragile/call?url={origin}{BROKEN_UNTIL_FIXED}{n}");
        broken.push(gw.submit(&path, &[("x-order", "42")], "payload").await);
    }
    let other = gw
        .submit("/async/fn/default/fragile/status/500", &[], "")
        .await;
    for id in broken.iter().chain([&other]) {
        assert_eq!(gw.wait_final(id).await["state"], "dead-lettered");
    }
    let letters = gw.get("/dead-letters/default/fragile").await.json();
    assert_eq!(letters.as_array().unwrap().len(), 4, "{letters}");

    let one = gw
        .get(&format!("/dead-letters/default/fragile/{}", broken[0]))
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text());
    let one = one.json();
    assert_eq!(one["id"], broken[0].as_str());
    assert!(one["reason"].as_str().unwrap().contains("503"), "{one}");
    assert_eq!(one["request"]["body"], "cGF5bG9hZA==", "{one}");
    assert!(
        one["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "x-order" && h["value"] == "42"),
        "{one}"
    );
    let missing = gw
        .get(&format!(
            "/dead-letters/default/fragile/{}",
            sluice_api::InvocationId::random()
        ))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    recorder.fix();
    let selection = r#"{"reason": "503 Service Unavailable"}"#;
    let redrive = gw
        .send(
            Method::POST,
            "/dead-letters/default/fragile/redrive",
            &[],
            selection,
        )
        .await;
    assert_eq!(redrive.status, StatusCode::OK, "{}", redrive.text());
    let report = redrive.json();
    let mut redriven: Vec<String> = report["redriven"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    redriven.sort();
    let mut expected = broken.clone();
    expected.sort();
    assert_eq!(redriven, expected, "{report}");
    for id in &broken {
        let record = gw.wait_final(id).await;
        assert_eq!(record["state"], "succeeded", "{record}");
        assert_eq!(record["attempts"], 1, "a fresh first attempt: {record}");
    }
    let twice = gw
        .send(
            Method::POST,
            "/dead-letters/default/fragile/redrive",
            &[],
            selection,
        )
        .await
        .json();
    assert_eq!(twice["redriven"], serde_json::json!([]), "{twice}");
    for n in 0..3 {
        // Two failed attempts before, one success after: never a fourth.
        assert_eq!(
            recorder.received(&format!("{BROKEN_UNTIL_FIXED}{n}")).len(),
            3
        );
    }
    let left = gw.get("/dead-letters/default/fragile").await.json();
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["id"], other.as_str());

    let purged = delete(&gw, &format!("/dead-letters/default/fragile/{other}")).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    assert_eq!(purged.json()["purged"], 1);
    let left = gw.get("/dead-letters/default/fragile").await.json();
    assert_eq!(left, serde_json::json!([]));
    let none = delete(&gw, "/dead-letters/default/fragile").await.json();
    assert_eq!(none["purged"], 0);
    let bad = gw
        .send(
            Method::POST,
            "/dead-letters/default/fragile/redrive",
            &[],
            "{\"why\": 1}",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}

/// A guest spinning until its 200 ms timeout shows guest CPU time; one
/// sleeping shows wall time but (almost) no CPU; one building an 8 MiB
/// body shows that much peak memory. Guest CPU is counted in epoch ticks
/// that find the guest executing: it never exceeds the wall time by more
/// than one tick, and a thread the OS takes off its CPU counts at most one
/// tick per stretch off it, so on a loaded host a 200 ms spin shows less
/// (measured here: 35 to 60 ms of about 205 ms at a load average of 20
/// on 2 cores). The bounds hold however loaded the host is.
async fn each_attempt_states_its_wall_time_guest_cpu_and_peak_memory(backend: Backend) {
    let recorder = Recorder::start().await;
    let gw = TestGateway::start(backend, &manifests(&recorder)).await;
    let usage = async |path: &str| {
        let id = gw.submit(path, &[], "").await;
        let record = gw.wait_final(&id).await;
        record["usage"].clone()
    };
    let spin = usage("/async/fn/default/meter/loop").await;
    let (wall, cpu, tick) = (
        spin["wallMs"].as_u64().unwrap(),
        spin["guestCpuMs"].as_u64().unwrap(),
        spin["cpuResolutionMs"].as_u64().unwrap(),
    );
    assert_eq!(tick, 5, "the default epoch tick: {spin}");
    assert!(wall >= 200, "{spin}");
    assert!(cpu >= 3 * tick, "spinning is CPU time: {spin}");
    assert!(
        cpu <= wall + tick + 1,
        "at most one tick above wall: {spin}"
    );

    let sleep = usage("/async/fn/default/meter/sleep/150").await;
    assert!(sleep["wallMs"].as_u64().unwrap() >= 150, "{sleep}");
    // A tick lands in its few hundred µs of work, or on a preemption
    // there, at most twice.
    assert!(
        sleep["guestCpuMs"].as_u64().unwrap() <= 2 * tick,
        "sleeping is not CPU time: {sleep}, spinning {spin}"
    );
    assert!(
        sleep["peakMemoryBytes"].as_u64().unwrap() < 8 << 20,
        "{sleep}"
    );

    let big = usage("/async/fn/default/meter/big/8388608").await;
    let peak = big["peakMemoryBytes"].as_u64().unwrap();
    assert!(
        (8 << 20..=64 << 20).contains(&peak),
        "8 MiB held, within limits.memory: {big}"
    );

    if backend == Backend::Local {
        let metrics = gw.admin_get("/metrics").await.text();
        let series =
            |name: &str| metric(&metrics, &format!("{name}{{function=\"default/meter\"}}"));
        assert!(
            series("sluice_usage_guest_cpu_seconds_total") >= 0.015,
            "{metrics}"
        );
        assert!(
            series("sluice_usage_wall_seconds_total") >= 0.35,
            "{metrics}"
        );
        assert!(
            series("sluice_usage_memory_byte_seconds_total") > 0.0,
            "{metrics}"
        );
    }
}

/// Who may cancel is who may read: a caller without access gets the
/// answer of an unknown id (so ids cannot be probed), and the invocation
/// runs on.
async fn only_a_caller_who_may_read_an_invocation_cancels_it(backend: Backend) {
    const KEY: &str = GUARDED_KEY;
    const OTHER: &str = OTHER_KEY;
    let gw = TestGateway::start(backend, GUARDED_PAIR).await;
    let id = gw
        .submit(
            "/async/fn/default/guarded/sleep/1000",
            &[("x-api-key", KEY)],
            "",
        )
        .await;
    let path = format!("/invocations/{id}");
    for (who, headers) in [
        ("no credential", vec![]),
        (
            "a wrong key",
            vec![("x-api-key", "wrong-0123456789abcdef0123456789abcdef")],
        ),
        ("another function's key", vec![("x-api-key", OTHER)]),
    ] {
        let reply = gw.send(Method::DELETE, &path, &headers, "").await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{who}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["error"], "unknown_invocation", "{who}");
    }
    let record = gw.get(&path).await;
    assert_eq!(
        record.status,
        StatusCode::NOT_FOUND,
        "reading needs the key too"
    );
    let reply = gw
        .send(Method::DELETE, &path, &[("x-api-key", KEY)], "")
        .await;
    assert!(
        [StatusCode::OK, StatusCode::ACCEPTED].contains(&reply.status),
        "{} {}",
        reply.status,
        reply.text()
    );
    let record = wait_cancelled(&gw, &path, &[("x-api-key", KEY)]).await;
    assert_eq!(record["state"], "cancelled");
}

conformance!(
    a_queued_invocation_cancelled_never_runs_and_calls_back_once,
    a_running_invocation_cancelled_ends_cancelled_and_is_not_retried,
    dead_letters_are_shown_redriven_by_reason_once_and_purged,
    each_attempt_states_its_wall_time_guest_cpu_and_peak_memory,
    only_a_caller_who_may_read_an_invocation_cancels_it,
);
