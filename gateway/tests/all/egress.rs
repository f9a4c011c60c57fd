//! The egress guard on callbacks and on functions' outbound HTTP. Every
//! test listens and connects on loopback only; what the guard makes of
//! public, private and link-local addresses is the pure table test of
//! `sluice_api::egress`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use http::{Method, StatusCode};
use sluice_api::egress::EgressPolicy;

use crate::harness::{Backend, REDIRECT, Recorder, TestGateway, conformance, loopback_egress};

const ECHO: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: echo }
spec:
  module: { file: "{echo}" }
"#;

/// The default: public addresses only.
fn strict() -> Arc<EgressPolicy> {
    Arc::default()
}

/// 127.0.0.1 and ::1 (where `localhost` may resolve too), not the rest of
/// 127.0.0.0/8.
fn loopback_hosts() -> Arc<EgressPolicy> {
    Arc::new(EgressPolicy::parse(&["127.0.0.1", "::1"], &[]).unwrap())
}

/// Stops the gateway and the runtime, which first finish delivering (or
/// give up) every callback: afterwards, what a receiver has is all it
/// gets.
async fn stop(mut gw: TestGateway) {
    if let Some(gateway) = gw.gateway.take() {
        gateway.shutdown().await;
    }
    if let Some(node) = gw.nats.as_mut().and_then(|n| n.node.take()) {
        node.shutdown().await;
    }
}

async fn submit_refused(gw: &TestGateway, callback: &str) -> String {
    let reply = gw
        .send(
            Method::POST,
            "/async/fn/default/echo/",
            &[("x-callback-url", callback)],
            "x",
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "{callback}: {}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["error"], "callback_refused", "{callback}: {body}");
    body["message"].as_str().unwrap().to_owned()
}

async fn callbacks_to_loopback_are_refused_at_submit_with_the_reason(backend: Backend) {
    let receiver = Recorder::start().await;
    let gw = TestGateway::start_egress(backend, ECHO, strict(), strict()).await;
    let port = receiver.addr.port();
    for (callback, reason) in [
        (
            format!("http://127.0.0.1:{port}/done"),
            "address 127.0.0.1, a loopback address",
        ),
        (
            format!("http://[::1]:{port}/done"),
            "address ::1, a loopback address",
        ),
        (
            format!("http://localhost:{port}/done"),
            "localhost resolves to ",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/done"),
            "it stands for the IPv4 address 127.0.0.1",
        ),
        (
            format!("https://127.0.0.1:{port}/done"),
            "address 127.0.0.1, a loopback address",
        ),
    ] {
        let message = submit_refused(&gw, &callback).await;
        assert!(
            message.contains(reason) && message.contains("loopback"),
            "{callback}: {message}"
        );
        assert!(message.contains("--egress-allow"), "{message}");
    }
    stop(gw).await;
    assert!(receiver.requests.lock().unwrap().is_empty());
}

async fn an_allow_listed_receiver_gets_its_callback_and_no_redirect_is_followed(backend: Backend) {
    let receiver = Recorder::start().await;
    let elsewhere = Recorder::start_on(Ipv4Addr::new(127, 0, 0, 2)).await;
    let gw = TestGateway::start_egress(backend, ECHO, loopback_hosts(), loopback_hosts()).await;

    let message = submit_refused(&gw, &format!("{}/stolen", elsewhere.origin())).await;
    assert!(
        message.contains("127.0.0.2, a loopback address"),
        "{message}"
    );

    let port = receiver.addr.port();
    for (host, path) in [("127.0.0.1", "/by-address"), ("localhost", "/by-name")] {
        let callback = format!("http://{host}:{port}{path}");
        let id = gw
            .submit(
                "/async/fn/default/echo/",
                &[("x-callback-url", &callback)],
                "x",
            )
            .await;
        let delivered = receiver.wait_for(path, 1).await;
        let record: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
        assert_eq!(record["id"], id.as_str());
    }

    let redirecting = format!("{REDIRECT}{}/stolen", elsewhere.addr);
    let callback = format!("{}{redirecting}", receiver.origin());
    gw.submit(
        "/async/fn/default/echo/",
        &[("x-callback-url", &callback)],
        "x",
    )
    .await;
    receiver.wait_for(&redirecting, 1).await;
    stop(gw).await;
    assert_eq!(
        receiver.received(&redirecting).len(),
        1,
        "a redirect is a failed delivery, not retried"
    );
    assert!(
        elsewhere.requests.lock().unwrap().is_empty(),
        "the redirect is not followed"
    );
}

/// The runtime checks what it connects to, whatever the gateway admitted
/// (as when a name resolves elsewhere by delivery time): here the
/// gateway's policy admits loopback and the runtime's does not.
async fn the_runtime_refuses_a_callback_the_gateway_admitted(backend: Backend) {
    let receiver = Recorder::start().await;
    let gw = TestGateway::start_egress(backend, ECHO, loopback_egress(), strict()).await;
    let port = receiver.addr.port();
    for callback in [
        format!("http://localhost:{port}/by-name"),
        format!("http://127.0.0.1:{port}/by-address"),
    ] {
        let id = gw
            .submit(
                "/async/fn/default/echo/",
                &[("x-callback-url", &callback)],
                "x",
            )
            .await;
        let record = gw.wait_final(&id).await;
        assert_eq!(record["state"], "succeeded", "{record}");
    }
    stop(gw).await;
    assert!(
        receiver.requests.lock().unwrap().is_empty(),
        "{:?}",
        receiver
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

/// A function's outbound HTTP connects only to addresses the guard
/// allows, whether `allowedOutboundHosts` names the origin by DNS name or
/// by IP address: an IP literal in a refused range (loopback here; the
/// cloud's 169.254.169.254 or a ClusterIP alike) is denied before anything
/// connects.
async fn outbound_http_to_a_name_or_an_address_goes_through_the_guard(backend: Backend) {
    let target = Recorder::start().await;
    let by_name = format!("http://localhost:{}", target.addr.port());
    let manifest = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: out }}
spec:
  module: {{ file: "{{misbehave}}" }}
  allowedOutboundHosts: [ "{by_name}", "{by_address}" ]
"#,
        by_address = target.origin()
    );
    for (runtime, loopback_allowed) in [(strict(), false), (loopback_egress(), true)] {
        let gw = TestGateway::start_egress(backend, &manifest, strict(), runtime).await;
        let reply = gw
            .get(&format!("/fn/default/out/call?url={by_name}/by-name"))
            .await;
        if loopback_allowed {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        } else {
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
            assert!(
                reply.text().contains("DestinationIpProhibited"),
                "{}",
                reply.text()
            );
        }
        let reply = gw
            .get(&format!(
                "/fn/default/out/call?url={}/by-address",
                target.origin()
            ))
            .await;
        if loopback_allowed {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        } else {
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
            assert!(
                reply.text().contains("HttpRequestDenied"),
                "{}",
                reply.text()
            );
        }
        stop(gw).await;
    }
    assert_eq!(target.received("/by-name").len(), 1);
    assert_eq!(
        target.received("/by-address").len(),
        1,
        "only the runtime allowed loopback reached the listener by address"
    );
}

conformance!(
    callbacks_to_loopback_are_refused_at_submit_with_the_reason,
    an_allow_listed_receiver_gets_its_callback_and_no_redirect_is_followed,
    the_runtime_refuses_a_callback_the_gateway_admitted,
    outbound_http_to_a_name_or_an_address_goes_through_the_guard,
);
